"""The order-2 FFT convolution on chip: one kernel per (channel, batch block) runs the forward order-2
stages of :mod:`.stages`, the pointwise product with the kernel's spectrum and the inverse, all without
leaving the chip, for FFT sizes up to ``config.max_order2_size``.

Gradients are correlations computed with the same stages: ``dx = corr(dz, k)`` is the forward kernel
with the conjugate kernel spectrum, and ``dk = sum_b corr(dz_b, x_b)`` accumulates
``conj(X_hat) * dZ_hat`` over the batch in the frequency domain before one inverse transform (the
kernel-gradient kernel computes only the rows holding lags below ``L_k``).
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
    launch,
    make_stage_plan,
    matmul_dtype,
    stage_constants,
)

from jaxflash.utils import cdiv, matmul_precision, next_pow2, zero_cotangent


def layout_mask(kept: np.ndarray | None, plan: StagePlan) -> np.ndarray:
    """The kept bins in the digit-reversed layout, kept columns only: ``[N1, Q]`` of 0/1 float32 (bin
    ``k1 + N1 * k2`` at ``[k1, k2]``); ones when ``kept`` is None."""
    if kept is None:
        return np.ones((plan.n1, len(plan.cols)), np.float32)
    return np.asarray(kept, bool).reshape(plan.n2, plan.n1).T[:, list(plan.cols)].astype(np.float32)


def kernel_spectrum(k: jax.Array, plan: StagePlan, mask: jax.Array | None) -> tuple[jax.Array, jax.Array]:
    """The kernel's FFT in the digit-reversed layout, kept columns only, zero outside ``mask`` (from
    :func:`layout_mask`; None keeps all): ``[C, N1, Q]`` real, imag.

    ``k`` is ``[kernel_len, C]``; as in FlashFFTConv the kernel FFT is computed once per call by XLA.
    """
    kf = jnp.fft.fft(k.astype(jnp.float32).T, n=plan.n, axis=-1)  # [C, N]
    kp = kf.reshape(kf.shape[0], plan.n2, plan.n1).transpose(0, 2, 1)[:, :, np.asarray(plan.cols)]
    if mask is not None:
        kp = jnp.where(mask != 0, kp, 0)
    return jnp.real(kp), jnp.imag(kp)


# --- kernel bodies -------------------------------------------------------------------------------------


def _conv_kernel(*refs, has_pre, has_post, rows, matmul_dtype, precision):
    """One channel, ``rows`` batch rows: y = post * (ifft(fft(pre * u) * K) + skip * pre * u)."""
    refs = list(refs)
    u_ref = refs.pop(0)
    pre_ref = refs.pop(0) if has_pre else None
    post_ref = refs.pop(0) if has_post else None
    skip_ref, kr_ref, ki_ref = refs[:3]
    stages = Stages(refs[3:15], matmul_dtype, precision)
    o_ref = refs[15]
    kr, ki, skip = kr_ref[...], ki_ref[...], skip_ref[...]
    for r in range(rows):  # static: the kernel spectrum and matrices stay loaded across rows
        x = u_ref[r].astype(jnp.float32)
        if has_pre:
            x = x * pre_ref[r].astype(jnp.float32)
        y = stages.inverse_real(*cmul(*stages.forward(x), kr, ki)) + skip * x
        if has_post:
            y = y * post_ref[r].astype(jnp.float32)
        o_ref[r] = y.astype(o_ref.dtype)


def _kernel_grad_kernel(*refs, has_pre, rows, batch, matmul_dtype, precision):
    """One channel, ``rows`` batch rows: sum_b conj(fft(pre * u)) * fft(dz) over the kept bins, inverted."""
    refs = list(refs)
    u_ref = refs.pop(0)
    pre_ref = refs.pop(0) if has_pre else None
    g_ref, mask_ref = refs[:2]
    stages = Stages(refs[2:14], matmul_dtype, precision)
    o_ref = refs[14]
    first = pl.program_id(1) * rows

    def pairs():
        for r in range(rows):
            # Rows past the batch are out of bounds (NaN in interpret mode, garbage on hardware): select
            # zeros for them rather than multiplying, which would keep the NaN.
            valid = first + r < batch
            x = u_ref[r].astype(jnp.float32)
            if has_pre:
                x = x * pre_ref[r].astype(jnp.float32)
            x = jnp.where(valid, x, 0.0)
            yield (x, None), (jnp.where(valid, g_ref[r].astype(jnp.float32), 0.0), None)

    acc_r, acc_i = correlate(stages, pairs(), mask_ref.shape)
    mask = mask_ref[...]  # loaded after the loop, so it holds no registers during it
    o_ref[...] = stages.inverse_real(acc_r * mask, acc_i * mask)


# --- pallas_call builders --------------------------------------------------------------------------------


def _to_rows(x: jax.Array, plan: StagePlan) -> jax.Array:
    """[B, L, C] -> [C, B, M, N2]: each (channel, batch) signal as the first M rows of X."""
    b, seq, c = x.shape
    x = jnp.transpose(x, (2, 0, 1))
    x = jnp.pad(x, ((0, 0), (0, 0), (0, plan.rows_in * plan.n2 - seq)))
    return x.reshape(c, b, plan.rows_in, plan.n2)


def _signal_inputs(plan: StagePlan, rows: int, *signals: jax.Array | None):
    """The given ``[B, L, C]`` signals (None left out) as row blocks, and their BlockSpecs."""
    spec = pl.BlockSpec((None, rows, plan.rows_in, plan.n2), lambda i, j: (i, j, 0, 0))
    inputs = [_to_rows(s, plan) for s in signals if s is not None]
    return inputs, [spec] * len(inputs)


def conv_rows(
    u: jax.Array,
    kr: jax.Array,
    ki: jax.Array,
    skip: jax.Array,
    pre: jax.Array | None,
    post: jax.Array | None,
    plan: StagePlan,
    *,
    out_dtype: Any,
    interpret: Any,
    config: FFTConvConfig,
) -> jax.Array:
    """The forward kernel on ``[B, L, C]`` inputs; ``kr, ki`` from :func:`kernel_spectrum`."""
    batch, seq, chans = u.shape
    rows = min(config.block_rows, next_pow2(batch))
    mm_dtype = matmul_dtype(u.dtype)
    consts = stage_constants(plan, plan.rows_out, mm_dtype)
    inputs, specs = _signal_inputs(plan, rows, u, pre, post)
    # The skip weight as a [C, 1, N2] row so it broadcasts over X's rows inside the kernel.
    skip_row = jnp.broadcast_to(skip.astype(jnp.float32)[:, None, None], (chans, 1, plan.n2))
    q = len(plan.cols)
    spectrum_spec = pl.BlockSpec((None, plan.n1, q), lambda i, j: (i, 0, 0))
    body = functools.partial(
        _conv_kernel,
        has_pre=pre is not None,
        has_post=post is not None,
        rows=rows,
        matmul_dtype=mm_dtype,
        precision=matmul_precision(mm_dtype),
    )
    out = launch(
        body,
        [*inputs, skip_row, kr, ki, *consts],
        grid=(chans, cdiv(batch, rows)),
        in_specs=[
            *specs,
            pl.BlockSpec((None, 1, plan.n2), lambda i, j: (i, 0, 0)),
            spectrum_spec,
            spectrum_spec,
            *const_specs(consts),
        ],
        out_specs=pl.BlockSpec((None, rows, plan.rows_out, plan.n2), lambda i, j: (i, j, 0, 0)),
        out_shape=jax.ShapeDtypeStruct((chans, batch, plan.rows_out, plan.n2), out_dtype),
        plan=plan,
        config=config,
        interpret=interpret,
        name="fftconv_forward",
    )
    out = out.reshape(chans, batch, plan.rows_out * plan.n2)[:, :, :seq]
    return jnp.transpose(out, (1, 2, 0))


def kernel_grad_rows(
    u: jax.Array,
    pre: jax.Array | None,
    g: jax.Array,
    mask: jax.Array,
    kernel_len: int,
    plan: StagePlan,
    *,
    interpret: Any,
    config: FFTConvConfig,
) -> jax.Array:
    """``dk[j, c] = sum_{b, t} g[b, t, c] * x[b, t - j, c]`` (circularly, size N, over the bins of
    ``mask``), ``x = pre * u``."""
    batch, _, chans = u.shape
    rows = min(config.block_rows, next_pow2(batch))
    nb = cdiv(batch, rows)
    mm_dtype = matmul_dtype(u.dtype)
    consts = stage_constants(plan, plan.rows_dk, mm_dtype)
    inputs, specs = _signal_inputs(plan, rows, u, pre, g)
    body = functools.partial(
        _kernel_grad_kernel,
        has_pre=pre is not None,
        rows=rows,
        batch=batch,
        matmul_dtype=mm_dtype,
        precision=matmul_precision(mm_dtype),
    )
    # One partial sum per batch block (programs run in parallel); the blocks are summed by XLA.
    out = launch(
        body,
        [*inputs, mask, *consts],
        grid=(chans, nb),
        in_specs=[*specs, pl.BlockSpec(mask.shape, lambda i, j: (0, 0)), *const_specs(consts)],
        out_specs=pl.BlockSpec((None, None, plan.rows_dk, plan.n2), lambda i, j: (i, j, 0, 0)),
        out_shape=jax.ShapeDtypeStruct((chans, nb, plan.rows_dk, plan.n2), jnp.float32),
        plan=plan,
        config=config,
        interpret=interpret,
        name="fftconv_kernel_grad",
    )
    out = out.sum(axis=1).reshape(chans, plan.rows_dk * plan.n2)[:, :kernel_len]
    return out.T


# --- custom_vjp ------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Static:
    plan: StagePlan
    interpret: Any
    config: FFTConvConfig


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def _fftconv(u, k, skip, pre, post, mask, static: _Static):
    kr, ki = kernel_spectrum(k, static.plan, mask)
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


def _fftconv_fwd(u, k, skip, pre, post, mask, static):
    # Residuals are the inputs only; z = conv + skip * x is recomputed in the backward pass when a
    # post-gate needs it, instead of storing another [B, L, C] array.
    return _fftconv(u, k, skip, pre, post, mask, static), (u, k, skip, pre, post, mask)


def _fftconv_bwd(static, res, dy):
    u, k, skip, pre, post, mask = res
    plan = static.plan
    kw = dict(interpret=static.interpret, config=static.config)
    kr, ki = kernel_spectrum(k, plan, mask)
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
    grad_mask = jnp.ones((plan.n1, len(plan.cols)), jnp.float32) if mask is None else mask
    dk = kernel_grad_rows(u, pre, dz_in, grad_mask, k.shape[0], plan, **kw).astype(k.dtype)
    if pre is None:
        du, d_pre = dx.astype(u.dtype), None
    else:
        du = (dx * pre.astype(jnp.float32)).astype(u.dtype)
        d_pre = (dx * u.astype(jnp.float32)).astype(pre.dtype)
    return du, dk, d_skip, d_pre, d_post, zero_cotangent(mask)


_fftconv.defvjp(_fftconv_fwd, _fftconv_bwd)
_fftconv_jit = jax.jit(_fftconv, static_argnums=(6,))


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
    """The size-``fft_size`` circular convolution of the package docstring by the order-2 kernel."""
    plan = make_stage_plan(u.shape[1], k.shape[0], fft_size, kept, min_dim)
    mask = None if kept is None else jnp.asarray(layout_mask(kept, plan))
    return _fftconv_jit(u, k, skip, pre_gate, post_gate, mask, _Static(plan, interpret, config))
