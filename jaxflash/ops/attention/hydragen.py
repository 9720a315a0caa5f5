"""``jaxflash.shared_prefix_attention``: Hydragen (Juravsky et al. 2024, arXiv 2402.05099).

Attention over a shared prefix is computed once for all the queries that share it, folded into one long
query sequence (inter-sequence batching: the prefix KV is read once per group and the matmuls grow),
and combined with the per-sequence suffix attention by logsumexp, which is exact.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from jaxflash.ops.attention.api import Config, attention
from jaxflash.ops.attention.validation import check_array


def combine_by_lse(outs: Sequence[jax.Array], lses: Sequence[jax.Array]) -> tuple[jax.Array, jax.Array]:
    """Exact softmax-attention over a union of key sets from the parts' outputs and logsumexps.

    ``O = sum_i exp(lse_i - lse) O_i`` with ``lse = log sum_i exp(lse_i)`` (Hydragen's combination of
    sub-attentions), in f32. A part with ``lse = -inf`` (no visible key) weighs nothing; a row no part
    sees returns 0 and ``lse = -inf``.
    """
    if len(outs) != len(lses) or not outs:
        raise ValueError(
            f"combine_by_lse needs one lse per output, at least one; got {len(outs)} and {len(lses)}"
        )
    lse_stack = jnp.stack([jnp.asarray(x, jnp.float32) for x in lses])
    m = jnp.max(lse_stack, 0)
    m_safe = jnp.where(m == -jnp.inf, 0.0, m)
    w = jnp.exp(lse_stack - m_safe)  # 0 for -inf parts
    total = w.sum(0)
    empty = total == 0
    total_safe = jnp.where(empty, 1.0, total)
    out = sum(wi[..., None] * o.astype(jnp.float32) for wi, o in zip(w, outs, strict=True))
    out = out / total_safe[..., None]
    lse = jnp.where(empty, -jnp.inf, m_safe + jnp.log(total_safe))
    return out, lse


def shared_prefix_attention(
    q: Float[Array, "b tq hq d"],
    prefixes: Sequence[tuple[Float[Array, "bp tp hk d"], Float[Array, "bp tp hk d"]]],
    suffix_k: Float[Array, "b ts hk d"] | None,
    suffix_v: Float[Array, "b ts hk d"] | None,
    *,
    prefix_lengths: Sequence[Int[Array, " bp"] | None] | None = None,
    suffix_lengths: Int[Array, " b"] | None = None,
    causal: bool = True,
    scale: float | None = None,
    logits_soft_cap: float | None = None,
    return_lse: bool = False,
    implementation: str | Sequence[str] | None = None,
    config: Config = None,
) -> Float[Array, "b tq hq d"] | tuple[Float[Array, "b tq hq d"], Float[Array, "b tq hq"]]:
    """Hydragen shared-prefix attention (Juravsky et al. 2024, arXiv 2402.05099, Section 3).

    Sequence ``b``'s keys are the concatenation of every level's prefix it belongs to, outermost
    first, then its own suffix. Level ``l`` has ``bp_l`` prefixes, each shared by ``batch / bp_l``
    consecutive sequences. Each level is one attention call in which the queries of the sequences
    sharing a prefix are folded into one long query sequence; the suffix is ordinary attention, causal
    among the new tokens; the parts are combined by logsumexp.

    Args:
      q: ``[batch, q_len, q_heads, head_dim]``, the new tokens (``q_len = 1`` when decoding).
      prefixes: a list of levels ``(k, v)``, each ``[bp, prefix_len, kv_heads, head_dim]`` with
        ``bp`` dividing ``batch`` (a prefix may have length 0).
      suffix_k, suffix_v: ``[batch, suffix_len, kv_heads, head_dim]``, or None for no suffix.
      prefix_lengths: per level, None or int ``[bp]``: the valid length of each (right-padded) prefix.
      suffix_lengths: int ``[batch]``: valid suffix tokens; the queries are the last ``q_len`` of them.
      causal: queries see the suffix causally (aligned at the end of each valid suffix); prefixes are
        always fully visible.
      scale, logits_soft_cap, return_lse, implementation, config: as in :func:`jaxflash.attention`.
    """
    check_array("q", q)
    if q.ndim != 4:
        raise ValueError(f"q must have rank 4, [batch, q_len, q_heads, head_dim]; got {q.shape}")
    b, tq, hq, d = q.shape
    prefix_lengths = list(prefix_lengths) if prefix_lengths is not None else [None] * len(prefixes)
    if len(prefix_lengths) != len(prefixes):
        raise ValueError(
            f"prefix_lengths needs one entry per level ({len(prefixes)}); got {len(prefix_lengths)}"
        )
    if (suffix_k is None) != (suffix_v is None):
        raise ValueError("suffix_k and suffix_v must both be given or both be None")
    if not prefixes and suffix_k is None:
        raise ValueError("shared_prefix_attention needs at least one prefix level or a suffix")
    kw = dict(
        scale=scale,
        logits_soft_cap=logits_soft_cap,
        return_lse=True,
        implementation=implementation,
        config=config,
    )
    outs, lses = [], []
    for level, ((pk, pv), plen) in enumerate(zip(prefixes, prefix_lengths, strict=True)):
        check_array(f"prefixes[{level}][0]", pk)
        check_array(f"prefixes[{level}][1]", pv)
        if pk.ndim != 4 or pk.shape != pv.shape:
            raise ValueError(
                f"prefixes[{level}] must be (k, v) of one shape [bp, prefix_len, kv_heads, head_dim]; "
                f"got {pk.shape} and {pv.shape}"
            )
        bp = pk.shape[0]
        if bp < 1 or b % bp:
            raise ValueError(f"prefixes[{level}] has {bp} prefixes; batch={b} must be a multiple of it")
        if pk.shape[1] == 0:
            continue  # an empty prefix contributes nothing
        group = b // bp
        q_fold = q.reshape(bp, group * tq, hq, d)
        out, lse = attention(q_fold, pk, pv, kv_lengths=plen, **kw)
        outs.append(out.reshape(b, tq, hq, d))
        lses.append(lse.reshape(b, tq, hq))
    if suffix_k is not None and suffix_k.shape[1] > 0:
        # kv_lengths align a causal diagonal per sequence: the queries are the last tokens of each suffix.
        out, lse = attention(q, suffix_k, suffix_v, causal=causal, kv_lengths=suffix_lengths, **kw)
        outs.append(out)
        lses.append(lse)
    if not outs:
        out = jnp.zeros(q.shape, q.dtype)
        lse = jnp.full((b, tq, hq), -jnp.inf, jnp.float32)
    else:
        out, lse = combine_by_lse(outs, lses)
        out = out.astype(q.dtype)
    return (out, lse) if return_lse else out
