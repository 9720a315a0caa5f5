"""Monarch test cases shared by the tests, the bench and the GPU check: random factors, the float64
two-product form of m2, and the check of an implementation's output and gradients against the dense
reference."""

# ruff: noqa: E741  (the m2 factor-shape letters k, q, p, l, s, r)

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import jaxflash
from jaxflash.testing import assert_close, random_normal, tolerance

# Size of the one normal draw that pooled_normals cuts its arrays from.
_POOL = 1 << 20


def pooled_normals(key: jax.Array, *shapes: Sequence[int], dtype: Any = jnp.float32) -> list[jax.Array]:
    """Independent standard normals of the given shapes (at most ``2**20`` values in all), cut from one
    draw of a fixed size: the sampler compiles once per session, not once per shape."""
    flat = np.asarray(random_normal(key, (_POOL,)))
    out, start = [], 0
    for shape in shapes:
        size = math.prod(shape)
        if start + size > _POOL:
            raise ValueError(f"pooled_normals draws at most {_POOL} values; {shapes=} need more")
        out.append(jnp.asarray(flat[start : start + size].reshape(shape), dtype))
        start += size
    return out


def random_factors(
    key: jax.Array, w1_shape: Sequence[int], w2_shape: Sequence[int], dtype: Any = jnp.float32
) -> tuple[jax.Array, jax.Array]:
    """Random factors scaled by 1/sqrt(block fan-in), so products of unit-scale inputs are of unit scale."""
    w1, w2 = pooled_normals(key, w1_shape, w2_shape)
    return (w1 * w1_shape[2] ** -0.5).astype(dtype), (w2 * w2_shape[2] ** -0.5).astype(dtype)


def square_factors(d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Float32 NumPy factors of the square Monarch of size ``d`` (``sqrt(d)`` blocks), drawn like the
    layer's init: U(+-1/sqrt(block fan-in))."""
    b = math.isqrt(d)
    rng = np.random.default_rng(seed)
    bound = b**-0.5
    w1 = rng.uniform(-bound, bound, (b, b, b)).astype(np.float32)
    w2 = rng.uniform(-bound, bound, (b, b, b)).astype(np.float32)
    return w1, w2


def float64_monarch(x: np.ndarray, w1: np.ndarray, w2: np.ndarray) -> np.ndarray:
    """``x @ M.T`` by m2's two-product form in float64 NumPy (its ``torch.bmm`` path, block index
    leading), independent of jaxflash's code."""
    k, q, p = w1.shape
    l, s, r = w2.shape
    x3 = np.asarray(x, np.float64).reshape(-1, k, p).transpose(1, 0, 2)
    h = np.matmul(x3, np.asarray(w1, np.float64).transpose(0, 2, 1))  # (k, B, q)
    h = h.transpose(1, 0, 2).reshape(-1, r, l).transpose(2, 0, 1)  # (l, B, r)
    z = np.matmul(h, np.asarray(w2, np.float64).transpose(0, 2, 1))  # (l, B, s)
    return z.transpose(1, 2, 0).reshape(-1, s * l)


def check_against_reference(
    w1_shape: tuple[int, int, int],
    w2_shape: tuple[int, int, int],
    rows: int,
    dtype: str,
    *,
    grads: bool,
    implementation: str = "pallas",
    config: Any = None,
) -> dict[str, Any]:
    """``jaxflash.monarch_matmul(implementation=...)`` in ``dtype`` against the f32 dense reference,
    forward and (with ``grads``) the three gradients; returns the errors, raises AssertionError."""
    dtype = jnp.dtype(dtype)
    keys = jax.random.split(jax.random.key(0), 4)
    n = w1_shape[0] * w1_shape[2]
    x = random_normal(keys[0], (rows, n))
    w1, w2 = (
        random_normal(kk, shape) * shape[2] ** -0.5
        for kk, shape in ((keys[1], w1_shape), (keys[2], w2_shape))
    )

    def candidate(x, w1, w2):
        return jaxflash.monarch_matmul(x, w1, w2, implementation=implementation, config=config)

    def reference(x, w1, w2):
        return jaxflash.monarch_matmul(x, w1, w2, implementation="reference")

    # f32 runs with IEEE dots; each output sums p + r unit-scale products, hence the scale.
    scale = 8.0 if dtype == jnp.float32 else 2.0
    tol = tolerance(dtype, scale=scale)
    args = tuple(a.astype(dtype) for a in (x, w1, w2))
    expected = jax.jit(reference)(x, w1, w2)
    actual = jax.jit(candidate)(*args)
    assert_close(actual, expected, dtype=dtype, scale=scale, err_msg="forward")
    err = float(jnp.max(jnp.abs(actual.astype(jnp.float32) - expected)))
    out = {"max_abs_err": err, "atol": tol["atol"], "rtol": tol["rtol"]}
    if grads:
        ct = random_normal(keys[3], expected.shape)
        _, vjp = jax.vjp(candidate, *args)
        _, ref_vjp = jax.vjp(reference, x, w1, w2)
        # Weight gradients sum over `rows` terms of unit scale.
        g_scale = scale * math.sqrt(rows) / 4
        grads = jax.jit(vjp)(ct.astype(dtype))
        for name, g, rg in zip(("dx", "dw1", "dw2"), grads, ref_vjp(ct), strict=True):
            assert_close(g, rg, dtype=dtype, scale=g_scale, err_msg=name)
            out[f"{name}_max_abs_err"] = float(jnp.max(jnp.abs(g.astype(jnp.float32) - rg)))
    return out
