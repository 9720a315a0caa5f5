"""The fused Monarch kernel in interpret mode (compiled on GPU), through jaxflash.monarch_matmul with its
MonarchConfig, against the dense reference, forward and backward."""

# ruff: noqa: E741  (the m2 factor-shape letters k, q, p, l, s, r)

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jaxflash.pallas_kernels import monarch as mk

import jaxflash
from jaxflash.ops.monarch import MonarchConfig, reference
from jaxflash.testing import assert_close, assert_grads_close, kernel_implementation
from jaxflash.testing.monarch import check_against_reference, pooled_normals

IMPL = kernel_implementation()
# Small chunks so that the r and p loops run more than once at test sizes.
SMALL = MonarchConfig(block_rows=16, block_r=16, block_p=16)

# (w1 shape, w2 shape, rows, config): every case has l == q and r == k, >= 3 row blocks (with a
# padded tail where rows % 16 != 0) and >= 16 output blocks on the grid's second axis.
CASES = [
    ((16, 16, 16), (16, 16, 16), 40, None),  # square n = 256, default config
    ((32, 16, 32), (16, 32, 32), 33, SMALL),  # n = 1024 -> m = 512; 2 r-chunks, 2 p-chunks
    ((16, 32, 16), (32, 16, 16), 48, SMALL),  # n = 256 -> m = 512
]


def _inputs(key, w1_shape, w2_shape, rows, dtype=jnp.float32):
    """x of unit scale, factors scaled by 1/sqrt(block fan-in)."""
    x, w1, w2 = pooled_normals(key, (rows, w1_shape[0] * w1_shape[2]), w1_shape, w2_shape)
    return x.astype(dtype), (w1 * w1_shape[2] ** -0.5).astype(dtype), (w2 * w2_shape[2] ** -0.5).astype(dtype)


def _kernel(config):
    return lambda x, w1, w2: jaxflash.monarch_matmul(x, w1, w2, implementation=IMPL, config=config)


@pytest.mark.parametrize(("w1_shape", "w2_shape", "rows", "config"), CASES)
def test_forward_matches_reference(key, w1_shape, w2_shape, rows, config):
    x, w1, w2 = _inputs(key, w1_shape, w2_shape, rows)
    y = _kernel(config)(x, w1, w2)
    assert y.shape == (rows, w2_shape[0] * w2_shape[1])
    assert_close(y, reference(x, w1, w2), scale=4)


def test_reference_matches_m2_two_einsum_form(key):
    # m2 blockdiag_butterfly_multiply_reference(version=2), transcribed to float64 NumPy.
    w1_shape, w2_shape = (6, 4, 3), (8, 5, 3)
    x, w1, w2 = (np.asarray(a, np.float64) for a in _inputs(key, w1_shape, w2_shape, 7))
    k, q, p = w1_shape
    l, s, r = w2_shape
    out1 = np.einsum("kqp,bkp->bkq", w1, x.reshape(7, k, p)).reshape(7, r, l).transpose(0, 2, 1)
    expected = np.einsum("lsr,blr->bsl", w2, out1).reshape(7, s * l)
    assert_close(reference(*(jnp.asarray(a, jnp.float32) for a in (x, w1, w2))), expected, scale=4)


def test_bf16_matches_f32_reference(key):
    x, w1, w2 = _inputs(key, *CASES[0][:3])
    y = _kernel(None)(*(a.astype(jnp.bfloat16) for a in (x, w1, w2)))
    assert y.dtype == jnp.bfloat16
    assert_close(y, reference(x, w1, w2), dtype=jnp.bfloat16, scale=2)


@pytest.mark.parametrize(("w1_shape", "w2_shape", "rows", "config"), [CASES[0], CASES[1]])
def test_gradients_match_reference_autodiff(key, w1_shape, w2_shape, rows, config):
    kx, kc = jax.random.split(key)
    x, w1, w2 = _inputs(kx, w1_shape, w2_shape, rows)
    # Reductions over the batch (dw1, dw2) run over `rows` terms of unit scale.
    assert_grads_close(_kernel(config), reference, (x, w1, w2), key=kc, scale=8)


def test_jit_matches_eager(key):
    x, w1, w2 = _inputs(key, *CASES[0][:3])
    f = _kernel(None)
    assert_close(jax.jit(f)(x, w1, w2), f(x, w1, w2), atol=0, rtol=0)


def test_unsupported_shapes_raise_not_implemented(key):
    # l != q: the mid permutation is not a transpose of the block grid.
    x, w1, w2 = _inputs(key, (16, 32, 16), (16, 32, 32), 16)
    with pytest.raises(NotImplementedError, match="l == q and r == k"):
        _kernel(None)(x, w1, w2)
    # Blocks below Triton's 16-wide dot.
    x, w1, w2 = _inputs(key, (8, 8, 8), (8, 8, 8), 16)
    with pytest.raises(NotImplementedError, match="power of two >= 16; got k=8"):
        _kernel(None)(x, w1, w2)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(block_r=8), "block_r must be a power of two >= 16"),
        (dict(block_rows=24), "block_rows must be a power of two >= 16"),
        (dict(block_p=12), "block_p must be a power of two"),
        (dict(num_warps=0), "num_warps must be a positive integer"),
        (dict(num_stages=2.0), "num_stages must be a positive integer"),
    ],
)
def test_config_validates_its_fields(kwargs, match):
    with pytest.raises(ValueError, match=f"MonarchConfig.{match}"):
        MonarchConfig(**kwargs)


def test_kernel_checks_what_it_needs(key):
    """The kernel's own entry point, called without the op's validation and promotion."""
    x, w1, w2 = _inputs(key, *CASES[0][:3])
    interpret = IMPL == "pallas_interpret"
    with pytest.raises(ValueError, match=r"shapes do not compose"):
        mk.monarch_matmul(x[:, :100], w1, w2, interpret=interpret)
    with pytest.raises(ValueError, match="share a dtype"):
        mk.monarch_matmul(x.astype(jnp.bfloat16), w1, w2, interpret=interpret)
    with pytest.raises(ValueError, match=r"\(batch, n\)"):
        mk.monarch_matmul(x[None], w1, w2, interpret=interpret)


def test_gpu_check_logic_in_interpret_mode():
    """The `make gpu-check` comparison (compiled kernel vs reference) run here on the interpreter."""
    from jaxflash.bench import monarch as bench

    report = check_against_reference(
        (16, 16, 16), (16, 16, 16), 48, "float32", grads=True, implementation=IMPL, config=SMALL
    )
    assert {"max_abs_err", "dx_max_abs_err", "dw1_max_abs_err", "dw2_max_abs_err"} <= set(report)
    assert len(bench.GPU_CHECKS) == 5
