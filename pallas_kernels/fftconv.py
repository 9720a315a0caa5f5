"""FlashFFTConv (Fu, Kumbong, Nguyen and Re, arXiv 2311.05908) as a Pallas kernel.

Computes the gated depthwise long convolution every H3 / Hyena / M2 mixer reduces to::

    x = pre_gate * u
    y = post_gate * (irfft(rfft(x, N) * rfft(k, N), N)[:L] + skip * x)

with ``u`` of length ``L`` per (batch, channel), ``k`` of length ``L_k`` per channel and FFT size ``N``
(``N >= L + L_k - 1`` makes the circular convolution a causal linear one; a length-``N`` kernel gives
the circular, bidirectional form).

The FFT of size ``N = N1 * N2`` is the order-2 Monarch decomposition (the paper's eq. 2, section 3.1).
Viewing a signal as ``X[n1, n2] = x[n1 * N2 + n2]``::

    A = F_{N1} @ X            (DFT over n1, a dense complex matmul)
    A = A * T,  T[k1, n2] = w_N^(k1 * n2)          (twiddle factors)
    B = A @ F_{N2}            so that B[k1, k2] = X_hat[k1 + N1 * k2]

``B`` is the spectrum in digit-reversed order. Instead of permuting it, the kernel's spectrum is
permuted once the same way (``K_perm[k1, k2] = K[k1 + N1 * k2]``), multiplied pointwise, and the
inverse (conjugate matrices and twiddles, stages reversed, ``1/N`` folded into the twiddles) returns
to natural order: no data permutation is ever materialized. Real and imaginary parts are separate real
matmuls accumulated in f32.

Work is skipped, not zeroed after the fact (the paper's partial and frequency-sparse convolutions,
section 3.3):

- implicit zero padding: only the first ``M = ceil(L / N2)`` rows of ``X`` are nonzero, so the first
  stage multiplies by ``F_{N1}[:, :M]``; only the first ``M`` output rows are computed by the last
  inverse stage; the kernel-gradient kernel computes only the rows holding lags below ``L_k``;
- frequency-sparse: with only the lowest frequencies kept, only the columns ``k2`` of ``B`` that hold
  a kept frequency are computed, multiplied and inverted.

Gradients are correlations computed with the same stages: ``dx = corr(dz, k)`` is the forward kernel
with the conjugate kernel spectrum, and ``dk = sum_b corr(dz_b, x_b)`` accumulates
``conj(X_hat) * dZ_hat`` over the batch in the frequency domain before one inverse transform.

Order 2 keeps ``N1 x N2`` complex values per signal on chip, which limits it to ``N <= MAX_FFT_SIZE``.
Past that, orders 3 and 4 (section "orders 3 and 4" below) split the signal into ``P`` rows of ``S``
samples: an outer ``P``-point DFT by XLA matmuls (one dense stage, or two with twiddles between them),
then a kernel that runs the order-2 stages on each complex row, multiplies by the kernel spectrum and
inverts, then the inverse outer stages. That serves ``N <= MAX_PALLAS_FFT_SIZE`` (4M); longer
sequences are served by the XLA path (the dispatcher falls back). Frequency-sparse convolutions skip,
in every row, the inner columns that hold no kept bin; the zero input rows and unneeded output rows are
skipped by the outer stages.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jaxflash.pallas_kernels.common import compiler_params
from jaxflash.utils import cdiv

# Largest FFT size of the order-2 kernel (larger sizes use order 3, below). A program holds
# `block_rows` complex N1 x N2 planes plus the DFT matrices in registers. On an H200 (2026-11-30)
# N = 2048 compiled and matched the reference; N = 8192 (seq 4096, causal) did not finish compiling in
# five minutes (Triton spills the planes). 4096 was not tried, so order 2 stops at the size seen
# working; FlashFFTConv itself switches to order 3 at 4K.
MAX_FFT_SIZE = 2048
# Orders 3/4 (below): rows of INNER_FFT_SIZE samples (a complex row doubles the on-chip working set of
# a real one, so half the order-2 cap); up to MAX_DENSE_OUTER rows the outer DFT is one dense matmul
# (order 3), past it two (order 4), so at most MAX_DENSE_OUTER^2 rows: FFT sizes up to 4M, FlashFFTConv's
# range. Not yet compiled on a GPU (2026-12-01).
INNER_FFT_SIZE = 1024
MAX_DENSE_OUTER = 64
MAX_PALLAS_FFT_SIZE = INNER_FFT_SIZE * MAX_DENSE_OUTER**2
# Triton's tl.dot needs every matmul dimension >= 16, so N1 and N2 are at least 16 when compiled.
MIN_COMPILED_FFT_SIZE = 256


@dataclasses.dataclass(frozen=True)
class FFTConvConfig:
    """Launch parameters of the kernels.

    Attributes:
      block_rows: batch rows (signals of one channel) handled by one program; a power of two. The
        kernel spectrum and DFT matrices are loaded once per program and reused over these rows.
      num_warps: Triton warps per program; None: 4 up to FFT size 1024, else 8.
      num_stages: Triton software-pipelining stages.
      min_dim: smallest matmul dimension of the plan (rows and kept columns are padded up to it);
        None: 16 when compiled (Triton's tl.dot), 1 when interpreted. Tests set 16 to run the
        compiled plan's shapes in interpret mode.
      max_order2_size: largest FFT size done by the order-2 kernel; larger sizes use order 3.
      inner_size: samples per row of the order-3/4 split (a power of two).
      max_dense_outer: most rows whose outer DFT is one dense stage (order 3); more use two (order 4).
        Tests set these three small to run orders 3 and 4 at small sizes.
      row_block_rows: batch rows per program of the orders-3/4 row kernel (a power of two). With 2 its
        Triton IR (1009 lines, 32x32 tiles) is no larger than that of the order-2 kernel that compiled
        on an H200 (1045 lines, 64x32 tiles, at N = 2048); 4 rows give 1537 lines.
    """

    block_rows: int = 4
    num_warps: int | None = None
    num_stages: int = 1
    min_dim: int | None = None
    max_order2_size: int = MAX_FFT_SIZE
    inner_size: int = INNER_FFT_SIZE
    max_dense_outer: int = MAX_DENSE_OUTER
    row_block_rows: int = 2


# --- plan: factor sizes, kept columns, DFT matrices ------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Plan:
    n: int  # FFT size
    n1: int
    n2: int
    rows_in: int  # M: rows of X that hold input (power of two)
    rows_out: int  # rows of the output the last inverse stage computes (power of two)
    rows_dk: int  # rows of the kernel gradient computed (lags < kernel_len)
    cols: tuple[int, ...]  # kept k2 columns of the digit-reversed spectrum
    keep_frequencies: int | None


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def factor(n: int) -> tuple[int, int]:
    """``(N1, N2)`` with ``N1 * N2 = n``, both powers of two, ``N1 >= N2`` and as square as possible."""
    if n < 4 or n & (n - 1):
        raise ValueError(f"the Pallas FFT convolution needs a power-of-two FFT size >= 4, got {n}")
    log = n.bit_length() - 1
    n1 = 1 << ((log + 1) // 2)
    return n1, n // n1


def kept_frequency_mask(n: int, keep_frequencies: int | None) -> np.ndarray:
    """Boolean mask over the ``n`` bins of a complex FFT: True where ``min(f, n - f) < keep``.

    This is the complex-FFT form of keeping rfft bins ``0 .. keep - 1``, so the result stays real.
    """
    f = np.arange(n)
    if keep_frequencies is None:
        return np.ones(n, bool)
    return np.minimum(f, n - f) < keep_frequencies


def make_plan(seq_len: int, kernel_len: int, n: int, keep_frequencies: int | None, min_dim: int = 1) -> _Plan:
    """Sizes of every stage; ``min_dim`` is the smallest matmul dimension allowed (16 for Triton)."""
    n1, n2 = factor(n)

    def rows(length: int) -> int:
        return min(max(_next_pow2(cdiv(length, n2)), min_dim), n1)

    mask = kept_frequency_mask(n, keep_frequencies).reshape(n2, n1)  # [k2, k1]: bin k1 + n1 * k2
    cols = [k2 for k2 in range(n2) if mask[k2].any()]
    # Pad the kept columns to a power of two (Triton block dims) with dropped columns; their kernel
    # spectrum is zeroed, so they contribute nothing.
    want = min(max(_next_pow2(len(cols)), min_dim), n2)
    extra = [k2 for k2 in range(n2) if k2 not in cols][: want - len(cols)]
    cols = sorted(cols + extra)
    return _Plan(n, n1, n2, rows(seq_len), rows(seq_len), rows(kernel_len), tuple(cols), keep_frequencies)


def _dft(m: int) -> np.ndarray:
    """The m-point DFT matrix F[k, j] = w_m^(k j), float64 NumPy."""
    return np.exp(-2j * np.pi * np.outer(np.arange(m), np.arange(m)) / m)


@functools.lru_cache(maxsize=64)
def _constants(n: int, n1: int, n2: int, rows_in: int, rows_out: int, cols: tuple[int, ...]):
    """DFT matrices and twiddles of the plan, in float64 NumPy (cast at the call)."""
    w1, w2 = _dft(n1), _dft(n2)
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


def _split(z: np.ndarray, dtype: Any) -> tuple[jax.Array, jax.Array]:
    return jnp.asarray(z.real, dtype), jnp.asarray(z.imag, dtype)


def _consts_for(plan: _Plan, rows_out: int, matmul_dtype: Any) -> list[jax.Array]:
    c = _constants(plan.n, plan.n1, plan.n2, plan.rows_in, rows_out, plan.cols)
    out = []
    for name in ("f1", "tw", "f2", "g2", "tw_inv", "g1"):
        # Twiddles multiply elementwise in f32; DFT matrices are matmul operands.
        dtype = jnp.float32 if name.startswith("tw") else matmul_dtype
        out.extend(_split(c[name], dtype))
    return out


def kernel_spectrum(k: jax.Array, plan: _Plan) -> tuple[jax.Array, jax.Array]:
    """The kernel's FFT in the digit-reversed layout, kept columns only: ``[C, N1, Q]`` real, imag.

    ``k`` is ``[kernel_len, C]``; as in FlashFFTConv the kernel FFT is computed once per call by XLA.
    """
    kf = jnp.fft.fft(k.astype(jnp.float32).T, n=plan.n, axis=-1)  # [C, N]
    mask = jnp.asarray(kept_frequency_mask(plan.n, plan.keep_frequencies))
    kf = jnp.where(mask, kf, 0)
    kp = kf.reshape(kf.shape[0], plan.n2, plan.n1).transpose(0, 2, 1)[:, :, np.asarray(plan.cols)]
    return jnp.real(kp), jnp.imag(kp)


# --- kernel bodies -------------------------------------------------------------------------------------


def _dot(a, b, matmul_dtype, precision):
    return jnp.dot(
        a.astype(matmul_dtype),
        b.astype(matmul_dtype),
        preferred_element_type=jnp.float32,
        precision=precision,
    )


def _forward_fft(x, f1r, f1i, twr, twi, f2r, f2i, mm, xi=None):
    """``x`` [M, N2] (rows of X; the rest are zero), real or with imaginary part ``xi`` -> digit-reversed
    spectrum [N1, Q]."""
    ar, ai = mm(f1r, x), mm(f1i, x)
    if xi is not None:
        ar, ai = ar - mm(f1i, xi), ai + mm(f1r, xi)
    br, bi = ar * twr - ai * twi, ar * twi + ai * twr
    return mm(br, f2r) - mm(bi, f2i), mm(br, f2i) + mm(bi, f2r)


def _inverse_rows(dr, di, g2r, g2i, tvr, tvi, mm):
    """The inverse's first stage and twiddles: digit-reversed spectrum [N1, Q] -> [N1, N2] complex."""
    er, ei = mm(dr, g2r) - mm(di, g2i), mm(dr, g2i) + mm(di, g2r)
    return er * tvr - ei * tvi, er * tvi + ei * tvr


def _inverse_fft(dr, di, g2r, g2i, tvr, tvi, g1r, g1i, mm):
    """Digit-reversed spectrum [N1, Q] -> real part of the first rows of the inverse, [rows, N2]."""
    fr, fi = _inverse_rows(dr, di, g2r, g2i, tvr, tvi, mm)
    return mm(g1r, fr) - mm(g1i, fi)


def _inverse_fft_complex(dr, di, g2r, g2i, tvr, tvi, g1r, g1i, mm):
    """Digit-reversed spectrum [N1, Q] -> the first rows of the complex inverse, [rows, N2] twice."""
    fr, fi = _inverse_rows(dr, di, g2r, g2i, tvr, tvi, mm)
    return mm(g1r, fr) - mm(g1i, fi), mm(g1r, fi) + mm(g1i, fr)


def _conv_kernel(*refs, has_pre, has_post, rows, matmul_dtype, precision):
    """One channel, ``rows`` batch rows: y = post * (ifft(fft(pre * u) * K) + skip * pre * u)."""
    refs = list(refs)
    u_ref = refs.pop(0)
    pre_ref = refs.pop(0) if has_pre else None
    post_ref = refs.pop(0) if has_post else None
    skip_ref, kr_ref, ki_ref = refs[:3]
    f1r, f1i, twr, twi, f2r, f2i, g2r, g2i, tvr, tvi, g1r, g1i = (r[...] for r in refs[3:15])
    o_ref = refs[15]
    mm = functools.partial(_dot, matmul_dtype=matmul_dtype, precision=precision)
    kr, ki, skip = kr_ref[...], ki_ref[...], skip_ref[...]
    for r in range(rows):  # static: the kernel spectrum and matrices stay loaded across rows
        x = u_ref[r].astype(jnp.float32)
        if has_pre:
            x = x * pre_ref[r].astype(jnp.float32)
        cr, ci = _forward_fft(x, f1r, f1i, twr, twi, f2r, f2i, mm)
        dr, di = cr * kr - ci * ki, cr * ki + ci * kr
        y = _inverse_fft(dr, di, g2r, g2i, tvr, tvi, g1r, g1i, mm) + skip * x
        if has_post:
            y = y * post_ref[r].astype(jnp.float32)
        o_ref[r] = y.astype(o_ref.dtype)


def _kernel_grad_kernel(*refs, has_pre, rows, batch, matmul_dtype, precision):
    """One channel, ``rows`` batch rows: sum_b conj(fft(pre * u)) * fft(dz), inverted once."""
    refs = list(refs)
    u_ref = refs.pop(0)
    pre_ref = refs.pop(0) if has_pre else None
    g_ref, mask_ref = refs[:2]
    f1r, f1i, twr, twi, f2r, f2i, g2r, g2i, tvr, tvi, g1r, g1i = (r[...] for r in refs[2:14])
    o_ref = refs[14]
    mm = functools.partial(_dot, matmul_dtype=matmul_dtype, precision=precision)
    first = pl.program_id(1) * rows
    acc_r = jnp.zeros(mask_ref.shape, jnp.float32)
    acc_i = jnp.zeros(mask_ref.shape, jnp.float32)
    for r in range(rows):
        # Rows past the batch are out of bounds (NaN in interpret mode, garbage on hardware): select
        # zeros for them rather than multiplying, which would keep the NaN.
        valid = first + r < batch
        x = u_ref[r].astype(jnp.float32)
        if has_pre:
            x = x * pre_ref[r].astype(jnp.float32)
        x = jnp.where(valid, x, 0.0)
        g = jnp.where(valid, g_ref[r].astype(jnp.float32), 0.0)
        xr, xi = _forward_fft(x, f1r, f1i, twr, twi, f2r, f2i, mm)
        gr, gi = _forward_fft(g, f1r, f1i, twr, twi, f2r, f2i, mm)
        acc_r += xr * gr + xi * gi
        acc_i += xr * gi - xi * gr
    mask = mask_ref[...]
    o_ref[...] = _inverse_fft(acc_r * mask, acc_i * mask, g2r, g2i, tvr, tvi, g1r, g1i, mm)


# --- pallas_call builders --------------------------------------------------------------------------------


def _to_rows(x: jax.Array, plan: _Plan) -> jax.Array:
    """[B, L, C] -> [C, B, M, N2]: each (channel, batch) signal as the first M rows of X."""
    b, seq, c = x.shape
    x = jnp.transpose(x, (2, 0, 1))
    x = jnp.pad(x, ((0, 0), (0, 0), (0, plan.rows_in * plan.n2 - seq)))
    return x.reshape(c, b, plan.rows_in, plan.n2)


def _matmul_dtype(dtype: Any) -> Any:
    # bf16/f16 inputs use the tensor cores in their own dtype; f32 stays f32 (accumulation is f32).
    return jnp.dtype(dtype) if jnp.dtype(dtype).itemsize == 2 else jnp.dtype(jnp.float32)


def _precision(matmul_dtype: Any):
    return jax.lax.Precision.HIGHEST if matmul_dtype == jnp.float32 else jax.lax.Precision.DEFAULT


def _num_warps(config: FFTConvConfig, plan: _Plan) -> int:
    if config.num_warps is not None:
        return config.num_warps
    return 4 if plan.n <= 1024 else 8


def _const_specs(consts: list[jax.Array]) -> list[pl.BlockSpec]:
    """Whole 2-D constants, the same block for every program of a grid of any rank."""
    return [pl.BlockSpec(c.shape, lambda *_: (0, 0)) for c in consts]


def conv_rows(
    u: jax.Array,
    kr: jax.Array,
    ki: jax.Array,
    skip: jax.Array,
    pre: jax.Array | None,
    post: jax.Array | None,
    plan: _Plan,
    *,
    out_dtype: Any,
    interpret: Any,
    config: FFTConvConfig,
) -> jax.Array:
    """The forward kernel on ``[B, L, C]`` inputs; ``kr, ki`` from :func:`kernel_spectrum`."""
    batch, seq, chans = u.shape
    rows = min(config.block_rows, _next_pow2(batch))
    mm_dtype = _matmul_dtype(u.dtype)
    consts = _consts_for(plan, plan.rows_out, mm_dtype)
    row_block = (None, rows, plan.rows_in, plan.n2)
    row_spec = pl.BlockSpec(row_block, lambda i, j: (i, j, 0, 0))
    inputs = [_to_rows(u, plan)]
    specs = [row_spec]
    for gate in (pre, post):
        if gate is not None:
            inputs.append(_to_rows(gate, plan))
            specs.append(row_spec)
    # The skip weight as a [C, 1, N2] row so it broadcasts over X's rows inside the kernel.
    skip_row = jnp.broadcast_to(skip.astype(jnp.float32)[:, None, None], (chans, 1, plan.n2))
    inputs += [skip_row, kr, ki, *consts]
    q = len(plan.cols)
    specs += [
        pl.BlockSpec((None, 1, plan.n2), lambda i, j: (i, 0, 0)),
        pl.BlockSpec((None, plan.n1, q), lambda i, j: (i, 0, 0)),
        pl.BlockSpec((None, plan.n1, q), lambda i, j: (i, 0, 0)),
        *_const_specs(consts),
    ]
    kernel = functools.partial(
        _conv_kernel,
        has_pre=pre is not None,
        has_post=post is not None,
        rows=rows,
        matmul_dtype=mm_dtype,
        precision=_precision(mm_dtype),
    )
    out = pl.pallas_call(
        kernel,
        grid=(chans, cdiv(batch, rows)),
        in_specs=specs,
        out_specs=pl.BlockSpec((None, rows, plan.rows_out, plan.n2), lambda i, j: (i, j, 0, 0)),
        out_shape=jax.ShapeDtypeStruct((chans, batch, plan.rows_out, plan.n2), out_dtype),
        interpret=interpret,
        compiler_params=compiler_params(
            interpret,
            num_warps=_num_warps(config, plan),
            num_stages=config.num_stages,
            dimension_semantics=("parallel", "parallel"),
        ),
        name="fftconv_forward",
    )(*inputs)
    out = out.reshape(chans, batch, plan.rows_out * plan.n2)[:, :, :seq]
    return jnp.transpose(out, (1, 2, 0))


def kernel_grad_rows(
    u: jax.Array,
    pre: jax.Array | None,
    g: jax.Array,
    kernel_len: int,
    plan: _Plan,
    *,
    interpret: Any,
    config: FFTConvConfig,
) -> jax.Array:
    """``dk[j, c] = sum_{b, t} g[b, t, c] * x[b, t - j, c]`` (circularly, size N), ``x = pre * u``."""
    batch, _, chans = u.shape
    rows = min(config.block_rows, _next_pow2(batch))
    nb = cdiv(batch, rows)
    mm_dtype = _matmul_dtype(u.dtype)
    consts = _consts_for(plan, plan.rows_dk, mm_dtype)
    row_spec = pl.BlockSpec((None, rows, plan.rows_in, plan.n2), lambda i, j: (i, j, 0, 0))
    inputs = [_to_rows(u, plan)]
    specs = [row_spec]
    if pre is not None:
        inputs.append(_to_rows(pre, plan))
        specs.append(row_spec)
    mask = kept_frequency_mask(plan.n, plan.keep_frequencies).reshape(plan.n2, plan.n1).T[:, list(plan.cols)]
    inputs += [_to_rows(g, plan), jnp.asarray(mask, jnp.float32), *consts]
    specs += [row_spec, pl.BlockSpec(mask.shape, lambda i, j: (0, 0)), *_const_specs(consts)]
    kernel = functools.partial(
        _kernel_grad_kernel,
        has_pre=pre is not None,
        rows=rows,
        batch=batch,
        matmul_dtype=mm_dtype,
        precision=_precision(mm_dtype),
    )
    # One partial sum per batch block (programs run in parallel); the blocks are summed by XLA.
    out = pl.pallas_call(
        kernel,
        grid=(chans, nb),
        in_specs=specs,
        out_specs=pl.BlockSpec((None, None, plan.rows_dk, plan.n2), lambda i, j: (i, j, 0, 0)),
        out_shape=jax.ShapeDtypeStruct((chans, nb, plan.rows_dk, plan.n2), jnp.float32),
        interpret=interpret,
        compiler_params=compiler_params(
            interpret,
            num_warps=_num_warps(config, plan),
            num_stages=config.num_stages,
            dimension_semantics=("parallel", "parallel"),
        ),
        name="fftconv_kernel_grad",
    )(*inputs)
    out = out.sum(axis=1).reshape(chans, plan.rows_dk * plan.n2)[:, :kernel_len]
    return out.T


# --- custom_vjp ------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Static:
    plan: _Plan
    interpret: Any
    config: FFTConvConfig


def fftconv(
    u: jax.Array,
    k: jax.Array,
    skip: jax.Array | None,
    pre_gate: jax.Array | None,
    post_gate: jax.Array | None,
    *,
    fft_size: int,
    keep_frequencies: int | None = None,
    interpret: Any = False,
    config: FFTConvConfig = FFTConvConfig(),
) -> jax.Array:
    """Gated depthwise FFT convolution (module docstring) with FFT size ``fft_size`` (a power of two).

    ``u``, gates: ``[B, L, C]``; ``k``: ``[L_k, C]``; ``skip``: ``[C]`` or None. The convolution is
    circular of size ``fft_size``: causal when ``fft_size >= L + L_k - 1``. Inputs are validated by
    the public op (:func:`jaxflash.fftconv`); this checks only what the kernel itself needs.
    """
    if k.shape[0] > fft_size or u.shape[1] > fft_size:
        raise ValueError(f"{u.shape=} and {k.shape=} do not fit in {fft_size=}")
    for rows in (config.block_rows, config.row_block_rows):
        if rows < 1 or rows & (rows - 1):
            raise ValueError(f"block rows must be powers of two, got {config}")
    min_dim = config.min_dim if config.min_dim is not None else (1 if interpret is not False else 16)
    if skip is None:
        skip = jnp.zeros((u.shape[2],), jnp.float32)
    if fft_size > config.max_order2_size:
        plan3 = make_plan3(
            u.shape[1],
            k.shape[0],
            fft_size,
            config.inner_size,
            min_dim,
            config.max_dense_outer,
            keep_frequencies,
        )
        static3 = _Static3(plan3, interpret, config, _matmul_dtype(u.dtype).name)
        return _fftconv3(u, k, skip, pre_gate, post_gate, static3)
    plan = make_plan(u.shape[1], k.shape[0], fft_size, keep_frequencies, min_dim)
    return _fftconv_jit(u, k, skip, pre_gate, post_gate, _Static(plan, interpret, config))


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _fftconv(u, k, skip, pre, post, static: _Static):
    kr, ki = kernel_spectrum(k, static.plan)
    return conv_rows(
        u,
        kr,
        ki,
        skip,
        pre,
        post,
        static.plan,
        out_dtype=u.dtype,
        interpret=static.interpret,
        config=static.config,
    )


def _fftconv_fwd(u, k, skip, pre, post, static):
    # Residuals are the inputs only; z = conv + skip * x is recomputed in the backward pass when a
    # post-gate needs it, instead of storing another [B, L, C] array.
    return _fftconv(u, k, skip, pre, post, static), (u, k, skip, pre, post)


def _fftconv_bwd(static, res, dy):
    u, k, skip, pre, post = res
    plan = static.plan
    kw = dict(interpret=static.interpret, config=static.config)
    kr, ki = kernel_spectrum(k, plan)
    dy32 = dy.astype(jnp.float32)
    d_post = None
    if post is not None:
        z = conv_rows(u, kr, ki, skip, pre, None, plan, out_dtype=jnp.float32, **kw)
        d_post = (dy32 * z).astype(post.dtype)
        dz = dy32 * post.astype(jnp.float32)
    else:
        dz = dy32
    # dx = corr(dz, k) + skip * dz: the forward kernel with the conjugate kernel spectrum.
    dz_in = dz.astype(u.dtype)
    dx = conv_rows(dz_in, kr, -ki, skip, None, None, plan, out_dtype=jnp.float32, **kw)
    x = u.astype(jnp.float32) if pre is None else u.astype(jnp.float32) * pre.astype(jnp.float32)
    d_skip = jnp.sum(dz * x, axis=(0, 1)).astype(skip.dtype)
    dk = kernel_grad_rows(u, pre, dz_in, k.shape[0], plan, **kw).astype(k.dtype)
    if pre is None:
        du, d_pre = dx.astype(u.dtype), None
    else:
        du = (dx * pre.astype(jnp.float32)).astype(u.dtype)
        d_pre = (dx * u.astype(jnp.float32)).astype(pre.dtype)
    return du, dk, d_skip, d_pre, d_post


_fftconv.defvjp(_fftconv_fwd, _fftconv_bwd)
_fftconv_jit = jax.jit(_fftconv, static_argnums=(5,))


# --- orders 3 and 4: outer DFT stages around the row kernel ---------------------------------------------
#
# For FFT sizes past the order-2 kernel's cap, N = P * S. Viewing a signal as X[p, s] = x[p * S + s]
# (P rows of S samples) and writing a bin as k = kp + P * ks (the paper's eq. 2 once more, one level up):
#
#     A[kp, s] = T[kp, s] * sum_p F_P[kp, p] X[p, s],     T[kp, s] = w_N^(kp * s)
#     X_hat[kp + P * ks] = sum_s A[kp, s] w_S^(s * ks)     (an S-point DFT of row kp)
#
# So the convolution is: the outer DFT over rows with its twiddles (a dense P x P matmul, done by XLA;
# only the first ceil(L / S) rows of X hold input), then for every row kp an S-point circular convolution
# of the complex row A[kp] with the row's slice of the kernel spectrum (the Pallas kernel below: the
# order-2 stages on complex rows, the product and the inverse, all on chip), then conjugate twiddles
# and the inverse outer DFT (XLA again), computing only the output rows that hold the first L samples.
# With the inner order-2 split S = S1 * S2 this is FlashFFTConv's order-3 decomposition. Past
# MAX_DENSE_OUTER rows the outer DFT is itself split, P = P1 * P2 (order 4): a P1-point DFT, twiddles
# w_P^(k1 * p2), a P2-point DFT, leaving row kp = k1 + P1 * k2 at position k1 * P2 + k2; the kernel
# spectrum and the row twiddles are stored in that row order, so again nothing is permuted. Unlike the
# paper's single kernel, the intermediate A makes one round trip through memory.


@dataclasses.dataclass(frozen=True)
class _Plan3:
    n: int  # FFT size, n = outer * inner.n
    outer: int  # P: rows of the [P, S] view
    factors: tuple[int, int]  # (P1, P2), P = P1 * P2; P2 = 1: one dense outer DFT (order 3), else order 4
    inner: _Plan  # order-2 plan of one full complex row of S samples
    rows_in: int  # rows of X that hold input: ceil(L / S)
    rows_out: int  # output rows the inverse outer DFT computes
    rows_dk: int  # rows of the kernel gradient (lags < kernel_len)
    keep_frequencies: int | None


def make_plan3(
    seq_len: int,
    kernel_len: int,
    n: int,
    inner_size: int,
    min_dim: int = 1,
    max_dense_outer: int = MAX_DENSE_OUTER,
    keep_frequencies: int | None = None,
) -> _Plan3:
    """The split of FFT size ``n`` into ``P = n / inner_size`` rows of ``inner_size`` samples; the outer
    DFT is one dense stage up to ``max_dense_outer`` rows, else two (``P1 >= P2``, both at most that).

    Frequency-sparse: bin ``kp + P * ks`` is kept when ``min(f, n - f) < keep``, which for every row
    ``kp`` needs only inner bins with ``min(ks, S - ks) < ceil(keep / P) + 1``; the rows' inner plan keeps
    the columns holding those (so the row kernel skips the others) and the kernel spectrum is masked to
    the exact kept set."""
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
    keep_inner = None if keep_frequencies is None else cdiv(keep_frequencies, outer) + 1
    inner = make_plan(inner_size, inner_size, inner_size, keep_inner, min_dim)
    rows = lambda length: min(cdiv(length, inner_size), outer)  # noqa: E731
    return _Plan3(n, outer, factors, inner, rows(seq_len), rows(seq_len), rows(kernel_len), keep_frequencies)


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
    return _dft(p1), _dft(p2), mid, tw


def kernel_spectrum3(k: jax.Array, plan: _Plan3) -> tuple[jax.Array, jax.Array]:
    """The kernel's FFT in the row kernel's layout (:func:`_row_layout`), ``[C, P, S1, Q]``, masked to the
    kept bins when frequency-sparse. Computed once per call by XLA, as in FlashFFTConv."""
    kp = _row_layout(jnp.fft.fft(k.astype(jnp.float32).T, n=plan.n, axis=-1), plan)
    if plan.keep_frequencies is not None:
        kp = kp * jnp.asarray(_row_mask(plan))
    return jnp.real(kp), jnp.imag(kp)


def _row_layout(a: Any, plan: _Plan3) -> Any:
    """Spectra ``[..., N]`` in natural order -> ``[..., P, S1, Q]``, the layout the data reaches, so no
    data permutation is needed anywhere: the row holding outer bin ``kp`` (rows in :func:`row_order`)
    has the bins ``kp + P * (k1 + S1 * k2)`` in the inner kernel's digit-reversed order, only its kept
    columns ``k2``. NumPy in, NumPy out."""
    lead = a.shape[:-1]
    a = a.reshape(*lead, plan.inner.n2, plan.inner.n1, plan.outer)
    a = a.transpose(*range(len(lead)), len(lead) + 2, len(lead) + 1, len(lead))  # [..., P, S1, S2]
    if plan.factors[1] > 1:
        a = a[..., row_order(plan.factors), :, :]
    return a[..., np.asarray(plan.inner.cols)]


def _row_mask(plan: _Plan3) -> np.ndarray:
    """The kept bins (all, when not frequency-sparse) in the row layout ``[P, S1, Q]``, as 0/1 floats."""
    return _row_layout(kept_frequency_mask(plan.n, plan.keep_frequencies), plan).astype(np.float32)


_HI = jax.lax.Precision.HIGHEST  # f32 matmuls on a GPU default to TF32


def _cmul(ar, ai, br, bi):
    return ar * br - ai * bi, ar * bi + ai * br


def _cein(spec: str, m: np.ndarray, ar: jax.Array, ai: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``einsum(spec, m, a)`` for a complex constant matrix ``m`` and complex ``a`` (real, imag parts)."""
    mr, mi = _split(m, jnp.float32)
    ein = functools.partial(jnp.einsum, spec, precision=_HI)
    return ein(mr, ar) - ein(mi, ai), ein(mr, ai) + ein(mi, ar)


def outer_forward(x: jax.Array, plan: _Plan3) -> tuple[jax.Array, jax.Array]:
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
    fr, fi = _split(f1[:, :m1], jnp.float32)
    ar = jnp.einsum("kp,cbpqs->ckbqs", fr, xr, precision=_HI)  # [C, P1, B, P2, S]
    ai = jnp.einsum("kp,cbpqs->ckbqs", fi, xr, precision=_HI)
    if p2 > 1:
        ar, ai = _cmul(ar, ai, *_split(mid[:, None, :, None], jnp.float32))
        ar, ai = _cein("eq,ckbqs->ckebs", f2, ar, ai)  # [C, P1, P2, B, S]
    ar, ai = ar.reshape(chans, plan.outer, batch, s), ai.reshape(chans, plan.outer, batch, s)
    ar, ai = _cmul(ar, ai, *_split(tw[:, None, :], jnp.float32))
    shape = (chans, plan.outer, batch, plan.inner.n1, plan.inner.n2)
    return ar.reshape(shape), ai.reshape(shape)


def outer_inverse(er: jax.Array, ei: jax.Array, plan: _Plan3, rows: int, length: int) -> jax.Array:
    """``[C, P, B, S1, S2]`` complex rows -> real ``[B, length, C]``: conjugate row twiddles with the
    inverse's 1/P (the rows' 1/S came from the row kernel), then the outer stages inverted in reverse
    order, the last one computing only the output rows ``< rows``."""
    chans, outer, batch = er.shape[:3]
    s = plan.inner.n
    p1, p2 = plan.factors
    f1, f2, mid, tw = _outer_constants(plan.n, plan.factors, s)
    er, ei = er.reshape(chans, outer, batch, s), ei.reshape(chans, outer, batch, s)
    er, ei = _cmul(er, ei, *_split(np.conj(tw)[:, None, :] / outer, jnp.float32))
    er, ei = er.reshape(chans, p1, p2, batch, s), ei.reshape(chans, p1, p2, batch, s)
    if p2 > 1:
        er, ei = _cein("qe,ckebs->ckqbs", np.conj(f2), er, ei)  # [C, P1, P2 (p2), B, S]
        er, ei = _cmul(er, ei, *_split(np.conj(mid)[:, :, None, None], jnp.float32))
    m1 = cdiv(rows, p2)
    gr, gi = _split(np.conj(f1)[:m1], jnp.float32)
    spec = "pk,ckqbs->bpqsc"
    y = jnp.einsum(spec, gr, er, precision=_HI) - jnp.einsum(spec, gi, ei, precision=_HI)
    return y.reshape(batch, m1 * p2 * s, chans)[:, :length]


def _rows_conv_kernel(ar_ref, ai_ref, kr_ref, ki_ref, *refs, rows, matmul_dtype, precision):
    """One channel, one row ``kp``, ``rows`` batch rows: the S-point circular convolution of each complex
    row with the row's kernel spectrum (forward order-2 stages, product, inverse with its 1/S)."""
    f1r, f1i, twr, twi, f2r, f2i, g2r, g2i, tvr, tvi, g1r, g1i = (r[...] for r in refs[:12])
    or_ref, oi_ref = refs[12:]
    mm = functools.partial(_dot, matmul_dtype=matmul_dtype, precision=precision)
    kr, ki = kr_ref[...], ki_ref[...]
    for r in range(rows):
        cr, ci = _forward_fft(ar_ref[r], f1r, f1i, twr, twi, f2r, f2i, mm, xi=ai_ref[r])
        dr, di = cr * kr - ci * ki, cr * ki + ci * kr
        er, ei = _inverse_fft_complex(dr, di, g2r, g2i, tvr, tvi, g1r, g1i, mm)
        or_ref[r], oi_ref[r] = er, ei


def _rows_corr_kernel(xr_ref, xi_ref, gr_ref, gi_ref, mask_ref, *refs, rows, batch, matmul_dtype, precision):
    """One channel, one row ``kp``, ``rows`` batch rows: ``sum_b conj(fft(x_b)) * fft(g_b)`` over the kept
    bins (``mask_ref``), inverted."""
    f1r, f1i, twr, twi, f2r, f2i, g2r, g2i, tvr, tvi, g1r, g1i = (r[...] for r in refs[:12])
    or_ref, oi_ref = refs[12:]
    mm = functools.partial(_dot, matmul_dtype=matmul_dtype, precision=precision)
    first = pl.program_id(2) * rows
    mask = mask_ref[...]
    acc_r = jnp.zeros(mask.shape, jnp.float32)
    acc_i = jnp.zeros(mask.shape, jnp.float32)
    for r in range(rows):
        valid = first + r < batch  # rows past the batch hold garbage: select zeros (see above)
        x = [jnp.where(valid, ref[r], 0.0) for ref in (xr_ref, xi_ref, gr_ref, gi_ref)]
        ar, ai = _forward_fft(x[0], f1r, f1i, twr, twi, f2r, f2i, mm, xi=x[1])
        br, bi = _forward_fft(x[2], f1r, f1i, twr, twi, f2r, f2i, mm, xi=x[3])
        acc_r += ar * br + ai * bi
        acc_i += ar * bi - ai * br
    or_ref[...], oi_ref[...] = _inverse_fft_complex(
        acc_r * mask, acc_i * mask, g2r, g2i, tvr, tvi, g1r, g1i, mm
    )


def _rows_call(kernel, name, a, b, plan, matmul_dtype, *, summed, interpret, config, **params):
    """A row kernel over ``[C, P, B, S1, S2]`` pairs ``a`` and ``b`` (each real, imaginary; ``b`` may be
    a per-channel ``[C, P, S1, Q]`` spectrum), grid (channel, row, batch block). The outputs are
    ``[C, P, B, S1, S2]``; with ``summed`` (the correlation, which also takes the row masks) one partial
    sum per batch block, ``[C, P, blocks, S1, S2]``."""
    chans, outer, batch, s1, s2 = a[0].shape
    q = len(plan.inner.cols)
    rows = min(config.row_block_rows, _next_pow2(batch))
    nb = cdiv(batch, rows)
    consts = _consts_for(plan.inner, s1, matmul_dtype)
    data = pl.BlockSpec((None, None, rows, s1, s2), lambda i, p, j: (i, p, j, 0, 0))
    spec_b = data if b[0].ndim == 5 else pl.BlockSpec((None, None, s1, q), lambda i, p, j: (i, p, 0, 0))
    if summed:
        extra = [jnp.asarray(_row_mask(plan))]
        extra_specs = [pl.BlockSpec((None, s1, q), lambda i, p, j: (p, 0, 0))]
        out_spec = pl.BlockSpec((None, None, None, s1, s2), lambda i, p, j: (i, p, j, 0, 0))
        out_shape = (chans, outer, nb, s1, s2)
    else:
        extra, extra_specs = [], []
        out_spec, out_shape = data, (chans, outer, batch, s1, s2)
    body = functools.partial(
        kernel, rows=rows, matmul_dtype=matmul_dtype, precision=_precision(matmul_dtype), **params
    )
    return pl.pallas_call(
        body,
        grid=(chans, outer, nb),
        in_specs=[data, data, spec_b, spec_b, *extra_specs, *_const_specs(consts)],
        out_specs=[out_spec, out_spec],
        out_shape=[jax.ShapeDtypeStruct(out_shape, jnp.float32)] * 2,
        interpret=interpret,
        compiler_params=compiler_params(
            interpret,
            num_warps=_num_warps(config, plan.inner),
            num_stages=config.num_stages,
            dimension_semantics=("parallel", "parallel", "parallel"),
        ),
        name=name,
    )(*a, *b, *extra, *consts)


@dataclasses.dataclass(frozen=True)
class _Static3:
    plan: _Plan3
    interpret: Any
    config: FFTConvConfig
    matmul_dtype: str  # dtype of the row kernel's DFT matmuls: the inputs' (bf16/f16) or float32


def _circular3(x: jax.Array, kr: jax.Array, ki: jax.Array, static: _Static3) -> jax.Array:
    """The size-N circular convolution of real f32 ``x`` [B, L, C] with the spectrum ``(kr, ki)``."""
    kw = dict(interpret=static.interpret, config=static.config)
    a = outer_forward(x, static.plan)
    e = _rows_call(
        _rows_conv_kernel, "fftconv3_rows", a, (kr, ki), static.plan, static.matmul_dtype, summed=False, **kw
    )
    return outer_inverse(*e, static.plan, static.plan.rows_out, x.shape[1])


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv3(x: jax.Array, k: jax.Array, static: _Static3) -> jax.Array:
    return _circular3(x, *kernel_spectrum3(k, static.plan), static)


def _conv3_fwd(x, k, static):
    return _conv3(x, k, static), (x, k)


def _conv3_bwd(static, res, g):
    x, k = res
    plan = static.plan
    kr, ki = kernel_spectrum3(k, plan)
    dx = _circular3(g, kr, -ki, static)  # corr(g, k): the conjugate kernel spectrum
    s = _rows_call(
        _rows_corr_kernel,
        "fftconv3_kernel_grad",
        outer_forward(x, plan),
        outer_forward(g, plan),
        plan,
        static.matmul_dtype,
        summed=True,
        interpret=static.interpret,
        config=static.config,
        batch=x.shape[0],
    )
    s = [part.sum(axis=2, keepdims=True) for part in s]  # the batch blocks' partial sums
    dk = outer_inverse(*s, plan, plan.rows_dk, k.shape[0])[0]
    return dx, dk


_conv3.defvjp(_conv3_fwd, _conv3_bwd)


@functools.partial(jax.jit, static_argnums=(5,))
def _fftconv3(u, k, skip, pre, post, static: _Static3):
    """The gated form around :func:`_conv3`; the gates' and skip's gradients by plain autodiff."""
    x = u.astype(jnp.float32)
    if pre is not None:
        x = x * pre.astype(jnp.float32)
    y = _conv3(x, k.astype(jnp.float32), static) + skip.astype(jnp.float32) * x
    if post is not None:
        y = y * post.astype(jnp.float32)
    return y.astype(u.dtype)


# --- reference -------------------------------------------------------------------------------------------


def reference(
    u: jax.Array,
    k: jax.Array,
    skip: jax.Array | None = None,
    pre_gate: jax.Array | None = None,
    post_gate: jax.Array | None = None,
    *,
    fft_size: int,
    keep_frequencies: int | None = None,
) -> jax.Array:
    """The same function with ``jnp.fft`` in the inputs' precision (at least f32; f64 under x64).

    A full complex FFT of size ``fft_size`` along the sequence, pointwise product, inverse, real part,
    first ``L`` samples; frequency-sparse by masking the spectrum.
    """
    dtype = jnp.promote_types(u.dtype, jnp.float32)
    x = u.astype(dtype)
    if pre_gate is not None:
        x = x * pre_gate.astype(dtype)
    xf = jnp.fft.fft(x, n=fft_size, axis=1)
    kf = jnp.fft.fft(k.astype(dtype), n=fft_size, axis=0)
    if keep_frequencies is not None:
        kf = jnp.where(jnp.asarray(kept_frequency_mask(fft_size, keep_frequencies))[:, None], kf, 0)
    y = jnp.real(jnp.fft.ifft(xf * kf[None], axis=1))[:, : u.shape[1]]
    if skip is not None:
        y = y + skip.astype(dtype) * x
    if post_gate is not None:
        y = y * post_gate.astype(dtype)
    return y.astype(u.dtype)


def fft_size_ok(n: int, compiled: bool) -> str | None:
    """Why the kernel (default config) cannot use FFT size ``n``, or None when it can."""
    if n & (n - 1) or n < 4:
        return f"the Pallas kernel needs a power-of-two FFT size, got {n}"
    if compiled and n < MIN_COMPILED_FFT_SIZE:
        return (
            f"the compiled kernel needs FFT size >= {MIN_COMPILED_FFT_SIZE} (Triton dot dims >= 16), got {n}"
        )
    if n > MAX_PALLAS_FFT_SIZE:
        return (
            f"FFT size {n} > {MAX_PALLAS_FFT_SIZE}: past the order-4 split's {MAX_DENSE_OUTER}^2 rows of "
            f"{INNER_FFT_SIZE} samples"
        )
    return None


def smallest_fft_size(n: int, compiled: bool) -> int:
    """The power-of-two FFT size the kernel uses for a circular size of at least ``n``."""
    size = max(_next_pow2(n), 4)
    return max(size, MIN_COMPILED_FFT_SIZE) if compiled else size
