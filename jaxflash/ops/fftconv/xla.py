"""The ``"xla"`` implementations of ``fftconv`` and ``short_conv``, the CPU path: direct sums for short
kernels, overlap-add for kernels short against the sequence (the partial convolution), whole-sequence
rfft convolutions otherwise, over channel chunks that keep the FFTs cache-sized."""

from __future__ import annotations

import dataclasses
import functools
import numbers

import jax
import jax.numpy as jnp

from jaxflash.utils import check_int, next_pow2


@dataclasses.dataclass(frozen=True)
class FFTConvXlaConfig:
    """Where the XLA path switches between its three forms, and how much one channel chunk holds; reach
    it through ``jaxflash.fftconv(..., implementation="xla", config=FFTConvXlaConfig(...))``.

    Attributes:
      direct_max_taps: causal kernels with at most this many taps (and no frequency-sparse bins) are
        summed directly: fewer flops than any FFT and no transposes. An integer >= 0.
      overlap_add_max_fraction: a longer causal kernel at most this fraction of the sequence is applied
        by overlap-add over blocks of about its length: O(L log L_k) work instead of O(L log L). A
        number in [0, 1].
      chunk_elements: elements of one channel chunk's padded signals (batch * channels * FFT size): the
        FFTs of a chunk stay cache-sized, and peak memory is a chunk's spectra, not the whole batch's.
        An integer >= 1.
    """

    direct_max_taps: int = 16
    overlap_add_max_fraction: float = 0.25
    chunk_elements: int = 1 << 20

    def __post_init__(self):
        check_int("FFTConvXlaConfig.direct_max_taps", self.direct_max_taps, minimum=0)
        fraction = self.overlap_add_max_fraction
        if not isinstance(fraction, numbers.Real) or isinstance(fraction, bool) or not 0 <= fraction <= 1:
            raise ValueError(
                f"FFTConvXlaConfig.overlap_add_max_fraction must be a number in [0, 1]; got {fraction!r}"
            )
        check_int("FFTConvXlaConfig.chunk_elements", self.chunk_elements)


def _fast_size(n: int) -> int:
    """The smallest ``2^a 3^b 5^c >= n``: the sizes pocketfft/ducc transform fastest."""
    best = next_pow2(n)
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            m = p35
            while m < n:
                m *= 2
            best = min(best, m)
            p35 *= 3
        p5 *= 5
    return best


def _route(
    seq: int, kernel_len: int, causal: bool, keep_frequencies: int | None, config: FFTConvXlaConfig
) -> str:
    if not causal or keep_frequencies is not None:
        return "fft"
    if kernel_len <= config.direct_max_taps:
        return "direct"
    if kernel_len <= config.overlap_add_max_fraction * seq:
        return "blocks"
    return "fft"


def causal_direct(x: jax.Array, k: jax.Array) -> jax.Array:
    """``y[t] = sum_j k[j] x[t - j]`` over ``[B, L, C]`` by shifted sums (short kernels, f32)."""
    taps, seq = k.shape[0], x.shape[1]
    xp = jnp.pad(x, ((0, 0), (taps - 1, 0), (0, 0)))
    y = k[0] * x
    for j in range(1, taps):
        y = y + k[j] * xp[:, taps - 1 - j : taps - 1 - j + seq]
    return y


def _gated(x, gate):
    return x if gate is None else x * gate.astype(jnp.float32)


@functools.partial(jax.jit, static_argnames=("causal", "fft_size", "keep_frequencies", "config"))
def fftconv_xla(
    u: jax.Array,
    k: jax.Array,
    skip: jax.Array | None,
    pre_gate: jax.Array | None,
    post_gate: jax.Array | None,
    *,
    causal: bool,
    fft_size: int,
    keep_frequencies: int | None,
    config: FFTConvXlaConfig | None,
) -> jax.Array:
    """``jaxflash.fftconv`` on validated arguments, by direct sums, overlap-add or whole-sequence rffts."""
    config = FFTConvXlaConfig() if config is None else config
    seq, kernel_len = u.shape[1], k.shape[0]
    route = _route(seq, kernel_len, causal, keep_frequencies, config)
    if route == "direct":
        # A handful of shifted multiply-adds: plain autodiff keeps only the inputs as residuals.
        x = _gated(u.astype(jnp.float32), pre_gate)
        y = causal_direct(x, k.astype(jnp.float32))
        if skip is not None:
            y = y + skip.astype(jnp.float32) * x
        return _gated(y, post_gate).astype(u.dtype)
    if causal and keep_frequencies is None:
        # Any N >= L + L_k - 1 gives the same linear convolution: take the fastest.
        n = _fast_size(seq + kernel_len - 1)
    else:
        n = fft_size
    static = _XlaStatic(n, keep_frequencies, route, config.chunk_elements)
    return _xla_conv(u, k, skip, pre_gate, post_gate, static)


@dataclasses.dataclass(frozen=True)
class _XlaStatic:
    n: int  # FFT size of the whole-sequence transforms
    keep: int | None  # rfft bins kept
    route: str  # "fft" or "blocks"
    chunk_elements: int  # FFTConvXlaConfig.chunk_elements


def _channel_chunk(batch: int, chans: int, n: int, chunk_elements: int) -> int:
    """The largest divisor of ``chans`` whose chunk of signals fits ``chunk_elements``."""
    best = 1
    for d in range(1, chans + 1):
        if chans % d == 0 and batch * d * n <= chunk_elements:
            best = d
    return best


def _cf(a):
    """Channel-last <-> channel-first (its own inverse): [B, L, C] <-> [B, C, L], [L_k, C] <-> [C, L_k]."""
    return a if a is None or a.ndim < 2 else jnp.swapaxes(a, -1, -2)


def _channel_axis_cf(a: jax.Array) -> int:
    return 1 if a.ndim == 3 else 0


def _chunked(fn, arrays, out_like, batch, n, chunk_elements):
    """Applies ``fn`` (channel-first chunks in, channel-first outputs out) over channel chunks of the
    channel-last ``arrays`` (None passes through); returns channel-last outputs shaped like ``out_like``.

    Only one chunk's spectra are alive at a time and its FFTs stay cache-sized. Slicing 8-32 channels
    straight from the channel-last arrays, each slice transposed on its own, measured faster on CPU than
    one full-size transpose, and needs no full-size transposed copies.
    """
    chans = out_like[0].shape[-1]
    chunk = _channel_chunk(batch, chans, n, chunk_elements)
    if chunk >= chans:
        res = fn(*map(_cf, arrays))
        return tuple(_cf(r).astype(o.dtype) for r, o in zip(res, out_like, strict=True))
    wide = max(d for d in range(1, chans + 1) if chans % d == 0 and d <= max(32, chunk))
    if wide >= 8:

        def body(i, outs):
            c0 = i * wide
            parts = [
                None if a is None else _cf(jax.lax.dynamic_slice_in_dim(a, c0, wide, axis=a.ndim - 1))
                for a in arrays
            ]
            return tuple(
                jax.lax.dynamic_update_slice_in_dim(o, _cf(r).astype(o.dtype), c0, axis=o.ndim - 1)
                for o, r in zip(outs, fn(*parts), strict=True)
            )

        init = tuple(jnp.zeros(o.shape, o.dtype) for o in out_like)
        return jax.lax.fori_loop(0, chans // wide, body, init)

    # Channel counts with no divisor in 8..32 (111 = 3 * 37): transpose once, slice contiguous rows.
    arrays_cf = [_cf(a) for a in arrays]

    def body_cf(i, outs):
        c0 = i * chunk
        parts = [
            None if a is None else jax.lax.dynamic_slice_in_dim(a, c0, chunk, axis=_channel_axis_cf(a))
            for a in arrays_cf
        ]
        return tuple(
            jax.lax.dynamic_update_slice_in_dim(o, r.astype(o.dtype), c0, axis=_channel_axis_cf(o))
            for o, r in zip(outs, fn(*parts), strict=True)
        )

    cf_shape = lambda shape: shape if len(shape) < 2 else (*shape[:-2], shape[-1], shape[-2])  # noqa: E731
    init = tuple(jnp.zeros(cf_shape(o.shape), o.dtype) for o in out_like)
    outs = jax.lax.fori_loop(0, chans // chunk, body_cf, init)
    return tuple(_cf(o) for o in outs)


def _rfft(x: jax.Array, n: int, keep: int | None) -> jax.Array:
    """rfft along the last axis, only the ``keep`` lowest bins when frequency-sparse (the rfft form of
    :func:`jaxflash.ops.fftconv.spec.kept_frequency_mask`)."""
    xf = jnp.fft.rfft(x, n=n)
    return xf if keep is None else xf[..., :keep]


def _irfft(spec: jax.Array, n: int, length: int) -> jax.Array:
    """Inverse of :func:`_rfft` (missing high bins are zero), first ``length`` samples."""
    return jnp.fft.irfft(spec, n=n)[..., :length]


def _block_conv(x: jax.Array, k: jax.Array) -> jax.Array:
    """Causal ``conv(x, k)`` of ``[B, C, L]``: overlap-add, blocks of ``S >= L_k - 1``, FFT size ``2S``."""
    batch, chans, seq = x.shape
    s = max(16, 1 << (k.shape[-1] - 1).bit_length())
    nb = -(-seq // s)
    xb = jnp.pad(x, ((0, 0), (0, 0), (0, nb * s - seq))).reshape(batch, chans, nb, s)
    kf = jnp.fft.rfft(k, n=2 * s)[:, None]  # [C, 1, S + 1]
    z = jnp.fft.irfft(jnp.fft.rfft(xb, n=2 * s) * kf, n=2 * s)  # block i covers samples i*S .. i*S + 2S
    y = z[..., :s].at[:, :, 1:].add(z[:, :, :-1, s:])
    return y.reshape(batch, chans, nb * s)[..., :seq]


def _forward_chunk(static: _XlaStatic, u, k, skip, pre, post):
    """Channel-first chunk: ``u, pre, post`` ``[B, c, L]``, ``k`` ``[c, L_k]``, ``skip`` ``[c]``."""
    seq = u.shape[-1]
    x = _gated(u.astype(jnp.float32), pre)
    if static.route == "blocks":
        y = _block_conv(x, k.astype(jnp.float32))
    else:
        kf = _rfft(k.astype(jnp.float32), static.n, static.keep)
        y = _irfft(_rfft(x, static.n, static.keep) * kf, static.n, seq)
    if skip is not None:
        y = y + skip.astype(jnp.float32)[:, None] * x
    return (_gated(y, post),)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _xla_conv(u, k, skip, pre, post, static: _XlaStatic):
    (y,) = _chunked(
        functools.partial(_forward_chunk, static),
        (u, k, skip, pre, post),
        (jax.ShapeDtypeStruct(u.shape, u.dtype),),
        u.shape[0],
        static.n,
        static.chunk_elements,
    )
    return y


def _xla_conv_fwd(u, k, skip, pre, post, static):
    # Only the inputs are kept: autodiff of the FFTs would keep their complex spectra (2x u each).
    return _xla_conv(u, k, skip, pre, post, static), (u, k, skip, pre, post)


def _backward_chunk(static: _XlaStatic, n: int, u, k, skip, pre, post, dy):
    """Gradients as correlations in the frequency domain: ``dX = conj(K) dZ``, ``dK = sum_b conj(X) dZ``."""
    seq, kernel_len = u.shape[-1], k.shape[-1]
    u32, dy32 = u.astype(jnp.float32), dy.astype(jnp.float32)
    skip32 = 0.0 if skip is None else skip.astype(jnp.float32)[:, None]
    x = _gated(u32, pre)
    xf = _rfft(x, n, static.keep)
    kf = _rfft(k.astype(jnp.float32), n, static.keep)
    d_post = None
    if post is not None:
        z = _irfft(xf * kf, n, seq) + skip32 * x
        d_post = dy32 * z
    dz = _gated(dy32, post)
    dzf = _rfft(dz, n, static.keep)
    dx = _irfft(dzf * jnp.conj(kf), n, seq) + skip32 * dz
    dk = _irfft(jnp.sum(jnp.conj(xf) * dzf, axis=0), n, kernel_len)
    d_skip = None if skip is None else jnp.sum(dz * x, axis=(0, 2))
    du = _gated(dx, pre)
    d_pre = None if pre is None else dx * u32
    return du, dk, d_skip, d_pre, d_post


def _xla_conv_bwd(static, res, dy):
    u, k, skip, pre, post = res
    # The blocked forward's gradient is taken with whole-sequence transforms, sized so the
    # circular correlations are exact: N >= L + L_k - 1.
    n = static.n if static.route == "fft" else _fast_size(u.shape[1] + k.shape[0] - 1)
    present = [a for a in (u, k, skip, pre, post) if a is not None]
    outs = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in present]

    def fn(*args):
        return tuple(g for g in _backward_chunk(static, n, *args) if g is not None)

    grads = iter(_chunked(fn, (u, k, skip, pre, post, dy), outs, u.shape[0], n, static.chunk_elements))
    return tuple(None if a is None else next(grads) for a in (u, k, skip, pre, post))


_xla_conv.defvjp(_xla_conv_fwd, _xla_conv_bwd)


@jax.jit
def short_conv_xla(u: jax.Array, w: jax.Array, bias: jax.Array | None) -> jax.Array:
    """``jaxflash.short_conv`` on validated arguments by shifted sums in f32."""
    y = causal_direct(u.astype(jnp.float32), w[::-1].astype(jnp.float32))
    if bias is not None:
        y = y + bias.astype(jnp.float32)
    return y.astype(u.dtype)
