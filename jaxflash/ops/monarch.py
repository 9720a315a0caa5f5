"""Monarch matrices: structured products, their dense form, and projection from dense.

Monarch matrices (Dao et al. 2022, "Monarch: Expressive Structured Matrices for Efficient and
Accurate Training"; used throughout Fu et al. 2023, "Monarch Mixer", arXiv:2310.12109) are, in the
parameterization of the m2 repository (``bert/src/mm/blockdiag_butterfly_multiply.py``),

    M = P_out . BlockDiag(w2) . P_mid . BlockDiag(w1),   w1: (k, q, p),  w2: (l, s, r),

with ``k * p = n`` inputs, ``l * r = k * q`` and ``m = l * s`` outputs. ``P_mid`` views the
intermediate ``(k q)`` as ``(r, l)`` and transposes it; ``P_out`` writes the output in ``(s, l)``
order. The square Monarch ``M = P L P^T R`` of the paper is ``k = q = p = l = s = r = sqrt(n)``. A
product with ``M`` costs ``2 * (k q p + l s r)`` FLOPs per row against ``2 * n * m`` dense.

Public functions:

- :func:`monarch_matmul` ``(x, w1, w2)``: ``x @ M.T`` over any leading batch dimensions.
- :func:`blockdiag_matmul` ``(x, w)``: one block-diagonal factor (M2-BERT's MLP).
- :func:`to_dense` ``(w1, w2)``: the (m, n) matrix ``M``.
- :func:`project` ``(dense, nblocks)``: the Monarch matrix nearest to ``dense`` in Frobenius norm.
- :func:`monarch_shapes` ``(n, m, nblocks)``: the factor shapes ``project`` and the layers use.

- :func:`reference` ``(x, w1, w2)``: ``x @ M.T`` with the dense matrix, the ground truth.

Implementations of ``monarch_matmul``: ``"pallas"`` (fused kernel, GPU; config :class:`MonarchConfig`),
``"pallas_interpret"``, ``"xla"`` (two batched einsums over row chunks, the CPU path; config
:class:`MonarchXlaConfig`) and ``"reference"`` (the dense matrix).

The causal Monarch map of M2-GPT (``u -> M^{-1} ((M k) * (M u))`` with evaluation/interpolation
Monarch factors) lives in :mod:`jaxflash.ops.causal_monarch` and is re-exported here
(:func:`causal_monarch`, :func:`causal_monarch_conv`, ...); the causal family and its proof are in that
module's docstring, with the DFT as one member.
"""

# The factor shapes keep the m2 paper's letters (k, q, p, l, s, r), so `l` is a name here.
# ruff: noqa: E741

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from jaxflash.ops.causal_monarch import (  # noqa: F401  (re-exported as jaxflash.monarch.*)
    CausalMonarch,
    causal_monarch,
    causal_monarch_conv,
    causal_monarch_masks,
    monarch_evaluate,
    monarch_interpolate,
    polynomial_monarch,
)
from jaxflash.ops.registry import dispatch, register
from jaxflash.pallas_kernels import monarch as _kernel
from jaxflash.pallas_kernels.common import interpret_for
from jaxflash.pallas_kernels.monarch import MonarchConfig
from jaxflash.utils import check_int

__all__ = [
    "MonarchConfig",
    "MonarchXlaConfig",
    "blockdiag_matmul",
    "monarch_matmul",
    "monarch_shapes",
    "project",
    "reference",
    "to_dense",
]


# --- validation -------------------------------------------------------------------------------------


def _check_float(name: str, a: Any) -> None:
    if not jnp.issubdtype(a.dtype, jnp.floating):
        raise ValueError(f"{name} must be a floating-point array; got dtype {a.dtype}")


def _validate_factors(w1: Any, w2: Any) -> None:
    _check_float("w1", w1)
    _check_float("w2", w2)
    if jnp.ndim(w1) != 3 or jnp.ndim(w2) != 3:
        raise ValueError(
            f"w1 and w2 must be 3-D block stacks (blocks, block_out, block_in); got "
            f"w1.shape={jnp.shape(w1)}, w2.shape={jnp.shape(w2)}"
        )
    k, q, _ = jnp.shape(w1)
    l, _, r = jnp.shape(w2)
    if min(*jnp.shape(w1), *jnp.shape(w2)) == 0:
        raise ValueError(
            f"factor dimensions must be positive; got w1.shape={jnp.shape(w1)}, w2.shape={jnp.shape(w2)}"
        )
    if l * r != k * q:
        raise ValueError(
            f"the factors do not compose: w1.shape={jnp.shape(w1)} gives k*q={k * q} intermediate features "
            f"but w2.shape={jnp.shape(w2)} takes l*r={l * r}; choose w2 with l*r == k*q"
        )


def _validate_input(x: Any, n: int, what: str) -> None:
    _check_float("x", x)
    if jnp.ndim(x) < 1 or jnp.shape(x)[-1] != n:
        raise ValueError(f"x.shape={jnp.shape(x)} must end in n={n} features ({what})")


# --- monarch_matmul -------------------------------------------------------------------------------


def monarch_matmul(
    x: Float[Array, "*batch n"],
    w1: Float[Array, "k q p"],
    w2: Float[Array, "l s r"],
    *,
    implementation: str | Sequence[str] | None = None,
    config: MonarchConfig | MonarchXlaConfig | Mapping[str, Any] | None = None,
) -> Float[Array, "*batch m"]:
    """``x @ M.T`` for the Monarch matrix ``M = P_out . BlockDiag(w2) . P_mid . BlockDiag(w1)``.

    Args:
      x: (..., n) with ``n = k * p``; any leading batch dimensions. Array-likes (NumPy arrays, lists)
        are converted with ``jnp.asarray``, as are the factors.
      w1: (k, q, p), the first block-diagonal factor (k blocks of size q x p).
      w2: (l, s, r) with ``l * r = k * q``, the second (l blocks of size s x r).
      implementation: ``"pallas"``, ``"pallas_interpret"``, ``"xla"``, ``"reference"`` or None (best).
      config: forwarded to the implementation that runs: a :class:`MonarchConfig` (tiles of the fused
        kernel), a :class:`MonarchXlaConfig` (row chunks of the XLA path), or a mapping
        ``{implementation: config}``; an implementation that takes no config of that type refuses the
        call. None: each implementation's default.

    Returns:
      (..., l * s) in the promoted dtype of the inputs; products accumulate in f32.
    """
    x, w1, w2 = jnp.asarray(x), jnp.asarray(w1), jnp.asarray(w2)
    _validate_factors(w1, w2)
    k, _, p = w1.shape
    l, s, _ = w2.shape
    _validate_input(x, k * p, f"w1.shape={w1.shape} has k*p={k * p}")
    dtype = jnp.result_type(x, w1, w2)
    x, w1, w2 = (jnp.asarray(a, dtype) for a in (x, w1, w2))
    batch = x.shape[:-1]
    if math.prod(batch) == 0:
        return jnp.zeros((*batch, l * s), dtype)
    y = dispatch("monarch_matmul", implementation, x.reshape(-1, k * p), w1, w2, config=config)
    return y.reshape(*batch, l * s)


# --- "xla": two batched einsums over row chunks ---------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MonarchXlaConfig:
    """Row chunks of the XLA path; reach it through ``jaxflash.monarch_matmul(..., config=...)``.

    Attributes:
      chunk_bytes: bytes of one chunk of rows of the widest [rows, features] operand (an integer >= 1),
        rounded to a power of two of rows between 8 and 1024. The block-leading transposes of a chunk
        this size stay in cache instead of streaming the whole [B, n] matrix through memory three
        times; on CPU a full-size transpose costs about as much as one of the two batched matmuls.
    """

    chunk_bytes: int = 2 << 20

    def __post_init__(self):
        check_int("MonarchXlaConfig.chunk_bytes", self.chunk_bytes)


def _chunk_rows(x: jax.Array, w1: jax.Array, w2: jax.Array, chunk_bytes: int) -> int:
    """Rows per chunk: a power of two (8..1024) of rows of the widest operand within ``chunk_bytes``, or
    all the rows when there are fewer."""
    width = max(x.shape[1], w1.shape[0] * w1.shape[1], w2.shape[0] * w2.shape[1])
    target = max(chunk_bytes // (width * x.dtype.itemsize), 8)
    return min(x.shape[0], 1 << min(target.bit_length() - 1, 10))


def _scan_rows(
    step: Callable[..., Any], init: Any, chunk: int, *row_args: jax.Array
) -> tuple[Any, jax.Array]:
    """``lax.scan`` of ``step(carry, row_chunks) -> (carry, out)`` over ``chunk``-row slices of
    ``row_args``, the remainder rows as one more step; the per-chunk outputs concatenated along rows."""
    rows = row_args[0].shape[0]
    main = rows - rows % chunk
    split = tuple(a[:main].reshape(-1, chunk, *a.shape[1:]) for a in row_args)
    carry, out = jax.lax.scan(step, init, split)
    out = out.reshape(main, *out.shape[2:])
    if main < rows:
        carry, tail = step(carry, tuple(a[main:] for a in row_args))
        out = jnp.concatenate([out, tail])
    return carry, out


def _block_leading(x: jax.Array, w1: jax.Array, w2: jax.Array) -> tuple[jax.Array, jax.Array]:
    """First factor of a [C, n] chunk, block index leading: returns (x3 (k,C,p), hm (l,C,r)), the input
    and the permuted intermediate that the second factor and the weight gradients consume."""
    k, q, p = w1.shape
    l, _, r = w2.shape
    # Block index leading and weights as (block, in, out), as m2's bmm path lays them out: XLA CPU
    # then runs k (and l) plain row-major matmuls, about 3x faster than with the block axis inside.
    x3 = jnp.swapaxes(x.reshape(-1, k, p), 0, 1)  # (k, C, p)
    h = jnp.einsum("kbp,kpq->kbq", x3, jnp.swapaxes(w1, 1, 2), preferred_element_type=jnp.float32).astype(
        x.dtype
    )
    # P_mid: the (k q) features of each row viewed as (r, l) and moved to (l, r), block l leading.
    hm = jnp.transpose(jnp.swapaxes(h, 0, 1).reshape(-1, r, l), (2, 0, 1))  # (l, C, r)
    return x3, hm


def _rows_fwd(x: jax.Array, w1: jax.Array, w2: jax.Array) -> jax.Array:
    l, s, _ = w2.shape
    hm = _block_leading(x, w1, w2)[1]
    z = jnp.einsum("lbr,lrs->lbs", hm, jnp.swapaxes(w2, 1, 2), preferred_element_type=jnp.float32)
    return jnp.transpose(z, (1, 2, 0)).reshape(-1, s * l).astype(x.dtype)  # P_out: (s, l) order


def _rows_bwd(x: jax.Array, dy: jax.Array, w1: jax.Array, w2: jax.Array):
    """(dx, dw1, dw2) of one chunk: the chain rule through _rows_fwd, the transposes reversed."""
    k, q, p = w1.shape
    l, s, r = w2.shape
    f32 = jnp.float32
    x3, hm = _block_leading(x, w1, w2)
    dz = jnp.transpose(dy.reshape(-1, s, l), (2, 0, 1))  # (l, C, s)
    dw2 = jnp.einsum("lbs,lbr->lsr", dz, hm, preferred_element_type=f32)
    dhm = jnp.einsum("lbs,lsr->lbr", dz, w2, preferred_element_type=f32).astype(x.dtype)
    dh = jnp.swapaxes(jnp.transpose(dhm, (1, 2, 0)).reshape(-1, k, q), 0, 1)  # (k, C, q)
    dw1 = jnp.einsum("kbq,kbp->kqp", dh, x3, preferred_element_type=f32)
    dx3 = jnp.einsum("kbq,kqp->kbp", dh, w1, preferred_element_type=f32)
    return jnp.swapaxes(dx3, 0, 1).reshape(-1, k * p).astype(x.dtype), dw1, dw2


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _monarch_chunked(x: jax.Array, w1: jax.Array, w2: jax.Array, chunk: int) -> jax.Array:
    """The Monarch product of [rows, n] ``x``, ``chunk`` rows at a time, forward and backward."""
    return _scan_rows(lambda carry, xs: (carry, _rows_fwd(*xs, w1, w2)), None, chunk, x)[1]


def _monarch_chunked_fwd(x, w1, w2, chunk):
    return _monarch_chunked(x, w1, w2, chunk), (x, w1, w2)


def _monarch_chunked_bwd(chunk, res, dy):
    # dx chunk by chunk; the weight gradients, sums over all rows, accumulate in the scan's carry.
    x, w1, w2 = res

    def step(carry, xs):
        dx, dw1, dw2 = _rows_bwd(*xs, w1, w2)
        return (carry[0] + dw1, carry[1] + dw2), dx

    init = (jnp.zeros(w1.shape, jnp.float32), jnp.zeros(w2.shape, jnp.float32))
    (dw1, dw2), dx = _scan_rows(step, init, chunk, x, dy)
    return dx, dw1.astype(w1.dtype), dw2.astype(w2.dtype)


_monarch_chunked.defvjp(_monarch_chunked_fwd, _monarch_chunked_bwd)


@register("monarch_matmul", "xla", config_type=MonarchXlaConfig)
@functools.partial(jax.jit, static_argnames=("config",))
def _monarch_xla(x: jax.Array, w1: jax.Array, w2: jax.Array, *, config: MonarchXlaConfig | None) -> jax.Array:
    config = MonarchXlaConfig() if config is None else config
    return _monarch_chunked(x, w1, w2, _chunk_rows(x, w1, w2, config.chunk_bytes))


def _monarch_pallas(implementation: str) -> Callable[..., jax.Array]:
    def call(x: jax.Array, w1: jax.Array, w2: jax.Array, *, config: MonarchConfig | None) -> jax.Array:
        return _kernel.monarch_matmul(x, w1, w2, interpret=interpret_for(implementation), config=config)

    return call


# Written for the Triton lowering (TPU uses XLA). Not the default: on an H200 the XLA path's two batched
# matmuls beat it at every size measured (BENCHMARKS.md).
register("monarch_matmul", "pallas", platforms=("gpu",), default=False, config_type=MonarchConfig)(
    _monarch_pallas("pallas")
)
register("monarch_matmul", "pallas_interpret", config_type=MonarchConfig)(_monarch_pallas("pallas_interpret"))


@register("monarch_matmul", "reference")
@jax.jit
def _monarch_reference(x: jax.Array, w1: jax.Array, w2: jax.Array) -> jax.Array:
    return reference(x, w1, w2)


# --- blockdiag_matmul -----------------------------------------------------------------------------


def blockdiag_matmul(
    x: Float[Array, "*batch n"], w: Float[Array, "nblocks q p"], *, implementation: str | None = None
) -> Float[Array, "*batch m"]:
    """``x @ BlockDiag(w).T``: block ``i`` of ``w`` (q x p) maps input features ``[i p, (i+1) p)`` to
    outputs ``[i q, (i+1) q)``. M2-BERT's block-diagonal MLP (m2 ``blockdiag_multiply.py``).

    Args:
      x: (..., nblocks * p); array-likes are converted with ``jnp.asarray``, as is ``w``.
      w: (nblocks, q, p).
      implementation: ``"xla"``, ``"reference"`` or None.

    Returns:
      (..., nblocks * q) in the promoted dtype; products accumulate in f32.
    """
    x, w = jnp.asarray(x), jnp.asarray(w)
    _check_float("w", w)
    if jnp.ndim(w) != 3 or min(jnp.shape(w)) == 0:
        raise ValueError(
            f"w must be a non-empty 3-D block stack (nblocks, out, in); got w.shape={jnp.shape(w)}"
        )
    nb, q, p = w.shape
    _validate_input(x, nb * p, f"w.shape={w.shape} has nblocks*p={nb * p}")
    dtype = jnp.result_type(x, w)
    x, w = jnp.asarray(x, dtype), jnp.asarray(w, dtype)
    batch = x.shape[:-1]
    if math.prod(batch) == 0:
        return jnp.zeros((*batch, nb * q), dtype)
    y = dispatch("blockdiag_matmul", implementation, x.reshape(-1, nb * p), w)
    return y.reshape(*batch, nb * q)


@register("blockdiag_matmul", "xla")
@jax.jit
def _blockdiag_xla(x: jax.Array, w: jax.Array) -> jax.Array:
    nb, q, p = w.shape
    x3 = jnp.swapaxes(x.reshape(-1, nb, p), 0, 1)  # (nb, B, p): block-leading, as in _monarch_xla
    y = jnp.einsum("kbp,kpq->bkq", x3, jnp.swapaxes(w, 1, 2), preferred_element_type=jnp.float32)
    return y.reshape(-1, nb * q).astype(x.dtype)


@register("blockdiag_matmul", "reference")
@jax.jit
def _blockdiag_reference(x: jax.Array, w: jax.Array) -> jax.Array:
    f32 = jnp.float32
    dense = jax.scipy.linalg.block_diag(*w.astype(f32))
    y = jnp.einsum("bn,mn->bm", x.astype(f32), dense, precision=jax.lax.Precision.HIGHEST)
    return y.astype(x.dtype)


# --- dense form and projection --------------------------------------------------------------------


def to_dense(w1: Float[Array, "k q p"], w2: Float[Array, "l s r"]) -> Float[Array, "m n"]:
    """The Monarch matrix ``M`` (l*s, k*p) of the factors, so that ``monarch_matmul(x) == x @ M.T``."""
    w1, w2 = jnp.asarray(w1), jnp.asarray(w2)
    _validate_factors(w1, w2)
    dtype = jnp.result_type(w1, w2)
    return _dense_matrix(jnp.asarray(w1, dtype), jnp.asarray(w2, dtype))


@jax.jit
def _dense_matrix(w1: jax.Array, w2: jax.Array) -> jax.Array:
    """``M`` built from its definition. BlockDiag(w1) is materialized as an (k q, n) matrix; P_mid,
    BlockDiag(w2) and P_out are applied to its rows: m * r * n multiply-adds (n^2.5 when square), far
    below a dense n^3 product."""
    k, q, p = w1.shape
    l, s, r = w2.shape
    eye = jnp.eye(k, dtype=w1.dtype)
    b1 = jnp.einsum("kqp,kj->kqjp", w1, eye).reshape(k * q, k * p)  # BlockDiag(w1)
    b1 = jnp.swapaxes(b1.reshape(r, l, k * p), 0, 1)  # P_mid: row (r, l) -> (l, r)
    z = jnp.einsum("lsr,lrn->sln", w2, b1, precision=jax.lax.Precision.HIGHEST)  # BlockDiag(w2), then P_out
    return z.reshape(s * l, k * p)


def reference(x: jax.Array, w1: jax.Array, w2: jax.Array) -> jax.Array:
    """``x @ M.T`` over the last axis with the dense Monarch matrix, in f32 with the highest matmul
    precision, returned in the promoted dtype: the ground truth of :func:`monarch_matmul`."""
    f32 = jnp.float32
    dense = _dense_matrix(jnp.asarray(w1, f32), jnp.asarray(w2, f32))
    y = jnp.einsum("...n,mn->...m", jnp.asarray(x, f32), dense, precision=jax.lax.Precision.HIGHEST)
    return y.astype(jnp.result_type(x, w1, w2))


def monarch_shapes(n: int, m: int, nblocks: int) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """Factor shapes ``(w1, w2)`` of an n -> m Monarch matrix with ``nblocks`` blocks per factor.

    The fly/m2 ``MonarchLinear`` layout: ``k = l = nblocks``, ``p = n / nblocks``,
    ``s = m / nblocks`` and ``q = r = min(p, s)``. ``nblocks = sqrt(n)`` with ``n = m`` is the
    square Monarch of the paper.
    """
    for name, v in (("n", n), ("m", m), ("nblocks", nblocks)):
        check_int(name, v)
    if n % nblocks or m % nblocks:
        raise ValueError(
            f"nblocks={nblocks} must divide both the input size n={n} and the output size m={m}; "
            f"pick a common divisor such as {math.gcd(n, m)}"
        )
    p, s = n // nblocks, m // nblocks
    q = min(p, s)
    return (nblocks, q, p), (nblocks, s, q)


def project(dense: Float[Array, "m n"], nblocks: int) -> tuple[jax.Array, jax.Array]:
    """The Monarch factors nearest to ``dense`` in Frobenius norm (Dao et al. 2022's projection).

    With the shapes of :func:`monarch_shapes`, entry ``M[s l' + l, k p' + p]`` collects one term
    ``w2[l, s, r_j] w1[k, q_j, p]`` per intermediate feature ``j = k q' + q_j = r_j l' + l``. So the
    (l, k) sub-block (rows ``{s l' + l}``, columns of input block k) has rank at most
    ``|J(l, k)|``, the number of such j, and every factor entry belongs to exactly one sub-block.
    The Frobenius error therefore splits over sub-blocks and the optimum is the truncated SVD of
    each to rank ``|J(l, k)|`` (rank 1 for the square Monarch), by Eckart-Young. Singular values
    are split evenly between the factors. Exact (up to round-off) when ``dense`` is a Monarch
    matrix of these shapes.

    ``nblocks = 1`` is exact for every matrix (two dense factors); more blocks mean fewer
    parameters, and along a divisor chain with ``nblocks^2 <= n`` (1, 2, 4, ..., sqrt(n)) each class
    contains the next, so the error grows monotonically with ``nblocks``.

    Args:
      dense: (m, n), acting as ``y = x @ dense.T``.
      nblocks: blocks per factor; must divide m and n.

    Returns:
      ``(w1, w2)`` with ``to_dense(w1, w2)`` the projection, in ``dense``'s dtype (SVD in f32 at least).
    """
    dense = jnp.asarray(dense)
    _check_float("dense", dense)
    if jnp.ndim(dense) != 2:
        raise ValueError(f"dense must be a 2-D (out, in) matrix; got dense.shape={jnp.shape(dense)}")
    m, n = jnp.shape(dense)
    monarch_shapes(n, m, nblocks)  # validates nblocks
    return _project(dense, int(nblocks))


@functools.partial(jax.jit, static_argnums=1)
def _project(dense: jax.Array, nblocks: int) -> tuple[jax.Array, jax.Array]:
    m, n = dense.shape
    (k, q, p), (l, s, r) = monarch_shapes(n, m, nblocks)
    dtype = dense.dtype
    work = jnp.promote_types(dtype, jnp.float32)
    # Sub-block (l, k): rows s * l' + l (s = 0..S-1), columns k * p' + p (p = 0..P-1).
    blocks = jnp.asarray(dense, work).reshape(s, l, k, p).transpose(1, 2, 0, 3)  # (l, k, s, p)
    u, sv, vh = jnp.linalg.svd(blocks, full_matrices=False)  # (l, k, s, t), (l, k, t), (l, k, t, p)
    t = sv.shape[-1]

    # For each intermediate feature j: its w1 row (k_j, q_j), its w2 column (l_j, r_j), and which
    # singular triple of sub-block (l_j, k_j) it carries (its rank among that block's features).
    j = np.arange(k * q)
    kj, qj = np.divmod(j, q)
    rj, lj = np.divmod(j, l)
    block_id = lj * k + kj
    slot = np.zeros_like(j)
    seen: dict[int, int] = {}
    for i, b in enumerate(block_id):
        slot[i] = seen.get(int(b), 0)
        seen[int(b)] = slot[i] + 1
    keep = slot < t  # a block of rank > min(s, p) has no further singular triples; those features get 0
    slot_c = np.minimum(slot, t - 1)

    root = jnp.sqrt(sv[lj, kj, slot_c]) * jnp.asarray(keep, work)  # (kq,)
    rows_w1 = root[:, None] * vh[lj, kj, slot_c, :]  # (kq, p): w1[kj, qj, :]
    cols_w2 = root[:, None] * u[lj, kj, :, slot_c]  # (kq, s): w2[lj, :, rj]
    w1 = jnp.zeros((k, q, p), work).at[kj, qj, :].set(rows_w1)
    w2 = jnp.zeros((l, r, s), work).at[lj, rj, :].set(cols_w2).transpose(0, 2, 1)
    return w1.astype(dtype), w2.astype(dtype)
