"""The order-2 Monarch FFT that both convolution kernels run on chip: its plan, its DFT matrices, the
stage functions, and the ``pallas_call`` launch they share.

Viewing a signal of length ``N = N1 * N2`` as ``X[n1, n2] = x[n1 * N2 + n2]`` (FlashFFTConv eq. 2,
section 3.1)::

    A = F_{N1} @ X            (DFT over n1, a dense complex matmul)
    A = A * T,  T[k1, n2] = w_N^(k1 * n2)          (twiddle factors)
    B = A @ F_{N2}            so that B[k1, k2] = X_hat[k1 + N1 * k2]

``B`` is the spectrum in digit-reversed order. The inverse (conjugate matrices and twiddles, stages
reversed, ``1/N`` folded into the twiddles) takes a spectrum in that order back to natural order, so no
data permutation is ever materialized. Real and imaginary parts are separate real matmuls accumulated
in f32.

Work is skipped, not zeroed after the fact (FlashFFTConv's partial and frequency-sparse convolutions,
section 3.3): only the first ``rows_in`` rows of ``X`` hold input (implicit zero padding), so the first
stage multiplies by ``F_{N1}[:, :rows_in]``; the last inverse stage computes only the output rows
needed; and only the columns ``k2`` of ``B`` holding a kept bin are computed, multiplied and inverted.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jaxflash.pallas_kernels.common import compiler_params
from jaxflash.pallas_kernels.fftconv.config import FFTConvConfig

from jaxflash.utils import cdiv, next_pow2

# --- plan: factor sizes, kept columns, DFT matrices ------------------------------------------------


@dataclasses.dataclass(frozen=True)
class StagePlan:
    """Sizes of the order-2 stages of one size-``n`` transform."""

    n: int  # FFT size
    n1: int
    n2: int
    rows_in: int  # M: rows of X that hold input (power of two)
    rows_out: int  # rows of the output the last inverse stage computes (power of two)
    rows_dk: int  # rows of the kernel gradient computed (lags < kernel_len)
    cols: tuple[int, ...]  # kept k2 columns of the digit-reversed spectrum


def factor(n: int) -> tuple[int, int]:
    """``(N1, N2)`` with ``N1 * N2 = n``, both powers of two, ``N1 >= N2`` and as square as possible."""
    if n < 4 or n & (n - 1):
        raise ValueError(f"the Pallas FFT convolution needs a power-of-two FFT size >= 4, got {n}")
    log = n.bit_length() - 1
    n1 = 1 << ((log + 1) // 2)
    return n1, n // n1


def make_stage_plan(
    seq_len: int, kernel_len: int, n: int, kept: np.ndarray | None, min_dim: int = 1
) -> StagePlan:
    """Sizes of every stage; ``kept`` marks the bins (natural order, length ``n``) whose product is kept
    (None: all); ``min_dim`` is the smallest matmul dimension allowed (16 for Triton)."""
    n1, n2 = factor(n)

    def rows(length: int) -> int:
        return min(max(next_pow2(cdiv(length, n2)), min_dim), n1)

    if kept is None:
        cols = list(range(n2))
    else:
        by_column = np.asarray(kept, bool).reshape(n2, n1)  # [k2, k1]: bin k1 + n1 * k2
        cols = [k2 for k2 in range(n2) if by_column[k2].any()]
    # Pad the kept columns to a power of two (Triton block dims) with dropped columns; their kernel
    # spectrum is zeroed, so they contribute nothing.
    want = min(max(next_pow2(len(cols)), min_dim), n2)
    extra = [k2 for k2 in range(n2) if k2 not in cols][: want - len(cols)]
    cols = sorted(cols + extra)
    return StagePlan(n, n1, n2, rows(seq_len), rows(seq_len), rows(kernel_len), tuple(cols))


def dft_matrix(m: int) -> np.ndarray:
    """The m-point DFT matrix F[k, j] = w_m^(k j), float64 NumPy."""
    return np.exp(-2j * np.pi * np.outer(np.arange(m), np.arange(m)) / m)


@functools.lru_cache(maxsize=64)
def _constants(n: int, n1: int, n2: int, rows_in: int, rows_out: int, cols: tuple[int, ...]):
    """DFT matrices and twiddles of the plan, in float64 NumPy (cast at the call)."""
    w1, w2 = dft_matrix(n1), dft_matrix(n2)
    tw = np.exp(-2j * np.pi * np.outer(np.arange(n1), np.arange(n2)) / n)
    cols_ = np.asarray(cols)
    return dict(
        f1=w1[:, :rows_in],  # forward stage 1: only the rows of X that hold input
        tw=tw,
        f2=w2[:, cols_],  # forward stage 2: only the kept columns
        g2=np.conj(w2)[cols_, :],  # inverse stage 1
        tw_inv=np.conj(tw) / n,  # inverse twiddles with the 1/N of the inverse DFT
        g1=np.conj(w1)[:rows_out, :],  # inverse stage 2: only the output rows needed
    )


def split_complex(z: np.ndarray, dtype: Any) -> tuple[jax.Array, jax.Array]:
    """Real and imaginary parts of a NumPy constant as arrays of ``dtype``."""
    return jnp.asarray(z.real, dtype), jnp.asarray(z.imag, dtype)


def stage_constants(plan: StagePlan, rows_out: int, matmul_dtype: Any) -> list[jax.Array]:
    """The twelve real arrays :class:`Stages` takes: real and imaginary parts of ``F_{N1}`` (input rows),
    ``T``, ``F_{N2}`` (kept columns), then the inverse's matrices, the last computing ``rows_out`` rows."""
    c = _constants(plan.n, plan.n1, plan.n2, plan.rows_in, rows_out, plan.cols)
    out = []
    for name in ("f1", "tw", "f2", "g2", "tw_inv", "g1"):
        # Twiddles multiply elementwise in f32; DFT matrices are matmul operands.
        dtype = jnp.float32 if name.startswith("tw") else matmul_dtype
        out.extend(split_complex(c[name], dtype))
    return out


# --- stage functions ---------------------------------------------------------------------------------


def cmul(ar: Any, ai: Any, br: Any, bi: Any) -> tuple[Any, Any]:
    """``(ar + i ai) * (br + i bi)`` as real and imaginary parts."""
    return ar * br - ai * bi, ar * bi + ai * br


class Stages:
    """The stage matrices of one plan (refs inside a kernel, or arrays) and the transforms they make.

    ``consts`` are the twelve arrays of :func:`stage_constants`, in that order. Matmuls run with
    ``matmul_dtype`` operands, accumulated in f32.
    """

    def __init__(self, consts: Sequence[Any], matmul_dtype: Any, precision: jax.lax.Precision | None):
        (
            self.f1r,
            self.f1i,
            self.twr,
            self.twi,
            self.f2r,
            self.f2i,
            self.g2r,
            self.g2i,
            self.tvr,
            self.tvi,
            self.g1r,
            self.g1i,
        ) = (c[...] for c in consts)
        self.matmul_dtype = matmul_dtype
        self.precision = precision

    def mm(self, a: jax.Array, b: jax.Array) -> jax.Array:
        return jnp.dot(
            a.astype(self.matmul_dtype),
            b.astype(self.matmul_dtype),
            preferred_element_type=jnp.float32,
            precision=self.precision,
        )

    def forward(self, x: jax.Array, xi: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """``x`` [M, N2] (rows of X; the rest are zero), real or with imaginary part ``xi`` -> the
        digit-reversed spectrum [N1, Q], kept columns only."""
        mm = self.mm
        ar, ai = mm(self.f1r, x), mm(self.f1i, x)
        if xi is not None:
            ar, ai = ar - mm(self.f1i, xi), ai + mm(self.f1r, xi)
        br, bi = cmul(ar, ai, self.twr, self.twi)
        return mm(br, self.f2r) - mm(bi, self.f2i), mm(br, self.f2i) + mm(bi, self.f2r)

    def _inverse_rows(self, dr: jax.Array, di: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The inverse's first stage and twiddles: digit-reversed spectrum [N1, Q] -> [N1, N2] complex."""
        mm = self.mm
        er, ei = mm(dr, self.g2r) - mm(di, self.g2i), mm(dr, self.g2i) + mm(di, self.g2r)
        return cmul(er, ei, self.tvr, self.tvi)

    def inverse_real(self, dr: jax.Array, di: jax.Array) -> jax.Array:
        """Digit-reversed spectrum [N1, Q] -> real part of the first rows of the inverse, [rows, N2]."""
        fr, fi = self._inverse_rows(dr, di)
        return self.mm(self.g1r, fr) - self.mm(self.g1i, fi)

    def inverse(self, dr: jax.Array, di: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Digit-reversed spectrum [N1, Q] -> the first rows of the complex inverse, [rows, N2] twice."""
        fr, fi = self._inverse_rows(dr, di)
        return self.mm(self.g1r, fr) - self.mm(self.g1i, fi), self.mm(self.g1r, fi) + self.mm(self.g1i, fr)


def correlate(
    stages: Stages,
    pairs: Iterable[tuple[tuple[Any, Any], tuple[Any, Any]]],
    shape: tuple[int, ...],
) -> tuple[jax.Array, jax.Array]:
    """``sum conj(F x) * F g`` over ``pairs`` of signals ``((x, xi), (g, gi))`` (imaginary parts may be
    None): the spectrum of a correlation summed over the batch, digit-reversed, of the given shape."""
    acc_r = jnp.zeros(shape, jnp.float32)
    acc_i = jnp.zeros(shape, jnp.float32)
    for x, g in pairs:
        ar, ai = stages.forward(*x)
        br, bi = stages.forward(*g)
        acc_r += ar * br + ai * bi
        acc_i += ar * bi - ai * br
    return acc_r, acc_i


# --- launching ----------------------------------------------------------------------------------------


def matmul_dtype(dtype: Any) -> Any:
    """The dtype of the DFT matmuls: bf16/f16 inputs use the tensor cores in their own dtype; f32 stays
    f32 (accumulation is f32 either way)."""
    return jnp.dtype(dtype) if jnp.dtype(dtype).itemsize == 2 else jnp.dtype(jnp.float32)


def const_specs(consts: Sequence[jax.Array]) -> list[pl.BlockSpec]:
    """Whole 2-D constants, the same block for every program of a grid of any rank."""
    return [pl.BlockSpec(c.shape, lambda *_: (0, 0)) for c in consts]


def launch(
    body: Callable[..., None],
    inputs: Sequence[jax.Array],
    *,
    grid: tuple[int, ...],
    in_specs: Sequence[pl.BlockSpec],
    out_specs: Any,
    out_shape: Any,
    plan: StagePlan,
    config: FFTConvConfig,
    interpret: Any,
    name: str,
) -> Any:
    """``pl.pallas_call`` of a kernel over a grid of independent programs, with the config's Triton
    parameters (warps by the size of ``plan``'s transforms)."""
    num_warps = config.num_warps if config.num_warps is not None else (4 if plan.n <= 1024 else 8)
    return pl.pallas_call(
        body,
        grid=grid,
        in_specs=list(in_specs),
        out_specs=out_specs,
        out_shape=out_shape,
        interpret=interpret,
        compiler_params=compiler_params(
            interpret,
            num_warps=num_warps,
            num_stages=config.num_stages,
            dimension_semantics=("parallel",) * len(grid),
        ),
        name=name,
    )(*inputs)
