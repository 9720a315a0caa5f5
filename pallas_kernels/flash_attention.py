"""FlashAttention forward and backward as Pallas kernels, with the masks every path shares.

FlashAttention (Dao et al. 2022, arXiv 2205.14135; FlashAttention-2, Dao 2023, arXiv 2307.08691)
computes ``O = softmax(s(Q K^T)) V`` tile by tile without materialising the ``[q_len, kv_len]``
matrix. For each query tile the kernel walks the key/value tiles keeping the running row maximum
``m``, the running denominator ``l`` and the unnormalised accumulator ``acc`` (FA2 Algorithm 1):

    m_new = max(m, rowmax(S_j));  P_j = exp(S_j - m_new);  alpha = exp(m - m_new)
    l = alpha * l + rowsum(P_j);  acc = alpha * acc + P_j V_j;  finally O = acc / l, lse = m + log l

Only ``O`` and the natural-log logsumexp ``lse`` are saved for the backward pass, which recomputes
``P = exp(S - lse)`` tile by tile (FA2 Algorithm 2): ``dV = P^T dO``, ``dP = dO V^T``,
``dS = P * (dP - D)`` with ``D = rowsum(dO * O)`` (minus the cotangent of ``lse`` when the caller
differentiates through it), ``dQ = dS K * scale``, ``dK = dS^T Q * scale``.

Masks (all combine by AND): causal, aligned bottom-right when ``q_len != kv_len`` (FlashAttention
2.1+: query ``i`` sees keys ``j <= i + kv_len - q_len``); a local window ``(left, right)`` around
the same diagonal; segment ids (a key is visible only inside the query's segment); ``kv_lengths``
(right padding); a block mask ``[q_blocks, kv_blocks]`` (block-sparse FlashAttention). Tiles that
the masks remove entirely are never computed: the kv loop of every query tile runs only over the
span of live tiles, and a tile inside the span that is dead is skipped with ``lax.cond``.
Logit soft-capping ``s -> cap * tanh(s / cap)`` (Gemma 2) is applied before masking.

A query row that every key is masked from returns zeros and ``lse = -inf`` (the log of an empty
sum), never NaN, so partial results still combine exactly by logsumexp (Hydragen).

Layout everywhere: ``[batch, seq, heads, head_dim]``; q heads are a multiple of kv heads and q head
``h`` reads kv head ``h // (q_heads // kv_heads)`` (GQA/MQA).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl
from jaxflash.pallas_kernels.common import compiler_params, interpret_for
from jaxflash.utils import cdiv

# Sentinel for "no bound" in window arithmetic; far beyond any sequence length, far below int32 overflow.
_UNBOUNDED = 1 << 29


# --- static description of a call ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class AttentionSpec:
    """Everything static about one attention call: lengths, masks that are pure index arithmetic,
    numerics. Hashable, so it can be a ``nondiff_argnums`` of a ``custom_vjp`` and a jit static.

    Attributes:
      q_len: true number of queries (before any padding).
      kv_len: true number of keys.
      scale: multiplies ``q . k`` before the soft cap.
      causal: key ``j`` visible to query ``i`` only if ``j <= i + kv_len - q_len``.
      window: ``(left, right)``; key ``j`` visible only if ``-left <= j - (i + kv_len - q_len) <= right``;
        ``None`` on a side means unbounded.
      logits_soft_cap: ``cap`` of ``cap * tanh(s / cap)``; None for none.
      mask_block: ``(rows, cols)`` of one block of the block mask, None when there is none.
      dropout_rate: probability of dropping an attention weight (xla and reference paths only).
      want_lse: whether the caller uses the logsumexp; paths that cannot give it in f32 (cuDNN)
        refuse the call when it does. The kernels here always compute it.
    """

    q_len: int
    kv_len: int
    scale: float
    causal: bool = False
    window: tuple[int | None, int | None] | None = None
    logits_soft_cap: float | None = None
    mask_block: tuple[int, int] | None = None
    dropout_rate: float = 0.0
    want_lse: bool = True

    @property
    def offset(self) -> int:
        """Bottom-right alignment: the diagonal of query ``i`` is key ``i + offset``."""
        return self.kv_len - self.q_len

    @property
    def bounds(self) -> tuple[int, int]:
        """``(lower, upper)``: query ``i`` sees key ``j`` iff ``lower <= j - i - offset <= upper``."""
        left, right = self.window if self.window is not None else (None, None)
        lower = -_UNBOUNDED if left is None else -left
        upper = _UNBOUNDED if right is None else right
        if self.causal:
            upper = min(upper, 0)
        return lower, upper

    @property
    def has_band(self) -> bool:
        return self.causal or self.window is not None


@dataclasses.dataclass(frozen=True)
class MaskArrays:
    """The data-dependent masks of a call, as a pytree (any field may be None).

    q_segment_ids ``[batch, q_len]`` and kv_segment_ids ``[batch, kv_len]`` (int32), kv_lengths
    ``[batch]`` (int32), block_mask ``[q_blocks, kv_blocks]`` (bool).
    """

    q_segment_ids: Any = None
    kv_segment_ids: Any = None
    kv_lengths: Any = None
    block_mask: Any = None


jax.tree_util.register_dataclass(
    MaskArrays, data_fields=["q_segment_ids", "kv_segment_ids", "kv_lengths", "block_mask"], meta_fields=[]
)


def softcap(s: jax.Array, cap: float | None) -> jax.Array:
    """``cap * tanh(s / cap)``: bounds the logits smoothly (Gemma 2); identity for ``cap=None``."""
    return s if cap is None else cap * jnp.tanh(s / cap)


def band_mask(spec: AttentionSpec, q_pos: jax.Array, kv_pos: jax.Array) -> jax.Array:
    """Causal/window/true-length part of the mask for broadcastable position arrays."""
    allowed = kv_pos < spec.kv_len
    if spec.has_band:
        lower, upper = spec.bounds
        rel = kv_pos - q_pos - spec.offset
        if lower > -_UNBOUNDED:
            allowed = allowed & (rel >= lower)
        if upper < _UNBOUNDED:
            allowed = allowed & (rel <= upper)
    return allowed


def element_mask(
    spec: AttentionSpec,
    q_pos: jax.Array,
    kv_pos: jax.Array,
    *,
    q_seg: jax.Array | None = None,
    kv_seg: jax.Array | None = None,
    kv_length: jax.Array | None = None,
    block_mask: jax.Array | None = None,
) -> jax.Array:
    """The full boolean mask for query positions ``q_pos [..., Tq, 1]`` and keys ``kv_pos [..., 1, Tk]``.

    ``q_seg``/``kv_seg`` broadcast like the positions; ``kv_length`` broadcasts against
    ``kv_pos``; ``block_mask`` is the whole ``[q_blocks, kv_blocks]`` array (gathered here).
    """
    allowed = band_mask(spec, q_pos, kv_pos)
    if q_seg is not None:
        allowed = allowed & (q_seg == kv_seg)
    if kv_length is not None:
        allowed = allowed & (kv_pos < kv_length)
    if block_mask is not None:
        rows, cols = spec.mask_block
        qb = jnp.clip(q_pos // rows, 0, block_mask.shape[0] - 1)
        kb = jnp.clip(kv_pos // cols, 0, block_mask.shape[1] - 1)
        allowed = allowed & block_mask[qb, kb]
    return allowed


# --- which tiles hold any visible entry ----------------------------------------------------------------


def _tile_ranges(n_tiles: int, tile: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    start = np.arange(n_tiles) * tile
    end = np.minimum(start + tile, length) - 1  # last real position; < start for all-padding tiles
    return start, end


def tile_liveness(spec: AttentionSpec, masks: MaskArrays, tq: int, tk: int, n_q: int, n_k: int) -> Any:
    """Boolean ``[batch or 1, n_q, n_k]``: does tile ``(i, j)`` (``tq x tk``) hold any visible entry?

    A NumPy array when only the static masks (causal, window, lengths) apply, else a JAX array.

    Exact for the causal/window/length/kv_lengths/block masks, conservative for segment ids (their
    value ranges overlap), which is enough: the element mask is applied inside live tiles anyway.
    """
    r0, r1 = _tile_ranges(n_q, tq, spec.q_len)
    c0, c1 = _tile_ranges(n_k, tk, spec.kv_len)
    live = (r1 >= r0)[:, None] & (c1 >= c0)[None, :]
    if spec.has_band:
        lower, upper = spec.bounds
        # Some row r of the tile sees some column c of it: c0 - off - upper <= r <= c1 - off - lower.
        lo = np.maximum(r0[:, None], c0[None, :] - spec.offset - upper)
        hi = np.minimum(r1[:, None], c1[None, :] - spec.offset - lower)
        live &= lo <= hi
    out = live[None]  # NumPy while every mask so far is static: the loop bounds then fold at trace time
    if masks.kv_lengths is not None:
        out = out & (jnp.asarray(c0, jnp.int32)[None, None, :] < masks.kv_lengths[:, None, None])
    if masks.q_segment_ids is not None:
        qmin, qmax = _segment_range(masks.q_segment_ids, n_q, tq, spec.q_len)
        kmin, kmax = _segment_range(masks.kv_segment_ids, n_k, tk, spec.kv_len)
        out = out & (qmin[:, :, None] <= kmax[:, None, :]) & (kmin[:, None, :] <= qmax[:, :, None])
    if masks.block_mask is not None:
        rows, cols = spec.mask_block
        overlap_q = _overlap(r0, r1, masks.block_mask.shape[0], rows)
        overlap_k = _overlap(c0, c1, masks.block_mask.shape[1], cols)
        hits = jnp.asarray(overlap_q) @ masks.block_mask.astype(jnp.float32) @ jnp.asarray(overlap_k).T
        out = out & (hits > 0)[None]
    return out


def _overlap(start: np.ndarray, end: np.ndarray, n_blocks: int, block: int) -> np.ndarray:
    b0 = np.arange(n_blocks) * block
    return ((b0[None, :] <= end[:, None]) & (b0[None, :] + block - 1 >= start[:, None])).astype(np.float32)


def _segment_range(seg: jax.Array, n_tiles: int, tile: int, length: int) -> tuple[jax.Array, jax.Array]:
    pad = n_tiles * tile - length
    big = jnp.iinfo(jnp.int32).max
    lo = jnp.pad(seg, ((0, 0), (0, pad)), constant_values=big).reshape(seg.shape[0], n_tiles, tile)
    hi = jnp.pad(seg, ((0, 0), (0, pad)), constant_values=-big).reshape(seg.shape[0], n_tiles, tile)
    return lo.min(-1), hi.max(-1)


def live_span(live: Any) -> tuple[Any, Any]:
    """First and one-past-last live tile along the last axis (``0, 0`` where none is live).

    NumPy in, NumPy out (static masks); a JAX array in, JAX arrays out.
    """
    xp = np if isinstance(live, np.ndarray) else jnp
    n = live.shape[-1]
    any_live = live.any(-1)
    first = xp.argmax(live, -1)
    last = n - xp.argmax(live[..., ::-1], -1)
    return xp.where(any_live, first, 0).astype(np.int32), xp.where(any_live, last, 0).astype(np.int32)


# --- dropout (xla and reference paths) -----------------------------------------------------------------


def _mix32(x: jax.Array) -> jax.Array:
    # murmur3's finaliser: a bijection on uint32 with full avalanche.
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x85EBCA6B)
    x = x ^ (x >> 13)
    x = x * jnp.uint32(0xC2B2AE35)
    return x ^ (x >> 16)


def dropout_seed(key: jax.Array) -> jax.Array:
    """The raw uint32 words of a PRNG key (typed or legacy), the seed of :func:`dropout_keep`."""
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return jnp.asarray(key).reshape(-1).astype(jnp.uint32)


def dropout_keep(seed: jax.Array, rate: float, b: Any, h: Any, i: Any, j: Any) -> jax.Array:
    """Keep-mask of attention dropout as a pure function of the seed (:func:`dropout_seed`) and the
    global indices ``(batch, q_head, query, key)``, so any tiling draws the same mask."""
    x = _mix32(seed[0] ^ _mix32(jnp.asarray(b, jnp.uint32) + jnp.uint32(0x9E3779B9)))
    x = _mix32(x ^ seed[-1] ^ jnp.asarray(h, jnp.uint32) * jnp.uint32(0x632BE5AB))
    x = _mix32(x ^ jnp.asarray(i, jnp.uint32) * jnp.uint32(0x27D4EB2F))
    x = _mix32(x ^ jnp.asarray(j, jnp.uint32) * jnp.uint32(0x165667B1))
    threshold = jnp.uint32(min(int(rate * 2**32), 2**32 - 1))
    return x >= threshold


# --- reference ---------------------------------------------------------------------------------------


def reference(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    spec: AttentionSpec,
    masks: MaskArrays | None = None,
    dropout_seed: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Plain attention in f32, the ground truth: ``(out [b, tq, hq, d] in q.dtype, lse [b, tq, hq] f32)``.

    Materialises the full ``[batch, heads, q_len, kv_len]`` logits: tests and small inputs only.
    """
    masks = MaskArrays() if masks is None else masks
    b, tq, hq, _ = q.shape
    tk, hk = k.shape[1], k.shape[2]
    g = hq // hk
    qf = q.astype(jnp.float32).reshape(b, tq, hk, g, -1)
    s = jnp.einsum("bqkgd,bckd->bkgqc", qf, k.astype(jnp.float32), precision=lax.Precision.HIGHEST)
    s = softcap(s * spec.scale, spec.logits_soft_cap)
    q_pos = jnp.arange(tq)[:, None]
    kv_pos = jnp.arange(tk)[None, :]
    seg_q = seg_k = length = None
    if masks.q_segment_ids is not None:
        seg_q = masks.q_segment_ids[:, None, None, :, None]
        seg_k = masks.kv_segment_ids[:, None, None, None, :]
    if masks.kv_lengths is not None:
        length = masks.kv_lengths[:, None, None, None, None]
    allowed = element_mask(
        spec, q_pos, kv_pos, q_seg=seg_q, kv_seg=seg_k, kv_length=length, block_mask=masks.block_mask
    )
    allowed = jnp.broadcast_to(allowed, s.shape)
    s = jnp.where(allowed, s, -jnp.inf)
    m = jnp.max(s, -1, keepdims=True)
    m = jnp.where(jnp.isfinite(m), m, 0.0)
    p = jnp.where(allowed, jnp.exp(s - m), 0.0)
    denom = p.sum(-1, keepdims=True)
    lse = jnp.where(
        denom[..., 0] > 0, jnp.log(jnp.where(denom > 0, denom, 1.0))[..., 0] + m[..., 0], -jnp.inf
    )
    p = p / jnp.where(denom > 0, denom, 1.0)
    if spec.dropout_rate > 0.0:
        heads = jnp.arange(hq).reshape(hk, g)
        keep = dropout_keep(
            dropout_seed,
            spec.dropout_rate,
            jnp.arange(b)[:, None, None, None, None],
            heads[None, :, :, None, None],
            q_pos[None, None, None],
            kv_pos[None, None, None],
        )
        p = jnp.where(keep, p / (1.0 - spec.dropout_rate), 0.0)
    out = jnp.einsum("bkgqc,bckd->bqkgd", p, v.astype(jnp.float32), precision=lax.Precision.HIGHEST)
    out = out.reshape(b, tq, hq, -1).astype(q.dtype)
    lse = lse.transpose(0, 3, 1, 2).reshape(b, tq, hq)
    return out, lse


# --- Pallas kernels ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FlashConfig:
    """Tile sizes and launch parameters of the Pallas kernels (powers of two, >= 16 on GPU).

    Attributes:
      block_q: query rows per program of the forward and dq kernels.
      block_kv: key rows per step of their kv loop.
      block_q_dkv: query rows per step of the dk/dv kernel's q loop.
      block_kv_dkv: key rows per program of the dk/dv kernel.
      num_warps: Triton warps per program (None: 4 for head_dim <= 64, else 8).
      num_stages: Triton software-pipelining stages.
    """

    block_q: int = 64
    block_kv: int = 64
    block_q_dkv: int = 64
    block_kv_dkv: int = 64
    num_warps: int | None = None
    num_stages: int = 2


def default_config(q_len: int, kv_len: int, head_dim: int) -> FlashConfig:
    """Heuristic tiles: 128 x 64 for head dims up to 128 (64 x 32 above, to fit shared memory),
    shrunk to the next power of two of short sequences (tokamax's Triton heuristic, widened)."""
    big = 128 if head_dim <= 128 else 64
    small = 64 if head_dim <= 128 else 32
    bq = max(16, min(big, _next_pow2(q_len)))
    bk = max(16, min(small, _next_pow2(kv_len)))
    return FlashConfig(
        block_q=bq,
        block_kv=bk,
        block_q_dkv=max(16, min(small, _next_pow2(q_len))),
        block_kv_dkv=max(16, min(big, _next_pow2(kv_len))),
    )


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


@dataclasses.dataclass(frozen=True)
class _Static:
    spec: AttentionSpec
    config: FlashConfig
    interpret: Any
    has_seg: bool
    has_len: bool
    has_live: bool  # a tile inside a live span may be dead (segments, block mask): check each


def _dot(a, b, contract):
    # f32 tiles use IEEE f32 products: Triton's default for f32 is TF32, ~1e-3 relative error.
    precision = lax.Precision.HIGHEST if a.dtype == jnp.float32 else None
    return lax.dot_general(
        a, b, (contract, ((), ())), precision=precision, preferred_element_type=jnp.float32
    )


def _dot_nn(a, b):  # a @ b
    return _dot(a, b, ((1,), (0,)))


def _dot_nt(a, b):  # a @ b.T
    return _dot(a, b, ((1,), (1,)))


def _dot_tn(a, b):  # a.T @ b
    return _dot(a, b, ((0,), (0,)))


def _tile_mask(st: _Static, q_start, kv_start, bq, bk, q_seg, kv_seg, kv_length):
    q_pos = q_start + lax.broadcasted_iota(jnp.int32, (bq, bk), 0)
    kv_pos = kv_start + lax.broadcasted_iota(jnp.int32, (bq, bk), 1)
    allowed = band_mask(st.spec, q_pos, kv_pos)
    if q_seg is not None:
        allowed = allowed & (q_seg[:, None] == kv_seg[None, :])
    if kv_length is not None:
        allowed = allowed & (kv_pos < kv_length)
    return allowed


def _logits(st: _Static, q, k):
    s = _dot_nt(q, k) * st.spec.scale
    return softcap(s, st.spec.logits_soft_cap)


def _unpack(st: _Static, refs):
    """Splits the optional inputs off the front of ``refs``: q_seg, kv_seg, kv_len, lo, hi, live."""
    refs = list(refs)
    q_seg_ref = kv_seg_ref = len_ref = live_ref = None
    if st.has_seg:
        q_seg_ref, kv_seg_ref = refs.pop(0), refs.pop(0)
    if st.has_len:
        len_ref = refs.pop(0)
    lo_ref, hi_ref = refs.pop(0), refs.pop(0)
    if st.has_live:
        live_ref = refs.pop(0)
    return q_seg_ref, kv_seg_ref, len_ref, lo_ref, hi_ref, live_ref, refs


def _maybe_skip(live_ref, j, compute, carry):
    if live_ref is None:
        return compute(carry)
    return lax.cond(live_ref[j] != 0, compute, lambda c: c, carry)


def _fwd_kernel(q_ref, k_ref, v_ref, *refs, st: _Static):
    q_seg_ref, kv_seg_ref, len_ref, lo_ref, hi_ref, live_ref, (o_ref, lse_ref) = _unpack(st, refs)
    bq, bk = st.config.block_q, st.config.block_kv
    i = pl.program_id(2)
    q = q_ref[...]
    q_seg = q_seg_ref[...] if q_seg_ref is not None else None
    kv_length = len_ref[()] if len_ref is not None else None

    def body(j, carry):
        def compute(carry):
            acc, m, row_sum = carry
            start = pl.multiple_of(j * bk, bk)
            k = k_ref[pl.ds(start, bk), :]
            v = v_ref[pl.ds(start, bk), :]
            kv_seg = kv_seg_ref[pl.ds(start, bk)] if kv_seg_ref is not None else None
            s = _logits(st, q, k)
            allowed = _tile_mask(st, i * bq, start, bq, bk, q_seg, kv_seg, kv_length)
            s = jnp.where(allowed, s, -jnp.inf)
            m_new = jnp.maximum(m, s.max(axis=1))
            m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new)  # rows masked so far: no NaN from -inf - -inf
            p = jnp.exp(s - m_safe[:, None])
            alpha = jnp.exp(m - m_safe)
            row_sum = alpha * row_sum + p.sum(axis=1)
            acc = alpha[:, None] * acc + _dot_nn(p.astype(v.dtype), v)
            return acc, m_new, row_sum

        return _maybe_skip(live_ref, j, compute, carry)

    d = q_ref.shape[-1]
    init = (
        jnp.zeros((bq, d), jnp.float32),
        jnp.full((bq,), -jnp.inf, jnp.float32),
        jnp.zeros((bq,), jnp.float32),
    )
    acc, m, row_sum = lax.fori_loop(lo_ref[()], hi_ref[()], body, init)
    seen = row_sum > 0
    l_safe = jnp.where(seen, row_sum, 1.0)
    o_ref[...] = (acc / l_safe[:, None]).astype(o_ref.dtype)
    lse_ref[...] = jnp.where(seen, m + jnp.log(l_safe), -jnp.inf)


def _dq_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, *refs, st: _Static):
    q_seg_ref, kv_seg_ref, len_ref, lo_ref, hi_ref, live_ref, (dq_ref,) = _unpack(st, refs)
    bq, bk = st.config.block_q, st.config.block_kv
    i = pl.program_id(2)
    q, do = q_ref[...], do_ref[...]
    lse, delta = lse_ref[...], delta_ref[...]
    q_seg = q_seg_ref[...] if q_seg_ref is not None else None
    kv_length = len_ref[()] if len_ref is not None else None

    def body(j, dq):
        def compute(dq):
            start = pl.multiple_of(j * bk, bk)
            k = k_ref[pl.ds(start, bk), :]
            v = v_ref[pl.ds(start, bk), :]
            kv_seg = kv_seg_ref[pl.ds(start, bk)] if kv_seg_ref is not None else None
            ds = _dlogits(st, q, k, v, do, lse, delta, i * bq, start, bq, bk, q_seg, kv_seg, kv_length)[1]
            return dq + _dot_nn(ds.astype(k.dtype), k)

        return _maybe_skip(live_ref, j, compute, dq)

    dq = lax.fori_loop(lo_ref[()], hi_ref[()], body, jnp.zeros(q_ref.shape, jnp.float32))
    dq_ref[...] = (dq * st.spec.scale).astype(dq_ref.dtype)


def _dlogits(st, q, k, v, do, lse, delta, q_start, kv_start, bq, bk, q_seg, kv_seg, kv_length):
    """Recomputed probabilities ``P`` and the logit gradient ``dS`` (before the 1/scale) of one tile."""
    raw = _dot_nt(q, k) * st.spec.scale
    s = softcap(raw, st.spec.logits_soft_cap)
    allowed = _tile_mask(st, q_start, kv_start, bq, bk, q_seg, kv_seg, kv_length)
    # lse is +inf on fully masked rows (set by the wrapper), so exp gives 0 without a NaN.
    p = jnp.where(allowed, jnp.exp(s - lse[:, None]), 0.0)
    dp = _dot_nt(do, v)
    ds = p * (dp - delta[:, None])
    if st.spec.logits_soft_cap is not None:
        t = jnp.tanh(raw / st.spec.logits_soft_cap)
        ds = ds * (1.0 - t * t)
    return p, ds


def _dkv_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, *refs, st: _Static):
    q_seg_ref, kv_seg_ref, len_ref, lo_ref, hi_ref, live_ref, (dk_ref, dv_ref) = _unpack(st, refs)
    bq, bk = st.config.block_q_dkv, st.config.block_kv_dkv
    j = pl.program_id(2)
    k, v = k_ref[...], v_ref[...]
    kv_seg = kv_seg_ref[...] if kv_seg_ref is not None else None
    kv_length = len_ref[()] if len_ref is not None else None

    def body(i, carry):
        def compute(carry):
            dk, dv = carry
            start = pl.multiple_of(i * bq, bq)
            q = q_ref[pl.ds(start, bq), :]
            do = do_ref[pl.ds(start, bq), :]
            lse = lse_ref[pl.ds(start, bq)]
            delta = delta_ref[pl.ds(start, bq)]
            q_seg = q_seg_ref[pl.ds(start, bq)] if q_seg_ref is not None else None
            p, ds = _dlogits(st, q, k, v, do, lse, delta, start, j * bk, bq, bk, q_seg, kv_seg, kv_length)
            dv = dv + _dot_tn(p.astype(do.dtype), do)
            dk = dk + _dot_tn(ds.astype(q.dtype), q)
            return dk, dv

        return _maybe_skip(live_ref, i, compute, carry)

    init = (jnp.zeros(k_ref.shape, jnp.float32), jnp.zeros(v_ref.shape, jnp.float32))
    dk, dv = lax.fori_loop(lo_ref[()], hi_ref[()], body, init)
    dk_ref[...] = (dk * st.spec.scale).astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)


# --- call builders -----------------------------------------------------------------------------------


def _pad_to(x: jax.Array, axis: int, size: int, value: Any = 0) -> jax.Array:
    if x.shape[axis] == size:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, size - x.shape[axis])
    return jnp.pad(x, widths, constant_values=value)


def _mask_inputs(
    st: _Static, masks: MaskArrays, live: jax.Array, tq: int, tk: int, lq: int, lk: int, transpose: bool
):
    """The optional kernel inputs and their BlockSpecs (see ``_unpack`` for the order).

    ``transpose`` is for the dk/dv kernel, whose programs run over kv tiles and loop over q tiles.
    """
    arrays, specs = [], []
    if st.has_seg:
        qs = _pad_to(masks.q_segment_ids.astype(jnp.int32), 1, lq)
        ks = _pad_to(masks.kv_segment_ids.astype(jnp.int32), 1, lk)
        if transpose:
            specs += [
                pl.BlockSpec((None, lq), lambda b, h, j: (b, 0)),
                pl.BlockSpec((None, tk), lambda b, h, j: (b, j)),
            ]
        else:
            specs += [
                pl.BlockSpec((None, tq), lambda b, h, i: (b, i)),
                pl.BlockSpec((None, lk), lambda b, h, i: (b, 0)),
            ]
        arrays += [qs, ks]
    if st.has_len:
        arrays.append(masks.kv_lengths.astype(jnp.int32))
        specs.append(pl.BlockSpec((None,), lambda b, h, i: (b,)))
    if transpose:
        live = live.swapaxes(1, 2)
    lo, hi = live_span(live)
    n_inner = live.shape[2]
    # The tables have a batch axis only when a mask depends on the batch element.
    bsel = (lambda b: b) if live.shape[0] > 1 else (lambda b: 0)
    arrays += [lo, hi]
    specs += [pl.BlockSpec((None, None), lambda b, h, i: (bsel(b), i))] * 2
    if st.has_live:
        width = _next_pow2(n_inner)  # Triton blocks are powers of two
        arrays.append(_pad_to(live.astype(jnp.int32), 2, width))
        specs.append(pl.BlockSpec((None, None, width), lambda b, h, i: (bsel(b), i, 0)))
    return arrays, specs


def _prepare(q, k, v, st: _Static):
    """Pads sequences to tile multiples and head_dim to a power of two (>= 16): Triton needs both."""
    cfg = st.config
    d = q.shape[-1]
    dp = max(16, _next_pow2(d))
    tile_q = math.lcm(cfg.block_q, cfg.block_q_dkv)
    tile_k = math.lcm(cfg.block_kv, cfg.block_kv_dkv)
    lq = cdiv(q.shape[1], tile_q) * tile_q
    lk = cdiv(k.shape[1], tile_k) * tile_k
    q = _pad_to(_pad_to(q, 3, dp), 1, lq)
    k = _pad_to(_pad_to(k, 3, dp), 1, lk)
    v = _pad_to(_pad_to(v, 3, dp), 1, lk)
    return q, k, v, lq, lk


def _warps(st: _Static, d: int) -> int:
    return st.config.num_warps or (4 if d <= 64 else 8)


def _forward(q, k, v, masks: MaskArrays, st: _Static):
    b, tq, hq, d = q.shape
    hk = k.shape[2]
    g = hq // hk
    bq, bk = st.config.block_q, st.config.block_kv
    qp, kp, vp, lq, lk = _prepare(q, k, v, st)
    dp = qp.shape[-1]
    live = tile_liveness(st.spec, masks, bq, bk, lq // bq, lk // bk)
    extra, extra_specs = _mask_inputs(st, masks, live, bq, bk, lq, lk, transpose=False)
    out, lse = pl.pallas_call(
        functools.partial(_fwd_kernel, st=st),
        grid=(b, hq, lq // bq),
        in_specs=[
            pl.BlockSpec((None, bq, None, dp), lambda b_, h, i: (b_, i, h, 0)),
            pl.BlockSpec((None, lk, None, dp), lambda b_, h, i: (b_, 0, h // g, 0)),
            pl.BlockSpec((None, lk, None, dp), lambda b_, h, i: (b_, 0, h // g, 0)),
            *extra_specs,
        ],
        out_specs=[
            pl.BlockSpec((None, bq, None, dp), lambda b_, h, i: (b_, i, h, 0)),
            pl.BlockSpec((None, None, bq), lambda b_, h, i: (b_, h, i)),
        ],
        out_shape=[
            jax.ShapeDtypeStruct((b, lq, hq, dp), q.dtype),
            jax.ShapeDtypeStruct((b, hq, lq), jnp.float32),
        ],
        interpret=st.interpret,
        compiler_params=compiler_params(
            st.interpret,
            num_warps=_warps(st, dp),
            num_stages=st.config.num_stages,
            dimension_semantics=("parallel", "parallel", "parallel"),
        ),
        name="flash_attention_fwd",
    )(qp, kp, vp, *extra)
    return out[:, :tq, :, :d], lse[:, :, :tq]


def _backward(q, k, v, out, lse, do, dlse, masks: MaskArrays, st: _Static):
    b, tq, hq, d = q.shape
    tk, hk = k.shape[1], k.shape[2]
    g = hq // hk
    cfg = st.config
    qp, kp, vp, lq, lk = _prepare(q, k, v, st)
    dp = qp.shape[-1]
    dop = _pad_to(_pad_to(do, 3, dp), 1, lq)
    delta = jnp.einsum("bqhd,bqhd->bhq", do.astype(jnp.float32), out.astype(jnp.float32))
    if dlse is not None:
        delta = delta - dlse
    delta = _pad_to(delta, 2, lq)
    lse_b = _pad_to(jnp.where(lse == -jnp.inf, jnp.inf, lse), 2, lq, value=jnp.inf)
    cp = compiler_params(
        st.interpret,
        num_warps=_warps(st, dp),
        num_stages=cfg.num_stages,
        dimension_semantics=("parallel", "parallel", "parallel"),
    )

    bq, bk = cfg.block_q, cfg.block_kv
    live = tile_liveness(st.spec, masks, bq, bk, lq // bq, lk // bk)
    extra, extra_specs = _mask_inputs(st, masks, live, bq, bk, lq, lk, transpose=False)
    row = lambda b_, h, i: (b_, i, h, 0)
    dq = pl.pallas_call(
        functools.partial(_dq_kernel, st=st),
        grid=(b, hq, lq // bq),
        in_specs=[
            pl.BlockSpec((None, bq, None, dp), row),
            pl.BlockSpec((None, lk, None, dp), lambda b_, h, i: (b_, 0, h // g, 0)),
            pl.BlockSpec((None, lk, None, dp), lambda b_, h, i: (b_, 0, h // g, 0)),
            pl.BlockSpec((None, bq, None, dp), row),
            pl.BlockSpec((None, None, bq), lambda b_, h, i: (b_, h, i)),
            pl.BlockSpec((None, None, bq), lambda b_, h, i: (b_, h, i)),
            *extra_specs,
        ],
        out_specs=pl.BlockSpec((None, bq, None, dp), row),
        out_shape=jax.ShapeDtypeStruct((b, lq, hq, dp), q.dtype),
        interpret=st.interpret,
        compiler_params=cp,
        name="flash_attention_dq",
    )(qp, kp, vp, dop, lse_b, delta, *extra)

    bq, bk = cfg.block_q_dkv, cfg.block_kv_dkv
    live = tile_liveness(st.spec, masks, bq, bk, lq // bq, lk // bk)
    extra, extra_specs = _mask_inputs(st, masks, live, bq, bk, lq, lk, transpose=True)
    full_q = lambda b_, h, j: (b_, 0, h, 0)
    col = lambda b_, h, j: (b_, j, h // g, 0)
    # One program per (q head, kv tile); the q heads of a group are summed afterwards (GQA).
    dk, dv = pl.pallas_call(
        functools.partial(_dkv_kernel, st=st),
        grid=(b, hq, lk // bk),
        in_specs=[
            pl.BlockSpec((None, lq, None, dp), full_q),
            pl.BlockSpec((None, bk, None, dp), col),
            pl.BlockSpec((None, bk, None, dp), col),
            pl.BlockSpec((None, lq, None, dp), full_q),
            pl.BlockSpec((None, None, lq), lambda b_, h, j: (b_, h, 0)),
            pl.BlockSpec((None, None, lq), lambda b_, h, j: (b_, h, 0)),
            *extra_specs,
        ],
        out_specs=[pl.BlockSpec((None, bk, None, dp), lambda b_, h, j: (b_, j, h, 0))] * 2,
        out_shape=[jax.ShapeDtypeStruct((b, lk, hq, dp), jnp.float32)] * 2,
        interpret=st.interpret,
        compiler_params=cp,
        name="flash_attention_dkv",
    )(qp, kp, vp, dop, lse_b, delta, *extra)
    dk = dk[:, :tk, :, :d].reshape(b, tk, hk, g, d).sum(3).astype(k.dtype)
    dv = dv[:, :tk, :, :d].reshape(b, tk, hk, g, d).sum(3).astype(v.dtype)
    return dq[:, :tq, :, :d], dk, dv


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _flash(q, k, v, masks, st):
    return _forward(q, k, v, masks, st)


def _flash_fwd(q, k, v, masks, st):
    out, lse = _forward(q, k, v, masks, st)
    return (out, lse), (q, k, v, masks, out, lse)


def _flash_bwd(st, res, cot):
    q, k, v, masks, out, lse = res
    do, dlse = cot
    dq, dk, dv = _backward(q, k, v, out, lse, do, dlse, masks, st)
    return dq, dk, dv, jax.tree.map(_zero_cotangent, masks)


def _zero_cotangent(x):
    return (
        np.zeros(x.shape, jax.dtypes.float0)
        if not jnp.issubdtype(x.dtype, jnp.inexact)
        else jnp.zeros_like(x)
    )


_flash.defvjp(_flash_fwd, _flash_bwd)


def flash_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    spec: AttentionSpec,
    masks: MaskArrays | None = None,
    *,
    config: FlashConfig | None = None,
    implementation: str = "pallas",
) -> tuple[jax.Array, jax.Array]:
    """FlashAttention with the Pallas kernels. Returns ``(out [b, tq, hq, d], lse [b, tq, hq] f32)``.

    Inputs are already validated (``jaxflash.attention`` does that). Raises ``NotImplementedError``
    for what the kernels do not do (dropout; a block mask whose blocks no power-of-two tile
    divides), so the dispatcher falls back to the XLA path.
    """
    if spec.dropout_rate > 0.0:
        raise NotImplementedError("attention dropout is not implemented in the Pallas kernels")
    masks = MaskArrays() if masks is None else masks
    interpret = interpret_for(implementation)
    config = config or default_config(spec.q_len, spec.kv_len, q.shape[-1])
    if spec.mask_block is not None:
        config = _fit_to_mask_blocks(config, spec.mask_block, minimum=1 if interpret is not False else 16)
    st = _Static(
        spec=spec,
        config=config,
        interpret=interpret,
        has_seg=masks.q_segment_ids is not None,
        has_len=masks.kv_lengths is not None,
        has_live=masks.q_segment_ids is not None or masks.block_mask is not None,
    )
    out, lse = _flash(q, k, v, masks, st)
    return out, jnp.swapaxes(lse, 1, 2)


def _fit_to_mask_blocks(config: FlashConfig, mask_block: tuple[int, int], minimum: int) -> FlashConfig:
    """Shrinks tiles to powers of two dividing the block-mask blocks, so a tile's mask is one value of
    the block mask and skipping dead tiles applies it exactly."""
    rows, cols = mask_block

    def fit(tile, block):
        while tile > 1 and block % tile:
            tile //= 2
        if tile < minimum:
            raise NotImplementedError(
                f"the block mask's blocks ({rows} x {cols}) are not multiples of a power-of-two tile "
                f">= {minimum}"
            )
        return tile

    return dataclasses.replace(
        config,
        block_q=fit(config.block_q, rows),
        block_kv=fit(config.block_kv, cols),
        block_q_dkv=fit(config.block_q_dkv, rows),
        block_kv_dkv=fit(config.block_kv_dkv, cols),
    )
