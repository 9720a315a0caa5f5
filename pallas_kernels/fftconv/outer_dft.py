"""Orders 3 and 4 of the FFT convolution: outer DFT stages by XLA matmuls around a Pallas kernel that
convolves each complex row with the order-2 stages of :mod:`.stages`, for FFT sizes past the order-2
kernel's cap.

For ``N = P * S``, view a signal as ``X[p, s] = x[p * S + s]`` (P rows of S samples) and write a bin as
``k = kp + P * ks`` (FlashFFTConv's eq. 2 once more, one level up)::

    A[kp, s] = T[kp, s] * sum_p F_P[kp, p] X[p, s],     T[kp, s] = w_N^(kp * s)
    X_hat[kp + P * ks] = sum_s A[kp, s] w_S^(s * ks)     (an S-point DFT of row kp)

So the convolution is: the outer DFT over rows with its twiddles (a dense P x P matmul, done by XLA; only
the first ``ceil(L / S)`` rows of X hold input), then for every row ``kp`` an S-point circular
convolution of the complex row ``A[kp]`` with the row's slice of the kernel spectrum (the row kernel: the
order-2 stages on complex rows, the product and the inverse, all on chip), then conjugate twiddles and
the inverse outer DFT (XLA again), computing only the output rows that hold the first L samples. With
the inner order-2 split ``S = S1 * S2`` this is FlashFFTConv's order-3 decomposition. Past
``max_dense_outer`` rows the outer DFT is itself split, ``P = P1 * P2`` (order 4): a P1-point DFT,
twiddles ``w_P^(k1 * p2)``, a P2-point DFT, leaving row ``kp = k1 + P1 * k2`` at position
``k1 * P2 + k2``; the kernel spectrum and the row twiddles are stored in that row order, so again
nothing is permuted. Unlike the paper's single kernel, the intermediate ``A`` makes one round trip
through memory.

Frequency-sparse convolutions skip, in every row, the inner columns that hold no kept bin; the zero input
rows and unneeded output rows are skipped by the outer stages. The kernel gradient is the batch sum of
row correlations, inverted by the same outer stages.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jaxflash.pallas_kernels.fftconv.config import FFTConvConfig
from jaxflash.pallas_kernels.fftconv.stages import (
    StagePlan,
    Stages,
    cmul,
    const_specs,
    correlate,
    dft_matrix,
    launch,
    make_stage_plan,
    matmul_dtype,
    split_complex,
    stage_constants,
)

from jaxflash.utils import cdiv, matmul_precision, next_pow2, zero_cotangent

_HIGHEST = jax.lax.Precision.HIGHEST  # the outer stages run in f32; a GPU would default to TF32


@dataclasses.dataclass(frozen=True)
class OuterPlan:
    """The split of one size-``n`` transform into ``outer`` rows of ``inner.n`` samples."""

    n: int  # FFT size, n = outer * inner.n
    outer: int  # P: rows of the [P, S] view
    factors: tuple[int, int]  # (P1, P2), P = P1 * P2; P2 = 1: one dense outer DFT (order 3), else order 4
    inner: StagePlan  # order-2 plan of one full complex row of S samples
    rows_in: int  # rows of X that hold input: ceil(L / S)
    rows_out: int  # output rows the inverse outer DFT computes
    rows_dk: int  # rows of the kernel gradient (lags < kernel_len)


def make_plan(
    seq_len: int,
    kernel_len: int,
    n: int,
    inner_size: int,
    max_dense_outer: int,
    kept: np.ndarray | None = None,
    min_dim: int = 1,
) -> OuterPlan:
    """The split of FFT size ``n`` into ``P = n / inner_size`` rows of ``inner_size`` samples; the outer
    DFT is one dense stage up to ``max_dense_outer`` rows, else two (``P1 >= P2``).

    ``kept`` (natural order, length ``n``; None: all) marks the bins whose product is kept. Bin
    ``kp + P * ks`` lies in row ``kp`` at inner bin ``ks``, so the rows' inner plan keeps the columns
    holding an inner bin that is kept in some row (the row kernel skips the others); the kernel spectrum
    is masked to the exact kept set."""
    if n % inner_size or n // inner_size < 2:
        raise ValueError(f"order 3 needs an FFT size that is a multiple >= 2 of {inner_size=}, got {n}")
    outer = n // inner_size
    if outer > max_dense_outer**2:
        raise ValueError(
            f"FFT size {n} needs {outer} rows of {inner_size}; orders 3/4 take at most "
            f"{max_dense_outer**2} (two outer stages of {max_dense_outer})"
        )
    if outer <= max_dense_outer:
        factors = (outer, 1)
    else:
        p1 = 1 << -(-(outer.bit_length() - 1) // 2)
        factors = (p1, outer // p1)
    inner_kept = None if kept is None else np.asarray(kept, bool).reshape(inner_size, outer).any(axis=1)
    inner = make_stage_plan(inner_size, inner_size, inner_size, inner_kept, min_dim)
    rows = lambda length: min(cdiv(length, inner_size), outer)  # noqa: E731
    return OuterPlan(n, outer, factors, inner, rows(seq_len), rows(seq_len), rows(kernel_len))


def row_order(factors: tuple[int, int]) -> np.ndarray:
    """The outer bin ``kp = k1 + P1 * k2`` that row position ``r = k1 * P2 + k2`` holds after the two
    outer stages (the identity for one stage): rows stay in this digit-reversed order throughout."""
    p1, p2 = factors
    return (np.arange(p1)[:, None] + p1 * np.arange(p2)[None, :]).ravel()


@functools.lru_cache(maxsize=64)
def _outer_constants(n: int, factors: tuple[int, int], inner: int):
    """float64 NumPy: F_P1, F_P2, the twiddles between the two outer stages [P1, P2] (w_P^(k1 * p2)),
    and the row twiddles T [P, S] (w_N^(kp * s)) in row order."""
    p1, p2 = factors
    mid = np.exp(-2j * np.pi * np.outer(np.arange(p1), np.arange(p2)) / (p1 * p2))
    tw = np.exp(-2j * np.pi * np.outer(row_order(factors), np.arange(inner)) / n)
    return dft_matrix(p1), dft_matrix(p2), mid, tw


def row_layout(a: Any, plan: OuterPlan) -> Any:
    """Spectra ``[..., N]`` in natural order -> ``[..., P, S1, Q]``, the layout the data reaches, so no
    data permutation is needed anywhere: the row holding outer bin ``kp`` (rows in :func:`row_order`)
    has the bins ``kp + P * (k1 + S1 * k2)`` in the inner kernel's digit-reversed order, only its kept
    columns ``k2``. NumPy or jax arrays."""
    lead = a.shape[:-1]
    a = a.reshape(*lead, plan.inner.n2, plan.inner.n1, plan.outer)
    a = a.transpose(*range(len(lead)), len(lead) + 2, len(lead) + 1, len(lead))  # [..., P, S1, S2]
    if plan.factors[1] > 1:
        a = a[..., row_order(plan.factors), :, :]
    return a[..., np.asarray(plan.inner.cols)]


def row_mask(kept: np.ndarray | None, plan: OuterPlan) -> np.ndarray:
    """The kept bins (all when ``kept`` is None) in the row layout ``[P, S1, Q]``, as 0/1 float32."""
    if kept is None:
        return np.ones((plan.outer, plan.inner.n1, len(plan.inner.cols)), np.float32)
    return row_layout(np.asarray(kept, bool), plan).astype(np.float32)


def kernel_spectrum(k: jax.Array, plan: OuterPlan, mask: jax.Array | None) -> tuple[jax.Array, jax.Array]:
    """The kernel's FFT in the row kernel's layout (:func:`row_layout`), ``[C, P, S1, Q]``, times
    ``mask`` (from :func:`row_mask`; None keeps all). Computed once per call by XLA, as in FlashFFTConv."""
    kp = row_layout(jnp.fft.fft(k.astype(jnp.float32).T, n=plan.n, axis=-1), plan)
    if mask is not None:
        kp = kp * mask
    return jnp.real(kp), jnp.imag(kp)


# --- outer stages (XLA) --------------------------------------------------------------------------------


def _cein(spec: str, m: np.ndarray, ar: jax.Array, ai: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``einsum(spec, m, a)`` for a complex constant matrix ``m`` and complex ``a`` (real, imag parts)."""
    mr, mi = split_complex(m, jnp.float32)
    ein = functools.partial(jnp.einsum, spec, precision=_HIGHEST)
    return ein(mr, ar) - ein(mi, ai), ein(mr, ai) + ein(mi, ar)


def outer_forward(x: jax.Array, plan: OuterPlan) -> tuple[jax.Array, jax.Array]:
    """Real ``[B, L, C]`` -> the twiddled outer DFT ``A``, ``[C, P, B, S1, S2]`` real and imaginary parts,
    rows in :func:`row_order`. Two stages: ``p = p1 * P2 + p2``, a P1-point DFT over ``p1`` (only the
    rows holding input), twiddles ``w_P^(k1 * p2)``, a P2-point DFT over ``p2``."""
    batch, seq, chans = x.shape
    s = plan.inner.n
    p1, p2 = plan.factors
    f1, f2, mid, tw = _outer_constants(plan.n, plan.factors, s)
    m1 = cdiv(plan.rows_in, p2)  # p1 rows holding input
    xr = jnp.transpose(x.astype(jnp.float32), (2, 0, 1))
    xr = jnp.pad(xr, ((0, 0), (0, 0), (0, m1 * p2 * s - seq))).reshape(chans, batch, m1, p2, s)
    fr, fi = split_complex(f1[:, :m1], jnp.float32)
    ar = jnp.einsum("kp,cbpqs->ckbqs", fr, xr, precision=_HIGHEST)  # [C, P1, B, P2, S]
    ai = jnp.einsum("kp,cbpqs->ckbqs", fi, xr, precision=_HIGHEST)
    if p2 > 1:
        ar, ai = cmul(ar, ai, *split_complex(mid[:, None, :, None], jnp.float32))
        ar, ai = _cein("eq,ckbqs->ckebs", f2, ar, ai)  # [C, P1, P2, B, S]
    ar, ai = ar.reshape(chans, plan.outer, batch, s), ai.reshape(chans, plan.outer, batch, s)
    ar, ai = cmul(ar, ai, *split_complex(tw[:, None, :], jnp.float32))
    shape = (chans, plan.outer, batch, plan.inner.n1, plan.inner.n2)
    return ar.reshape(shape), ai.reshape(shape)


def outer_inverse(er: jax.Array, ei: jax.Array, plan: OuterPlan, rows: int, length: int) -> jax.Array:
    """``[C, P, B, S1, S2]`` complex rows -> real ``[B, length, C]``: conjugate row twiddles with the
    inverse's 1/P (the rows' 1/S came from the row kernel), then the outer stages inverted in reverse
    order, the last one computing only the output rows ``< rows``."""
    chans, outer, batch = er.shape[:3]
    s = plan.inner.n
    p1, p2 = plan.factors
    f1, f2, mid, tw = _outer_constants(plan.n, plan.factors, s)
    er, ei = er.reshape(chans, outer, batch, s), ei.reshape(chans, outer, batch, s)
    er, ei = cmul(er, ei, *split_complex(np.conj(tw)[:, None, :] / outer, jnp.float32))
    er, ei = er.reshape(chans, p1, p2, batch, s), ei.reshape(chans, p1, p2, batch, s)
    if p2 > 1:
        er, ei = _cein("qe,ckebs->ckqbs", np.conj(f2), er, ei)  # [C, P1, P2 (p2), B, S]
        er, ei = cmul(er, ei, *split_complex(np.conj(mid)[:, :, None, None], jnp.float32))
    m1 = cdiv(rows, p2)
    gr, gi = split_complex(np.conj(f1)[:m1], jnp.float32)
    spec = "pk,ckqbs->bpqsc"
    y = jnp.einsum(spec, gr, er, precision=_HIGHEST) - jnp.einsum(spec, gi, ei, precision=_HIGHEST)
    return y.reshape(batch, m1 * p2 * s, chans)[:, :length]


# --- the row kernels -----------------------------------------------------------------------------------


def _rows_conv_kernel(ar_ref, ai_ref, kr_ref, ki_ref, *refs, rows, matmul_dtype, precision):
    """One channel, one row ``kp``, ``rows`` batch rows: the S-point circular convolution of each complex
    row with the row's kernel spectrum (forward order-2 stages, product, inverse with its 1/S)."""
    stages = Stages(refs[:12], matmul_dtype, precision)
    or_ref, oi_ref = refs[12:]
    kr, ki = kr_ref[...], ki_ref[...]
    for r in range(rows):
        spectrum = stages.forward(ar_ref[r], ai_ref[r])
        or_ref[r], oi_ref[r] = stages.inverse(*cmul(*spectrum, kr, ki))


def _rows_corr_kernel(xr_ref, xi_ref, gr_ref, gi_ref, mask_ref, *refs, rows, batch, matmul_dtype, precision):
    """One channel, one row ``kp``, ``rows`` batch rows: ``sum_b conj(fft(x_b)) * fft(g_b)`` over the kept
    bins (``mask_ref``), inverted."""
    stages = Stages(refs[:12], matmul_dtype, precision)
    or_ref, oi_ref = refs[12:]
    first = pl.program_id(2) * rows

    def pairs():
        for r in range(rows):
            valid = first + r < batch  # rows past the batch hold garbage: select zeros, never multiply
            xr, xi, gr, gi = (jnp.where(valid, ref[r], 0.0) for ref in (xr_ref, xi_ref, gr_ref, gi_ref))
            yield (xr, xi), (gr, gi)

    mask = mask_ref[...]
    acc_r, acc_i = correlate(stages, pairs(), mask.shape)
    or_ref[...], oi_ref[...] = stages.inverse(acc_r * mask, acc_i * mask)


def _rows_call(kernel, name, a, b, plan, matmul_dtype, *, mask, interpret, config, **params):
    """A row kernel over ``[C, P, B, S1, S2]`` pairs ``a`` and ``b`` (each real, imaginary; ``b`` may be
    a per-channel ``[C, P, S1, Q]`` spectrum), grid (channel, row, batch block). The outputs are
    ``[C, P, B, S1, S2]``; with a row ``mask`` (the correlation) one partial sum per batch block,
    ``[C, P, blocks, S1, S2]``."""
    chans, outer, batch, s1, s2 = a[0].shape
    q = len(plan.inner.cols)
    rows = min(config.row_block_rows, next_pow2(batch))
    nb = cdiv(batch, rows)
    consts = stage_constants(plan.inner, s1, matmul_dtype)
    data = pl.BlockSpec((None, None, rows, s1, s2), lambda i, p, j: (i, p, j, 0, 0))
    spec_b = data if b[0].ndim == 5 else pl.BlockSpec((None, None, s1, q), lambda i, p, j: (i, p, 0, 0))
    if mask is not None:
        extra = [mask]
        extra_specs = [pl.BlockSpec((None, s1, q), lambda i, p, j: (p, 0, 0))]
        out_spec = pl.BlockSpec((None, None, None, s1, s2), lambda i, p, j: (i, p, j, 0, 0))
        out_shape = (chans, outer, nb, s1, s2)
    else:
        extra, extra_specs = [], []
        out_spec, out_shape = data, (chans, outer, batch, s1, s2)
    body = functools.partial(
        kernel, rows=rows, matmul_dtype=matmul_dtype, precision=matmul_precision(matmul_dtype), **params
    )
    return launch(
        body,
        [*a, *b, *extra, *consts],
        grid=(chans, outer, nb),
        in_specs=[data, data, spec_b, spec_b, *extra_specs, *const_specs(consts)],
        out_specs=[out_spec, out_spec],
        out_shape=[jax.ShapeDtypeStruct(out_shape, jnp.float32)] * 2,
        plan=plan.inner,
        config=config,
        interpret=interpret,
        name=name,
    )


# --- custom_vjp ------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Static:
    plan: OuterPlan
    interpret: Any
    config: FFTConvConfig
    matmul_dtype: str  # dtype of the row kernel's DFT matmuls: the inputs' (bf16/f16) or float32


def _circular(x: jax.Array, kr: jax.Array, ki: jax.Array, static: _Static) -> jax.Array:
    """The size-N circular convolution of real f32 ``x`` [B, L, C] with the spectrum ``(kr, ki)``."""
    a = outer_forward(x, static.plan)
    e = _rows_call(
        _rows_conv_kernel,
        "fftconv3_rows",
        a,
        (kr, ki),
        static.plan,
        static.matmul_dtype,
        mask=None,
        interpret=static.interpret,
        config=static.config,
    )
    return outer_inverse(*e, static.plan, static.plan.rows_out, x.shape[1])


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _conv(x: jax.Array, k: jax.Array, mask: jax.Array | None, static: _Static) -> jax.Array:
    return _circular(x, *kernel_spectrum(k, static.plan, mask), static)


def _conv_fwd(x, k, mask, static):
    return _conv(x, k, mask, static), (x, k, mask)


def _conv_bwd(static, res, g):
    x, k, mask = res
    plan = static.plan
    kr, ki = kernel_spectrum(k, plan, mask)
    dx = _circular(g, kr, -ki, static)  # corr(g, k): the conjugate kernel spectrum
    grad_mask = jnp.asarray(row_mask(None, plan)) if mask is None else mask
    s = _rows_call(
        _rows_corr_kernel,
        "fftconv3_kernel_grad",
        outer_forward(x, plan),
        outer_forward(g, plan),
        plan,
        static.matmul_dtype,
        mask=grad_mask,
        interpret=static.interpret,
        config=static.config,
        batch=x.shape[0],
    )
    s = [part.sum(axis=2, keepdims=True) for part in s]  # the batch blocks' partial sums
    dk = outer_inverse(*s, plan, plan.rows_dk, k.shape[0])[0]
    return dx, dk, zero_cotangent(mask)


_conv.defvjp(_conv_fwd, _conv_bwd)


@functools.partial(jax.jit, static_argnums=(6,))
def _gated(u, k, skip, pre, post, mask, static: _Static):
    """The gated form around :func:`_conv`; the gates' and skip's gradients by plain autodiff."""
    x = u.astype(jnp.float32)
    if pre is not None:
        x = x * pre.astype(jnp.float32)
    y = _conv(x, k.astype(jnp.float32), mask, static) + skip.astype(jnp.float32) * x
    if post is not None:
        y = y * post.astype(jnp.float32)
    return y.astype(u.dtype)


def fftconv(
    u: jax.Array,
    k: jax.Array,
    skip: jax.Array,
    pre_gate: jax.Array | None,
    post_gate: jax.Array | None,
    *,
    fft_size: int,
    kept: np.ndarray | None,
    min_dim: int,
    interpret: Any,
    config: FFTConvConfig,
) -> jax.Array:
    """The size-``fft_size`` circular convolution of the package docstring by orders 3/4."""
    plan = make_plan(
        u.shape[1], k.shape[0], fft_size, config.inner_size, config.max_dense_outer, kept, min_dim
    )
    static = _Static(plan, interpret, config, matmul_dtype(u.dtype).name)
    mask = None if kept is None else jnp.asarray(row_mask(kept, plan))
    return _gated(u, k, skip, pre_gate, post_gate, mask, static)
