"""``jaxflash.decode_attention``: one new query per sequence against a right-padded KV cache."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

from jaxtyping import Array, Float, Int

from jaxflash.ops.attention.api import Config, attention
from jaxflash.ops.attention.validation import check_array


def decode_attention(
    q: Float[Array, "b hq d"] | Float[Array, "b 1 hq d"],
    k_cache: Float[Array, "b s hk d"],
    v_cache: Float[Array, "b s hk d"],
    lengths: Int[Array, " b"] | None = None,
    *,
    window: int | None = None,
    scale: float | None = None,
    logits_soft_cap: float | None = None,
    return_lse: bool = False,
    implementation: str | Sequence[str] | None = None,
    config: Config = None,
) -> Any:
    """One new query per sequence against a KV cache holding ``lengths[b]`` valid tokens.

    Args:
      q: ``[batch, q_heads, head_dim]`` (or ``[batch, 1, q_heads, head_dim]``; the output has q's rank).
      k_cache, v_cache: ``[batch, max_len, kv_heads, head_dim]``, right-padded; what the unused slots
        hold never reaches the output.
      lengths: int ``[batch]`` in ``[1, max_len]``, tokens in each cache including the new one's key;
        None: all.
      window: attend only to the last ``window + 1`` valid tokens (sliding-window decode).
      scale, logits_soft_cap, return_lse, implementation, config: as in :func:`jaxflash.attention`.
    """
    check_array("q", q)
    squeeze = q.ndim == 3
    if squeeze:
        q = q[:, None]
    if q.ndim != 4 or q.shape[1] != 1:
        raise ValueError(
            f"q must be [batch, q_heads, head_dim] or [batch, 1, q_heads, head_dim]; got {q.shape}"
        )
    if window is not None and (
        not isinstance(window, numbers.Integral) or isinstance(window, bool) or window < 0
    ):
        raise ValueError(f"window must be a non-negative int or None; got {window!r}")
    out, lse = attention(
        q,
        k_cache,
        v_cache,
        kv_lengths=lengths,
        # The query is the last valid token: its diagonal is key lengths[b] - 1.
        window=None if window is None else (window, 0),
        scale=scale,
        logits_soft_cap=logits_soft_cap,
        return_lse=True,
        implementation=implementation,
        config=config,
    )
    if squeeze:
        out, lse = out[:, 0], lse[:, 0]
    return (out, lse) if return_lse else out
