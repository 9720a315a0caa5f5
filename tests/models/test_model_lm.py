"""LM wrappers: GPT-2 init, tied head, causality and step for every mixer (and a hybrid), and the
optimizer parameter groups."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jaxflash.models import config as C
from jaxflash.models.lm import LanguageModel, make_optimizer, param_labels
from jaxflash.models.parcae import Parcae

from jaxflash.testing import assert_close


def test_init_and_tied_head():
    cfg = C.tiny_lm("hyena", d_model=64, d_inner=128, n_layers=3)
    model = LanguageModel(cfg, rngs=nnx.Rngs(0))
    block = model.blocks[0]
    std = lambda p: float(jnp.std(p[...]))  # noqa: E731
    assert abs(std(model.embed.embedding) - 0.02) < 0.002
    assert abs(std(block.mlp.fc1.kernel) - 0.02) < 0.002
    scaled = 0.02 / np.sqrt(2 * 3)
    assert abs(std(block.mlp.fc2.kernel) - scaled) < 0.1 * scaled
    assert abs(std(block.mixer.out_proj.kernel) - scaled) < 0.1 * scaled
    assert abs(std(block.mixer.filter.ffn.inner[0].kernel) - 0.02) < 0.004  # filter FFNs too (safari)
    assert float(jnp.max(jnp.abs(block.mlp.fc1.bias[...]))) == 0.0
    assert not any("head" in str(path) for path in param_labels(model))  # tied (checked numerically below)


# Each mixer's own causality and step tests live beside it; here the LM plumbing: a hybrid with
# learned positions (attention + H3 blocks) and a pure Hyena LM.
@pytest.mark.parametrize("mixer, hybrid", [("h3", (1,)), ("hyena", ())])
def test_lm_is_causal_and_step_matches(key, mixer, hybrid):
    cfg = C.tiny_lm(
        mixer, attn_layer_idx=hybrid, init_std=0.2, learned_pos_emb=bool(hybrid), implementation="reference"
    )
    model = LanguageModel(cfg, rngs=nnx.Rngs(1))
    tokens = jax.random.randint(key, (2, 9), 0, 16)

    @nnx.jit
    def fwd(m, tokens):
        # Also the tied head by hand: the final hidden state against the embedding matrix.
        x = m.embed(tokens) + (m.pos_emb(jnp.arange(9))[None] if m.pos_emb is not None else 0.0)
        for b in m.blocks:
            x = b(x)
        return m(tokens), m.final_norm(x) @ m.embed.embedding[...].T

    logits, tied = fwd(model, tokens)
    assert_close(logits, tied, atol=1e-5)
    later, _ = fwd(model, tokens.at[:, 5:].set((tokens[:, 5:] + 3) % 16))
    assert_close(later[:, :5], logits[:, :5], atol=1e-5)
    assert float(jnp.max(jnp.abs(later[:, 5:] - logits[:, 5:]))) > 1e-4
    state = model.init_state(2, 12)
    step = nnx.jit(lambda m, t, s: m.step(t, s))
    outs = []
    for t in range(9):
        out, state = step(model, tokens[:, t], state)
        outs.append(out)
    assert_close(jnp.stack(outs, 1), logits, atol=1e-4, rtol=1e-4)


def _labels_by_name(model):
    return {"/".join(map(str, path)): label for path, label in param_labels(model).items()}


def test_param_labels_follow_the_papers():
    h3 = _labels_by_name(LanguageModel(C.tiny_lm("h3", attn_layer_idx=(1,)), rngs=nnx.Rngs(0)))
    m = "blocks/0/mixer/"
    for name in ("diag_kernel/log_dt", "diag_kernel/inv_A_real", "diag_kernel/A_imag", "shift_kernel/B"):
        assert h3[m + name] == "ssm", name
    for name in ("diag_kernel/C", "shift_kernel/C", "q_proj/kernel", "D", "D_k"):
        assert h3[m + name] == "default", name
    assert h3[m + "q_proj/bias"] == "no_decay" and h3["blocks/0/norm1/scale"] == "no_decay"
    assert h3["embed/embedding"] == "default" and h3["blocks/1/mixer/q_proj/kernel"] == "default"
    hy = _labels_by_name(LanguageModel(C.tiny_lm("hyena"), rngs=nnx.Rngs(0)))
    f = "blocks/0/mixer/filter/"
    assert hy[f + "z"] == "pos_emb" and hy[f + "freq"] == "filter" and hy[f + "bias"] == "no_decay"
    assert hy[f + "ffn/first/kernel"] == "filter" and hy[f + "ffn/last/kernel"] == "filter"
    assert hy["blocks/0/mixer/in_proj/kernel"] == "default"
    lc = _labels_by_name(LanguageModel(C.tiny_lm("long_conv"), rngs=nnx.Rngs(0)))
    assert lc["blocks/0/mixer/kernel/kernel"] == "ssm"
    pa = _labels_by_name(Parcae(C.parcae_tiny(), rngs=nnx.Rngs(0)))
    for name in ("core/injection/A_log", "core/injection/dt_bias", "core/injection/B", "C/kernel"):
        assert pa[name] == "no_decay", name


def test_optimizer_groups_take_their_own_learning_rate():
    model = LanguageModel(C.tiny_lm("h3"), rngs=nnx.Rngs(0))
    lr, ssm_lr = 1e-2, 1e-3
    opt = nnx.Optimizer(model, make_optimizer(model, lr=lr, ssm_lr=ssm_lr, weight_decay=0.0), wrt=nnx.Param)
    before = nnx.state(model, nnx.Param)
    before = jax.tree.map(lambda x: x, before)
    grads = jax.tree.map(jnp.ones_like, nnx.state(model, nnx.Param))
    opt.update(model, grads)
    after = nnx.state(model, nnx.Param)
    moved = lambda *path: float(
        jnp.max(
            jnp.abs(  # noqa: E731
                _get(after, path) - _get(before, path)
            )
        )
    )
    # Adam's first step moves every coordinate with a constant gradient by its group's lr.
    assert moved("blocks", 0, "mixer", "diag_kernel", "log_dt") == pytest.approx(ssm_lr, rel=1e-3)
    assert moved("blocks", 0, "mixer", "q_proj", "kernel") == pytest.approx(lr, rel=1e-3)
    # Weight decay reaches the default group only.
    opt = nnx.Optimizer(model, make_optimizer(model, lr=lr, weight_decay=0.5), wrt=nnx.Param)
    zero = jax.tree.map(jnp.zeros_like, nnx.state(model, nnx.Param))
    w = _get(nnx.state(model, nnx.Param), ("blocks", 0, "mixer", "q_proj", "kernel"))
    a = _get(nnx.state(model, nnx.Param), ("blocks", 0, "mixer", "diag_kernel", "A_imag"))
    opt.update(model, zero)
    assert_close(
        _get(nnx.state(model, nnx.Param), ("blocks", 0, "mixer", "q_proj", "kernel")), w * (1 - lr * 0.5)
    )
    assert_close(_get(nnx.state(model, nnx.Param), ("blocks", 0, "mixer", "diag_kernel", "A_imag")), a)
    assert isinstance(make_optimizer(model, lr=lr), optax.GradientTransformation)


def _get(state, path):
    node = state
    for p in path:
        node = node[p]
    return jnp.asarray(node[...])


def test_bfloat16_compute_tracks_float32():
    # Parameters stay f32; only the compute dtype changes. bf16 keeps ~3 significant digits, and the
    # logits pass through two blocks, so allow 3% of the logits' scale.
    tokens = jnp.arange(22).reshape(2, 11) % 16
    fwd = nnx.jit(lambda m, t: m(t))
    ref = fwd(LanguageModel(C.tiny_lm("hyena", init_std=0.2), rngs=nnx.Rngs(0)), tokens)
    model16 = LanguageModel(C.tiny_lm("hyena", init_std=0.2, dtype="bfloat16"), rngs=nnx.Rngs(0))
    assert model16.blocks[0].mixer.in_proj.kernel[...].dtype == jnp.float32
    out = fwd(model16, tokens)
    assert out.dtype == jnp.float32
    scale = float(jnp.max(jnp.abs(ref)))
    assert_close(out, ref, atol=0.03 * scale, rtol=0.0)
