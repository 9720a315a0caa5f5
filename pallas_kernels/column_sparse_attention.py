"""Chipmunk's column-sparse attention (``csp_attn``) forward as a Pallas kernel.

Chipmunk (Silveria, Govande, Fu; arXiv 2506.03275) groups queries into blocks of ``block_q``
consecutive rows and lets each group ``g`` attend to its own set of key columns
``S_g = indices[g, :counts[g]]``. For query ``i`` of group ``g``

    out_i = sum_{j in S_g} softmax_{S_g}(scale * q_i . k_j) v_j
    lse_i = log sum_{j in S_g} exp(scale * q_i . k_j)

normalised over ``S_g`` only, as in Chipmunk's Triton port (``triton/attn_csp.py``). A group with no
column returns zeros and ``lse = -inf``.

One program per (batch, q head, query group). It walks the group's column list in tiles of ``block_k``:
it loads ``block_k`` column ids, gathers those rows of K and V by index (``k_ref[ids, :]``) into a dense
``[block_k, head_dim]`` tile, and runs FlashAttention-2's online softmax on it with f32 accumulation
(the "column sparsity packed into dense tiles" of the paper). The loop stops after the last tile that
holds a valid column, so a group costs ``ceil(counts[g] / block_k)`` tiles whatever ``max_cols`` is;
positions past ``counts[g]`` in the last tile are masked.

How the gather is done, and its limits. The K and V blocks of a program span the whole ``[kv_len,
head_dim]`` sequence of its (batch, kv head); the kernel reads only the gathered rows of it.

- Triton (GPU): a block is a base pointer, so nothing is staged; ``k_ref[ids, :]`` lowers to a pointer
  gather ``K + ids * stride`` straight from HBM, the same addressing as Chipmunk's Triton kernel. The
  K/V block shape is the padded sequence, which Triton never materialises, so ``kv_len`` is unbounded.
- Interpreter (CPU): each program copies the whole K/V of its (batch, head) and gathers with a NumPy-style
  take; fine at test sizes, ``O(programs * kv_len * head_dim)`` work.
- TPU: Pallas TPU has no advanced indexing of a ref (its interpreter, ``JAXFLASH_PALLAS_INTERPRET=tpu``,
  raises "Advanced indexers are not supported on TPU"), and the whole K/V would have to sit in VMEM;
  the op registers the kernel for GPU only, and this module refuses TPU-semantics interpretation.

The column ids must already be in ``[0, kv_len)`` everywhere (padding positions too): the wrapper
below clamps them, so no id can address memory outside its sequence. This module computes the forward
pass only; the op (:mod:`jaxflash.ops.column_sparse_attention`) pairs it with its XLA path's VJP, and owns
the op's meaning, validation and reference.

Layout: ``q [batch, q_len, q_heads, head_dim]``, ``k, v [batch, kv_len, kv_heads, head_dim]`` with
``q_heads`` a multiple of ``kv_heads`` (q head ``h`` reads kv head ``h // (q_heads // kv_heads)``);
``indices [batch, q_heads, n_groups, max_cols]``, ``counts [batch, q_heads, n_groups]``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jaxflash.pallas_kernels.common import compiler_params, dot

from jaxflash.utils import cdiv, check_int, next_pow2

# The largest head_dim the kernel takes (a tile holds whole head rows).
MAX_HEAD_DIM = 256
# Triton's tl.dot needs every operand dimension >= 16 (and Triton blocks are powers of two).
_MIN_DOT_DIM = 16


@dataclasses.dataclass(frozen=True)
class ColumnSparseConfig:
    """Tiles and launch parameters of the kernel; reach them through
    ``column_sparse_attention(..., config=...)``.

    Attributes:
      block_k: gathered key columns per step of a group's loop. None: ``max_cols`` rounded up to a power
        of two, clamped to [16, 64]. The compiled (Triton) kernel needs a power of two >= 16; the
        interpreter takes any positive size.
      num_warps: Triton warps per program (None: 4 for head_dim <= 64, else 8).
      num_stages: Triton software-pipelining stages.
    """

    block_k: int | None = None
    num_warps: int | None = None
    num_stages: int = 2

    def __post_init__(self):
        if self.block_k is not None:
            check_int("ColumnSparseConfig.block_k", self.block_k)
        if self.num_warps is not None:
            check_int("ColumnSparseConfig.num_warps", self.num_warps, power_of_two=True)
        check_int("ColumnSparseConfig.num_stages", self.num_stages)


def resolve_block_k(config: ColumnSparseConfig, max_cols: int) -> int:
    """The column tile of ``config`` for column lists of ``max_cols`` entries."""
    if config.block_k is not None:
        return config.block_k
    return min(64, max(_MIN_DOT_DIM, next_pow2(max_cols)))


def unsupported_reason(config: ColumnSparseConfig, max_cols: int) -> str | None:
    """Why the compiled (Triton) kernel cannot run with this config, or None when it can."""
    block_k = resolve_block_k(config, max_cols)
    if block_k < _MIN_DOT_DIM or block_k & (block_k - 1):
        return f"the compiled kernel needs ColumnSparseConfig.block_k a power of two >= 16; got {block_k}"
    return None


# --- kernel --------------------------------------------------------------------------------------------


def _kernel(counts_ref, ids_ref, q_ref, k_ref, v_ref, o_ref, lse_ref, *, scale: float, block_k: int):
    # counts_ref: () int32; ids_ref: (max_cols_pad,) int32 in [0, kv_len); q_ref / o_ref: (bq, d);
    # k_ref / v_ref: (kv_len, d), read only at the gathered rows; lse_ref: (bq,) f32.
    q = q_ref[...]
    count = counts_ref[()]
    bq, d = q.shape

    def body(t, carry):
        acc, m, row_sum = carry
        start = pl.multiple_of(t * block_k, block_k)
        ids = ids_ref[pl.ds(start, block_k)]
        k = k_ref[ids, :]  # the gather: block_k selected key rows as one dense tile
        v = v_ref[ids, :]
        valid_col = start + lax.broadcasted_iota(jnp.int32, (1, block_k), 1) < count
        valid_row = start + lax.broadcasted_iota(jnp.int32, (block_k, 1), 0) < count
        s = dot(q, k, ((1,), (1,))) * scale
        s = jnp.where(valid_col, s, -jnp.inf)
        # Padding positions read column 0: zero its value row so that 0 * (a non-finite v) stays 0.
        v = jnp.where(valid_row, v, jnp.zeros((), v.dtype))
        m_new = jnp.maximum(m, s.max(axis=1))
        m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new)
        p = jnp.exp(s - m_safe[:, None])
        alpha = jnp.exp(m - m_safe)
        row_sum = alpha * row_sum + p.sum(axis=1)
        acc = alpha[:, None] * acc + dot(p.astype(v.dtype), v, ((1,), (0,)))
        return acc, m_new, row_sum

    init = (
        jnp.zeros((bq, d), jnp.float32),
        jnp.full((bq,), -jnp.inf, jnp.float32),
        jnp.zeros((bq,), jnp.float32),
    )
    acc, m, row_sum = lax.fori_loop(0, (count + block_k - 1) // block_k, body, init)
    empty = row_sum == 0  # no column: 0 and lse = -inf; a NaN sum (a non-finite selected key) stays NaN
    l_safe = jnp.where(empty, 1.0, row_sum)
    o_ref[...] = (acc / l_safe[:, None]).astype(o_ref.dtype)
    lse_ref[...] = jnp.where(empty, -jnp.inf, m + jnp.log(l_safe))


# --- call builder --------------------------------------------------------------------------------------


def _pad_axis(x: jax.Array, axis: int, size: int, value: Any = 0) -> jax.Array:
    if x.shape[axis] == size:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, size - x.shape[axis])
    return jnp.pad(x, widths, constant_values=value)


@functools.partial(jax.jit, static_argnames=("block_q", "scale", "block_k", "interpret", "config"))
def _forward(q, k, v, indices, counts, *, block_q, scale, block_k, interpret, config):
    b, tq, hq, d = q.shape
    tk, hk = k.shape[1], k.shape[2]
    rep = hq // hk
    groups, max_cols = indices.shape[2], indices.shape[3]
    # Triton blocks are powers of two and its dots need >= 16 rows and columns: pad each query group and
    # the head dim (the interpreter takes the same padded layout, so CPU tests run the compiled shapes).
    bq = max(_MIN_DOT_DIM, next_pow2(block_q))
    dp = max(_MIN_DOT_DIM, next_pow2(d))
    cols = cdiv(max_cols, block_k) * block_k

    qg = _pad_axis(q, 1, groups * block_q).reshape(b, groups, block_q, hq, d)
    qg = _pad_axis(_pad_axis(qg, 2, bq), 4, dp)
    kp, vp = _pad_axis(k, 3, dp), _pad_axis(v, 3, dp)
    valid = jnp.arange(max_cols, dtype=jnp.int32) < counts[..., None]
    ids = jnp.where(valid, jnp.clip(indices, 0, tk - 1), 0).astype(jnp.int32)
    ids = _pad_axis(ids, 3, cols)

    group_block = pl.BlockSpec((None, None, bq, None, dp), lambda b_, h, g: (b_, g, 0, h, 0))
    kv_block = pl.BlockSpec((None, tk, None, dp), lambda b_, h, g: (b_, 0, h // rep, 0))
    out, lse = pl.pallas_call(
        functools.partial(_kernel, scale=scale, block_k=block_k),
        grid=(b, hq, groups),
        in_specs=[
            pl.BlockSpec((None, None, None), lambda b_, h, g: (b_, h, g)),
            pl.BlockSpec((None, None, None, cols), lambda b_, h, g: (b_, h, g, 0)),
            group_block,
            kv_block,
            kv_block,
        ],
        out_specs=[group_block, pl.BlockSpec((None, None, None, bq), lambda b_, h, g: (b_, h, g, 0))],
        out_shape=[
            jax.ShapeDtypeStruct((b, groups, bq, hq, dp), q.dtype),
            jax.ShapeDtypeStruct((b, hq, groups, bq), jnp.float32),
        ],
        interpret=interpret,
        compiler_params=compiler_params(
            interpret,
            num_warps=config.num_warps or (4 if dp <= 64 else 8),
            num_stages=config.num_stages,
            dimension_semantics=("parallel", "parallel", "parallel"),
        ),
        name="column_sparse_attention_fwd",
    )(counts.astype(jnp.int32), ids, qg, kp, vp)
    out = out[:, :, :block_q, :, :d].reshape(b, groups * block_q, hq, d)[:, :tq]
    lse = lse[..., :block_q].reshape(b, hq, groups * block_q)[:, :, :tq]
    return out, jnp.swapaxes(lse, 1, 2)


def column_sparse_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    indices: jax.Array,
    counts: jax.Array,
    *,
    block_q: int,
    scale: float,
    interpret: Any = False,
    config: ColumnSparseConfig | None = None,
) -> tuple[jax.Array, jax.Array]:
    """The forward kernel. Returns ``(out [b, q_len, q_heads, d] in q's dtype, lse [b, q_len, q_heads]
    f32)``.

    The inputs are the op's, already validated (:func:`jaxflash.column_sparse_attention`); ids at
    positions ``>= counts`` are ignored and the others are clamped into ``[0, kv_len)``. Raises
    ``NotImplementedError`` for what the kernel does not take (head_dim > :data:`MAX_HEAD_DIM`; the
    TPU-semantics interpreter) and ``ValueError`` for a config the compiled kernel cannot take.
    """
    config = ColumnSparseConfig() if config is None else config
    if q.shape[-1] > MAX_HEAD_DIM:
        raise NotImplementedError(f"the Pallas kernel takes head_dim <= {MAX_HEAD_DIM}; got {q.shape[-1]}")
    if interpret is not True and interpret is not False:
        raise NotImplementedError(
            "the TPU-semantics interpreter (JAXFLASH_PALLAS_INTERPRET=tpu) rejects the kernel's row gather "
            "(advanced indexing of a ref), as Mosaic TPU would; unset it to run the plain interpreter"
        )
    if interpret is False:
        reason = unsupported_reason(config, indices.shape[-1])
        if reason is not None:
            raise ValueError(reason)
    block_k = resolve_block_k(config, indices.shape[-1])
    return _forward(
        q,
        k,
        v,
        indices,
        counts,
        block_q=block_q,
        scale=scale,
        block_k=block_k,
        interpret=interpret,
        config=config,
    )
