"""jaxflash.quant.matmul.quantized_matmul: the W4 kernel (interpret mode; compiled on GPU) and the XLA
path against the dequantize-then-dot reference for int4, MXFP4 and NVFP4; bf16 inputs; jit vs eager;
batch dimensions; bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxflash.quant import dequantize, quantize
from jaxflash.quant.matmul import QuantMatmulConfig, quantized_matmul, reference
from jaxflash.testing import assert_close, kernel_implementation, random_normal

IMPL = kernel_implementation()

# (format, block_size, M, K, N, config). Every case has odd M = 7 and N = 48. The small configs give
# 2 tiles along M, 3 along N and 3 K chunks; K is no multiple of the block where the format allows
# (int4 150 -> 192 in groups of 64; mxfp4 80 -> 96; nvfp4 80 -> 96 chunks of 32, 5 blocks of 16).
CASES = [
    ("int4", None, 7, 150, 48, QuantMatmulConfig(block_m=4, block_n=16, block_k=64)),
    ("int4", 16, 7, 90, 48, QuantMatmulConfig(block_m=4, block_n=16, block_k=32)),
    ("mxfp4", None, 7, 80, 48, QuantMatmulConfig(block_m=4, block_n=16, block_k=32)),
    ("nvfp4", None, 7, 80, 48, QuantMatmulConfig(block_m=4, block_n=16, block_k=32)),
    ("mxfp4", None, 7, 80, 48, None),  # the default tiles: one tile along each axis, 2 K chunks
    ("nvfp4", None, 7, 80, 48, None),
]
IDS = [f"{c[0]}-bs{c[1]}-K{c[3]}-{'small' if c[5] else 'default'}" for c in CASES]


def _inputs(key, fmt, block_size, m, k, n, dtype=jnp.float32):
    """x of unit scale and W scaled by 1/sqrt(K), so that the output is of unit scale."""
    kx, kw = jax.random.split(key)
    x = random_normal(kx, (m, k), dtype)
    w = quantize(random_normal(kw, (k, n), scale=k**-0.5), fmt, axis=0, block_size=block_size)
    return x, w


@pytest.mark.parametrize(("fmt", "block_size", "m", "k", "n", "config"), CASES, ids=IDS)
def test_kernel_matches_reference(key, fmt, block_size, m, k, n, config):
    x, w = _inputs(key, fmt, block_size, m, k, n)
    y = quantized_matmul(x, w, implementation=IMPL, config=config)
    assert y.shape == (m, n) and y.dtype == jnp.float32
    # f32 sums of K unit-scale terms in another order: a few ulps of the unit-scale output.
    assert_close(y, quantized_matmul(x, w, implementation="reference"), scale=2)


@pytest.mark.parametrize("fmt", ["int4", "mxfp4", "nvfp4"])
def test_xla_and_reference_match_dequantized_float64_product(key, fmt):
    x, w = _inputs(key, fmt, None, 7, 80, 48)
    expected = np.asarray(x, np.float64) @ np.asarray(dequantize(w, jnp.float32), np.float64)
    for implementation in ("xla", "reference"):
        assert_close(quantized_matmul(x, w, implementation=implementation), expected, scale=2)


@pytest.mark.parametrize("fmt", ["int4", "nvfp4"])
def test_bf16_input_matches_f32_reference(key, fmt):
    # The kernel rounds the decoded weight to bf16 for the dot (exact for the FP4 formats' E2M1 x scale;
    # an int4 q / scale + min loses bits) and the f32 result to bf16: the bf16 tolerance, twice.
    x, w = _inputs(key, fmt, 16, 7, 80, 48, jnp.bfloat16)
    y = quantized_matmul(x, w, implementation=IMPL, config=CASES[3][5])
    assert y.dtype == jnp.bfloat16
    assert_close(y, reference(x.astype(jnp.float32), w), dtype=jnp.bfloat16, scale=2)


def test_jit_matches_eager(key):
    x, w = _inputs(key, "mxfp4", None, 7, 80, 48)
    f = lambda x, w: quantized_matmul(x, w, implementation=IMPL, config=CASES[2][5])  # noqa: E731
    assert_close(jax.jit(f)(x, w), f(x, w), atol=0, rtol=0)


def test_leading_batch_dimensions(key):
    x, w = _inputs(key, "nvfp4", None, 6, 80, 48)
    y = quantized_matmul(x.reshape(2, 3, 80), w, implementation="xla")
    assert y.shape == (2, 3, 48)
    assert_close(y.reshape(6, 48), quantized_matmul(x, w, implementation="xla"), atol=0, rtol=0)
    assert quantized_matmul(jnp.zeros((0, 80)), w).shape == (0, 48)


def test_default_on_cpu_is_xla_and_pallas_refuses(key):
    x, w = _inputs(key, "mxfp4", None, 7, 80, 48)
    assert_close(quantized_matmul(x, w), quantized_matmul(x, w, implementation="xla"), atol=0, rtol=0)
    if IMPL == "pallas_interpret":
        with pytest.raises(NotImplementedError, match="gpu"):
            quantized_matmul(x, w, implementation="pallas")


def test_bad_input_raises(key):
    x, w = _inputs(key, "mxfp4", None, 7, 80, 48)
    weight = random_normal(key, (80, 48))
    with pytest.raises(ValueError, match="QuantizedArray"):
        quantized_matmul(x, weight)
    with pytest.raises(ValueError, match="axis 0"):
        quantized_matmul(x, quantize(weight, "mxfp4", axis=1))
    with pytest.raises(ValueError, match="axis 0"):
        quantized_matmul(x, quantize(random_normal(key, (80, 4, 12)), "mxfp4", axis=0))
    with pytest.raises(ValueError, match="K=80"):
        quantized_matmul(x[:, :64], w)
    with pytest.raises(ValueError, match="floating-point"):
        quantized_matmul(jnp.ones((7, 80), jnp.int32), w)
    with pytest.raises(ValueError, match="multiple of the weight's block size 32"):
        quantized_matmul(x, w, implementation="pallas_interpret", config=QuantMatmulConfig(block_k=48))
    with pytest.raises(ValueError, match="block_m"):
        QuantMatmulConfig(block_m=0)
