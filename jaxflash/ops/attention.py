"""Public attention ops: ``attention``, ``shared_prefix_attention`` (Hydragen) and ``decode_attention``.

``attention`` is scaled dot-product attention, ``softmax(scale * q k^T + mask) v``, computed the
IO-aware way of FlashAttention (Dao et al. 2022, arXiv 2205.14135; FlashAttention-2, arXiv
2307.08691): tiles, an online softmax and a backward pass that recomputes instead of storing the
attention matrix. Implementations (``implementation=``):

- ``"cudnn"``: cuDNN's fused attention through ``jax.nn.dot_product_attention`` (GPU), for the calls
  it serves: bf16/f16, as many kv heads as q heads, head_dim <= 128 and a multiple of 8, no mask but
  ``causal`` (with ``q_len == kv_len``), no soft cap, dropout or logsumexp. On an H200 it was 2.1-2.9x
  faster than the Pallas kernel (BENCHMARKS.md, 2026-11-30); every other call falls through.
- ``"pallas"``: the Pallas kernels of :mod:`jaxflash.pallas_kernels.flash_attention` (GPU/TPU).
- ``"pallas_interpret"``: the same kernels in the Pallas interpreter (tests, debugging).
- ``"xla"``: chunked online softmax in plain XLA with a recomputing ``custom_vjp``
  (:mod:`jaxflash.ops.attention_xla`); O(N) memory; the production path on CPU.
- ``"reference"``: the plain f32 softmax, materialising the attention matrix.

``shared_prefix_attention`` is Hydragen (Juravsky et al. 2024, arXiv 2402.05099): attention over a
shared prefix is computed once for all the queries that share it, folded into one long query
sequence, and combined with the per-sequence suffix attention by logsumexp.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from jaxflash.ops.attention_xla import xla_attention
from jaxflash.ops.registry import dispatch, register
from jaxflash.pallas_kernels import flash_attention as fa
from jaxflash.utils import cdiv
from jaxflash.pallas_kernels.flash_attention import AttentionSpec, MaskArrays

_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
MAX_KERNEL_HEAD_DIM = 256

Window = int | tuple[int | None, int | None] | None
SegmentIds = Int[Array, "b t"] | tuple[Int[Array, "b tq"], Int[Array, "b tk"]] | None


def attention(
    q: Float[Array, "b tq hq d"],
    k: Float[Array, "b tk hk d"],
    v: Float[Array, "b tk hk d"],
    *,
    causal: bool = False,
    window: Window = None,
    segment_ids: SegmentIds = None,
    kv_lengths: Int[Array, " b"] | None = None,
    block_mask: Bool[Array, "qb kb"] | None = None,
    logits_soft_cap: float | None = None,
    scale: float | None = None,
    dropout_rate: float = 0.0,
    dropout_key: jax.Array | None = None,
    return_lse: bool = False,
    implementation: str | Sequence[str] | None = None,
) -> Float[Array, "b tq hq d"] | tuple[Float[Array, "b tq hq d"], Float[Array, "b tq hq"]]:
    """Scaled dot-product attention, FlashAttention style.

    Args:
      q: queries ``[batch, q_len, q_heads, head_dim]``.
      k, v: keys and values ``[batch, kv_len, kv_heads, head_dim]``; ``q_heads`` must be a multiple
        of ``kv_heads`` (GQA; MQA when ``kv_heads == 1``): q head ``h`` reads kv head
        ``h // (q_heads // kv_heads)``. All three share one dtype (f32, bf16 or f16).
      causal: query ``i`` sees keys ``j <= i + kv_len - q_len`` (aligned bottom-right, as
        FlashAttention 2.1+ does when ``q_len != kv_len``).
      window: local attention ``(left, right)``: query ``i`` sees keys within ``left`` before and
        ``right`` after its diagonal ``i + kv_len - q_len``; an int ``w`` means ``(w, w)``, ``None``
        on a side is unbounded. Combined with ``causal``, ``right`` is 0.
      segment_ids: int ``[batch, seq]`` shared by q and kv (needs ``q_len == kv_len``), or a pair
        ``(q_segment_ids [batch, q_len], kv_segment_ids [batch, kv_len])``: a query sees only the keys
        of its own segment (packed variable-length sequences).
      kv_lengths: int ``[batch]``: keys at positions ``>= kv_lengths[b]`` are padding.
      block_mask: bool ``[q_blocks, kv_blocks]`` (block-sparse attention): block ``(r, c)`` covers
        queries ``[r*bq, (r+1)*bq)`` and keys ``[c*bk, (c+1)*bk)`` with ``bq = ceil(q_len / q_blocks)``
        and ``bk = ceil(kv_len / kv_blocks)``; False blocks are not computed.
      logits_soft_cap: ``cap``: logits become ``cap * tanh(logits / cap)`` before masking.
      scale: multiplies ``q . k``; default ``1 / sqrt(head_dim)``.
      dropout_rate: attention-weight dropout probability (the xla and reference paths).
      dropout_key: PRNG key for dropout; required when ``dropout_rate > 0``.
      return_lse: also return the natural-log logsumexp of each query's logits, ``[batch, q_len,
        q_heads]`` f32; ``-inf`` for a query that sees no key (whose output is 0).
      implementation: ``"cudnn"``, ``"pallas"``, ``"pallas_interpret"``, ``"xla"``, ``"reference"``, a
        sequence to try in order, or None for the best available.

    Returns:
      ``out [batch, q_len, q_heads, head_dim]`` in q's dtype, and ``lse`` when ``return_lse``.
    """
    spec, masks = _validate(
        q,
        k,
        v,
        causal=causal,
        window=window,
        segment_ids=segment_ids,
        kv_lengths=kv_lengths,
        block_mask=block_mask,
        logits_soft_cap=logits_soft_cap,
        scale=scale,
        dropout_rate=dropout_rate,
        dropout_key=dropout_key,
    )
    seed = fa.dropout_seed(dropout_key) if dropout_rate > 0.0 else None
    spec = dataclasses.replace(spec, want_lse=bool(return_lse))
    out, lse = dispatch("attention", implementation, q, k, v, spec, masks, seed)
    return (out, lse) if return_lse else out


# --- validation ----------------------------------------------------------------------------------------


def _validate(
    q,
    k,
    v,
    *,
    causal,
    window,
    segment_ids,
    kv_lengths,
    block_mask,
    logits_soft_cap,
    scale,
    dropout_rate,
    dropout_key,
) -> tuple[AttentionSpec, MaskArrays]:
    for name, x in (("q", q), ("k", k), ("v", v)):
        if jnp.ndim(x) != 4:
            raise ValueError(
                f"{name} must have rank 4, [batch, seq, heads, head_dim]; got {name}.shape={jnp.shape(x)}"
            )
    b, tq, hq, d = q.shape
    _, tk, hk, _ = k.shape
    if k.shape != v.shape:
        raise ValueError(
            f"k and v must have the same shape [batch, kv_len, kv_heads, head_dim]; "
            f"got {k.shape=} and {v.shape=}"
        )
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
    if min(b, tq, tk, hq, d) == 0:
        raise ValueError(f"attention needs non-empty inputs; got {q.shape=}, {k.shape=}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(
            f"q, k and v must share one dtype; got {q.dtype=}, {k.dtype=}, {v.dtype=}. "
            "Cast them to the same dtype first."
        )
    if q.dtype not in _DTYPES:
        raise ValueError(f"q, k, v must be float32, bfloat16 or float16; got {q.dtype}")

    if window is not None:
        left, right = (window, window) if isinstance(window, int) else tuple(window)
        for side, w in (("left", left), ("right", right)):
            if w is not None and (not isinstance(w, int | jnp.integer) or w < 0):
                raise ValueError(f"window={window!r}: the {side} extent must be a non-negative int or None")
        window = (None if left is None else int(left), None if right is None else int(right))

    q_seg = kv_seg = None
    if segment_ids is not None:
        if isinstance(segment_ids, tuple | list):
            if len(segment_ids) != 2:
                raise ValueError(
                    "segment_ids must be one [batch, seq] array or a pair (q_segment_ids, "
                    f"kv_segment_ids); got a sequence of {len(segment_ids)}"
                )
            q_seg, kv_seg = segment_ids
        else:
            if tq != tk:
                raise ValueError(
                    f"a single segment_ids array needs q_len == kv_len (got {tq} and {tk}); pass "
                    "a pair (q_segment_ids [batch, q_len], kv_segment_ids [batch, kv_len])"
                )
            q_seg = kv_seg = segment_ids
        for name, s, t in (("q_segment_ids", q_seg, tq), ("kv_segment_ids", kv_seg, tk)):
            if jnp.shape(s) != (b, t):
                raise ValueError(f"{name} must have shape [batch={b}, {t}]; got {jnp.shape(s)}")
            if not jnp.issubdtype(jnp.asarray(s).dtype, jnp.integer):
                raise ValueError(f"{name} must be integers; got dtype {jnp.asarray(s).dtype}")
        q_seg, kv_seg = jnp.asarray(q_seg, jnp.int32), jnp.asarray(kv_seg, jnp.int32)

    if kv_lengths is not None:
        if jnp.shape(kv_lengths) != (b,) or not jnp.issubdtype(jnp.asarray(kv_lengths).dtype, jnp.integer):
            raise ValueError(
                f"kv_lengths must be integers of shape [batch={b}]; got shape {jnp.shape(kv_lengths)} "
                f"dtype {jnp.asarray(kv_lengths).dtype}"
            )
        kv_lengths = jnp.asarray(kv_lengths, jnp.int32)

    mask_block = None
    if block_mask is not None:
        if jnp.ndim(block_mask) != 2:
            raise ValueError(f"block_mask must have shape [q_blocks, kv_blocks]; got {jnp.shape(block_mask)}")
        nqb, nkb = jnp.shape(block_mask)
        rows, cols = cdiv(tq, max(nqb, 1)), cdiv(tk, max(nkb, 1))
        if nqb < 1 or nkb < 1 or cdiv(tq, rows) != nqb or cdiv(tk, cols) != nkb:
            raise ValueError(
                f"block_mask.shape={jnp.shape(block_mask)} does not tile q_len={tq} x kv_len={tk}: "
                f"blocks are ceil(q_len / q_blocks) x ceil(kv_len / kv_blocks) and each holds a position; "
                f"e.g. shape ({cdiv(tq, 64)}, {cdiv(tk, 64)}) for 64 x 64 blocks"
            )
        mask_block = (rows, cols)
        block_mask = jnp.asarray(block_mask, bool)

    if logits_soft_cap is not None and not logits_soft_cap > 0:
        raise ValueError(f"logits_soft_cap must be positive or None; got {logits_soft_cap}")
    if scale is None:
        scale = 1.0 / math.sqrt(d)
    if not 0.0 <= dropout_rate < 1.0:
        raise ValueError(f"dropout_rate must be in [0, 1); got {dropout_rate}")
    if dropout_rate > 0.0 and dropout_key is None:
        raise ValueError("dropout_rate > 0 needs a dropout_key (a jax.random key)")

    spec = AttentionSpec(
        q_len=tq,
        kv_len=tk,
        scale=float(scale),
        causal=bool(causal),
        window=window,
        logits_soft_cap=None if logits_soft_cap is None else float(logits_soft_cap),
        mask_block=mask_block,
        dropout_rate=float(dropout_rate),
    )
    return spec, MaskArrays(q_seg, kv_seg, kv_lengths, block_mask)


# --- implementations -------------------------------------------------------------------------------------


def _pallas(implementation: str):
    def run(q, k, v, spec, masks, seed):
        if q.shape[-1] > MAX_KERNEL_HEAD_DIM:
            raise NotImplementedError(
                f"the Pallas kernels take head_dim <= {MAX_KERNEL_HEAD_DIM}; got {q.shape[-1]}"
            )
        return fa.flash_attention(q, k, v, spec, masks, implementation=implementation)

    return run


def cudnn_unsupported_reason(
    q: jax.Array, k: jax.Array, spec: AttentionSpec, masks: MaskArrays
) -> str | None:
    """Why the cuDNN route does not take this call, or None. Deliberately only the configurations
    measured on the GPU (bf16 fwd+bwd, equal heads, head_dim 64 and 128, causal or not): the rest goes
    to the Pallas kernel, which serves every feature."""
    _, tq, hq, d = q.shape
    _, tk, hk, _ = k.shape
    if q.dtype not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
        return f"cuDNN attention takes bf16/f16, got {q.dtype}"
    if d > 128 or d % 8:
        return f"cuDNN attention here takes head_dim <= 128 and a multiple of 8, got {d}"
    if hq != hk:
        return "GQA/MQA is not routed to cuDNN (not measured here)"
    if spec.causal and tq != tk:
        return "cuDNN's causal mask is top-left aligned; q_len != kv_len needs the bottom-right one"
    if spec.want_lse:
        return "cuDNN returns the logsumexp in the input dtype; the logsumexp is wanted in f32"
    if spec.window is not None or spec.logits_soft_cap is not None or spec.dropout_rate > 0.0:
        return "window, soft cap and dropout are not routed to cuDNN"
    if any(m is not None for m in (masks.q_segment_ids, masks.kv_lengths, masks.block_mask)):
        return "segment ids, kv_lengths and block masks are not routed to cuDNN"
    return None


@register("attention", "cudnn")
def _attention_cudnn(q, k, v, spec, masks, seed):
    reason = cudnn_unsupported_reason(q, k, spec, masks)
    if reason:
        raise NotImplementedError(reason)
    try:  # JAX checks what cuDNN supports while tracing and raises; that is a refusal, not bad input
        out = jax.nn.dot_product_attention(
            q, k, v, scale=spec.scale, is_causal=spec.causal, implementation="cudnn"
        )
    except (NotImplementedError, ValueError, RuntimeError) as e:
        raise NotImplementedError(f"jax.nn.dot_product_attention(implementation='cudnn') refused: {e}") from e
    return out, None  # want_lse is False: attention() drops it


register("attention", "pallas")(_pallas("pallas"))
register("attention", "pallas_interpret")(_pallas("pallas_interpret"))


@register("attention", "xla")
def _attention_xla(q, k, v, spec, masks, seed):
    return xla_attention(q, k, v, spec, masks, seed)


@register("attention", "reference")
def _attention_reference(q, k, v, spec, masks, seed):
    return fa.reference(q, k, v, spec, masks, seed)


# --- Hydragen ------------------------------------------------------------------------------------------


def combine_by_lse(outs: Sequence[jax.Array], lses: Sequence[jax.Array]) -> tuple[jax.Array, jax.Array]:
    """Exact softmax-attention over a union of key sets from the parts' outputs and logsumexps.

    ``O = sum_i exp(lse_i - lse) O_i`` with ``lse = log sum_i exp(lse_i)`` (Hydragen eq. for
    combining sub-attentions), in f32. A part with ``lse = -inf`` (no visible key) weighs nothing;
    a row no part sees returns 0 and ``lse = -inf``.
    """
    lse_stack = jnp.stack([jnp.asarray(x, jnp.float32) for x in lses])
    m = jnp.max(lse_stack, 0)
    m_safe = jnp.where(jnp.isfinite(m), m, 0.0)
    w = jnp.exp(lse_stack - m_safe)  # 0 for -inf parts
    total = w.sum(0)
    total_safe = jnp.where(total > 0, total, 1.0)
    out = sum(wi[..., None] * o.astype(jnp.float32) for wi, o in zip(w, outs, strict=True))
    out = out / total_safe[..., None]
    lse = jnp.where(total > 0, m_safe + jnp.log(total_safe), -jnp.inf)
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
) -> Float[Array, "b tq hq d"] | tuple[Float[Array, "b tq hq d"], Float[Array, "b tq hq"]]:
    """Hydragen shared-prefix attention (Juravsky et al. 2024, arXiv 2402.05099, Section 3).

    Sequence ``b``'s keys are the concatenation of every level's prefix it belongs to, outermost
    first, then its own suffix. Level ``l`` has ``bp_l`` prefixes, each shared by ``batch / bp_l``
    consecutive sequences. Each level is one attention call in which the queries of the sequences
    sharing a prefix are folded into one long query sequence (inter-sequence batching: the prefix
    KV is read once per group, and the matmuls grow); the suffix is ordinary attention, causal
    among the new tokens; the parts are combined by logsumexp, which is exact.

    Args:
      q: ``[batch, q_len, q_heads, head_dim]``, the new tokens (``q_len = 1`` when decoding).
      prefixes: a list of levels ``(k, v)``, each ``[bp, prefix_len, kv_heads, head_dim]`` with
        ``bp`` dividing ``batch`` (a prefix may have length 0).
      suffix_k, suffix_v: ``[batch, suffix_len, kv_heads, head_dim]``, or None for no suffix.
      prefix_lengths: per level, None or int ``[bp]``: the valid length of each (right-padded) prefix.
      suffix_lengths: int ``[batch]``: valid suffix tokens; the queries are the last ``q_len`` of them.
      causal: queries see the suffix causally (aligned at the end of the valid suffix); prefixes are
        always fully visible.
      scale, logits_soft_cap, return_lse, implementation: as in :func:`attention`.
    """
    if jnp.ndim(q) != 4:
        raise ValueError(f"q must have rank 4, [batch, q_len, q_heads, head_dim]; got {jnp.shape(q)}")
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
    kw = dict(scale=scale, logits_soft_cap=logits_soft_cap, return_lse=True, implementation=implementation)
    outs, lses = [], []
    for level, ((pk, pv), plen) in enumerate(zip(prefixes, prefix_lengths, strict=True)):
        if jnp.ndim(pk) != 4 or jnp.shape(pk) != jnp.shape(pv):
            raise ValueError(
                f"prefixes[{level}] must be (k, v) of one shape [bp, prefix_len, kv_heads, "
                f"head_dim]; got {jnp.shape(pk)} and {jnp.shape(pv)}"
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
        outs_s, lse_s = _suffix_attention(q, suffix_k, suffix_v, suffix_lengths, causal, kw)
        outs.append(outs_s)
        lses.append(lse_s)
    if not outs:
        out = jnp.zeros(q.shape, q.dtype)
        lse = jnp.full((b, tq, hq), -jnp.inf, jnp.float32)
    else:
        out, lse = combine_by_lse(outs, lses)
        out = out.astype(q.dtype)
    return (out, lse) if return_lse else out


def _suffix_attention(q, sk, sv, lengths, causal, kw):
    if lengths is None:
        return attention(q, sk, sv, causal=causal, **kw)
    if not causal or q.shape[1] == 1:
        # Decode, or no causality: the valid keys are a prefix of the suffix.
        return attention(q, sk, sv, kv_lengths=lengths, **kw)
    # Causal with ragged suffixes: shift each suffix right so its valid tokens end at the padded end;
    # bottom-right causal alignment then holds per sequence, and segment ids hide the left padding.
    ts = sk.shape[1]
    lengths = jnp.asarray(lengths, jnp.int32)
    src = (jnp.arange(ts)[None, :] - (ts - lengths)[:, None]) % ts
    take = lambda x: jnp.take_along_axis(x, src[:, :, None, None], axis=1)
    kv_seg = jnp.where(jnp.arange(ts)[None, :] >= (ts - lengths)[:, None], 0, 1).astype(jnp.int32)
    q_seg = jnp.zeros(q.shape[:2], jnp.int32)
    return attention(q, take(sk), take(sv), causal=True, segment_ids=(q_seg, kv_seg), **kw)


# --- decode --------------------------------------------------------------------------------------------


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
) -> Any:
    """One new query per sequence against a KV cache holding ``lengths[b]`` valid tokens.

    Args:
      q: ``[batch, q_heads, head_dim]`` (or ``[batch, 1, q_heads, head_dim]``; the output has q's rank).
      k_cache, v_cache: ``[batch, max_len, kv_heads, head_dim]``, right-padded.
      lengths: int ``[batch]``, tokens in each cache including the new one's key; None: all.
      window: attend only to the last ``window + 1`` valid tokens (sliding-window decode).
      scale, logits_soft_cap, return_lse, implementation: as in :func:`attention`.
    """
    squeeze = jnp.ndim(q) == 3
    if squeeze:
        q = q[:, None]
    if jnp.ndim(q) != 4 or q.shape[1] != 1:
        raise ValueError(
            f"q must be [batch, q_heads, head_dim] or [batch, 1, q_heads, head_dim]; got {jnp.shape(q)}"
        )
    segment_ids = None
    if window is not None:
        if not isinstance(window, int) or window < 0:
            raise ValueError(f"window must be a non-negative int or None; got {window!r}")
        # Keys older than the window are another "segment"; a static window cannot follow ragged lengths.
        s = k_cache.shape[1]
        last = (jnp.asarray(lengths, jnp.int32) if lengths is not None else jnp.full((q.shape[0],), s)) - 1
        kv_seg = (jnp.arange(s)[None, :] < (last - window)[:, None]).astype(jnp.int32)
        segment_ids = (jnp.zeros((q.shape[0], 1), jnp.int32), kv_seg)
    out, lse = attention(
        q,
        k_cache,
        v_cache,
        kv_lengths=lengths,
        segment_ids=segment_ids,
        scale=scale,
        logits_soft_cap=logits_soft_cap,
        return_lse=True,
        implementation=implementation,
    )
    if squeeze:
        out, lse = out[:, 0], lse[:, 0]
    return (out, lse) if return_lse else out
