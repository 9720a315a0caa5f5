"""Transformer pieces: RoPE, grouped-query attention through ``jaxflash.attention``, the MLPs and the
pre-norm residual block every LM in this package stacks.

Block (pre-norm, GPT-2 / safari ``long_conv_lm.py``)::

    x = x + Dropout(Mixer(Norm(x)))
    x = x + Dropout(MLP(Norm(x)))

Attention (Vaswani et al. 2017; RoPE, Su et al. 2021; GQA, Ainslie et al. 2023)::

    q = x W_q, k = x W_k, v = x W_v          q: [b, l, H, d_h], k, v: [b, l, H_kv, d_h]
    q, k = RoPE(q, pos), RoPE(k, pos)
    y = softmax(q k^T / sqrt(d_h) + causal mask) v,  query head h reads kv head h // (H / H_kv)
    out = y W_o

Every sequence mixer here follows one protocol: ``__call__(x [b, l, d]) -> [b, l, d]`` (parallel,
training), ``init_state(batch, max_len) -> state`` and ``step(x_t [b, d], state) -> (y_t [b, d],
state)`` (recurrent generation; the state is a plain pytree, so a jitted decode loop can carry it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jaxflash.models.config import AttentionConfig
from jaxflash.models.validation import check_prefill_length, check_step_position
from jaxtyping import Array, Float

import jaxflash

State = dict[str, Any]

# The residual output projections (each mixer's out_proj, each MLP's fc2), whose init GPT-2 scales by
# 1/sqrt(2 n_layers) so that the residual stream's variance does not grow with depth.
RESIDUAL_OUTPUTS = ("out_proj", "fc2")


def make_norm(kind: str, d: int, *, eps: float, dtype: Any, rngs: nnx.Rngs) -> nnx.Module:
    """LayerNorm or RMSNorm over the last axis, parameters in f32."""
    if kind == "layer":
        return nnx.LayerNorm(d, epsilon=eps, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)
    if kind == "rms":
        return nnx.RMSNorm(d, epsilon=eps, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)
    raise ValueError(f"norm={kind!r}; choose 'layer' or 'rms'")


def reinit_linears(module: nnx.Module, rngs: nnx.Rngs, *, std: float, n_layers: int | None = None) -> None:
    """GPT-2 / safari ``_init_weights``: every ``nnx.Linear`` under ``module`` (filter FFNs included)
    gets kernel N(0, std) and zero bias. With ``n_layers`` (GPT-2's residual scaling), the residual
    output projections (:data:`RESIDUAL_OUTPUTS`) get N(0, std / sqrt(2 n_layers)) instead; BERT
    (``n_layers=None``) scales none."""
    init = nnx.initializers.normal(std)
    scaled = RESIDUAL_OUTPUTS if n_layers is not None else ()
    init_scaled = nnx.initializers.normal(std / math.sqrt(2 * n_layers)) if scaled else init
    for path, node in nnx.iter_graph(module):
        if not isinstance(node, nnx.Linear):
            continue
        fn = init_scaled if path and path[-1] in scaled else init
        node.kernel.set_value(fn(rngs.params(), node.kernel.shape, jnp.float32))
        if getattr(node, "bias", None) is not None:
            node.bias.set_value(jnp.zeros_like(node.bias[...]))


def rope(x: Float[Array, "b l h d"], positions: jax.Array, theta: float) -> Float[Array, "b l h d"]:
    """Rotary embedding, rotate-half form: feature pairs (i, i + d/2) rotate by pos * theta^(-2i/d).

    ``positions`` is ``[l]`` or ``[b, l]`` (int). Computed in f32, returned in x's dtype.
    """
    d = x.shape[-1]
    inv_freq = theta ** (-jnp.arange(0, d // 2, dtype=jnp.float32) * 2.0 / d)
    pos = jnp.asarray(positions, jnp.float32)
    if pos.ndim == 1:
        pos = pos[None]
    angle = pos[..., None] * inv_freq  # [b|1, l, d/2]
    cos, sin = jnp.cos(angle)[:, :, None, :], jnp.sin(angle)[:, :, None, :]
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


class Attention(nnx.Module):
    """Causal multi-head attention with RoPE and GQA; ``step`` decodes one token against a KV cache."""

    def __init__(
        self,
        d_model: int,
        config: AttentionConfig,
        *,
        dtype: Any = jnp.float32,
        implementation: str | None = None,
        norm_eps: float = 1e-6,
        rngs: nnx.Rngs,
    ):
        config.validate_width(d_model)
        self.config = config
        self.num_heads = config.num_heads
        self.num_kv_heads = config.kv_heads
        self.head_dim = d_model // config.num_heads
        self.dtype = dtype
        self.implementation = implementation
        kw = dict(use_bias=config.use_bias, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)
        self.q_proj = nnx.Linear(d_model, self.num_heads * self.head_dim, **kw)
        self.k_proj = nnx.Linear(d_model, self.num_kv_heads * self.head_dim, **kw)
        self.v_proj = nnx.Linear(d_model, self.num_kv_heads * self.head_dim, **kw)
        self.out_proj = nnx.Linear(self.num_heads * self.head_dim, d_model, **kw)
        if config.qk_norm:
            self.q_norm = nnx.RMSNorm(self.head_dim, epsilon=norm_eps, dtype=dtype, rngs=rngs)
            self.k_norm = nnx.RMSNorm(self.head_dim, epsilon=norm_eps, dtype=dtype, rngs=rngs)

    def qkv(self, x: Float[Array, "b l d"], positions: jax.Array):
        """The heads ``q [b, l, H, d_h]``, ``k``, ``v [b, l, H_kv, d_h]`` at ``positions`` ([l] or [b, l]),
        QK-normed and rotated as configured: what attention and the KV cache see."""
        b, length, _ = x.shape
        q = self.q_proj(x).reshape(b, length, self.num_heads, self.head_dim)
        k = self.k_proj(x).reshape(b, length, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).reshape(b, length, self.num_kv_heads, self.head_dim)
        if self.config.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.config.rope:
            q = rope(q, positions, self.config.rope_theta)
            k = rope(k, positions, self.config.rope_theta)
        return q, k, v

    def __call__(self, x: Float[Array, "b l d"]) -> Float[Array, "b l d"]:
        b, length, _ = x.shape
        q, k, v = self.qkv(x, jnp.arange(length))
        y = jaxflash.attention(q, k, v, causal=True, implementation=self.implementation)
        return self.out_proj(y.reshape(b, length, -1))

    def prefill(self, x: Float[Array, "b l d"], max_len: int) -> tuple[Float[Array, "b l d"], State]:
        """The parallel forward over a prompt and the KV cache it leaves (``step`` continues at l)."""
        b, length, _ = x.shape
        check_prefill_length(length, max_len)
        q, k, v = self.qkv(x, jnp.arange(length))
        y = jaxflash.attention(q, k, v, causal=True, implementation=self.implementation)
        pad = ((0, 0), (0, max_len - length), (0, 0), (0, 0))
        state = dict(
            k=jnp.pad(k.astype(self.dtype), pad),
            v=jnp.pad(v.astype(self.dtype), pad),
            pos=jnp.asarray(length, jnp.int32),
        )
        return self.out_proj(y.reshape(b, length, -1)), state

    def init_state(self, batch: int, max_len: int) -> State:
        shape = (batch, max_len, self.num_kv_heads, self.head_dim)
        return dict(
            k=jnp.zeros(shape, self.dtype), v=jnp.zeros(shape, self.dtype), pos=jnp.zeros((), jnp.int32)
        )

    def step(self, x: Float[Array, "b d"], state: State) -> tuple[Float[Array, "b d"], State]:
        b = x.shape[0]
        pos = state["pos"]
        check_step_position(pos, state["k"].shape[1], "KV cache")
        q, k, v = self.qkv(x[:, None], pos[None])
        k_cache = jax.lax.dynamic_update_slice(state["k"], k.astype(state["k"].dtype), (0, pos, 0, 0))
        v_cache = jax.lax.dynamic_update_slice(state["v"], v.astype(state["v"].dtype), (0, pos, 0, 0))
        lengths = jnp.full((b,), pos + 1, jnp.int32)
        y = jaxflash.decode_attention(q[:, 0], k_cache, v_cache, lengths, implementation=self.implementation)
        out = self.out_proj(y.reshape(b, -1))
        return out, dict(k=k_cache, v=v_cache, pos=pos + 1)


class MLP(nnx.Module):
    """``fc2(act(fc1 x))``: GELU (tanh form, as safari), squared ReLU (Parcae), or SwiGLU
    ``fc2(silu(gate x) * fc1 x)`` (Shazeer 2020)."""

    def __init__(
        self,
        d_model: int,
        d_inner: int,
        *,
        kind: str = "gelu",
        use_bias: bool = True,
        dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ):
        if kind not in ("gelu", "swiglu", "relu2"):
            raise ValueError(f"mlp kind={kind!r}; choose 'gelu', 'swiglu' or 'relu2'")
        self.kind = kind
        kw = dict(use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)
        self.fc1 = nnx.Linear(d_model, d_inner, **kw)
        if kind == "swiglu":
            self.gate = nnx.Linear(d_model, d_inner, **kw)
        self.fc2 = nnx.Linear(d_inner, d_model, **kw)

    def __call__(self, x: Float[Array, "... d"]) -> Float[Array, "... d"]:
        h = self.fc1(x)
        if self.kind == "gelu":
            h = jax.nn.gelu(h, approximate=True)
        elif self.kind == "relu2":
            h = jnp.square(jax.nn.relu(h))
        else:
            h = jax.nn.silu(self.gate(x)) * h
        return self.fc2(h)


class Block(nnx.Module):
    """Pre-norm residual block around any mixer that follows the module protocol, plus an MLP."""

    def __init__(
        self,
        d_model: int,
        mixer: nnx.Module,
        mlp: nnx.Module,
        *,
        norm: str = "layer",
        norm_eps: float = 1e-5,
        dropout: float = 0.0,
        dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.norm1 = make_norm(norm, d_model, eps=norm_eps, dtype=dtype, rngs=rngs)
        self.mixer = mixer
        self.norm2 = make_norm(norm, d_model, eps=norm_eps, dtype=dtype, rngs=rngs)
        self.mlp = mlp
        # No dropout module at rate 0, so the block holds parameters only (loops can split it cleanly).
        self.dropout = nnx.Dropout(dropout, rngs=rngs) if dropout > 0 else None

    def _drop(self, x: jax.Array) -> jax.Array:
        return x if self.dropout is None else self.dropout(x)

    def __call__(self, x: Float[Array, "b l d"]) -> Float[Array, "b l d"]:
        x = x + self._drop(self.mixer(self.norm1(x)))
        return x + self._drop(self.mlp(self.norm2(x)))

    def init_state(self, batch: int, max_len: int) -> State:
        return self.mixer.init_state(batch, max_len)

    def step(self, x: Float[Array, "b d"], state: State) -> tuple[Float[Array, "b d"], State]:
        y, state = self.mixer.step(self.norm1(x), state)
        x = x + y
        return x + self.mlp(self.norm2(x)), state

    def prefill(self, x: Float[Array, "b l d"], max_len: int) -> tuple[Float[Array, "b l d"], State]:
        """The forward over a prompt and the mixer's state after it (see each mixer's ``prefill``)."""
        y, state = self.mixer.prefill(self.norm1(x), max_len)
        x = x + self._drop(y)
        return x + self._drop(self.mlp(self.norm2(x))), state


def step_blocks(
    blocks: Sequence[Block], x: Float[Array, "b d"], states: Sequence[State]
) -> tuple[Float[Array, "b d"], list[State]]:
    """One recurrent step through a stack of blocks: ``x, s_i <- block_i.step(x, s_i)`` in order."""
    new_states = []
    for block, state in zip(blocks, states, strict=True):
        x, state = block.step(x, state)
        new_states.append(state)
    return x, new_states


def prefill_blocks(
    blocks: Sequence[Block], x: Float[Array, "b l d"], max_len: int
) -> tuple[Float[Array, "b l d"], list[State]]:
    """The parallel forward through a stack of blocks and each block's decode state after it."""
    states = []
    for block in blocks:
        x, state = block.prefill(x, max_len)
        states.append(state)
    return x, states


def tied_logits(embed: nnx.Embed, x: Float[Array, "... d"]) -> Float[Array, "... v"]:
    """The LM head tied to the token embedding, ``x @ E^T``, in float32 for the softmax."""
    return embed.attend(x).astype(jnp.float32)
