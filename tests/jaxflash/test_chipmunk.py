"""Chipmunk sampling (jaxflash.diffusion.chipmunk): the deltas are exact where they must be (a full step,
every column kept, every step full), token reordering leaves the model unchanged, real sparsity computes
the configured fraction and beats reusing the cached outputs, and bad configs fail naming the field."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jaxflash.models import DiT, DiTConfig

import jaxflash.diffusion as jd
from jaxflash.diffusion.chipmunk import (
    ChipmunkConfig,
    attention_full,
    attention_sparse,
    chipmunk_sample,
    invert_permutation,
    mlp_full,
    mlp_sparse,
    permute_tokens,
    reorder_tokens,
)
from jaxflash.testing import assert_close, random_normal

# 16 x 16 images, patch 2: 64 tokens (an 8 x 8 grid), 4 query groups of 16, MLP hidden width 128.
CONFIG = DiTConfig(
    input_size=16,
    patch_size=2,
    in_channels=1,
    d_model=32,
    n_layers=3,
    num_heads=2,
    num_classes=10,
    implementation="xla",
)
STEPS = "ddim12"
EVERY = 5  # full steps 0, 1, 5, 10: three runs of sparse steps


def randomize(model: nnx.Module, key: jax.Array, scale: float = 0.2) -> nnx.Module:
    """Every parameter, the adaLN-Zero ones too, to N(0, scale^2), so no block is the identity."""
    state = nnx.state(model, nnx.Param)
    leaves, treedef = jax.tree.flatten(state)
    flat = np.asarray(random_normal(key, (sum(leaf.size for leaf in leaves),), scale=scale))
    offsets = np.cumsum([0] + [leaf.size for leaf in leaves])
    spans = zip(offsets[:-1], offsets[1:], leaves, strict=True)
    new = [jnp.asarray(flat[a:b].reshape(leaf.shape)) for a, b, leaf in spans]
    nnx.update(model, jax.tree.unflatten(treedef, new))
    model.eval()
    return model


@pytest.fixture(scope="module")
def model():
    return randomize(DiT(CONFIG, rngs=nnx.Rngs(0)), jax.random.key(1))


@pytest.fixture(scope="module")
def diffusion():
    return jd.create_diffusion(STEPS)


LABELS = jnp.array([3, 8])


@pytest.fixture(scope="module")
def dense_samples(model, diffusion):
    """sample_dit's DDIM output per cfg_scale, for one key."""
    key = jax.random.key(7)
    return key, {s: jd.sample_dit(model, LABELS, key, diffusion=diffusion, cfg_scale=s) for s in (1.0, 1.5)}


def assert_sample_close(actual, expected):
    # Random weights give samples of scale ~100 (unclipped x_0): compare relative to that scale.
    scale = float(jnp.abs(expected).max())
    assert_close(actual, expected, atol=1e-5 * scale, rtol=1e-5)


# --- the sampler against the dense one --------------------------------------------------------------


@pytest.mark.parametrize("cfg_scale", [1.0, 1.5])
def test_every_column_kept_equals_dense_sampling(model, diffusion, dense_samples, cfg_scale):
    key, dense = dense_samples
    config = ChipmunkConfig(attn_top_keys=1.0, mlp_top_keys=1.0, full_step_every=EVERY)
    x = chipmunk_sample(model, LABELS, key, diffusion=diffusion, config=config, cfg_scale=cfg_scale)
    assert_sample_close(x, dense[cfg_scale])
    shared = dataclasses.replace(config, mlp_shared_units=True)
    x = chipmunk_sample(model, LABELS, key, diffusion=diffusion, config=shared, cfg_scale=cfg_scale)
    assert_sample_close(x, dense[cfg_scale])


def test_every_step_full_equals_dense_sampling(model, diffusion, dense_samples):
    key, dense = dense_samples
    config = ChipmunkConfig(full_step_every=1)  # the default sparsity, never used
    x, stats = chipmunk_sample(model, LABELS, key, diffusion=diffusion, config=config, return_stats=True)
    assert_sample_close(x, dense[1.0])
    assert stats.full_step.all() and (stats.attn_density == 1).all() and (stats.mlp_density == 1).all()


def test_reordered_tokens_leave_the_dense_model_unchanged(model, diffusion, dense_samples):
    key, dense = dense_samples
    config = ChipmunkConfig(sparse_attn=False, sparse_mlp=False, reorder_patch=4)
    x = chipmunk_sample(model, LABELS, key, diffusion=diffusion, config=config)
    assert_sample_close(x, dense[1.0])


def test_sparse_sampling_computes_the_configured_fraction_and_beats_reuse(model, diffusion, dense_samples):
    key, dense = dense_samples
    config = ChipmunkConfig(full_step_every=EVERY, reorder_patch=4)  # 25% of key columns, 30% of units
    x, stats = chipmunk_sample(model, LABELS, key, diffusion=diffusion, config=config, return_stats=True)
    assert np.all(np.isfinite(x))
    assert float(jnp.abs(x - dense[1.0]).max()) > 0  # really sparse
    # Collecting the stats does not change the sample.
    assert_close(chipmunk_sample(model, LABELS, key, diffusion=diffusion, config=config), x)

    steps = np.arange(diffusion.num_timesteps)
    np.testing.assert_array_equal(stats.full_step, (steps < 2) | (steps % EVERY == 0))
    sparse = ~stats.full_step
    tokens, hidden = CONFIG.num_patches, CONFIG.ffn_dim
    # Block 0 is dense (first_dense_layers=1); the others compute exactly the configured fraction.
    np.testing.assert_allclose(stats.attn_density[:, 0], 1.0)
    np.testing.assert_allclose(stats.attn_density[sparse, 1:], config.attn_columns(tokens) / tokens)
    np.testing.assert_allclose(stats.attn_density[sparse, 1:], 0.25)
    np.testing.assert_allclose(stats.mlp_density[sparse, 1:], config.mlp_units(hidden) / hidden)
    assert abs(config.mlp_units(hidden) / hidden - 0.3) <= 1 / hidden
    np.testing.assert_allclose(stats.attn_density[~sparse], 1.0)
    assert (stats.attn_error[:, 0] == 0).all() and (stats.attn_error[~sparse] == 0).all()
    # The delta helps: on average over the sparse steps, each sparse layer is closer to its dense output
    # than the output of its last full step is.
    for kind in ("attn", "mlp"):
        error = getattr(stats, f"{kind}_error")[sparse, 1:].mean(0)
        reuse = getattr(stats, f"{kind}_reuse_error")[sparse, 1:].mean(0)
        assert np.all(error > 0) and np.all(error < reuse), (kind, error, reuse)


# --- the deltas, one layer --------------------------------------------------------------------------


def block_inputs(key, tokens, batch=2):
    u = random_normal(key, (batch, tokens, CONFIG.d_model))
    return u, u + 0.3 * random_normal(jax.random.fold_in(key, 1), u.shape)  # this step, a later one


@pytest.mark.parametrize("tokens", [64, 61])  # 61: a partial last query group and row block
def test_attention_delta_is_exact_at_the_full_step_and_with_every_column(model, key, tokens):
    attn = model.blocks[1].attn
    u, later = block_inputs(key, tokens)
    dense = attn(u)
    config = ChipmunkConfig()
    out, cache = attention_full(attn, u, config)
    assert_close(out, dense)
    assert cache.counts.shape == (2, CONFIG.num_heads, 4)
    assert (cache.counts == config.attn_columns(tokens)).all()
    assert float(jnp.abs(cache.residual).max()) > 1e-3  # A_S alone is not O ...
    assert_close(attention_sparse(attn, u, cache, config), dense, scale=10)  # ... A_S + R is

    every = ChipmunkConfig(attn_top_keys=1.0)
    _, cache = attention_full(attn, u, every)
    assert_close(attention_sparse(attn, later, cache, every), attn(later), scale=10)


@pytest.mark.parametrize("tokens, shared", [(64, False), (61, False), (61, True)])
def test_mlp_delta_is_exact_at_the_full_step_and_with_every_unit(model, key, tokens, shared):
    mlp = model.blocks[1].mlp
    u, later = block_inputs(key, tokens)
    config = ChipmunkConfig(mlp_shared_units=shared)
    out, cache = mlp_full(mlp, u, config)
    assert_close(out, mlp(u))
    # At the input it was cached on, any subset recomputes the same values.
    same, _, units = mlp_sparse(mlp, u, cache, config)
    assert units.shape == (2, 4, config.mlp_units(CONFIG.ffn_dim))
    assert_close(same, mlp(u), scale=10)
    out, new, units = mlp_sparse(mlp, later, cache, config)
    assert float(jnp.abs(out - mlp(later)).max()) > 0
    if shared:  # the delta from the full step: Y_full + (a(later) - a(u))[J] W2[J]
        j = units[0, 0]
        w2 = mlp.fc2.kernel[...][j]
        act = lambda x: jax.nn.gelu(mlp.fc1(x), approximate=True)[..., j]  # noqa: E731
        assert_close(out, mlp(u) + (act(later) - act(u)) @ w2, scale=10)
    else:  # partly updated, the cache stays consistent: out = hidden W2 + b2
        assert_close(out, mlp.fc2(new.hidden), scale=10)

    every = ChipmunkConfig(mlp_top_keys=1.0, mlp_shared_units=shared)
    _, cache = mlp_full(mlp, u, every)
    out, new, _ = mlp_sparse(mlp, later, cache, every)
    assert_close(out, mlp(later), scale=10)
    if not shared:
        assert_close(new.hidden, jax.nn.gelu(mlp.fc1(later), approximate=True), scale=10)


def test_deltas_are_per_sample_and_random_columns_are_added(model, key):
    block = model.blocks[2]
    u, later = block_inputs(key, 64)
    config = ChipmunkConfig(attn_random_keys=0.1, mlp_random_keys=0.05)
    ka, km = jax.random.split(key)
    _, cache = attention_full(block.attn, u, config, key=ka)
    assert (cache.counts == 16 + round(0.1 * 48)).all()
    assert all(len(np.unique(row)) == row.size for row in np.asarray(cache.indices).reshape(-1, 21))
    with pytest.raises(ValueError, match="key"):
        attention_full(block.attn, u, config)
    _, mcache = mlp_full(block.mlp, u, config)
    out, _, units = mlp_sparse(block.mlp, later, mcache, config, key=km)
    assert units.shape[-1] == 38 + round(0.05 * 90)
    # Without random columns, a batch is its samples one by one.
    plain = ChipmunkConfig()
    _, mcache = mlp_full(block.mlp, u, plain)
    batched, _, _ = mlp_sparse(block.mlp, later, mcache, plain)
    for i in range(2):
        _, one = mlp_full(block.mlp, u[i : i + 1], plain)
        assert_close(mlp_sparse(block.mlp, later[i : i + 1], one, plain)[0], batched[i : i + 1], scale=10)


# --- token reordering -------------------------------------------------------------------------------


def test_reorder_tokens_tiles_the_raster_grid():
    np.testing.assert_array_equal(
        reorder_tokens(4, 2), [0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15]
    )
    np.testing.assert_array_equal(reorder_tokens(5, 5), np.arange(25))
    np.testing.assert_array_equal(reorder_tokens(3, 1), np.arange(9))


@pytest.mark.parametrize("grid, tile", [(8, 4), (8, 2), (6, 3), (7, 7)])
def test_reordering_round_trip_is_exact(key, grid, tile):
    perm = reorder_tokens(grid, tile)
    assert sorted(perm) == list(range(grid * grid))
    x = random_normal(key, (2, grid * grid, 5))
    tiled = permute_tokens(x, perm)
    # Every tile is tile^2 consecutive tokens of one tile x tile patch.
    rows, cols = np.divmod(perm, grid)
    patch = (rows // tile) * (grid // tile) + cols // tile
    np.testing.assert_array_equal(patch, np.repeat(np.arange((grid // tile) ** 2), tile * tile))
    np.testing.assert_array_equal(permute_tokens(tiled, invert_permutation(perm)), x)


# --- validation -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field, value",
    [
        ("attn_top_keys", 0.0),
        ("attn_top_keys", 1.5),
        ("attn_random_keys", -0.1),
        ("block_q", 0),
        ("block_q", 2.0),
        ("mlp_top_keys", float("nan")),
        ("mlp_random_keys", 2.0),
        ("mlp_block_rows", 0),
        ("full_step_every", 0),
        ("first_full_steps", -1),
        ("first_dense_layers", -1),
        ("sparse_attn", 1),
        ("sparse_mlp", "yes"),
        ("mlp_shared_units", 1),
        ("reorder_patch", 0),
        ("attn_implementation", 3),
    ],
)
def test_bad_config_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        ChipmunkConfig(**{field: value})


@pytest.mark.parametrize("field, value", [("reorder_patch", 3), ("first_dense_layers", CONFIG.n_layers + 1)])
def test_config_that_does_not_fit_the_model_names_the_field(model, diffusion, field, value):
    config = dataclasses.replace(ChipmunkConfig(), **{field: value})
    with pytest.raises(ValueError, match=field):
        chipmunk_sample(model, LABELS, jax.random.key(0), diffusion=diffusion, config=config)


def test_bad_reorder_and_permutation_fail():
    with pytest.raises(ValueError, match="tile"):
        reorder_tokens(8, 3)
    with pytest.raises(ValueError, match="permutation"):
        invert_permutation([0, 0, 1])
