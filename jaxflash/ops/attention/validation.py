"""The checks of ``jaxflash.attention``'s arguments, one small function each, and :func:`attention_spec`,
which runs them and returns the call's static spec and mask arrays.

Every check raises ``TypeError`` (wrong kind of value) or ``ValueError`` (wrong value) naming the
argument, what it got and what would be accepted. Checks on array *values* (``kv_lengths`` in range) go
through :func:`jaxflash.utils.check_values`: they raise at once on concrete arrays and, under ``jit``,
run as checkify checks when value checks are enabled.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxflash.ops.attention.spec import AttentionSpec, MaskArrays, diagonal_offsets
from jaxflash.utils import cdiv, check_values, is_int

DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def check_array(name: str, x: Any) -> None:
    """``x`` is an array (JAX, NumPy or a tracer), not a Python list or scalar."""
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise TypeError(
            f"{name} must be a jax or numpy array; got {type(x).__name__} (wrap it with jnp.asarray)"
        )


def check_qkv(q: Any, k: Any, v: Any) -> None:
    """Ranks, shapes, heads and dtypes of ``q [b, tq, hq, d]``, ``k, v [b, tk, hk, d]``."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        check_array(name, x)
        if x.ndim != 4:
            raise ValueError(
                f"{name} must have rank 4, [batch, seq, heads, head_dim]; got {name}.shape={x.shape}"
            )
    b, tq, hq, d = q.shape
    _, tk, hk, _ = k.shape
    if k.shape != v.shape:
        raise ValueError(
            "k and v must have the same shape [batch, kv_len, kv_heads, head_dim]; "
            f"got {k.shape=} and {v.shape=}"
        )
    if min(b, tq, tk, hq, hk, d) == 0:
        raise ValueError(f"attention needs non-empty inputs (no zero dimension); got {q.shape=}, {k.shape=}")
    if k.shape[0] != b or k.shape[3] != d:
        raise ValueError(
            f"k must have shape [batch={b}, kv_len, kv_heads, head_dim={d}] to match q; "
            f"got {q.shape=} and {k.shape=}"
        )
    if hq % hk:
        raise ValueError(
            f"q_heads must be a multiple of kv_heads (GQA/MQA); got q_heads={hq} from {q.shape=} "
            f"and kv_heads={hk} from {k.shape=}"
        )
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(
            f"q, k and v must share one dtype; got {q.dtype=}, {k.dtype=}, {v.dtype=}. "
            "Cast them to the same dtype first."
        )
    if q.dtype not in DTYPES:
        raise ValueError(f"q, k, v must be float32, bfloat16 or float16; got dtype {q.dtype}")


def check_window(window: Any) -> tuple[int | None, int | None] | None:
    """``None``, an int ``w >= 0`` (meaning ``(w, w)``) or a pair ``(left, right)`` of such ints or None."""
    if window is None:
        return None
    if is_int(window):
        sides = (window, window)
    elif isinstance(window, tuple | list):
        if len(window) != 2:
            raise ValueError(
                f"window must be an int or a pair (left, right); got {len(window)} values {window!r}"
            )
        sides = tuple(window)
    else:
        raise TypeError(
            f"window must be None, an int or a pair (left, right) of ints or None; got {window!r}"
        )
    for side, w in zip(("left", "right"), sides, strict=True):
        if w is not None and (not is_int(w) or w < 0):
            raise ValueError(
                f"window={window!r}: the {side} extent must be a non-negative int or None; got {w!r}"
            )
    return tuple(None if w is None else int(w) for w in sides)


def check_segment_ids(segment_ids: Any, batch: int, q_len: int, kv_len: int) -> tuple[Any, Any]:
    """One ``[batch, seq]`` int array (``q_len == kv_len``) or a pair ``(q_segment_ids, kv_segment_ids)``."""
    if segment_ids is None:
        return None, None
    if isinstance(segment_ids, tuple | list):
        if len(segment_ids) != 2:
            raise ValueError(
                "segment_ids must be one [batch, seq] array or a pair (q_segment_ids, kv_segment_ids); "
                f"got a sequence of {len(segment_ids)}"
            )
        q_seg, kv_seg = segment_ids
    else:
        if q_len != kv_len:
            raise ValueError(
                f"a single segment_ids array needs q_len == kv_len (got {q_len} and {kv_len}); pass a pair "
                "(q_segment_ids [batch, q_len], kv_segment_ids [batch, kv_len])"
            )
        q_seg = kv_seg = segment_ids
    for name, s, t in (("q_segment_ids", q_seg, q_len), ("kv_segment_ids", kv_seg, kv_len)):
        check_array(name, s)
        if s.shape != (batch, t):
            raise ValueError(f"{name} must have shape [batch={batch}, {t}]; got {s.shape}")
        if not jnp.issubdtype(s.dtype, jnp.integer):
            raise ValueError(f"{name} must be integers; got dtype {s.dtype}")
    return jnp.asarray(q_seg, jnp.int32), jnp.asarray(kv_seg, jnp.int32)


def check_kv_lengths(kv_lengths: Any, batch: int, kv_len: int) -> Any:
    """Integers ``[batch]`` in ``[0, kv_len]`` (a value check: see the module docstring)."""
    if kv_lengths is None:
        return None
    check_array("kv_lengths", kv_lengths)
    if kv_lengths.shape != (batch,) or not jnp.issubdtype(kv_lengths.dtype, jnp.integer):
        raise ValueError(
            f"kv_lengths must be integers of shape [batch={batch}]; got shape {kv_lengths.shape} "
            f"dtype {kv_lengths.dtype}"
        )
    kv_lengths = jnp.asarray(kv_lengths, jnp.int32)
    check_values(
        (kv_lengths >= 0) & (kv_lengths <= kv_len),
        "kv_lengths must lie in [0, kv_len={}]; got min {} and max {}",
        kv_len,
        kv_lengths.min(),
        kv_lengths.max(),
    )
    return kv_lengths


def check_block_mask(block_mask: Any, q_len: int, kv_len: int) -> tuple[Any, tuple[int, int] | None]:
    """A ``[q_blocks, kv_blocks]`` mask whose blocks tile ``q_len x kv_len``; returns it and its blocks."""
    if block_mask is None:
        return None, None
    check_array("block_mask", block_mask)
    if block_mask.ndim != 2:
        raise ValueError(f"block_mask must have shape [q_blocks, kv_blocks]; got {block_mask.shape}")
    nqb, nkb = block_mask.shape
    rows, cols = cdiv(q_len, max(nqb, 1)), cdiv(kv_len, max(nkb, 1))
    if nqb < 1 or nkb < 1 or cdiv(q_len, rows) != nqb or cdiv(kv_len, cols) != nkb:
        raise ValueError(
            f"block_mask.shape={block_mask.shape} does not tile q_len={q_len} x kv_len={kv_len}: blocks are "
            "ceil(q_len / q_blocks) x ceil(kv_len / kv_blocks) and each holds a position; e.g. shape "
            f"({cdiv(q_len, 64)}, {cdiv(kv_len, 64)}) for 64 x 64 blocks"
        )
    return jnp.asarray(block_mask, bool), (rows, cols)


def _real_number(name: str, x: Any) -> float:
    """A finite Python float from a real number or a concrete 0-d array."""
    if isinstance(x, bool) or not (isinstance(x, numbers.Real) or (hasattr(x, "shape") and x.shape == ())):
        raise TypeError(f"{name} must be a real number; got {x!r}")
    try:
        value = float(x)
    except (TypeError, jax.errors.ConcretizationTypeError) as e:
        raise TypeError(
            f"{name} must be a concrete number (it is static), not a traced value; got {x!r}"
        ) from e
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite; got {value}")
    return value


def check_scale(scale: Any, head_dim: int) -> float:
    """A finite real number; None means ``1 / sqrt(head_dim)``."""
    return 1.0 / math.sqrt(head_dim) if scale is None else _real_number("scale", scale)


def check_soft_cap(cap: Any) -> float | None:
    """None or a positive finite number."""
    if cap is None:
        return None
    value = _real_number("logits_soft_cap", cap)
    if value <= 0:
        raise ValueError(f"logits_soft_cap must be positive or None; got {value}")
    return value


def check_dropout(rate: Any, key: Any) -> float:
    """A rate in ``[0, 1)`` and, when it is positive, a PRNG key (``jax.random.key`` or a legacy
    ``PRNGKey``)."""
    rate = _real_number("dropout_rate", rate)
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"dropout_rate must be in [0, 1); got {rate}")
    if rate > 0.0:
        if key is None:
            raise ValueError("dropout_rate > 0 needs a dropout_key (a jax.random key)")
        typed = hasattr(key, "dtype") and jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
        legacy = hasattr(key, "dtype") and key.dtype == jnp.uint32 and np.shape(key) == (2,)
        if not (typed or legacy):
            raise TypeError(
                "dropout_key must be a PRNG key (jax.random.key(seed) or jax.random.PRNGKey(seed)); "
                f"got {key!r}"
            )
    return rate


def attention_spec(
    q: Any,
    k: Any,
    v: Any,
    *,
    causal: bool = False,
    window: Any = None,
    segment_ids: Any = None,
    kv_lengths: Any = None,
    block_mask: Any = None,
    logits_soft_cap: Any = None,
    scale: Any = None,
    dropout_rate: Any = 0.0,
    dropout_key: Any = None,
    want_lse: bool = True,
) -> tuple[AttentionSpec, MaskArrays]:
    """Validates the arguments of ``jaxflash.attention`` and returns the call's spec and mask arrays."""
    check_qkv(q, k, v)
    b, tq, _, d = q.shape
    tk = k.shape[1]
    if not isinstance(causal, bool | np.bool_):
        raise TypeError(f"causal must be a bool; got {causal!r}")
    q_seg, kv_seg = check_segment_ids(segment_ids, b, tq, tk)
    kv_lengths = check_kv_lengths(kv_lengths, b, tk)
    block_mask, mask_block = check_block_mask(block_mask, tq, tk)
    spec = AttentionSpec(
        q_len=tq,
        kv_len=tk,
        scale=check_scale(scale, d),
        causal=bool(causal),
        window=check_window(window),
        logits_soft_cap=check_soft_cap(logits_soft_cap),
        mask_block=mask_block,
        dropout_rate=check_dropout(dropout_rate, dropout_key),
        want_lse=bool(want_lse),
    )
    offsets = diagonal_offsets(spec, q_seg, kv_seg, kv_lengths, b)
    return spec, MaskArrays(q_seg, kv_seg, kv_lengths, block_mask, offsets)
