"""The fused Monarch kernel in interpret mode against its dense reference, forward and backward."""

# ruff: noqa: E741  (the m2 factor-shape letters k, q, p, l, s, r)

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jaxflash.pallas_kernels import monarch as mk

from jaxflash.testing import assert_close, assert_grads_close, kernel_implementation, random_normal

INTERPRET = kernel_implementation() == "pallas_interpret"
# Small chunks so that the r and p loops run more than once at test sizes.
SMALL = mk.MonarchConfig(block_rows=16, block_r=16, block_p=16)

# (w1 shape, w2 shape, rows, config): every case has l == q and r == k, >= 3 row blocks (with a
# padded tail where rows % 16 != 0) and >= 16 output blocks on the grid's second axis.
CASES = [
    ((16, 16, 16), (16, 16, 16), 40, mk.DEFAULT_CONFIG),  # square n = 256
    ((32, 16, 32), (16, 32, 32), 33, SMALL),  # n = 1024 -> m = 512; 2 r-chunks, 2 p-chunks
    ((16, 32, 16), (32, 16, 16), 48, SMALL),  # n = 256 -> m = 512
]
_POOL = 1 << 18


def _inputs(key, w1_shape, w2_shape, rows, dtype=jnp.float32):
    """x, w1, w2 cut from one fixed-size normal draw (threefry compiles once, not per 3-D shape)."""
    flat = np.asarray(random_normal(key, (_POOL,)))
    n = w1_shape[0] * w1_shape[2]
    out, start = [], 0
    for shape, scale in (((rows, n), 1.0), (w1_shape, w1_shape[2] ** -0.5), (w2_shape, w2_shape[2] ** -0.5)):
        size = int(np.prod(shape))
        out.append(jnp.asarray(scale * flat[start : start + size].reshape(shape), dtype))
        start += size
    return out


def _kernel(config):
    return lambda x, w1, w2: mk.monarch_matmul(x, w1, w2, interpret=INTERPRET, config=config)


@pytest.mark.parametrize(("w1_shape", "w2_shape", "rows", "config"), CASES)
def test_forward_matches_reference(key, w1_shape, w2_shape, rows, config):
    x, w1, w2 = _inputs(key, w1_shape, w2_shape, rows)
    y = _kernel(config)(x, w1, w2)
    assert y.shape == (rows, w2_shape[0] * w2_shape[1])
    assert_close(y, mk.reference(x, w1, w2), scale=4)


def test_reference_matches_m2_two_einsum_form(key):
    # m2 blockdiag_butterfly_multiply_reference(version=2), transcribed to float64 NumPy.
    w1_shape, w2_shape = (6, 4, 3), (8, 5, 3)
    x, w1, w2 = (np.asarray(a, np.float64) for a in _inputs(key, w1_shape, w2_shape, 7))
    k, q, p = w1_shape
    l, s, r = w2_shape
    out1 = np.einsum("kqp,bkp->bkq", w1, x.reshape(7, k, p)).reshape(7, r, l).transpose(0, 2, 1)
    expected = np.einsum("lsr,blr->bsl", w2, out1).reshape(7, s * l)
    assert_close(mk.reference(*(jnp.asarray(a, jnp.float32) for a in (x, w1, w2))), expected, scale=4)


def test_bf16_matches_f32_reference(key):
    x, w1, w2 = _inputs(key, *CASES[0][:3])
    y = _kernel(mk.DEFAULT_CONFIG)(*(a.astype(jnp.bfloat16) for a in (x, w1, w2)))
    assert y.dtype == jnp.bfloat16
    assert_close(y, mk.reference(x, w1, w2), dtype=jnp.bfloat16, scale=2)


@pytest.mark.parametrize(("w1_shape", "w2_shape", "rows", "config"), [CASES[0], CASES[1]])
def test_gradients_match_reference_autodiff(key, w1_shape, w2_shape, rows, config):
    kx, kc = jax.random.split(key)
    x, w1, w2 = _inputs(kx, w1_shape, w2_shape, rows)
    # Reductions over the batch (dw1, dw2) run over `rows` terms of unit scale.
    assert_grads_close(_kernel(config), mk.reference, (x, w1, w2), key=kc, scale=8)


def test_jit_matches_eager(key):
    x, w1, w2 = _inputs(key, *CASES[0][:3])
    f = _kernel(mk.DEFAULT_CONFIG)
    assert_close(jax.jit(f)(x, w1, w2), f(x, w1, w2), atol=0, rtol=0)


def test_unsupported_shapes_raise_not_implemented(key):
    # l != q: the mid permutation is not a transpose of the block grid.
    x, w1, w2 = _inputs(key, (16, 32, 16), (16, 32, 32), 16)
    with pytest.raises(NotImplementedError, match="l == q and r == k"):
        mk.monarch_matmul(x, w1, w2, interpret=INTERPRET)
    # Blocks below Triton's 16-wide dot.
    x, w1, w2 = _inputs(key, (8, 8, 8), (8, 8, 8), 16)
    with pytest.raises(NotImplementedError, match="power of two >= 16; got k=8"):
        mk.monarch_matmul(x, w1, w2, interpret=INTERPRET)


def test_bad_arguments_raise_value_errors(key):
    x, w1, w2 = _inputs(key, *CASES[0][:3])
    with pytest.raises(ValueError, match="block_r must be a power of two >= 16"):
        mk.monarch_matmul(x, w1, w2, interpret=INTERPRET, config=mk.MonarchConfig(block_r=8))
    with pytest.raises(ValueError, match=r"shapes do not compose"):
        mk.monarch_matmul(x[:, :100], w1, w2, interpret=INTERPRET)
    with pytest.raises(ValueError, match="share a dtype"):
        mk.monarch_matmul(x.astype(jnp.bfloat16), w1, w2, interpret=INTERPRET)
    with pytest.raises(ValueError, match=r"\(batch, n\)"):
        mk.monarch_matmul(x[None], w1, w2, interpret=INTERPRET)
