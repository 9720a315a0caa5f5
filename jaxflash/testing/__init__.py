"""Shared numerics for tests and the GPU check: random inputs, per-dtype tolerances, comparisons.

Every comparison is made in float64 NumPy against a reference computed in float32 (or float64 where
the op allows), so a failure message reports the true error of the candidate, not of the reference.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxflash.utils import current_platform

# Absolute and relative tolerances of an op run in each dtype against an f32/f64 reference, for
# outputs of unit scale. Ops with long reductions scale these up in their own tests, saying why.
TOLERANCES: dict[Any, dict[str, float]] = {
    np.dtype(np.float64): dict(atol=1e-10, rtol=1e-10),
    np.dtype(np.float32): dict(atol=1e-5, rtol=1e-5),
    np.dtype(jnp.bfloat16): dict(atol=2e-2, rtol=2e-2),
    np.dtype(np.float16): dict(atol=5e-3, rtol=5e-3),
}


def tolerance(dtype: Any, *, scale: float = 1.0) -> dict[str, float]:
    """``dict(atol=..., rtol=...)`` for ``dtype``, multiplied by ``scale``."""
    try:
        tol = TOLERANCES[np.dtype(dtype)]
    except KeyError as e:
        raise ValueError(f"no tolerance is defined for {dtype=}; known: {list(TOLERANCES)}") from e
    return {k: v * scale for k, v in tol.items()}


def random_normal(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32, scale: float = 1.0):
    """Standard normal values (times ``scale``) drawn in f32 and cast, so every dtype sees one sample.

    Drawn flat and reshaped: on CPU, compiling the sampler for a rank-3 or higher shape costs seconds.
    """
    flat = jax.random.normal(key, (math.prod(shape),), jnp.float32)
    return (scale * flat.reshape(tuple(shape))).astype(dtype)


def assert_close(
    actual: Any,
    expected: Any,
    *,
    dtype: Any = None,
    atol: float | None = None,
    rtol: float | None = None,
    scale: float = 1.0,
    err_msg: str = "",
) -> None:
    """Asserts two pytrees of arrays agree within the tolerance of ``dtype``.

    ``dtype`` defaults to each leaf of ``actual``'s dtype; ``atol``/``rtol`` override the table.
    The message gives the largest absolute error, where it occurs and how many elements fail.
    """
    leaves_a, tree_a = jax.tree.flatten(actual)
    leaves_e, tree_e = jax.tree.flatten(expected)
    if tree_a != tree_e:
        raise AssertionError(f"tree structures differ: {tree_a} vs {tree_e}. {err_msg}")
    for i, (a, e) in enumerate(zip(leaves_a, leaves_e, strict=True)):
        tol = tolerance(dtype if dtype is not None else np.asarray(a).dtype, scale=scale)
        a_tol = tol["atol"] if atol is None else atol
        r_tol = tol["rtol"] if rtol is None else rtol
        a64 = np.asarray(jnp.asarray(a, jnp.float32) if _is_low_precision(a) else a, np.float64)
        e64 = np.asarray(jnp.asarray(e, jnp.float32) if _is_low_precision(e) else e, np.float64)
        if a64.shape != e64.shape:
            raise AssertionError(f"leaf {i}: shapes differ {a64.shape} vs {e64.shape}. {err_msg}")
        if not np.array_equal(np.isnan(a64), np.isnan(e64)):
            raise AssertionError(
                f"leaf {i}: NaN in different places ({int(np.isnan(a64).sum())} in actual, "
                f"{int(np.isnan(e64).sum())} in expected). {err_msg}"
            )
        err = np.abs(np.nan_to_num(a64) - np.nan_to_num(e64))
        bad = err > a_tol + r_tol * np.abs(np.nan_to_num(e64))
        if bad.any():
            where = tuple(int(i) for i in np.unravel_index(int(np.argmax(err)), err.shape))
            raise AssertionError(
                f"leaf {i}: {int(bad.sum())} of {bad.size} elements differ beyond atol={a_tol:g}, "
                f"rtol={r_tol:g}; max abs error {err.max():.3g} at {where} "
                f"(actual {a64[where]:.6g}, expected {e64[where]:.6g}). {err_msg}"
            )


def assert_grads_close(
    fn: Callable[..., Any],
    reference: Callable[..., Any],
    args: Sequence[Any],
    *,
    key: jax.Array,
    argnums: Sequence[int] | None = None,
    dtype: Any = None,
    scale: float = 1.0,
    atol: float | None = None,
    rtol: float | None = None,
) -> None:
    """Asserts ``fn``'s VJP matches ``reference``'s autodiff VJP under one random cotangent.

    Both are differentiated with respect to ``args[i]`` for ``i`` in ``argnums`` (default: all). The
    reference is run on the same arguments; pass a reference that upcasts internally when ``fn``
    runs in low precision. Gradient tolerances default to twice the dtype's forward tolerance.
    """
    argnums = tuple(range(len(args))) if argnums is None else tuple(argnums)

    def partial(f):
        def g(*diff):
            full = list(args)
            for i, d in zip(argnums, diff, strict=True):
                full[i] = d
            return f(*full)

        return g

    diff_args = [args[i] for i in argnums]
    out, vjp = jax.vjp(partial(fn), *diff_args)
    ref_out, ref_vjp = jax.vjp(partial(reference), *diff_args)
    cot_leaves = [
        random_normal(k, np.shape(leaf), np.asarray(leaf).dtype)
        for k, leaf in zip(
            jax.random.split(key, len(jax.tree.leaves(out))), jax.tree.leaves(out), strict=True
        )
    ]
    cot = jax.tree.unflatten(jax.tree.structure(out), cot_leaves)
    ref_cot = jax.tree.map(lambda c, r: c.astype(np.asarray(r).dtype), cot, ref_out)
    for i, (g, rg) in enumerate(zip(vjp(cot), ref_vjp(ref_cot), strict=True)):
        assert_close(
            g,
            rg,
            dtype=dtype,
            scale=2.0 * scale,
            atol=atol,
            rtol=rtol,
            err_msg=f"gradient with respect to argument {argnums[i]}",
        )


def kernel_implementation() -> str:
    """``"pallas"`` where kernels compile (GPU, TPU), else ``"pallas_interpret"``."""
    return "pallas" if current_platform() in ("gpu", "tpu") else "pallas_interpret"


def _is_low_precision(x: Any) -> bool:
    return np.asarray(x).dtype in (np.dtype(jnp.bfloat16), np.dtype(np.float16))
