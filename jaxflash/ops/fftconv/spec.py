"""What an FFT convolution call means, shared by every implementation: the argument checks, which
frequency bins ``keep_frequencies`` keeps, and the plain ``jnp.fft`` references of ``fftconv`` and
``short_conv``."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxflash.utils import fits_in_memory, is_int, memory_estimate_message

# Bytes of one complex64 bin: the size-N spectra the memory estimate counts.
_BIN_BYTES = 8


def kept_frequency_mask(n: int, keep_frequencies: int | None) -> np.ndarray:
    """Boolean mask over the ``n`` bins of a complex FFT: True where ``min(f, n - f) < keep_frequencies``
    (all True for None).

    This is the complex-FFT form of keeping the rfft bins ``0 .. keep_frequencies - 1``: each kept bin
    with its conjugate mirror, so the convolution stays real.
    """
    if keep_frequencies is None:
        return np.ones(n, bool)
    f = np.arange(n)
    return np.minimum(f, n - f) < keep_frequencies


# --- validation ------------------------------------------------------------------------------------------


def _integer(name: str, value: Any) -> int:
    if not is_int(value):
        raise TypeError(f"{name} must be an integer; got {name}={value!r} ({type(value).__name__})")
    return int(value)


def _floating(name: str, x: Any) -> None:
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"{name} must be a floating-point array; got {x.dtype}")


def validate(
    u: jax.Array,
    k: jax.Array,
    skip: jax.Array | None,
    pre_gate: jax.Array | None,
    post_gate: jax.Array | None,
    causal: bool,
    fft_size: Any,
    keep_frequencies: Any,
) -> tuple[int, int | None]:
    """Checks the arguments of :func:`jaxflash.fftconv`; returns the FFT size ``N`` that defines the
    frequency bins and ``keep_frequencies`` as an ``int`` (or None)."""
    if u.ndim != 3:
        raise ValueError(f"u must be [batch, seq, channels]; got {u.shape=}")
    batch, seq, chans = u.shape
    if k.ndim != 2:
        raise ValueError(f"k must be [kernel_len, channels]; got {k.shape=} (a 1-D kernel needs k[:, None])")
    if k.shape[1] != chans:
        raise ValueError(f"k has {k.shape[1]} channels but u has {chans}: {k.shape=}, {u.shape=}")
    _floating("u", u)
    _floating("k", k)
    if skip is not None and skip.shape != (chans,):
        raise ValueError(f"skip must be [channels]=({chans},); got {skip.shape=}")
    for name, gate in (("pre_gate", pre_gate), ("post_gate", post_gate)):
        if gate is not None and gate.shape != u.shape:
            raise ValueError(f"{name} must have u's shape {u.shape}; got {gate.shape}")
    if fft_size is not None:
        fft_size = _integer("fft_size", fft_size)
    if keep_frequencies is not None:
        keep_frequencies = _integer("keep_frequencies", keep_frequencies)
    kernel_len = k.shape[0]
    if kernel_len < 1:
        raise ValueError(f"k must have at least one tap; got {k.shape=}")
    if causal:
        if kernel_len > seq:
            raise ValueError(
                f"the kernel is longer than the sequence ({kernel_len} > {seq}); truncate it to "
                f"k[:{seq}], or pass causal=False with a circular kernel"
            )
        if fft_size is not None and fft_size < seq + kernel_len - 1:
            raise ValueError(
                f"{fft_size=} is too small for a causal convolution of {seq=} with {kernel_len=}: it "
                f"needs at least seq + kernel_len - 1 = {seq + kernel_len - 1} (or pass fft_size=None)"
            )
        n = fft_size if fft_size is not None else 2 * seq
    else:
        if kernel_len < seq:
            raise ValueError(
                f"a circular (causal=False) kernel must be at least as long as the sequence; got "
                f"{kernel_len=} < {seq=} (build one with bidirectional_kernel, or pad k)"
            )
        if fft_size is not None and fft_size != kernel_len:
            raise ValueError(
                f"with causal=False the FFT size is the kernel length {kernel_len}; got {fft_size=}"
            )
        n = kernel_len
    # The least any implementation holds at once: one channel's size-N transforms over the batch.
    need = (batch + 1) * n * _BIN_BYTES
    if not fits_in_memory(need):
        raise ValueError(
            memory_estimate_message(f"fft_size={n} (the size-{n} transforms of {batch} + 1 signals)", need)
            + "; pass a smaller fft_size (None: 2 * seq)"
        )
    if keep_frequencies is not None and not 1 <= keep_frequencies <= n // 2 + 1:
        raise ValueError(
            f"keep_frequencies must be in [1, {n // 2 + 1}] for FFT size {n}; got {keep_frequencies}"
        )
    return n, keep_frequencies


def validate_short_conv(u: jax.Array, w: jax.Array, bias: jax.Array | None) -> None:
    """Checks the arguments of :func:`jaxflash.short_conv`."""
    if u.ndim != 3:
        raise ValueError(f"u must be [batch, seq, channels]; got {u.shape=}")
    if w.ndim != 2 or w.shape[1] != u.shape[2]:
        raise ValueError(f"w must be [taps, channels] with channels={u.shape[2]}; got {w.shape=}")
    if w.shape[0] < 1:
        raise ValueError(f"w needs at least one tap; got {w.shape=}")
    _floating("u", u)
    _floating("w", w)
    if bias is not None:
        if bias.shape != (u.shape[2],):
            raise ValueError(f"bias must be [channels]=({u.shape[2]},); got {bias.shape=}")
        _floating("bias", bias)


# --- references ------------------------------------------------------------------------------------------


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
    """``fftconv`` by a full complex ``jnp.fft`` in the inputs' precision (at least f32; f64 under x64).

    A complex FFT of size ``fft_size`` along the sequence, pointwise product, inverse, real part, first
    ``L`` samples; frequency-sparse by masking the kernel's spectrum with :func:`kept_frequency_mask`.
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


def short_conv_reference(u: jax.Array, w: jax.Array, bias: jax.Array | None = None) -> jax.Array:
    """``short_conv`` by ``lax.conv_general_dilated`` (torch's ``Conv1d(groups=channels)``) in the
    inputs' precision, at least f32."""
    taps, chans = w.shape
    dtype = jnp.promote_types(u.dtype, jnp.float32)
    y = jax.lax.conv_general_dilated(
        u.astype(dtype),
        w.astype(dtype)[:, None, :],
        window_strides=(1,),
        padding=[(taps - 1, 0)],
        dimension_numbers=("NWC", "WIO", "NWC"),
        feature_group_count=chans,
        precision=jax.lax.Precision.HIGHEST,
    )
    if bias is not None:
        y = y + bias.astype(dtype)
    return y.astype(u.dtype)
