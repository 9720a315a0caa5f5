"""DiT: every named config's shapes (from shapes alone for the big ones), the fixed embeddings, adaLN-Zero
at init, label dropout, classifier-free guidance, the graftable attn/mlp submodules, and sampling/training
through jaxflash.diffusion on the tiny config."""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jaxflash.models import (
    DIT_PRESETS,
    DiT,
    DiTBlock,
    DiTConfig,
    LabelEmbedder,
    dit_tiny,
    parameter_count,
)
from jaxflash.models.dit import patchify, sincos_pos_embed_2d, timestep_embedding, unpatchify

import jaxflash.diffusion as jd
from jaxflash.testing import assert_close, random_normal

# DiT's DiT_models table: (depth, hidden size, heads) per size.
SIZES = {"XL": (28, 1152, 16), "L": (24, 1024, 16), "B": (12, 768, 12), "S": (12, 384, 6)}


def randomize(model: nnx.Module, key: jax.Array, scale: float = 0.2, *, eval: bool = False) -> nnx.Module:
    """Every parameter (the zero-initialised ones too) to N(0, scale^2), so outputs are not trivially 0;
    in eval mode (no label dropout) with ``eval``."""
    state = nnx.state(model, nnx.Param)
    leaves, treedef = jax.tree.flatten(state)
    # One draw sliced into every leaf: a draw per shape would compile a sampler per shape.
    flat = np.asarray(random_normal(key, (sum(leaf.size for leaf in leaves),), scale=scale))
    offsets = np.cumsum([0] + [leaf.size for leaf in leaves])
    new = [
        jnp.asarray(flat[a:b].reshape(leaf.shape))
        for a, b, leaf in zip(offsets, offsets[1:], leaves, strict=False)
    ]
    nnx.update(model, jax.tree.unflatten(treedef, new))
    if eval:
        model.eval()
    return model


@nnx.jit
def forward(model, x, t, y, drop=None):
    return model(x, t, y, force_drop_ids=drop)


@functools.partial(nnx.jit, static_argnames="guidance_channels")
def forward_with_cfg(model, x, t, y, scale, guidance_channels):
    return model.forward_with_cfg(x, t, y, scale, guidance_channels=guidance_channels)


@pytest.fixture(scope="module")
def shared_tiny():
    return randomize(DiT(dit_tiny(), rngs=nnx.Rngs(0)), jax.random.key(1), eval=True)


@pytest.fixture
def tiny(shared_tiny):
    """A tiny DiT with random weights in eval mode, a fresh copy per test (one graph: jit caches hit)."""
    return nnx.clone(shared_tiny)


def inputs(key, cfg: DiTConfig, batch: int = 3):
    kx, kt, ky = jax.random.split(key, 3)
    x = random_normal(kx, (batch, cfg.input_size, cfg.input_size, cfg.in_channels))
    t = jax.random.randint(kt, (batch,), 0, 1000)
    y = jax.random.randint(ky, (batch,), 0, cfg.num_classes)
    return x, t, y


@pytest.mark.parametrize("name", [n for n in DIT_PRESETS if n != "DiT-tiny"])
def test_named_config_shapes_from_shapes_alone(name):
    cfg = DIT_PRESETS[name]()
    size, patch = name.removeprefix("DiT-").split("/")
    if size in SIZES:
        assert (cfg.n_layers, cfg.d_model, cfg.num_heads) == SIZES[size]
    assert cfg.patch_size == int(patch) and cfg.num_patches == (32 // int(patch)) ** 2
    x = jax.ShapeDtypeStruct((2, 32, 32, 4), jnp.float32)
    t = jax.ShapeDtypeStruct((2,), jnp.int32)
    out = jax.eval_shape(lambda x, t: DiT(cfg, rngs=nnx.Rngs(0))(x, t, t), x, t)
    assert out.shape == (2, 32, 32, 8) and out.dtype == jnp.float32


def test_xl2_parameter_count_is_dits():
    # DiT's train.py logs 675,129,632 parameters for DiT-XL/2, counting its fixed pos_embed buffer
    # (256 x 1152), which is not a parameter here.
    assert parameter_count(DiT, DIT_PRESETS["DiT-XL/2"]()) + 256 * 1152 == 675_129_632


@pytest.mark.parametrize("input_size, learn_sigma, batch", [(8, True, 3), (16, False, 1)])
def test_tiny_forward_shapes(key, input_size, learn_sigma, batch):
    cfg = dit_tiny(input_size=input_size, learn_sigma=learn_sigma)
    model = DiT(cfg, rngs=nnx.Rngs(0))
    x, t, y = inputs(key, cfg, batch)
    out = forward(model, x, t, y)
    assert out.shape == (batch, input_size, input_size, 2 if learn_sigma else 1)
    assert cfg.num_patches == (input_size // 2) ** 2


def test_sincos_table_matches_a_loop():
    dim, grid = 16, 5
    table = np.zeros((grid * grid, dim))
    quarter = dim // 4
    for r in range(grid):
        for c in range(grid):
            for i in range(quarter):
                w = 1.0 / 10000 ** (i / quarter)
                # DiT's meshgrid(grid_w, grid_h): the first half encodes the column, the second the row.
                table[r * grid + c, i] = math.sin(c * w)
                table[r * grid + c, quarter + i] = math.cos(c * w)
                table[r * grid + c, 2 * quarter + i] = math.sin(r * w)
                table[r * grid + c, 3 * quarter + i] = math.cos(r * w)
    np.testing.assert_allclose(sincos_pos_embed_2d(dim, grid), table, atol=1e-6)


def test_timestep_embedding_formula():
    t = jnp.array([0.0, 3.0, 999.0])
    emb = timestep_embedding(t, 8)
    freqs = np.exp(-math.log(10000) * np.arange(4) / 4)
    want = np.concatenate([np.cos(np.outer(t, freqs)), np.sin(np.outer(t, freqs))], axis=1)
    np.testing.assert_allclose(emb, want, atol=1e-4)
    odd = timestep_embedding(t, 9)
    assert odd.shape == (3, 9) and not np.any(odd[:, -1])


def test_patch_embedding_is_the_strided_conv_and_unpatchify_inverts(key):
    b, size, c, p, d = 2, 8, 3, 2, 5
    x = random_normal(key, (b, size, size, c))
    w_torch = np.asarray(random_normal(jax.random.fold_in(key, 1), (d, c, p, p)))  # Conv2d [D, C, p, p]
    conv = jax.lax.conv_general_dilated(
        x,
        jnp.asarray(w_torch.transpose(2, 3, 1, 0)),
        (p, p),
        "VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    kernel = w_torch.transpose(2, 3, 1, 0).reshape(p * p * c, d)  # the documented weight conversion
    assert_close(patchify(x, p) @ kernel, conv.reshape(b, -1, d), atol=1e-5)
    assert_close(unpatchify(patchify(x, p), p, c), x, atol=0, rtol=0)


def test_adaln_zero_block_is_identity_and_model_outputs_zero_at_init(key):
    cfg = dit_tiny()
    model = DiT(cfg, rngs=nnx.Rngs(0))
    x, t, y = inputs(key, cfg)
    h = random_normal(jax.random.fold_in(key, 1), (3, cfg.num_patches, cfg.d_model))
    c = random_normal(jax.random.fold_in(key, 2), (3, cfg.d_model))
    apply = nnx.jit(lambda block, h, c: block(h, c))
    for block in model.blocks:
        assert_close(apply(block, h, c), h, atol=0, rtol=0)
    assert not np.any(forward(model, x, t, y))
    # The check can fail: a block with non-zero modulation is no longer the identity.
    block = randomize(DiTBlock(cfg, rngs=nnx.Rngs(1)), key)
    assert float(jnp.max(jnp.abs(apply(block, h, c) - h))) > 1e-3


def test_label_dropout_sends_dropped_labels_to_the_null_class(key):
    emb = LabelEmbedder(10, 8, 0.3, rngs=nnx.Rngs(0))
    labels = jax.random.randint(key, (4000,), 0, 10)
    dropped = emb.drop(labels)
    changed = dropped != labels
    assert np.all(dropped[changed] == 10)
    assert abs(float(changed.mean()) - 0.3) < 0.04
    assert np.all(emb.drop(labels, deterministic=True) == labels)
    forced = emb.drop(labels[:4], deterministic=True, force_drop_ids=jnp.array([1, 0, 1, 0]))
    assert forced.tolist() == [10, int(labels[1]), 10, int(labels[3])]
    emb.eval()
    assert np.all(emb.drop(labels) == labels)
    # No label dropout: no null row, as in DiT, and guidance is refused.
    plain = LabelEmbedder(10, 8, 0.0, rngs=nnx.Rngs(0))
    assert plain.embedding.embedding.shape == (10, 8)
    with pytest.raises(ValueError, match="null class"):
        plain.drop(labels[:2], force_drop_ids=jnp.ones(2, jnp.int32))


def test_forced_drop_equals_the_null_label(key, tiny):
    cfg, model = tiny.config, tiny
    x, t, y = inputs(key, cfg)
    null = jnp.full_like(y, cfg.num_classes)
    assert_close(forward(model, x, t, y, jnp.ones_like(y)), forward(model, x, t, null))


def test_cfg_scale_one_is_the_conditional_output(key, tiny):
    cfg, model = tiny.config, tiny
    model.train()  # guidance never drops labels at random, in either mode
    x, t, y = inputs(key, cfg)
    guided = forward_with_cfg(model, x, t, y, 1.0, None)
    model.eval()
    assert_close(guided, forward(model, x, t, y), atol=1e-4)


@pytest.mark.parametrize("guidance_channels, guided", [(3, 3), (None, 4)])
def test_guidance_channels(key, guidance_channels, guided):
    cfg = dit_tiny(in_channels=4)
    model = randomize(DiT(cfg, rngs=nnx.Rngs(0)), key, eval=True)
    x, t, y = inputs(key, cfg)
    s = 4.0
    cond = forward(model, x, t, y)
    uncond = forward(model, x, t, jnp.full_like(y, cfg.num_classes))
    out = forward_with_cfg(model, x, t, y, s, guidance_channels)
    assert out.shape == cond.shape == (3, 8, 8, 8)
    assert_close(
        out[..., :guided], uncond[..., :guided] + s * (cond[..., :guided] - uncond[..., :guided]), atol=1e-4
    )
    # The unguided epsilon channels and the variance channels are the conditional output's.
    assert_close(out[..., guided:], cond[..., guided:], atol=1e-4)


def test_attn_and_mlp_are_replaceable_submodules(key, tiny):
    class Zero(nnx.Module):
        def __call__(self, u):
            return jnp.zeros_like(u)

    cfg, model = tiny.config, tiny
    x, t, y = inputs(key, cfg)
    ref = nnx.clone(model)
    for mod in (ref.blocks[1].attn.proj, ref.blocks[2].mlp.fc2):
        mod.kernel.set_value(jnp.zeros_like(mod.kernel[...]))
        mod.bias.set_value(jnp.zeros_like(mod.bias[...]))
    model.blocks[1].attn = Zero()
    model.blocks[2].mlp = Zero()
    assert_close(forward(model, x, t, y), forward(ref, x, t, y), atol=1e-6)


def test_jit_matches_eager_and_bfloat16_is_close(key, tiny):
    cfg, model = tiny.config, tiny
    x, t, y = inputs(key, cfg)
    eager = model(x, t, y)
    assert_close(forward(model, x, t, y), eager, atol=1e-5)
    low = DiT(dataclasses.replace(cfg, dtype="bfloat16"), rngs=nnx.Rngs(0))
    low.eval()
    nnx.update(low, nnx.state(model, nnx.Param))
    out = forward(low, x, t, y)
    assert out.dtype == jnp.float32
    assert float(jnp.max(jnp.abs(out - eager))) < 0.05 * float(jnp.max(jnp.abs(eager)))


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: DiTConfig(patch_size=3), "patch_size=3 must divide input_size=32"),
        (lambda: DiTConfig(num_heads=5), "num_heads=5 must divide d_model=1152"),
        (lambda: dit_tiny(d_model=66, num_heads=6), "multiple of 4"),
        (lambda: dit_tiny(class_dropout_prob=1.0), "class_dropout_prob"),
        (lambda: dit_tiny(mlp_ratio=float("nan")), "mlp_ratio"),
        (lambda: dit_tiny(dtype="int32"), "floating dtype"),
    ],
)
def test_bad_config_fails_at_construction(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_bad_inputs_fail_with_a_message(key):
    cfg = dit_tiny()
    model = DiT(cfg, rngs=nnx.Rngs(0))
    x, t, y = inputs(key, cfg)
    with pytest.raises(ValueError, match="channels last"):
        model(jnp.moveaxis(x, -1, 1), t, y)
    with pytest.raises(ValueError, match="labels y must lie in"):
        model(x, t, y.at[0].set(11))
    with pytest.raises(TypeError, match="DiTConfig"):
        DiT(dataclasses.asdict(cfg), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="cfg_scale"):
        model.forward_with_cfg(x, t, y, -0.5)
    with pytest.raises(ValueError, match="cfg_scale"):
        model.forward_with_cfg(x, t, y, jnp.float32(-1.0))


def test_training_step_and_cfg_sampling_through_jaxflash_diffusion(key):
    cfg = dit_tiny()
    model = DiT(cfg, rngs=nnx.Rngs(0))
    x0, _, y = inputs(key, cfg, 4)
    diffusion = jd.create_diffusion("")
    t = jax.random.randint(jax.random.fold_in(key, 1), (4,), 0, diffusion.num_timesteps)
    noise = random_normal(jax.random.fold_in(key, 2), x0.shape)

    @nnx.jit
    def grads(m):
        def loss(m):
            return jd.training_losses(diffusion, lambda x, s: m(x, s, y), x0, t, noise)["loss"].mean()

        return nnx.grad(loss)(m)

    g = grads(model)  # train mode: labels dropped with DiT's probability, keys from the model's stream
    final = g.final_layer.linear.kernel[...]
    assert np.all(np.isfinite(final)) and float(jnp.abs(final).max()) > 0
    # Zero-initialised gates: at init only the final layer gets a gradient.
    assert not np.any(g.blocks[0].attn.qkv.kernel[...])

    sampler = jd.create_diffusion("ddim4")
    randomize(model, key, 0.05, eval=True)
    sample = nnx.jit(
        lambda m, z: jd.ddim_sample_loop(sampler, lambda x, s: m.forward_with_cfg(x, s, y, 1.5), z)
    )(model, noise)
    assert sample.shape == x0.shape and np.all(np.isfinite(sample))
