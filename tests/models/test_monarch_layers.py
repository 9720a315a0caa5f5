"""MonarchLinear and BlockDiagLinear: shapes, the papers' initializations, equivalence with dense."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jaxflash.models import BlockDiagLinear, MonarchLinear

from jaxflash import monarch
from jaxflash.testing import assert_close, random_normal


def _x(key, batch, n):
    # 2-D draws only: threefry compiles per shape, and 3-D shapes take seconds on a loaded CPU.
    return random_normal(key, (int(np.prod(batch)), n)).reshape(*batch, n)


def _dense_forward(layer, x):
    return np.asarray(x, np.float64) @ np.asarray(layer.dense(), np.float64).T + np.asarray(layer.bias[...])


@pytest.mark.parametrize(
    ("n", "m", "nblocks", "batch"), [(64, 64, None, (5,)), (32, 64, 4, (2, 3)), (48, 24, 4, ())]
)
def test_monarch_linear_shapes_and_dense_equivalence(key, n, m, nblocks, batch):
    layer = MonarchLinear(n, m, nblocks=nblocks, rngs=nnx.Rngs(key))
    (k, q, p), (l_, s, r) = monarch.monarch_shapes(n, m, layer.nblocks)
    assert layer.w1.shape == (k, q, p) and layer.w2.shape == (l_, s, r) and layer.bias.shape == (m,)
    assert layer.w1.dtype == jnp.float32
    x = _x(jax.random.fold_in(key, 1), batch, n)
    y = layer(x)
    assert y.shape == (*batch, m)
    expected = _dense_forward(layer, x)
    assert_close(y, expected, scale=4)


def test_monarch_linear_default_nblocks_is_sqrt_and_bad_sizes_raise():
    assert MonarchLinear(256, 256, rngs=nnx.Rngs(0)).nblocks == 16
    with pytest.raises(ValueError, match="sqrt"):
        MonarchLinear(48, 48, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="nblocks=5 must divide"):
        MonarchLinear(64, 64, nblocks=5, rngs=nnx.Rngs(0))


def test_monarch_linear_init_statistics(key):
    # fly MonarchLinear: each factor U(+-1/sqrt(block fan-in)); bias U(+-1/sqrt(out_features)).
    layer = MonarchLinear(1024, 1024, rngs=nnx.Rngs(key))
    for w in (layer.w1[...], layer.w2[...]):
        bound = w.shape[2] ** -0.5
        assert float(jnp.max(jnp.abs(w))) <= bound
        np.testing.assert_allclose(float(jnp.std(w)), bound / np.sqrt(3), rtol=0.02)
        assert abs(float(jnp.mean(w))) < 0.02 * bound
    assert float(jnp.max(jnp.abs(layer.bias[...]))) <= 1024**-0.5
    # Output variance for unit inputs: each factor scales variance by fan_in * bound^2 / 3 = 1/3.
    layer_nb = MonarchLinear(1024, 1024, use_bias=False, rngs=nnx.Rngs(key))
    y = layer_nb(random_normal(jax.random.fold_in(key, 1), (256, 1024)))
    np.testing.assert_allclose(float(jnp.var(y)), 1 / 9, rtol=0.1)


def test_monarch_linear_dense_init_keeps_the_dense_scale(key):
    init = nnx.initializers.lecun_normal()
    layer = MonarchLinear(256, 256, dense_init=init, use_bias=False, rngs=nnx.Rngs(key))
    dense_draw = init(jax.random.key(0), (256, 256), jnp.float32)
    # A Monarch projection rescaled to the draw's norm: ||M||_F matches a dense draw's (~sqrt(n)).
    norms = float(jnp.linalg.norm(layer.dense())), float(jnp.linalg.norm(dense_draw))
    np.testing.assert_allclose(*norms, rtol=0.05)
    y = layer(random_normal(jax.random.fold_in(key, 1), (256, 256)))
    np.testing.assert_allclose(float(jnp.var(y)), 1.0, rtol=0.25)  # lecun_normal: unit output variance


def test_monarch_linear_from_dense_is_exact_for_monarch_kernels(key):
    src = MonarchLinear(64, 32, nblocks=4, rngs=nnx.Rngs(key))
    kernel = src.dense().T  # (in, out), the nnx.Linear layout
    layer = MonarchLinear.from_dense(kernel, src.bias[...], nblocks=4)
    x = random_normal(jax.random.fold_in(key, 1), (3, 64))
    assert_close(layer(x), src(x), scale=10)


def test_monarch_linear_compute_dtype_and_gradients(key):
    layer = MonarchLinear(256, 256, dtype=jnp.bfloat16, rngs=nnx.Rngs(key))
    x = random_normal(jax.random.fold_in(key, 1), (4, 256))
    y = layer(x)
    assert y.dtype == jnp.bfloat16 and layer.w1.dtype == jnp.float32
    ref = x @ layer.dense().T + layer.bias[...]
    assert_close(y, ref, dtype=jnp.bfloat16, scale=2)

    grads = nnx.grad(lambda m, x: jnp.sum(m(x).astype(jnp.float32) ** 2))(layer, x)
    assert grads.w1.shape == layer.w1.shape and grads.w1.dtype == jnp.float32
    assert float(jnp.abs(grads.w2[...]).max()) > 0


def test_block_diag_linear_shapes_init_and_dense_equivalence(key):
    layer = BlockDiagLinear(512, 1024, nblocks=4, rngs=nnx.Rngs(key))
    assert layer.w.shape == (4, 256, 128) and layer.bias.shape == (1024,)
    # m2 BlockdiagLinear: a dense kaiming-uniform draw times sqrt(nblocks) = U(+-1/sqrt(in/nblocks)).
    bound = 128**-0.5
    w = layer.w[...]
    assert float(jnp.max(jnp.abs(w))) <= bound * (1 + 1e-6)
    np.testing.assert_allclose(float(jnp.std(w)), bound / np.sqrt(3), rtol=0.02)
    x = _x(jax.random.fold_in(key, 1), (2, 3), 512)
    y = layer(x)
    assert y.shape == (2, 3, 1024)
    expected = _dense_forward(layer, x)
    assert_close(y, expected, scale=4)


def test_block_diag_linear_dense_init_takes_first_block_row(key):
    init = nnx.initializers.normal(1.0)
    layer = BlockDiagLinear(8, 12, nblocks=2, use_bias=False, dense_init=init, rngs=nnx.Rngs(key))
    dense = init(nnx.Rngs(key).params(), (8, 12), jnp.float32).T * np.sqrt(2)  # (out, in)
    assert_close(layer.w[...][0], dense[:6, :4])
    assert_close(layer.w[...][1], dense[:6, 4:])
    with pytest.raises(ValueError, match="nblocks=3 must be positive and divide"):
        BlockDiagLinear(8, 12, nblocks=3, rngs=nnx.Rngs(0))
