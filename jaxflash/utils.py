"""Leaf utilities every layer shares: the platform query, grid arithmetic, matmul precision, zero
cotangents, the memory budget that size checks compare against, and value checks that work eagerly
and under ``jit``.

This module imports nothing of jaxflash, so kernels, ops, models and tests can all use it without
knowing of one another.

Value checks. A check on the *values* of an argument (token ids in range, non-negative lengths) raises
``ValueError`` at once when the values are concrete (eager calls). Under ``jit`` the values are tracers
and nothing can be raised while tracing, so such checks are skipped by default; turn them into
``jax.experimental.checkify`` checks with ``JAXFLASH_VALUE_CHECKS=1`` or ``with
jaxflash.utils.value_checks():`` and run the jitted function under ``checkify.checkify`` to see them::

    with jaxflash.utils.value_checks():
        err, out = checkify.checkify(jax.jit(f))(x)
    err.throw()

The setting is read while tracing: a function jitted and traced before keeps the trace it has.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import os
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

VALUE_CHECKS_ENV_VAR = "JAXFLASH_VALUE_CHECKS"
_value_checks_override: list[bool] = []


def current_platform() -> str:
    """The platform jit compiles for by default: ``"cpu"``, ``"gpu"`` or ``"tpu"``."""
    platform = jax.default_backend()
    return "gpu" if platform in ("cuda", "rocm") else platform


def cdiv(a: int, b: int) -> int:
    """Ceiling division, for grid sizes over ragged lengths."""
    return -(-a // b)


def next_pow2(n: int) -> int:
    """The smallest power of two ``>= n`` (1 for ``n <= 1``)."""
    return 1 << max(0, n - 1).bit_length()


def is_int(value: Any) -> bool:
    """An integer (Python or NumPy), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_int(name: str, value: Any, *, minimum: int = 1, power_of_two: bool = False) -> int:
    """``value`` as an int, or a ``ValueError`` naming ``name``: an integer (not a bool) ``>= minimum``,
    and a power of two when asked (tile sizes, block dimensions)."""
    ok = is_int(value) and value >= minimum and (not power_of_two or value & (value - 1) == 0)
    if not ok:
        if power_of_two:
            want = f"a power of two >= {minimum}"
        elif minimum == 1:
            want = "a positive integer"
        else:
            want = f"an integer >= {minimum}"
        raise ValueError(f"{name} must be {want}; got {value!r}")
    return int(value)


def check_real(
    name: str,
    value: Any,
    *,
    above: float | None = None,
    at_least: float | None = None,
    below: float | None = None,
    at_most: float | None = None,
) -> float:
    """``value`` as a float, or a ``ValueError`` naming ``name``: a finite real number (not a bool) within
    the bounds given (``above`` / ``below`` exclusive, ``at_least`` / ``at_most`` inclusive). NaN fails
    every bound, since each is checked in its positive form."""
    real = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    ok = (
        real
        and (above is None or value > above)
        and (at_least is None or value >= at_least)
        and (below is None or value < below)
        and (at_most is None or value <= at_most)
    )
    if not ok:
        bounds = [
            f"{op} {bound}"
            for op, bound in ((">", above), (">=", at_least), ("<", below), ("<=", at_most))
            if bound is not None
        ]
        raise ValueError(
            f"{name} must be a finite number{' ' + ' and '.join(bounds) if bounds else ''}; got {value!r}"
        )
    return float(value)


def true_span(mask: Any) -> tuple[Any, Any]:
    """First and one-past-last True entry along the last axis (``0, 0`` where there is none): the loop
    bounds over the live tiles of a row. NumPy in, NumPy out (bounds fold at trace time); JAX in, JAX out.
    """
    xp = np if isinstance(mask, np.ndarray) else jnp
    n = mask.shape[-1]
    any_true = mask.any(-1)
    first = xp.argmax(mask, -1)
    last = n - xp.argmax(mask[..., ::-1], -1)
    return xp.where(any_true, first, 0).astype(np.int32), xp.where(any_true, last, 0).astype(np.int32)


def matmul_precision(dtype: Any) -> jax.lax.Precision | None:
    """``HIGHEST`` for float32 operands, else the backend default.

    A GPU runs float32 dots in TF32 by default (about 1e-3 relative error); IEEE float32 products keep
    the float32 paths within their float32 tolerance. Half-precision operands keep the fast default.
    """
    return jax.lax.Precision.HIGHEST if jnp.dtype(dtype) == jnp.float32 else None


def zero_cotangent(x: Any) -> Any:
    """The zero cotangent of a ``custom_vjp`` input: zeros for floats, ``float0`` zeros for integers
    and booleans, None for None."""
    if x is None:
        return None
    if jnp.issubdtype(x.dtype, jnp.inexact):
        return jnp.zeros_like(x)
    return np.zeros(x.shape, jax.dtypes.float0)


def memory_budget_bytes() -> int:
    """The memory one computation may plan to use: the default device's limit where the backend reports
    one (GPU, TPU), else this host's physical memory."""
    try:
        stats = jax.devices()[0].memory_stats() or {}
    except Exception:  # some backends do not implement memory_stats
        stats = {}
    if stats.get("bytes_limit"):
        return int(stats["bytes_limit"])
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def format_bytes(nbytes: float) -> str:
    """``1.5 GiB``-style rendering for error messages."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(nbytes) < 1024 or unit == "TiB":
            return f"{nbytes:.1f} {unit}" if unit != "B" else f"{int(nbytes)} B"
        nbytes /= 1024
    raise AssertionError("unreachable")


def fits_in_memory(nbytes: float, fraction: float = 0.5) -> bool:
    """Whether ``nbytes`` is at most ``fraction`` of :func:`memory_budget_bytes`."""
    return nbytes <= fraction * memory_budget_bytes()


def memory_estimate_message(what: str, nbytes: float, fraction: float = 0.5) -> str:
    """``"<what> needs ~X, over half of this device's Y"``: the text of a refusal by size."""
    budget = memory_budget_bytes()
    return (
        f"{what} needs ~{format_bytes(nbytes)}, over {fraction:.0%} of the {format_bytes(budget)} "
        "this device has"
    )


# --- value checks ------------------------------------------------------------------------------------


def value_checks_enabled() -> bool:
    """Whether value checks run under ``jit`` as checkify checks (module docstring)."""
    if _value_checks_override:
        return _value_checks_override[-1]
    return os.environ.get(VALUE_CHECKS_ENV_VAR, "").strip().lower() in ("1", "true", "yes", "on")


@contextlib.contextmanager
def value_checks(enabled: bool = True) -> Iterator[None]:
    """Within this block, value checks traced under ``jit`` become checkify checks (or are skipped)."""
    _value_checks_override.append(enabled)
    try:
        yield
    finally:
        _value_checks_override.pop()


def is_traced(*xs: Any) -> bool:
    """Whether any of ``xs`` is a tracer (its values unknown until the computation runs)."""
    return any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(xs))


def check_values(ok: Any, message: str, *fmt_args: Any) -> None:
    """Raises ``ValueError(message.format(*fmt_args))`` when ``ok`` (a bool or boolean array, all of
    which must hold) is concretely false; when traced, a checkify check if enabled, else nothing.

    ``message`` uses ``{}`` placeholders for ``fmt_args`` (arrays allowed), as ``checkify.check`` does.
    """
    if not is_traced(ok, fmt_args):
        if not bool(np.all(np.asarray(ok))):
            raise ValueError(message.format(*(np.asarray(a) if hasattr(a, "shape") else a for a in fmt_args)))
        return
    if value_checks_enabled():
        checkify.check(jnp.all(ok), message, *(jnp.asarray(a) for a in fmt_args))
