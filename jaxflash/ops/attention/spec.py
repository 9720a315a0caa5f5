"""What an attention call means, shared by every implementation: the static spec, the mask arrays, which
tiles hold a visible entry, the dropout hash, non-finite keys, and the plain reference.

Masks (all combine by AND):

- causal: query ``i`` sees key ``j`` only if ``j <= i + offset``; the *diagonal offset* aligns the last
  query with the last valid key of its sequence (bottom-right, as FlashAttention 2.1+ does):
  ``offset = kv_len - q_len`` in general, ``kv_lengths[b] - q_len`` per sequence with ``kv_lengths``
  (FlashAttention's ``cache_seqlens``: a chunked prefill never sees the future), and, for packed
  sequences (segment ids) under a causal or window mask, ``end_k - end_q`` where ``end_k`` is one past
  the last valid key of the query's segment and ``end_q`` one past its last query (FlashAttention's
  varlen meaning: each packed sequence is aligned bottom-right on its own);
- a local window ``(left, right)``: ``-left <= j - (i + offset) <= right``, None unbounded on a side;
- segment ids: a key is visible only to the queries of its own segment;
- ``kv_lengths``: keys at positions ``>= kv_lengths[b]`` are padding;
- a block mask ``[q_blocks, kv_blocks]`` (block-sparse attention).

Logit soft-capping ``s -> cap * tanh(s / cap)`` (Gemma 2) is applied before masking. A query row that
every key is masked from returns zeros and ``lse = -inf`` (the log of an empty sum), never NaN, so partial
results still combine exactly by logsumexp (Hydragen).

Non-finite keys and values never reach a query that cannot see them: :func:`poison_nonfinite_keys` marks a
key whose ``k`` or ``v`` holds a NaN or inf by a NaN key row and a zero value row, so the masks (which
replace hidden logits by ``-inf`` before anything is multiplied) drop it for the queries that cannot see
it, and turn the output of every query that can see it into NaN. Without this, the ``0 * NaN`` of a
hidden entry in ``P @ V`` would make hidden NaNs leak into visible outputs.

Layout everywhere: ``[batch, seq, heads, head_dim]``; q heads are a multiple of kv heads and q head ``h``
reads kv head ``h // (q_heads // kv_heads)`` (GQA/MQA).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxflash.utils import fits_in_memory, memory_estimate_message

# Sentinel for "no bound" in window arithmetic: far beyond any sequence length, far below int32 overflow.
UNBOUNDED = 1 << 29


@dataclasses.dataclass(frozen=True)
class AttentionSpec:
    """Everything static about one attention call: lengths, the masks that are pure index arithmetic,
    numerics. Hashable, so it can be a ``nondiff_argnums`` of a ``custom_vjp`` and a jit static.

    Attributes:
      q_len: number of queries.
      kv_len: number of keys (the padded length when ``kv_lengths`` is given).
      scale: multiplies ``q . k`` before the soft cap.
      causal: key ``j`` visible to query ``i`` only if ``j <= i + offset`` (module docstring).
      window: ``(left, right)``; key ``j`` visible only if ``-left <= j - (i + offset) <= right``;
        ``None`` on a side means unbounded.
      logits_soft_cap: ``cap`` of ``cap * tanh(s / cap)``; None for none.
      mask_block: ``(rows, cols)`` of one block of the block mask, None when there is none.
      dropout_rate: probability of dropping an attention weight (xla and reference paths only).
      want_lse: whether the caller uses the logsumexp; paths that cannot give it in f32 (cuDNN)
        refuse the call when it does.
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
        """The diagonal offset when no array makes it per sequence: ``kv_len - q_len``."""
        return self.kv_len - self.q_len

    @property
    def bounds(self) -> tuple[int, int]:
        """``(lower, upper)``: query ``i`` sees key ``j`` iff ``lower <= j - i - offset <= upper``."""
        left, right = self.window if self.window is not None else (None, None)
        lower = -UNBOUNDED if left is None else -left
        upper = UNBOUNDED if right is None else right
        if self.causal:
            upper = min(upper, 0)
        return lower, upper

    @property
    def has_band(self) -> bool:
        """Whether a causal or window mask applies (the masks that depend on the diagonal)."""
        return self.causal or self.window is not None

    def softcap(self, s: jax.Array) -> jax.Array:
        """``cap * tanh(s / cap)``: bounds the logits smoothly (Gemma 2); identity without a cap."""
        cap = self.logits_soft_cap
        return s if cap is None else cap * jnp.tanh(s / cap)

    def band_mask(self, q_pos: jax.Array, kv_pos: jax.Array, offset: Any = None) -> jax.Array:
        """Causal/window/true-length part of the mask for broadcastable position arrays.

        ``offset`` broadcasts against ``q_pos`` (per-query diagonal offsets, :class:`MaskArrays`);
        None: the static :attr:`offset`.
        """
        allowed = kv_pos < self.kv_len
        if self.has_band:
            lower, upper = self.bounds
            rel = kv_pos - q_pos - (self.offset if offset is None else offset)
            if lower > -UNBOUNDED:
                allowed = allowed & (rel >= lower)
            if upper < UNBOUNDED:
                allowed = allowed & (rel <= upper)
        return allowed

    def element_mask(
        self,
        q_pos: jax.Array,
        kv_pos: jax.Array,
        *,
        q_seg: jax.Array | None = None,
        kv_seg: jax.Array | None = None,
        kv_length: jax.Array | None = None,
        offset: jax.Array | None = None,
        block_mask: jax.Array | None = None,
    ) -> jax.Array:
        """The full boolean mask for query positions ``q_pos [..., Tq, 1]`` and keys ``kv_pos [..., 1, Tk]``.

        ``q_seg``/``kv_seg``/``offset`` broadcast like the positions; ``kv_length`` broadcasts against
        ``kv_pos``; ``block_mask`` is the whole ``[q_blocks, kv_blocks]`` array (gathered here).
        """
        allowed = self.band_mask(q_pos, kv_pos, offset)
        if q_seg is not None:
            allowed = allowed & (q_seg == kv_seg)
        if kv_length is not None:
            allowed = allowed & (kv_pos < kv_length)
        if block_mask is not None:
            rows, cols = self.mask_block
            qb = jnp.clip(q_pos // rows, 0, block_mask.shape[0] - 1)
            kb = jnp.clip(kv_pos // cols, 0, block_mask.shape[1] - 1)
            allowed = allowed & block_mask[qb, kb]
        return allowed

    def tile_liveness(self, masks: MaskArrays, tq: int, tk: int, n_q: int, n_k: int) -> Any:
        """Boolean ``[batch or 1, n_q, n_k]``: does tile ``(i, j)`` (``tq x tk``) hold a visible entry?

        A NumPy array when only static masks apply (so loop bounds fold at trace time), else a JAX array.
        Exact for the causal/window/length/kv_lengths/block masks with a static or per-sequence diagonal,
        conservative for segment ids and per-query diagonals, which is enough: the element mask is
        applied inside live tiles anyway.
        """
        r0, r1 = _tile_ranges(n_q, tq, self.q_len)
        c0, c1 = _tile_ranges(n_k, tk, self.kv_len)
        live = ((r1 >= r0)[:, None] & (c1 >= c0)[None, :])[None]
        lower, upper = self.bounds
        if self.has_band and masks.offsets is None:
            # Some row r of the tile sees some column c of it: c0 - off - upper <= r <= c1 - off - lower.
            lo = np.maximum(r0[:, None], c0[None, :] - self.offset - upper)
            hi = np.minimum(r1[:, None], c1[None, :] - self.offset - lower)
            live = live & (lo <= hi)[None]
        elif self.has_band:
            # The diagonals i + offset[i] of the tile's rows span [d_lo, d_hi]; the tile is live when the
            # band around that span meets its columns.
            d_lo, d_hi = _diagonal_range(masks.offsets, n_q, tq, self.q_len)
            live = live & (c0[None, None, :] <= d_hi[:, :, None] + upper)
            live = live & (c1[None, None, :] >= d_lo[:, :, None] + lower)
        if masks.kv_lengths is not None:
            live = live & (jnp.asarray(c0, jnp.int32)[None, None, :] < masks.kv_lengths[:, None, None])
        if masks.q_segment_ids is not None:
            qmin, qmax = _segment_range(masks.q_segment_ids, n_q, tq, self.q_len)
            kmin, kmax = _segment_range(masks.kv_segment_ids, n_k, tk, self.kv_len)
            live = live & (qmin[:, :, None] <= kmax[:, None, :]) & (kmin[:, None, :] <= qmax[:, :, None])
        if masks.block_mask is not None:
            rows, cols = self.mask_block
            overlap_q = _overlap(r0, r1, masks.block_mask.shape[0], rows)
            overlap_k = _overlap(c0, c1, masks.block_mask.shape[1], cols)
            hits = jnp.asarray(overlap_q) @ masks.block_mask.astype(jnp.float32) @ jnp.asarray(overlap_k).T
            live = live & (hits > 0)[None]
        return live


@dataclasses.dataclass(frozen=True)
class MaskArrays:
    """The data-dependent masks of a call, as a pytree (any field may be None).

    q_segment_ids ``[batch, q_len]`` and kv_segment_ids ``[batch, kv_len]`` (int32), kv_lengths
    ``[batch]`` (int32), block_mask ``[q_blocks, kv_blocks]`` (bool), and offsets ``[batch, q_len]``
    (int32): each query's diagonal offset when it depends on the data (causal or window masks with
    ``kv_lengths`` or segment ids; :func:`diagonal_offsets`), None when it is the static
    :attr:`AttentionSpec.offset`.
    """

    q_segment_ids: Any = None
    kv_segment_ids: Any = None
    kv_lengths: Any = None
    block_mask: Any = None
    offsets: Any = None


jax.tree_util.register_dataclass(
    MaskArrays,
    data_fields=["q_segment_ids", "kv_segment_ids", "kv_lengths", "block_mask", "offsets"],
    meta_fields=[],
)


def diagonal_offsets(
    spec: AttentionSpec, q_seg: Any, kv_seg: Any, kv_lengths: Any, batch: int
) -> jax.Array | None:
    """Per-query diagonal offsets ``[batch, q_len]`` (module docstring), or None when the static
    :attr:`AttentionSpec.offset` holds: no causal/window mask, or neither segments nor ``kv_lengths``."""
    if not spec.has_band or (q_seg is None and kv_lengths is None):
        return None
    if q_seg is None:
        return jnp.broadcast_to((kv_lengths - spec.q_len)[:, None], (batch, spec.q_len)).astype(jnp.int32)
    valid = jnp.ones(kv_seg.shape, bool)
    if kv_lengths is not None:
        valid = jnp.arange(spec.kv_len)[None, :] < kv_lengths[:, None]
    end_k = jax.vmap(_end_of_segment)(q_seg, kv_seg, valid)
    end_q = jax.vmap(_end_of_segment)(q_seg, q_seg, jnp.ones(q_seg.shape, bool))
    return (end_k - end_q).astype(jnp.int32)


def _end_of_segment(ids: jax.Array, of: jax.Array, valid: jax.Array) -> jax.Array:
    """For each entry of ``ids``: one past the last valid position of ``of`` holding the same id, or the
    entry's own end when there is none (it then sees no key anyway)."""
    order = jnp.lexsort((jnp.arange(of.shape[0]), valid, of))  # by id, then invalid first, then position
    sorted_ids, sorted_valid = of[order], valid[order]
    idx = jnp.clip(jnp.searchsorted(sorted_ids, ids, side="right") - 1, 0, of.shape[0] - 1)
    found = (sorted_ids[idx] == ids) & sorted_valid[idx]
    return jnp.where(found, order[idx] + 1, 0)


def _tile_ranges(n_tiles: int, tile: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    start = np.arange(n_tiles) * tile
    end = np.minimum(start + tile, length) - 1  # last real position; < start for all-padding tiles
    return start, end


def _overlap(start: np.ndarray, end: np.ndarray, n_blocks: int, block: int) -> np.ndarray:
    b0 = np.arange(n_blocks) * block
    return ((b0[None, :] <= end[:, None]) & (b0[None, :] + block - 1 >= start[:, None])).astype(np.float32)


def _tile_rows(x: jax.Array, n_tiles: int, tile: int, length: int, fill: int) -> jax.Array:
    """``[b, length]`` -> ``[b, n_tiles, tile]``, padded with ``fill``."""
    x = jnp.pad(x, ((0, 0), (0, n_tiles * tile - length)), constant_values=fill)
    return x.reshape(x.shape[0], n_tiles, tile)


def _segment_range(seg: jax.Array, n_tiles: int, tile: int, length: int) -> tuple[jax.Array, jax.Array]:
    big = jnp.iinfo(jnp.int32).max
    return _tile_rows(seg, n_tiles, tile, length, big).min(-1), _tile_rows(
        seg, n_tiles, tile, length, -big
    ).max(-1)


def _diagonal_range(offsets: jax.Array, n_tiles: int, tile: int, length: int) -> tuple[jax.Array, jax.Array]:
    """Smallest and largest diagonal key ``i + offsets[i]`` over the real rows of each query tile."""
    diag = offsets + jnp.arange(length, dtype=jnp.int32)[None, :]
    big = 2 * UNBOUNDED
    return _tile_rows(diag, n_tiles, tile, length, big).min(-1), _tile_rows(
        diag, n_tiles, tile, length, -big
    ).max(-1)


# --- non-finite keys and values ------------------------------------------------------------------------


def poison_nonfinite_keys(k: jax.Array, v: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Keys whose ``k`` or ``v`` holds a non-finite entry become a NaN key row and a zero value row.

    The masks then hide them exactly from the queries that cannot see them (a hidden logit is replaced by
    ``-inf`` whatever its value, and the zero value row leaves ``0 * v`` finite), while every query that
    sees one gets a NaN logit and so a NaN output, as arithmetic on the raw inputs would give. The
    gradients of the kept entries pass through unchanged.
    """
    bad = ~(jnp.isfinite(k).all(-1, keepdims=True) & jnp.isfinite(v).all(-1, keepdims=True))
    return jnp.where(bad, jnp.nan, k).astype(k.dtype), jnp.where(bad, 0, v).astype(v.dtype)


def finite_keys(k: jax.Array) -> jax.Array:
    """Poisoned key rows (:func:`poison_nonfinite_keys`) as zeros, for the products where a key is a
    multiplicand rather than a logit (``dQ = dS K``): a hidden key's zero ``dS`` then stays zero."""
    return jnp.where(jnp.isnan(k), jnp.zeros((), k.dtype), k)


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

# Arrays of the reference's [batch, q_heads, q_len, kv_len] size alive at once (logits, mask, weights).
_REFERENCE_LIVE_MATRICES = 3


def reference_bytes(spec: AttentionSpec, batch: int, q_heads: int) -> int:
    """Memory the reference needs for its materialised attention matrices."""
    return _REFERENCE_LIVE_MATRICES * 4 * batch * q_heads * spec.q_len * spec.kv_len


def check_reference_fits(spec: AttentionSpec, batch: int, q_heads: int) -> None:
    """Refuses (``NotImplementedError``, with the estimate) a reference call that cannot fit in memory."""
    need = reference_bytes(spec, batch, q_heads)
    if not fits_in_memory(need):
        raise NotImplementedError(
            memory_estimate_message(
                f"the reference materialises [batch={batch}, heads={q_heads}, {spec.q_len}, {spec.kv_len}] "
                "attention matrices and",
                need,
            )
            + "; use implementation='xla' (O(N) memory) or 'pallas'"
        )


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
    k, v = poison_nonfinite_keys(k, v)
    # The poison enters as a logit bias and the key factor stays finite, so that autodiff's dQ = dS K
    # never multiplies a hidden entry's zero by a NaN key.
    poison = jnp.where(jnp.isnan(k[..., 0]), jnp.nan, 0.0).transpose(0, 2, 1)[:, :, None, None, :]
    qf = q.astype(jnp.float32).reshape(b, tq, hk, g, -1)
    s = jnp.einsum(
        "bqkgd,bckd->bkgqc", qf, finite_keys(k).astype(jnp.float32), precision=lax.Precision.HIGHEST
    )
    s = spec.softcap(s * spec.scale) + poison
    q_pos = jnp.arange(tq)[:, None]
    kv_pos = jnp.arange(tk)[None, :]
    seg_q = seg_k = length = offset = None
    if masks.q_segment_ids is not None:
        seg_q = masks.q_segment_ids[:, None, None, :, None]
        seg_k = masks.kv_segment_ids[:, None, None, None, :]
    if masks.kv_lengths is not None:
        length = masks.kv_lengths[:, None, None, None, None]
    if masks.offsets is not None:
        offset = masks.offsets[:, None, None, :, None]
    allowed = spec.element_mask(
        q_pos,
        kv_pos,
        q_seg=seg_q,
        kv_seg=seg_k,
        kv_length=length,
        offset=offset,
        block_mask=masks.block_mask,
    )
    allowed = jnp.broadcast_to(allowed, s.shape)
    s = jnp.where(allowed, s, -jnp.inf)
    m = jnp.max(s, -1, keepdims=True)
    m = jnp.where(m == -jnp.inf, 0.0, m)
    p = jnp.where(allowed, jnp.exp(s - m), 0.0)
    denom = p.sum(-1, keepdims=True)
    # NaN compares false with 0: a row whose sum is NaN keeps it (it sees a non-finite key).
    empty = denom[..., 0] == 0
    safe = jnp.where(denom == 0, 1.0, denom)
    lse = jnp.where(empty, -jnp.inf, jnp.log(safe)[..., 0] + m[..., 0])
    p = p / safe
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
