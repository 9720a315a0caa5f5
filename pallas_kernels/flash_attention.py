"""FlashAttention forward and backward as Pallas kernels.

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

What the masks mean (causal and window around each query's diagonal, segment ids, ``kv_lengths``, a
block mask, the soft cap, non-finite keys) is the op's, not the kernel's: the kernel is handed the op's
static spec (``jaxflash.ops.attention.spec.AttentionSpec``), whose ``band_mask``, ``softcap`` and
``tile_liveness`` it calls, and its mask arrays (segment ids, lengths, per-query diagonal offsets, block
mask). Tiles that the masks remove entirely are never computed: the kv loop of every query tile runs
only over the span of live tiles, and a tile inside the span that is dead is skipped with ``lax.cond``.
A query row that no key reaches returns zeros and ``lse = -inf``.

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
from jax import lax
from jax.experimental import pallas as pl
from jaxflash.pallas_kernels.common import compiler_params, dot_nn, dot_nt, dot_tn, interpret_for

from jaxflash.utils import cdiv, check_int, next_pow2, true_span, zero_cotangent

# The largest head_dim the kernels take (their tiles hold a whole head row).
MAX_HEAD_DIM = 256

# Duck types of the op's meaning (jaxflash.ops.attention.spec), which this module does not import.
AttentionSpec = Any  # static: q_len, kv_len, scale, logits_soft_cap, mask_block, dropout_rate, methods
MaskArrays = Any  # pytree: q_segment_ids, kv_segment_ids, kv_lengths, block_mask, offsets


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

    def __post_init__(self):
        for name in ("block_q", "block_kv", "block_q_dkv", "block_kv_dkv"):
            check_int(f"FlashConfig.{name}", getattr(self, name), power_of_two=True)
        if self.num_warps is not None:
            check_int("FlashConfig.num_warps", self.num_warps, power_of_two=True)
        check_int("FlashConfig.num_stages", self.num_stages)

    @property
    def tiles(self) -> tuple[int, int, int, int]:
        return self.block_q, self.block_kv, self.block_q_dkv, self.block_kv_dkv


def default_config(q_len: int, kv_len: int, head_dim: int) -> FlashConfig:
    """Heuristic tiles: 128 x 64 for head dims up to 128 (64 x 32 above, to fit shared memory),
    shrunk to the next power of two of short sequences (tokamax's Triton heuristic, widened)."""
    big = 128 if head_dim <= 128 else 64
    small = 64 if head_dim <= 128 else 32
    bq = max(16, min(big, next_pow2(q_len)))
    bk = max(16, min(small, next_pow2(kv_len)))
    return FlashConfig(
        block_q=bq,
        block_kv=bk,
        block_q_dkv=max(16, min(small, next_pow2(q_len))),
        block_kv_dkv=max(16, min(big, next_pow2(kv_len))),
    )


@dataclasses.dataclass(frozen=True)
class _Static:
    spec: AttentionSpec
    config: FlashConfig
    interpret: Any
    has_seg: bool
    has_len: bool
    has_offsets: bool  # per-query diagonal offsets (causal/window with kv_lengths or segments)
    has_live: bool  # a tile inside a live span may be dead (segments, block mask): check each


@dataclasses.dataclass(frozen=True)
class _TileMasks:
    """The mask inputs of one query tile (any may be None): segment ids, kv length, diagonal offsets."""

    q_seg: Any
    kv_length: Any
    offsets: Any


def _tile_mask(st: _Static, q_start, kv_start, bq, bk, tm: _TileMasks, kv_seg):
    q_pos = q_start + lax.broadcasted_iota(jnp.int32, (bq, bk), 0)
    kv_pos = kv_start + lax.broadcasted_iota(jnp.int32, (bq, bk), 1)
    offset = None if tm.offsets is None else tm.offsets[:, None]
    allowed = st.spec.band_mask(q_pos, kv_pos, offset)
    if tm.q_seg is not None:
        allowed = allowed & (tm.q_seg[:, None] == kv_seg[None, :])
    if tm.kv_length is not None:
        allowed = allowed & (kv_pos < tm.kv_length)
    return allowed


def _logits(st: _Static, q, k):
    return st.spec.softcap(dot_nt(q, k) * st.spec.scale)


def _unpack(st: _Static, refs):
    """Splits the optional inputs off the front of ``refs``: q_seg, kv_seg, kv_len, offsets, lo, hi, live."""
    refs = list(refs)
    q_seg_ref = kv_seg_ref = len_ref = off_ref = live_ref = None
    if st.has_seg:
        q_seg_ref, kv_seg_ref = refs.pop(0), refs.pop(0)
    if st.has_len:
        len_ref = refs.pop(0)
    if st.has_offsets:
        off_ref = refs.pop(0)
    lo_ref, hi_ref = refs.pop(0), refs.pop(0)
    if st.has_live:
        live_ref = refs.pop(0)
    return q_seg_ref, kv_seg_ref, len_ref, off_ref, lo_ref, hi_ref, live_ref, refs


def _query_tile_masks(q_seg_ref, len_ref, off_ref, rows=None) -> _TileMasks:
    """The mask inputs of the query rows ``rows`` (a ``pl.ds``; None: the whole block)."""

    def load(ref):
        if ref is None:
            return None
        return ref[...] if rows is None else ref[rows]

    return _TileMasks(load(q_seg_ref), len_ref[()] if len_ref is not None else None, load(off_ref))


def _maybe_skip(live_ref, j, compute, carry):
    if live_ref is None:
        return compute(carry)
    return lax.cond(live_ref[j] != 0, compute, lambda c: c, carry)


def _fwd_kernel(q_ref, k_ref, v_ref, *refs, st: _Static):
    q_seg_ref, kv_seg_ref, len_ref, off_ref, lo_ref, hi_ref, live_ref, (o_ref, lse_ref) = _unpack(st, refs)
    bq, bk = st.config.block_q, st.config.block_kv
    i = pl.program_id(2)
    q = q_ref[...]
    tm = _query_tile_masks(q_seg_ref, len_ref, off_ref)

    def body(j, carry):
        def compute(carry):
            acc, m, row_sum = carry
            start = pl.multiple_of(j * bk, bk)
            k = k_ref[pl.ds(start, bk), :]
            v = v_ref[pl.ds(start, bk), :]
            kv_seg = kv_seg_ref[pl.ds(start, bk)] if kv_seg_ref is not None else None
            s = _logits(st, q, k)
            allowed = _tile_mask(st, i * bq, start, bq, bk, tm, kv_seg)
            s = jnp.where(allowed, s, -jnp.inf)
            m_new = jnp.maximum(m, s.max(axis=1))
            m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new)  # rows masked so far: no NaN from -inf - -inf
            p = jnp.exp(s - m_safe[:, None])
            alpha = jnp.exp(m - m_safe)
            row_sum = alpha * row_sum + p.sum(axis=1)
            acc = alpha[:, None] * acc + dot_nn(p.astype(v.dtype), v)
            return acc, m_new, row_sum

        return _maybe_skip(live_ref, j, compute, carry)

    d = q_ref.shape[-1]
    init = (
        jnp.zeros((bq, d), jnp.float32),
        jnp.full((bq,), -jnp.inf, jnp.float32),
        jnp.zeros((bq,), jnp.float32),
    )
    acc, m, row_sum = lax.fori_loop(lo_ref[()], hi_ref[()], body, init)
    # A row no key reaches gives 0 and lse = -inf; a NaN sum (a visible non-finite key) stays NaN.
    empty = row_sum == 0
    l_safe = jnp.where(empty, 1.0, row_sum)
    o_ref[...] = (acc / l_safe[:, None]).astype(o_ref.dtype)
    lse_ref[...] = jnp.where(empty, -jnp.inf, m + jnp.log(l_safe))


def _dq_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, *refs, st: _Static):
    q_seg_ref, kv_seg_ref, len_ref, off_ref, lo_ref, hi_ref, live_ref, (dq_ref,) = _unpack(st, refs)
    bq, bk = st.config.block_q, st.config.block_kv
    i = pl.program_id(2)
    q, do = q_ref[...], do_ref[...]
    lse, delta = lse_ref[...], delta_ref[...]
    tm = _query_tile_masks(q_seg_ref, len_ref, off_ref)

    def body(j, dq):
        def compute(dq):
            start = pl.multiple_of(j * bk, bk)
            k = k_ref[pl.ds(start, bk), :]
            v = v_ref[pl.ds(start, bk), :]
            kv_seg = kv_seg_ref[pl.ds(start, bk)] if kv_seg_ref is not None else None
            ds = _dlogits(st, q, k, v, do, lse, delta, i * bq, start, bq, bk, tm, kv_seg)[1]
            # NaN key rows mark non-finite keys for the logits; as a factor they are zeros, so the zero
            # dS of the queries that cannot see them stays zero.
            k_factor = jnp.where(jnp.isnan(k), jnp.zeros((), k.dtype), k)
            return dq + dot_nn(ds.astype(k.dtype), k_factor)

        return _maybe_skip(live_ref, j, compute, dq)

    dq = lax.fori_loop(lo_ref[()], hi_ref[()], body, jnp.zeros(q_ref.shape, jnp.float32))
    dq_ref[...] = (dq * st.spec.scale).astype(dq_ref.dtype)


def _dlogits(st, q, k, v, do, lse, delta, q_start, kv_start, bq, bk, tm: _TileMasks, kv_seg):
    """Recomputed probabilities ``P`` and the logit gradient ``dS`` (before the 1/scale) of one tile."""
    raw = dot_nt(q, k) * st.spec.scale
    s = st.spec.softcap(raw)
    allowed = _tile_mask(st, q_start, kv_start, bq, bk, tm, kv_seg)
    # lse is +inf on fully masked rows (set by the wrapper), so exp gives 0 without a NaN.
    p = jnp.where(allowed, jnp.exp(s - lse[:, None]), 0.0)
    dp = dot_nt(do, v)
    ds = p * (dp - delta[:, None])
    if st.spec.logits_soft_cap is not None:
        t = jnp.tanh(raw / st.spec.logits_soft_cap)
        ds = ds * (1.0 - t * t)
    return p, ds


def _dkv_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, *refs, st: _Static):
    q_seg_ref, kv_seg_ref, len_ref, off_ref, lo_ref, hi_ref, live_ref, (dk_ref, dv_ref) = _unpack(st, refs)
    bq, bk = st.config.block_q_dkv, st.config.block_kv_dkv
    j = pl.program_id(2)
    k, v = k_ref[...], v_ref[...]
    kv_seg = kv_seg_ref[...] if kv_seg_ref is not None else None

    def body(i, carry):
        def compute(carry):
            dk, dv = carry
            start = pl.multiple_of(i * bq, bq)
            q = q_ref[pl.ds(start, bq), :]
            do = do_ref[pl.ds(start, bq), :]
            lse = lse_ref[pl.ds(start, bq)]
            delta = delta_ref[pl.ds(start, bq)]
            tm = _query_tile_masks(q_seg_ref, len_ref, off_ref, pl.ds(start, bq))
            p, ds = _dlogits(st, q, k, v, do, lse, delta, start, j * bk, bq, bk, tm, kv_seg)
            dv = dv + dot_tn(p.astype(do.dtype), do)
            dk = dk + dot_tn(ds.astype(q.dtype), q)
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
    if st.has_offsets:
        arrays.append(_pad_to(masks.offsets.astype(jnp.int32), 1, lq))
        if transpose:
            specs.append(pl.BlockSpec((None, lq), lambda b, h, j: (b, 0)))
        else:
            specs.append(pl.BlockSpec((None, tq), lambda b, h, i: (b, i)))
    if transpose:
        live = live.swapaxes(1, 2)
    lo, hi = true_span(live)
    n_inner = live.shape[2]
    # The tables have a batch axis only when a mask depends on the batch element.
    bsel = (lambda b: b) if live.shape[0] > 1 else (lambda b: 0)
    arrays += [lo, hi]
    specs += [pl.BlockSpec((None, None), lambda b, h, i: (bsel(b), i))] * 2
    if st.has_live:
        width = next_pow2(n_inner)  # Triton blocks are powers of two
        arrays.append(_pad_to(live.astype(jnp.int32), 2, width))
        specs.append(pl.BlockSpec((None, None, width), lambda b, h, i: (bsel(b), i, 0)))
    return arrays, specs


def _prepare(q, k, v, st: _Static):
    """Pads sequences to tile multiples and head_dim to a power of two (>= 16): Triton needs both."""
    cfg = st.config
    d = q.shape[-1]
    dp = max(16, next_pow2(d))
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
    live = st.spec.tile_liveness(masks, bq, bk, lq // bq, lk // bk)
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
    # 0 on NaN rows (they see a non-finite key): the keys they cannot see keep zero gradients.
    delta = _pad_to(jnp.where(jnp.isnan(delta), 0.0, delta), 2, lq)
    lse_b = _pad_to(jnp.where(lse == -jnp.inf, jnp.inf, lse), 2, lq, value=jnp.inf)
    cp = compiler_params(
        st.interpret,
        num_warps=_warps(st, dp),
        num_stages=cfg.num_stages,
        dimension_semantics=("parallel", "parallel", "parallel"),
    )

    bq, bk = cfg.block_q, cfg.block_kv
    live = st.spec.tile_liveness(masks, bq, bk, lq // bq, lk // bk)
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
    live = st.spec.tile_liveness(masks, bq, bk, lq // bq, lk // bk)
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
    return dq, dk, dv, jax.tree.map(zero_cotangent, masks)


_flash.defvjp(_flash_fwd, _flash_bwd)


def flash_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    spec: AttentionSpec,
    masks: MaskArrays,
    *,
    config: FlashConfig | None = None,
    implementation: str = "pallas",
) -> tuple[jax.Array, jax.Array]:
    """FlashAttention with the Pallas kernels. Returns ``(out [b, tq, hq, d], lse [b, tq, hq] f32)``.

    ``spec`` and ``masks`` are the op's (``jaxflash.ops.attention.spec``); inputs are already validated
    and non-finite keys already marked by ``jaxflash.attention``. Raises ``NotImplementedError`` for
    what the kernels do not do (dropout; head_dim > MAX_HEAD_DIM; a block mask whose blocks no
    power-of-two tile divides), so the dispatcher falls back to the XLA path, and ``ValueError`` for a
    config the compiled kernels cannot take.
    """
    if spec.dropout_rate > 0.0:
        raise NotImplementedError("attention dropout is not implemented in the Pallas kernels")
    if q.shape[-1] > MAX_HEAD_DIM:
        raise NotImplementedError(f"the Pallas kernels take head_dim <= {MAX_HEAD_DIM}; got {q.shape[-1]}")
    interpret = interpret_for(implementation)
    minimum = 1 if interpret is not False else 16
    if config is None:
        config = default_config(spec.q_len, spec.kv_len, q.shape[-1])
    elif min(config.tiles) < minimum:
        raise ValueError(
            f"compiled kernels need every FlashConfig tile >= {minimum} (Triton dots); got {config}"
        )
    if spec.mask_block is not None:
        config = _fit_to_mask_blocks(config, spec.mask_block, minimum=minimum)
    st = _Static(
        spec=spec,
        config=config,
        interpret=interpret,
        has_seg=masks.q_segment_ids is not None,
        has_len=masks.kv_lengths is not None,
        has_offsets=masks.offsets is not None,
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
