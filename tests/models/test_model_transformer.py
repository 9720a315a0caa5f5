"""Transformer pieces: RoPE, causal GQA attention through jaxflash.attention, KV-cache decoding, MLPs."""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx
from jaxflash.models import MLP, Attention, AttentionConfig, rope

from jaxflash.testing import assert_close, random_normal


def test_rope_is_a_rotation_that_encodes_relative_position(key):
    q = random_normal(key, (1, 5, 2, 8))
    k = random_normal(jax.random.fold_in(key, 1), (1, 5, 2, 8))

    @jax.jit
    def scores(shift):
        pos = jnp.arange(5) + shift
        rq, rk = rope(q, pos, 100.0), rope(k, pos, 100.0)
        return jnp.einsum("blhd,bmhd->bhlm", rq, rk), jnp.linalg.norm(rq, axis=-1)

    s0, n0 = scores(0)
    s3, _ = scores(3)
    assert_close(n0, jnp.linalg.norm(q, axis=-1))
    # <R_m q, R_n k> depends on m - n only: shifting both positions by 3 keeps every score.
    assert_close(s3, s0, atol=1e-4)
    assert_close(rope(q, jnp.zeros(5, jnp.int32), 100.0), q)


@pytest.mark.parametrize("heads, kv_heads", [(4, 2)])
def test_attention_is_causal_and_decodes_with_kv_cache(key, checks, heads, kv_heads):
    att = Attention(
        32, AttentionConfig(num_heads=heads, num_kv_heads=kv_heads), implementation="xla", rngs=nnx.Rngs(0)
    )
    x = random_normal(key, (2, 9, 32))
    checks.causal(att, x, cut=4)
    checks.step(att, x)
    checks.prefill(att, x, cut=3)


def test_attention_gqa_matches_repeated_kv_heads(key):
    cfg = AttentionConfig(num_heads=4, num_kv_heads=2, rope=False)
    att = Attention(16, cfg, implementation="xla", rngs=nnx.Rngs(0))
    x = random_normal(key, (1, 6, 16))
    q = att.q_proj(x).reshape(1, 6, 4, 4)
    k = jnp.repeat(att.k_proj(x).reshape(1, 6, 2, 4), 2, axis=2)
    v = jnp.repeat(att.v_proj(x).reshape(1, 6, 2, 4), 2, axis=2)
    s = jnp.einsum("blhd,bmhd->bhlm", q, k) / 2.0
    s = jnp.where(jnp.tril(jnp.ones((6, 6), bool)), s, -jnp.inf)
    y = jnp.einsum("bhlm,bmhd->blhd", jax.nn.softmax(s, axis=-1), v).reshape(1, 6, 16)
    assert_close(nnx.jit(lambda m, x: m(x))(att, x), att.out_proj(y), atol=1e-5)


@pytest.mark.parametrize("kind", ["gelu", "swiglu", "relu2"])
def test_mlp_kinds(key, kind):
    mlp = MLP(8, 16, kind=kind, rngs=nnx.Rngs(0))
    x = random_normal(key, (3, 8))
    h = mlp.fc1(x)
    act = {"gelu": jax.nn.gelu(h, approximate=True), "relu2": jnp.maximum(h, 0) ** 2}.get(kind)
    if kind == "swiglu":
        act = jax.nn.silu(mlp.gate(x)) * h
    assert_close(mlp(x), mlp.fc2(act))
