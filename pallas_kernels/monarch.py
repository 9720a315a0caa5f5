"""Fused Monarch matrix multiply (Dao et al. 2022, "Monarch"; Fu et al. 2023, "Monarch Mixer").

A Monarch matrix in the m2 repository's parameterization (``blockdiag_butterfly_multiply.py``) is

    M = P_out . BlockDiag(w2) . P_mid . BlockDiag(w1),   w1: (k, q, p),  w2: (l, s, r),

with ``k * p = n`` inputs, ``l * r = k * q`` intermediate features and ``l * s = m`` outputs:

    h[b, k, q]  = sum_p w1[k, q, p] x[b, k * p + p]          BlockDiag(w1)
    h           -> flatten (k q) -> view (r, l) -> (l, r)    P_mid (reshape-transpose)
    z[b, s, l]  = sum_r w2[l, s, r] h[b, l, r]               BlockDiag(w2)
    y[b, s * l + l] = z[b, s, l]                             P_out (output in (s, l) order)

The square Monarch of the paper, ``M = P L P^T R`` with sqrt(n) blocks of size sqrt(n), is
``k = q = p = l = s = r = sqrt(n)``.

The kernel fuses both block products and the permutation; the intermediate ``h`` never leaves the
chip. It serves the family ``l == q`` and ``r == k`` (which includes the square Monarch): there the
mid permutation is the transpose of the (k, q) grid, so output block ``l`` needs, from every input
block ``r``, the single row ``w1[r, l, :]``. One program owns ``block_rows`` rows and one output
block ``l`` and computes

    H[b, r] = sum_p x[b, r, p] * w1[r, l, p]        (elementwise product, reduced over p: CUDA cores)
    y[b, :, l] = H @ w2[l].T                        (a 2-D dot: tensor cores)

chunked over ``r`` and ``p`` so that both live in registers. FLOPs equal the unfused product's.
The backward pass runs the same kernel on the transposed problem for ``dx`` (see ``_bwd``) and
XLA einsums for the weight gradients, which are reductions over the batch.

Triton lowering needs power-of-two block dimensions and dot operands of at least 16 on each side,
so every one of k, q, p, s must be a power of two >= 16 (square n >= 256); other shapes raise
``NotImplementedError`` and the public op falls back to XLA. The op's definition and its dense
reference live with the op, in :mod:`jaxflash.ops.monarch`.
"""

# The factor shapes keep the m2 paper's letters (k, q, p, l, s, r), so `l` is a name here.
# ruff: noqa: E741

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jaxflash.pallas_kernels.common import compiler_params

from jaxflash.utils import cdiv, check_int, matmul_precision

# Triton's tl.dot needs every operand dimension >= 16.
_MIN_DOT_DIM = 16


@dataclasses.dataclass(frozen=True)
class MonarchConfig:
    """Tile sizes of the fused kernel; reach them through ``jaxflash.monarch_matmul(..., config=...)``.

    Attributes:
      block_rows: rows of ``x`` per program (the M side of the second dot; a power of two >= 16).
      block_r: chunk of the intermediate contraction ``r`` per dot (a power of two >= 16).
      block_p: chunk of the first factor's contraction ``p`` held in registers at once (a power of two).
      num_warps: Triton warps per program (>= 1).
      num_stages: Triton software-pipelining stages (>= 1).
    """

    block_rows: int = 16
    block_r: int = 16
    block_p: int = 32
    num_warps: int = 4
    num_stages: int = 2

    def __post_init__(self):
        for name in ("block_rows", "block_r"):
            check_int(f"MonarchConfig.{name}", getattr(self, name), minimum=_MIN_DOT_DIM, power_of_two=True)
        check_int("MonarchConfig.block_p", self.block_p, power_of_two=True)
        for name in ("num_warps", "num_stages"):
            check_int(f"MonarchConfig.{name}", getattr(self, name))


def unsupported_reason(w1_shape: tuple[int, ...], w2_shape: tuple[int, ...]) -> str | None:
    """Why the fused kernel cannot serve these factor shapes, or None when it can."""
    k, q, p = w1_shape
    l, s, r = w2_shape
    if l != q or r != k:
        return (
            f"the fused kernel needs l == q and r == k (got w1 {tuple(w1_shape)}, w2 {tuple(w2_shape)}); "
            "other Monarch shapes run on the 'xla' implementation"
        )
    for name, v in (("k", k), ("q", q), ("p", p), ("s", s)):
        if v < _MIN_DOT_DIM or v & (v - 1):
            return f"the fused kernel needs {name} a power of two >= {_MIN_DOT_DIM}; got {name}={v}"
    return None


# --- kernel -------------------------------------------------------------------------------------


def _kernel(x_ref, w1t_ref, w2_ref, o_ref, *, block_r: int, block_p: int):
    # x_ref: (rows, R, P), every input block of these rows; w1t_ref: (R, P), row l of each w1 block;
    # w2_ref: (S, R), output block l of the second factor; o_ref: (rows, S), column l of the output.
    rows, num_r, num_p = x_ref.shape
    num_s = w2_ref.shape[0]
    precision = matmul_precision(x_ref.dtype)
    br = min(block_r, num_r)
    bp = min(block_p, num_p)
    acc = jnp.zeros((rows, num_s), jnp.float32)
    for r0 in range(0, num_r, br):
        # The intermediate chunk stays in registers: it is consumed by the dot right away.
        h = jnp.zeros((rows, br), jnp.float32)
        for p0 in range(0, num_p, bp):
            xs = x_ref[:, pl.ds(r0, br), pl.ds(p0, bp)].astype(jnp.float32)
            g = w1t_ref[pl.ds(r0, br), pl.ds(p0, bp)].astype(jnp.float32)
            h = h + jnp.sum(xs * g[None, :, :], axis=2)
        w2c = w2_ref[:, pl.ds(r0, br)]
        # h is rounded to the compute dtype as the unfused two-bmm path does, so bf16 runs on tensor cores.
        acc = acc + jax.lax.dot_general(
            h.astype(w2c.dtype),
            w2c,
            (((1,), (1,)), ((), ())),
            precision=precision,
            preferred_element_type=jnp.float32,
        )
    o_ref[...] = acc.astype(o_ref.dtype)


def _fused(x3: jax.Array, w1t: jax.Array, w2: jax.Array, interpret: Any, config: MonarchConfig) -> jax.Array:
    """out[b, s, l] = sum_r w2[l, s, r] sum_p x3[b, r, p] w1t[l, r, p].

    Shapes: x3 (B, R, P), w1t (L, R, P), w2 (L, S, R); out (B, S, L).
    """
    batch, num_r, num_p = x3.shape
    num_l, num_s, _ = w2.shape
    rows = config.block_rows
    padded = cdiv(batch, rows) * rows
    if padded != batch:
        # Zero rows rather than masked tails: rows are independent, and the pad is cut off below.
        x3 = jnp.pad(x3, ((0, padded - batch), (0, 0), (0, 0)))
    out = pl.pallas_call(
        functools.partial(_kernel, block_r=config.block_r, block_p=config.block_p),
        grid=(padded // rows, num_l),
        in_specs=[
            pl.BlockSpec((rows, num_r, num_p), lambda i, l: (i, 0, 0)),
            pl.BlockSpec((None, num_r, num_p), lambda i, l: (l, 0, 0)),
            pl.BlockSpec((None, num_s, num_r), lambda i, l: (l, 0, 0)),
        ],
        out_specs=pl.BlockSpec((rows, num_s, None), lambda i, l: (i, 0, l)),
        out_shape=jax.ShapeDtypeStruct((padded, num_s, num_l), x3.dtype),
        interpret=interpret,
        compiler_params=compiler_params(
            interpret,
            num_warps=config.num_warps,
            num_stages=config.num_stages,
            dimension_semantics=("parallel", "parallel"),
        ),
        name="monarch_fused",
    )(x3, w1t, w2)
    return out[:batch]


# --- forward, backward, custom_vjp ----------------------------------------------------------------


def _forward(x: jax.Array, w1: jax.Array, w2: jax.Array, interpret: Any, config: MonarchConfig) -> jax.Array:
    k, _, p = w1.shape
    l, s, _ = w2.shape
    x3 = x.reshape(x.shape[0], k, p)
    out = _fused(x3, jnp.swapaxes(w1, 0, 1), w2, interpret, config)  # (B, s, l): already P_out order
    return out.reshape(x.shape[0], s * l)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _monarch(x, w1, w2, interpret, config):
    return _forward(x, w1, w2, interpret, config)


def _fwd(x, w1, w2, interpret, config):
    return _forward(x, w1, w2, interpret, config), (x, w1, w2)


def _bwd(interpret, config, residuals, dy):
    x, w1, w2 = residuals
    k, q, p = w1.shape
    l, s, r = w2.shape
    batch = x.shape[0]
    dy3 = dy.reshape(batch, s, l)
    # dx = M^T dy is the same fused product on the transposed problem (l == q, r == k):
    #   G[b, k, q] = sum_s dy[b, s, q] w2[q, s, k];  dx[b, k, p] = sum_q w1[k, q, p] G[b, k, q],
    # i.e. _fused with x3 = dy as (B, q, s), w1t = w2 as (k, q, s) and w2 = w1 as (k, p, q).
    dx = _fused(
        jnp.swapaxes(dy3, 1, 2), jnp.transpose(w2, (2, 0, 1)), jnp.swapaxes(w1, 1, 2), interpret, config
    )  # (B, p, k)
    dx = jnp.swapaxes(dx, 1, 2).reshape(batch, k * p)
    # The weight gradients contract over the batch; XLA's batched matmuls recompute h and G for them.
    # h and G stay in f32 (rounding them to bf16 costs ~sqrt(batch) ulps in the sums), and f32 dots ask for
    # IEEE precision: XLA on GPU otherwise runs them in TF32, far outside the f32 tolerance at large batch.
    x3 = x.reshape(batch, k, p)
    f32 = jnp.float32
    hi = matmul_precision(x.dtype)
    h = jnp.einsum("brp,rlp->blr", x3, w1, preferred_element_type=f32, precision=hi)
    dw2 = jnp.einsum("bsl,blr->lsr", dy3.astype(f32), h, precision=hi)
    g = jnp.einsum("bsq,qsk->bkq", dy3, w2, preferred_element_type=f32, precision=hi)
    dw1 = jnp.einsum("bkq,bkp->kqp", g, x3.astype(f32), precision=hi)
    return dx.astype(x.dtype), dw1.astype(w1.dtype), dw2.astype(w2.dtype)


_monarch.defvjp(_fwd, _bwd)


def monarch_matmul(
    x: jax.Array,
    w1: jax.Array,
    w2: jax.Array,
    *,
    interpret: Any = False,
    config: MonarchConfig | None = None,
) -> jax.Array:
    """The fused Monarch product of 2-D ``x`` (B, n): (B, l * s); differentiable in all three inputs.

    Raises ``NotImplementedError`` for factor shapes outside the kernel's family (see the module
    docstring) and ``ValueError`` for inconsistent shapes or dtypes. Inputs are validated by the public
    op (:func:`jaxflash.monarch_matmul`); this checks what the kernel itself needs.
    """
    config = MonarchConfig() if config is None else config
    if x.ndim != 2:
        raise ValueError(f"the kernel takes x of shape (batch, n); got {x.shape=}")
    if w1.ndim != 3 or w2.ndim != 3:
        raise ValueError(f"w1 and w2 must be 3-D (blocks, out, in); got {w1.shape=}, {w2.shape=}")
    k, q, p = w1.shape
    l, s, r = w2.shape
    if x.shape[1] != k * p or l * r != k * q:
        raise ValueError(f"shapes do not compose: {x.shape=}, {w1.shape=}, {w2.shape=}")
    if not (x.dtype == w1.dtype == w2.dtype):
        raise ValueError(f"x, w1 and w2 must share a dtype; got {x.dtype}, {w1.dtype}, {w2.dtype}")
    reason = unsupported_reason(w1.shape, w2.shape)
    if reason is not None:
        raise NotImplementedError(reason)
    return _monarch_jit(x, w1, w2, interpret, config)


# One compiled program per shape, also when called eagerly.
_monarch_jit = jax.jit(_monarch, static_argnums=(3, 4))
