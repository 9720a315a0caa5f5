"""The checks of ``jaxflash.linear_attention``'s and ``jaxflash.linear_attention_step``'s arguments.

Every check raises ``TypeError`` (wrong kind of value) or ``ValueError`` (wrong value) naming the
argument, what it got and what would be accepted.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

from jaxflash.ops.attention.validation import DTYPES, check_array
from jaxflash.utils import check_real


def check_flag(name: str, value: Any) -> bool:
    """A Python or NumPy bool (a static argument, never a traced value)."""
    if not isinstance(value, bool | np.bool_):
        raise TypeError(f"{name} must be a bool; got {value!r}")
    return bool(value)


def check_eps(eps: Any) -> float:
    """A finite number >= 0, added to the denominator."""
    return check_real("eps", eps, at_least=0.0)


def _check_dtypes(q: Any, k: Any, v: Any) -> None:
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(
            f"q, k and v must share one dtype; got {q.dtype=}, {k.dtype=}, {v.dtype=}. "
            "Cast them to the same dtype first."
        )
    if q.dtype not in DTYPES:
        raise ValueError(f"q, k, v must be float32, bfloat16 or float16; got dtype {q.dtype}")


def check_qkv(q: Any, k: Any, v: Any, *, causal: bool) -> None:
    """``q [b, tq, h, d_k]``, ``k [b, tk, h, d_k]``, ``v [b, tk, h, d_v]``, ``tq == tk`` when causal."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        check_array(name, x)
        if x.ndim != 4:
            raise ValueError(
                f"{name} must have rank 4, [batch, seq, heads, head_dim]; got {name}.shape={x.shape}"
            )
    b, tq, h, dk = q.shape
    if k.shape[0] != b or k.shape[2] != h or k.shape[3] != dk:
        raise ValueError(
            f"k must have shape [batch={b}, kv_len, heads={h}, d_k={dk}] to match q; got {q.shape=} "
            f"and {k.shape=}"
        )
    if v.shape[:3] != k.shape[:3]:
        raise ValueError(
            f"v must have shape [batch, kv_len, heads, d_v] = [{k.shape[0]}, {k.shape[1]}, {k.shape[2]}, "
            f"d_v] to match k (d_v may differ from d_k); got {k.shape=} and {v.shape=}"
        )
    if min(*q.shape, *k.shape, v.shape[3]) == 0:
        raise ValueError(
            f"linear attention needs non-empty inputs (no zero dimension); got {q.shape=}, {k.shape=}, "
            f"{v.shape=}"
        )
    if causal and tq != k.shape[1]:
        raise ValueError(
            f"causal linear attention needs q_len == kv_len; got q_len={tq} and kv_len={k.shape[1]} "
            "(continue a sequence from its state with linear_attention_step, or pass causal=False)"
        )
    _check_dtypes(q, k, v)


def check_step(state: Any, q: Any, k: Any, v: Any) -> None:
    """``state = (kv [b, h, d_k, d_v], k_sum [b, h, d_k])`` and one token ``q, k [b, h, d_k]``,
    ``v [b, h, d_v]``."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        check_array(name, x)
        if x.ndim != 3:
            raise ValueError(f"{name} must have rank 3, [batch, heads, head_dim]; got {name}.shape={x.shape}")
    if k.shape != q.shape or v.shape[:2] != q.shape[:2]:
        raise ValueError(
            f"q and k must have one shape [batch, heads, d_k] and v [batch, heads, d_v]; got {q.shape=}, "
            f"{k.shape=}, {v.shape=}"
        )
    _check_dtypes(q, k, v)
    if not isinstance(state, tuple) or len(state) != 2:
        raise TypeError(
            "state must be a LinearAttentionState (kv, k_sum), e.g. LinearAttentionState.zeros(batch, heads, "
            "d_k, d_v) or the state linear_attention(..., return_state=True) returns; got "
            f"{type(state).__name__}"
        )
    kv, k_sum = state
    check_array("state.kv", kv)
    check_array("state.k_sum", k_sum)
    b, h, dk = q.shape
    want_kv, want_z = (b, h, dk, v.shape[2]), (b, h, dk)
    if kv.shape != want_kv or k_sum.shape != want_z:
        raise ValueError(
            f"state must have kv [batch, heads, d_k, d_v] = {list(want_kv)} and k_sum [batch, heads, d_k] = "
            f"{list(want_z)} to match q, k, v; got kv.shape={kv.shape}, k_sum.shape={k_sum.shape}"
        )
    for name, x in (("state.kv", kv), ("state.k_sum", k_sum)):
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise ValueError(f"{name} must be floating point (f32 recommended); got dtype {x.dtype}")
