"""Chipmunk's column-sparse attention delta: :func:`column_sparse_attention` (``csp_attn``) and the helpers
that build its column sets, :func:`column_sums`, :func:`topk_columns` and :func:`mask_to_indices`.

Chipmunk (Silveria, Govande, Fu; arXiv 2506.03275) accelerates a diffusion transformer across sampling
steps. Queries are grouped in consecutive blocks of ``block_q`` (192 in the paper, after reordering
tokens into local voxels so a group is spatially local). At a full step the layer computes dense
attention ``O`` and, from its column sums, a set of key columns ``S_g`` per query group; it caches
``R = O - A_S(q, k, v)``. At the sparse steps after it, ``O_n ~= A_S(q_n, k_n, v_n) + R``: only the
selected columns are recomputed. ``A_S`` is this module's op:

    A_S(q, k, v)_i = sum_{j in S_g} softmax_{S_g}(scale * q_i . k_j) v_j        (query i in group g)

normalised over ``S_g`` only, as in Chipmunk's Triton port; a group with an empty ``S_g`` gives 0 (and
``lse = -inf``). ``S_g`` is given as ``indices[b, h, g, :counts[b, h, g]]``; entries past the count are
padding and never read. A column id listed twice counts twice (the kernels gather what they are given);
:func:`mask_to_indices` and :func:`topk_columns` never list one twice.

The mask-building steps of the paper, as functions:

- :func:`column_sums`: ``C[b, h, g, j] = sum_{i in g} exp(scale q_i . k_j - lse_i)``, the softmax mass
  each key column gets from each query group under a given logsumexp (Chipmunk's ``dense_colsum_attn``
  computes it in the dense pass; here it is a separate chunked XLA pass).
- :func:`topk_columns`: per group, the top-k columns of ``C``, plus random columns, padded to a multiple.
- :func:`mask_to_indices`: a boolean ``[..., n_groups, kv_len]`` column mask as ``(indices, counts)``.

Implementations of ``column_sparse_attention`` (op ``"column_sparse_attention"``):

- ``"pallas"`` (GPU, by name only: not yet measured against the XLA path on a GPU): the kernel of
  :mod:`jaxflash.pallas_kernels.column_sparse_attention`, which gathers the selected K/V rows by index
  into dense tiles and runs an online softmax; ``config=ColumnSparseConfig(...)``. Its backward is the
  XLA path's VJP (recomputed from q, k, v and the indices), not a Pallas kernel.
- ``"pallas_interpret"``: the same kernel in the Pallas interpreter (tests, debugging).
- ``"xla"``: gathers each group's K/V rows with ``take_along_axis`` into ``[b, h, groups, max_cols, d]``
  and runs dense per-group attention under the count mask; memory ``O(q_len * max_cols)`` for the
  logits, never ``O(q_len * kv_len)``. The default on every backend; differentiable by plain autodiff
  (``grad``, ``jvp``, ``vmap``).
- ``"reference"``: the meaning: the dense ``[q_len, kv_len]`` logits under the mask the indices
  describe (column multiplicities), f32 at ``HIGHEST`` precision.

Layout as :func:`jaxflash.attention`: ``q [batch, q_len, q_heads, head_dim]``, ``k, v [batch, kv_len,
kv_heads, head_dim]``, ``q_heads`` a multiple of ``kv_heads`` (q head ``h`` reads kv head
``h // (q_heads // kv_heads)``); the column sets are per q head.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Bool, Float, Int

from jaxflash.ops.attention.spec import poison_nonfinite_keys
from jaxflash.ops.attention.validation import check_array, check_qkv, check_scale
from jaxflash.ops.registry import dispatch, register
from jaxflash.pallas_kernels import column_sparse_attention as _kernel
from jaxflash.pallas_kernels.column_sparse_attention import ColumnSparseConfig
from jaxflash.pallas_kernels.common import interpret_for
from jaxflash.utils import (
    cdiv,
    check_int,
    check_real,
    check_values,
    fits_in_memory,
    matmul_precision,
    memory_estimate_message,
    zero_cotangent,
)

__all__ = [
    "ColumnSparseConfig",
    "column_sparse_attention",
    "column_sums",
    "mask_to_indices",
    "reference",
    "topk_columns",
]

# kv columns per step of column_sums' loop: bounds its logits to [batch, q_heads, q_len, this].
_COLSUM_KV_CHUNK = 1024


@dataclasses.dataclass(frozen=True)
class ColumnSparseSpec:
    """The static part of one call (hashable: a jit static and a ``custom_vjp`` nondiff argument).

    Attributes:
      q_len: number of queries.
      kv_len: number of keys.
      block_q: queries per group; the last group holds ``q_len - (n_groups - 1) * block_q``.
      scale: multiplies ``q . k``.
    """

    q_len: int
    kv_len: int
    block_q: int
    scale: float

    @property
    def n_groups(self) -> int:
        return cdiv(self.q_len, self.block_q)


# --- validation ----------------------------------------------------------------------------------------


def _check_block_q(block_q: Any) -> int:
    return check_int("block_q", block_q)


def _check_columns(indices: Any, counts: Any, batch: int, heads: int, n_groups: int, kv_len: int) -> None:
    check_array("indices", indices)
    check_array("counts", counts)
    for name, x in (("indices", indices), ("counts", counts)):
        if not jnp.issubdtype(x.dtype, jnp.integer):
            raise ValueError(f"{name} must be integers (int32); got dtype {x.dtype}")
    if indices.ndim != 4 or indices.shape[:3] != (batch, heads, n_groups) or indices.shape[3] < 1:
        raise ValueError(
            f"indices must have shape [batch={batch}, q_heads={heads}, n_groups={n_groups}, max_cols >= 1] "
            f"(n_groups = ceil(q_len / block_q)); got indices.shape={indices.shape}"
        )
    if counts.shape != (batch, heads, n_groups):
        raise ValueError(
            f"counts must have shape [batch={batch}, q_heads={heads}, n_groups={n_groups}]; "
            f"got counts.shape={counts.shape}"
        )
    max_cols = indices.shape[3]
    check_values(
        (counts >= 0) & (counts <= max_cols),
        "counts must lie in [0, max_cols={}]; got values from {} to {}",
        max_cols,
        counts.min(),
        counts.max(),
    )
    valid = jnp.arange(max_cols) < counts[..., None]
    check_values(
        ~valid | ((indices >= 0) & (indices < kv_len)),
        "indices[..., :counts] must be key column ids in [0, kv_len={}); got values from {} to {}",
        kv_len,
        jnp.where(valid, indices, 0).min(),
        jnp.where(valid, indices, 0).max(),
    )


def _spec(q, k, v, indices, counts, block_q, scale) -> ColumnSparseSpec:
    check_qkv(q, k, v)
    block_q = _check_block_q(block_q)
    b, tq, hq, d = q.shape
    spec = ColumnSparseSpec(q_len=tq, kv_len=k.shape[1], block_q=block_q, scale=check_scale(scale, d))
    _check_columns(indices, counts, b, hq, spec.n_groups, spec.kv_len)
    return spec


# --- the op --------------------------------------------------------------------------------------------


def column_sparse_attention(
    q: Float[Array, "b tq hq d"],
    k: Float[Array, "b tk hk d"],
    v: Float[Array, "b tk hk d"],
    indices: Int[Array, "b hq g c"],
    counts: Int[Array, "b hq g"],
    *,
    block_q: int,
    scale: float | None = None,
    return_lse: bool = False,
    implementation: str | Sequence[str] | None = None,
    config: ColumnSparseConfig | Mapping[str, Any] | None = None,
) -> Float[Array, "b tq hq d"] | tuple[Float[Array, "b tq hq d"], Float[Array, "b tq hq"]]:
    """Column-sparse attention (Chipmunk's ``csp_attn``): each group of ``block_q`` consecutive queries
    attends to its own key columns, softmax-normalised over them only.

    Args:
      q: queries ``[batch, q_len, q_heads, head_dim]``.
      k, v: keys and values ``[batch, kv_len, kv_heads, head_dim]``; ``q_heads`` a multiple of
        ``kv_heads``. All three share one dtype (f32, bf16 or f16).
      indices: int ``[batch, q_heads, n_groups, max_cols]``, ``n_groups = ceil(q_len / block_q)``: the key
        column ids group ``g`` attends to, in ``[0, kv_len)``; entries at positions ``>= counts`` are
        padding and ignored (any value).
      counts: int ``[batch, q_heads, n_groups]`` in ``[0, max_cols]``: how many of ``indices`` are valid.
        A group with count 0 outputs 0.
      block_q: queries per group (query ``i`` is in group ``i // block_q``; the last may be partial).
      scale: multiplies ``q . k``; default ``1 / sqrt(head_dim)``.
      return_lse: also return each query's natural-log logsumexp over its group's columns, ``[batch,
        q_len, q_heads]`` f32 (``-inf`` for an empty group).
      implementation: ``"pallas"`` (GPU), ``"pallas_interpret"``, ``"xla"``, ``"reference"``, a sequence,
        or None (the best available: ``"xla"``).
      config: a :class:`ColumnSparseConfig` (the kernel's tiles) or a mapping ``{implementation: config}``.

    Returns:
      ``out [batch, q_len, q_heads, head_dim]`` in q's dtype (f32 accumulation), and ``lse`` when
      ``return_lse``. A selected column whose ``k`` or ``v`` holds NaN or inf makes its group's outputs NaN;
      unselected columns never affect the result.

    Raises ``ValueError`` for inconsistent shapes or dtypes and, on concrete arrays, for counts or ids out
    of range (under ``jit`` through :func:`jaxflash.utils.check_values`: out-of-range ids are clamped).
    """
    spec = _spec(q, k, v, indices, counts, block_q, scale)
    out, lse = dispatch(
        "column_sparse_attention",
        implementation,
        q,
        k,
        v,
        jnp.asarray(indices, jnp.int32),
        jnp.asarray(counts, jnp.int32),
        spec,
        config=config,
    )
    return (out, lse) if return_lse else out


def _column_multiplicity(indices: jax.Array, counts: jax.Array, kv_len: int) -> jax.Array:
    """``[..., n_groups, kv_len]`` f32: how many times each column is listed among the valid ids."""
    valid = jnp.arange(indices.shape[-1]) < counts[..., None]
    flat_ids = jnp.where(valid, indices, 0).reshape(-1, indices.shape[-1])
    flat_w = valid.astype(jnp.float32).reshape(flat_ids.shape)
    mult = jax.vmap(lambda i, w: jnp.zeros(kv_len, jnp.float32).at[i].add(w))(flat_ids, flat_w)
    return mult.reshape(*indices.shape[:-1], kv_len)


def reference(q, k, v, indices, counts, spec: ColumnSparseSpec) -> tuple[jax.Array, jax.Array]:
    """The op's meaning: dense f32 logits, masked to the columns each query's group lists (a column
    listed ``m`` times has weight ``m``), softmax, times V. Returns ``(out, lse [b, q_len, q_heads])``."""
    b, tq, hq, d = q.shape
    rep = hq // k.shape[2]
    k, v = poison_nonfinite_keys(k, v)
    f32 = lambda x: jnp.repeat(x.astype(jnp.float32), rep, axis=2)  # noqa: E731
    mult = _column_multiplicity(indices, counts, spec.kv_len)  # [b, hq, g, tk]
    mult = jnp.repeat(mult, spec.block_q, axis=2)[:, :, :tq]  # [b, hq, tq, tk]
    hi = lax.Precision.HIGHEST
    s = jnp.einsum("bqhd,bkhd->bhqk", q.astype(jnp.float32), f32(k), precision=hi) * spec.scale
    s = jnp.where(mult > 0, s + jnp.log(jnp.where(mult > 0, mult, 1.0)), -jnp.inf)
    m = s.max(-1, keepdims=True)
    m = lax.stop_gradient(jnp.where(m == -jnp.inf, 0.0, m))
    p = jnp.exp(s - m)
    row_sum = p.sum(-1)
    empty = row_sum == 0
    l_safe = jnp.where(empty, 1.0, row_sum)
    out = jnp.einsum("bhqk,bkhd->bqhd", p, f32(v), precision=hi) / l_safe.swapaxes(1, 2)[..., None]
    lse = jnp.where(empty, -jnp.inf, m[..., 0] + jnp.log(l_safe))
    return out.astype(q.dtype), lse.swapaxes(1, 2)


def _xla(q, k, v, indices, counts, spec: ColumnSparseSpec) -> tuple[jax.Array, jax.Array]:
    """Gather each group's K/V rows and run dense attention per group under the count mask."""
    b, tq, hq, d = q.shape
    hk = k.shape[2]
    rep = hq // hk
    groups, block_q, max_cols = spec.n_groups, spec.block_q, indices.shape[-1]
    qg = jnp.pad(q, ((0, 0), (0, groups * block_q - tq), (0, 0), (0, 0)))
    qg = qg.reshape(b, groups, block_q, hq, d).transpose(0, 3, 1, 2, 4)  # [b, hq, g, bq, d]
    valid = jnp.arange(max_cols) < counts[..., None]  # [b, hq, g, c]
    ids = jnp.where(valid, jnp.clip(indices, 0, spec.kv_len - 1), 0)
    # The gather reads kv head h // rep for q head h: index the kv heads instead of repeating K and V.
    ids = ids.reshape(b, hk, rep * groups * max_cols, 1)

    def gather(x):  # [b, tk, hk, d] -> [b, hq, g, c, d]
        rows = jnp.take_along_axis(x.transpose(0, 2, 1, 3), ids, axis=2)
        return rows.reshape(b, hq, groups, max_cols, d)

    kg, vg = gather(k), gather(v)
    precision = matmul_precision(q.dtype)
    s = jnp.einsum("bhgqd,bhgcd->bhgqc", qg, kg, precision=precision, preferred_element_type=jnp.float32)
    s = jnp.where(valid[:, :, :, None, :], s * spec.scale, -jnp.inf)
    # Padding positions gathered column 0: zero their value rows so that 0 * (a non-finite v) stays 0.
    vg = jnp.where(valid[..., None], vg, jnp.zeros((), vg.dtype))
    m = s.max(-1, keepdims=True)
    m = lax.stop_gradient(jnp.where(m == -jnp.inf, 0.0, m))
    p = jnp.exp(s - m)
    row_sum = p.sum(-1)
    empty = row_sum == 0
    l_safe = jnp.where(empty, 1.0, row_sum)
    acc = jnp.einsum(
        "bhgqc,bhgcd->bhgqd", p.astype(v.dtype), vg, precision=precision, preferred_element_type=jnp.float32
    )
    out = (acc / l_safe[..., None]).astype(q.dtype)
    lse = jnp.where(empty, -jnp.inf, m[..., 0] + jnp.log(l_safe))
    out = out.transpose(0, 2, 3, 1, 4).reshape(b, groups * block_q, hq, d)[:, :tq]
    lse = lse.reshape(b, hq, groups * block_q)[:, :, :tq].swapaxes(1, 2)
    return out, lse


_xla_jit = jax.jit(_xla, static_argnums=(5,))
_reference_jit = jax.jit(reference, static_argnums=(5,))


@register("column_sparse_attention", "xla")
def _column_sparse_attention_xla(q, k, v, indices, counts, spec):
    return _xla_jit(q, k, v, indices, counts, spec)


@register("column_sparse_attention", "reference")
def _column_sparse_attention_reference(q, k, v, indices, counts, spec):
    b, hq = q.shape[0], q.shape[2]
    need = 5 * 4 * b * hq * spec.q_len * spec.kv_len  # f32 multiplicities, logits, probabilities, ...
    if not fits_in_memory(need):
        raise NotImplementedError(
            memory_estimate_message(
                f"the reference materialises [batch={b}, heads={hq}, {spec.q_len}, {spec.kv_len}] "
                "dense masks and logits and",
                need,
            )
            + "; use implementation='xla' (O(q_len * max_cols) memory)"
        )
    return _reference_jit(q, k, v, indices, counts, spec)


# The kernel computes the forward pass; the backward recomputes through the XLA path's VJP (a Pallas
# backward would gather the same rows again and scatter-add dK/dV by column id).
@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
def _pallas(q, k, v, indices, counts, spec, interpret, config):
    return _kernel.column_sparse_attention(
        q, k, v, indices, counts, block_q=spec.block_q, scale=spec.scale, interpret=interpret, config=config
    )


def _pallas_fwd(q, k, v, indices, counts, spec, interpret, config):
    out = _pallas(q, k, v, indices, counts, spec, interpret, config)
    return out, (q, k, v, indices, counts)


def _pallas_bwd(spec, interpret, config, res, cot):
    q, k, v, indices, counts = res
    _, vjp = jax.vjp(lambda q, k, v: _xla(q, k, v, indices, counts, spec), q, k, v)
    return (*vjp(cot), zero_cotangent(indices), zero_cotangent(counts))


_pallas.defvjp(_pallas_fwd, _pallas_bwd)


def _pallas_implementation(implementation: str):
    def run(q, k, v, indices, counts, spec, *, config):
        return _pallas(q, k, v, indices, counts, spec, interpret_for(implementation), config)

    return run


register(
    "column_sparse_attention", "pallas", platforms=("gpu",), default=False, config_type=ColumnSparseConfig
)(_pallas_implementation("pallas"))
register("column_sparse_attention", "pallas_interpret", config_type=ColumnSparseConfig)(
    _pallas_implementation("pallas_interpret")
)


# --- building the column sets --------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("block_q", "scale", "kv_chunk"))
def _column_sums(q, k, lse, *, block_q, scale, kv_chunk):
    b, tq, hq, d = q.shape
    tk, hk = k.shape[1], k.shape[2]
    rep = hq // hk
    groups = cdiv(tq, block_q)
    chunk = min(kv_chunk, tk)
    n_chunks = cdiv(tk, chunk)
    pad_q = groups * block_q - tq
    qh = jnp.pad(q, ((0, 0), (0, pad_q), (0, 0), (0, 0))).astype(jnp.float32)
    qh = qh.reshape(b, groups * block_q, hk, rep, d).transpose(0, 2, 3, 1, 4)  # [b, hk, rep, tq', d]
    # Rows with lse = -inf (a query that saw no key) and the padding rows contribute nothing.
    lse = jnp.where(lse == -jnp.inf, jnp.inf, lse.astype(jnp.float32))
    lse = jnp.pad(lse, ((0, 0), (0, pad_q), (0, 0)), constant_values=jnp.inf)
    lse = lse.reshape(b, groups * block_q, hk, rep).transpose(0, 2, 3, 1)  # [b, hk, rep, tq']
    kc = jnp.pad(k, ((0, 0), (0, n_chunks * chunk - tk), (0, 0), (0, 0))).astype(jnp.float32)
    kc = kc.reshape(b, n_chunks, chunk, hk, d).transpose(1, 0, 3, 2, 4)  # [n, b, hk, chunk, d]

    def one_chunk(kchunk):
        s = jnp.einsum("bgrqd,bgcd->bgrqc", qh, kchunk, precision=lax.Precision.HIGHEST) * scale
        p = jnp.exp(s - lse[..., None])
        return p.reshape(b, hk, rep, groups, block_q, chunk).sum(4)  # [b, hk, rep, g, chunk]

    cs = lax.map(one_chunk, kc)  # [n, b, hk, rep, g, chunk]
    cs = cs.transpose(1, 2, 3, 4, 0, 5).reshape(b, hq, groups, n_chunks * chunk)
    return cs[..., :tk]


def column_sums(
    q: Float[Array, "b tq hq d"],
    k: Float[Array, "b tk hk d"],
    lse: Float[Array, "b tq hq"],
    *,
    block_q: int,
    scale: float | None = None,
) -> Float[Array, "b hq g tk"]:
    """Per query group, the softmax mass of each key column under the logsumexp ``lse``:
    ``C[b, h, g, j] = sum_{i in group g} exp(scale * q_i . k_j - lse[b, i, h])`` (Chipmunk's
    ``dense_colsum_attn`` column sums, normalised by the previous step's ``lse``).

    With ``lse`` from ``jaxflash.attention(q, k, v, return_lse=True)`` of the same ``q, k``, each query
    row sums to 1 over the columns, so a group's sums total its number of queries. Computed in f32 at
    ``HIGHEST`` precision, in chunks of kv columns (memory ``O(q_len * 1024)`` per batch and head, never
    ``O(q_len * kv_len)``). A query whose ``lse`` is ``-inf`` (it saw no key) contributes nothing.

    Args:
      q: ``[batch, q_len, q_heads, head_dim]``; k: ``[batch, kv_len, kv_heads, head_dim]``, one dtype.
      lse: ``[batch, q_len, q_heads]``, the natural-log logsumexp per query (layout of
        ``jaxflash.attention``'s).
      block_q: queries per group, as for :func:`column_sparse_attention`.
      scale: multiplies ``q . k``; default ``1 / sqrt(head_dim)``.

    Returns:
      ``[batch, q_heads, n_groups, kv_len]`` f32.
    """
    check_qkv(q, k, k)
    check_array("lse", lse)
    block_q = _check_block_q(block_q)
    b, tq, hq, d = q.shape
    if lse.shape != (b, tq, hq) or not jnp.issubdtype(lse.dtype, jnp.floating):
        raise ValueError(
            f"lse must be a float array [batch={b}, q_len={tq}, q_heads={hq}] (the logsumexp "
            f"jaxflash.attention returns); got lse.shape={lse.shape}, dtype {lse.dtype}"
        )
    return _column_sums(q, k, lse, block_q=block_q, scale=check_scale(scale, d), kv_chunk=_COLSUM_KV_CHUNK)


def topk_columns(
    colsum: Float[Array, "*batch g tk"],
    k: int,
    *,
    random_fraction: float = 0.0,
    key: jax.Array | None = None,
    multiple_of: int = 1,
) -> tuple[Int[Array, "*batch g c"], Int[Array, "*batch g"]]:
    """Per query group, the ``k`` columns with the largest column sums, plus random columns, as
    ``(indices, counts)`` for :func:`column_sparse_attention`.

    Every group gets the same number of distinct columns,
    ``c = min(kv_len, round_up(k + n_random, multiple_of))``, listed in ascending column order:

    1. the top ``k`` of ``colsum[..., g, :]``; among equal sums the lower column id wins (``lax.top_k``'s
       order);
    2. ``n_random = round(random_fraction * (kv_len - k))`` further columns drawn uniformly, without
       replacement, from those not in the top ``k`` (Chipmunk adds each column with probability about 1%;
       a fixed number keeps the shape static);
    3. padding up to the multiple: the next-best columns by sum among those not yet chosen, so padding
       columns are real, valid and never duplicates. When the multiple would exceed ``kv_len``, ``c`` is
       ``kv_len`` (every column) and need not be a multiple.

    Args:
      colsum: ``[..., n_groups, kv_len]`` scores, e.g. from :func:`column_sums`.
      k: columns kept by score, ``1 <= k <= kv_len``.
      random_fraction: in ``[0, 1]``; the fraction of the remaining columns added at random.
      key: PRNG key, required when ``n_random > 0``.
      multiple_of: pad each group's count up to a multiple of this (a kernel's column tile).

    Returns:
      ``indices [..., n_groups, c]`` int32 and ``counts [..., n_groups]`` int32 (all ``c``).
    """
    check_array("colsum", colsum)
    if colsum.ndim < 2 or not jnp.issubdtype(colsum.dtype, jnp.floating):
        raise ValueError(
            f"colsum must be a float array [..., n_groups, kv_len]; got shape {colsum.shape}, "
            f"dtype {colsum.dtype}"
        )
    kv_len = colsum.shape[-1]
    k = check_int("k", k)
    if k > kv_len:
        raise ValueError(f"k={k} columns cannot be chosen from kv_len={kv_len}")
    multiple_of = check_int("multiple_of", multiple_of)
    random_fraction = check_real("random_fraction", random_fraction, at_least=0.0, at_most=1.0)
    n_random = round(random_fraction * (kv_len - k))
    if n_random > 0 and key is None:
        raise ValueError(f"random_fraction={random_fraction} adds {n_random} random columns: pass key=")
    total = min(kv_len, cdiv(k + n_random, multiple_of) * multiple_of)
    return _topk_columns(colsum, key, k=k, n_random=n_random, n_pad=total - k - n_random)


@functools.partial(jax.jit, static_argnames=("k", "n_random", "n_pad"))
def _topk_columns(colsum, key, *, k, n_random, n_pad):
    kv_len = colsum.shape[-1]
    score = jnp.where(jnp.isnan(colsum), -jnp.inf, colsum.astype(jnp.float32))  # NaN sums rank last
    parts = [lax.top_k(score, k)[1]]
    chosen = _columns_mask(parts[0], kv_len)
    if n_random:
        parts.append(_best_unchosen(jax.random.uniform(key, score.shape), chosen, n_random))
        chosen = chosen | _columns_mask(parts[-1], kv_len)
    if n_pad:
        parts.append(_best_unchosen(score, chosen, n_pad))
    indices = jnp.sort(jnp.concatenate(parts, axis=-1), axis=-1).astype(jnp.int32)
    counts = jnp.full(indices.shape[:-1], indices.shape[-1], jnp.int32)
    return indices, counts


def _best_unchosen(priority: jax.Array, chosen: jax.Array, n: int) -> jax.Array:
    """The ``n`` columns not in ``chosen`` with the highest ``priority``, ties to the lower id."""
    # lexsort sorts by its last key first and is stable: unchosen columns, then descending priority.
    return jnp.lexsort((-priority, chosen), axis=-1)[..., :n]


def _columns_mask(ids: jax.Array, kv_len: int) -> jax.Array:
    """``[..., kv_len]`` bool: which columns ``ids [..., n]`` lists."""
    empty = jnp.zeros((*ids.shape[:-1], kv_len), jnp.bool_)
    return jnp.put_along_axis(empty, ids, True, axis=-1, inplace=False)


def mask_to_indices(
    mask: Bool[Array, "*batch g tk"], *, max_cols: int | None = None
) -> tuple[Int[Array, "*batch g c"], Int[Array, "*batch g"]]:
    """A boolean column mask ``[..., n_groups, kv_len]`` as ``(indices, counts)``: each group's True
    columns in ascending order, then padding (column 0, ignored).

    Args:
      mask: ``mask[..., g, j]`` True when group ``g`` attends to key column ``j``.
      max_cols: the width of ``indices``; default ``kv_len`` (always enough). A smaller width saves
        memory in :func:`column_sparse_attention`; a group with more True columns is an error on a
        concrete mask (under ``jit``, a :func:`jaxflash.utils.check_values` check; unchecked, its count
        is cut to ``max_cols``, keeping its lowest column ids).

    Returns:
      ``indices [..., n_groups, max_cols]`` int32 and ``counts [..., n_groups]`` int32.
    """
    check_array("mask", mask)
    if mask.ndim < 2 or mask.dtype != jnp.bool_:
        raise ValueError(f"mask must be a bool array [..., n_groups, kv_len]; got {mask.shape}, {mask.dtype}")
    kv_len = mask.shape[-1]
    max_cols = kv_len if max_cols is None else check_int("max_cols", max_cols)
    counts = mask.sum(-1, dtype=jnp.int32)
    check_values(
        counts <= max_cols,
        "a group of the mask has {} columns, more than max_cols={}",
        counts.max(),
        max_cols,
    )
    return _mask_to_indices(mask, max_cols=max_cols)


@functools.partial(jax.jit, static_argnames=("max_cols",))
def _mask_to_indices(mask, *, max_cols):
    kv_len = mask.shape[-1]
    # A stable sort of "not selected" puts the selected columns first, in ascending order.
    order = jnp.argsort(~mask, axis=-1, stable=True)
    if max_cols > kv_len:
        order = jnp.pad(order, [(0, 0)] * (order.ndim - 1) + [(0, max_cols - kv_len)])
    order = order[..., :max_cols]
    counts = jnp.minimum(mask.sum(-1, dtype=jnp.int32), max_cols)
    indices = jnp.where(jnp.arange(max_cols) < counts[..., None], order, 0).astype(jnp.int32)
    return indices, counts
