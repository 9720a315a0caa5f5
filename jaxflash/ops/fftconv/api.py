"""The public functions ``fftconv``, ``short_conv`` and ``bidirectional_kernel``, and the registration
of every implementation of ``fftconv`` and ``short_conv`` with the dispatcher."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from jaxflash.ops.fftconv import spec
from jaxflash.ops.fftconv.xla import FFTConvXlaConfig, fftconv_xla, short_conv_xla
from jaxflash.ops.registry import dispatch, register
from jaxflash.pallas_kernels import fftconv as kernel
from jaxflash.pallas_kernels.common import interpret_for
from jaxflash.pallas_kernels.fftconv import FFTConvConfig


def fftconv(
    u: Float[Array, "batch seq channels"],
    k: Float[Array, "kernel_len channels"],
    *,
    skip: Float[Array, " channels"] | None = None,
    pre_gate: Float[Array, "batch seq channels"] | None = None,
    post_gate: Float[Array, "batch seq channels"] | None = None,
    causal: bool = True,
    fft_size: int | None = None,
    keep_frequencies: int | None = None,
    implementation: str | Sequence[str] | None = None,
    config: FFTConvConfig | FFTConvXlaConfig | Mapping[str, Any] | None = None,
) -> Float[Array, "batch seq channels"]:
    """Gated depthwise FFT convolution ``post_gate * (conv(pre_gate * u, k)[:seq] + skip * pre_gate * u)``.

    Args:
      u: ``[batch, seq, channels]`` input, floating point. Array-likes (NumPy arrays, nested lists) are
        converted with ``jnp.asarray``, as are ``k``, ``skip`` and the gates.
      k: ``[kernel_len, channels]`` kernel, floating point. Causal: ``kernel_len <= seq``; a kernel
        shorter than the sequence is a partial convolution (FlashFFTConv section 3.3) and costs less.
        Non-causal: a circular kernel of length ``fft_size >= seq`` (``2 * seq`` for M2-BERT's
        bidirectional form, see :func:`bidirectional_kernel`).
      skip: ``[channels]`` weight of the residual ``skip * x`` term (``D`` in H3/Hyena/M2), or None.
      pre_gate, post_gate: ``[batch, seq, channels]`` multiplicative gates, or None.
      causal: linear causal convolution (True) or circular convolution of size ``kernel_len``.
      fft_size: the FFT size ``N``, an integer. Causal: at least ``seq + kernel_len - 1``, default
        ``2 * seq``. A causal convolution does not depend on ``N``, so without ``keep_frequencies`` each
        implementation transforms at its own fastest valid size; with ``keep_frequencies`` the bins
        kept are those of this ``N`` and it is used as given. Non-causal: must equal ``kernel_len``.
      keep_frequencies: frequency-sparse convolution: keep only the lowest ``keep_frequencies`` bins
        (0 .. keep-1 of the size-``N`` rfft, with their conjugate mirrors) of the kernel's spectrum
        (:func:`jaxflash.ops.fftconv.kept_frequency_mask`). None keeps all.
      implementation: ``"pallas"``, ``"pallas_interpret"``, ``"xla"``, ``"reference"`` or None
        (the best that serves the call).
      config: forwarded to the implementation that runs: a
        :class:`~jaxflash.ops.fftconv.FFTConvConfig` (tiles and FFT splits of the Pallas kernels), a
        :class:`~jaxflash.ops.fftconv.FFTConvXlaConfig` (thresholds and chunk size of the XLA path), or
        a mapping ``{implementation: config}``. An implementation that takes no config of that type
        refuses the call. None: each implementation's default.

    Returns:
      ``[batch, seq, channels]`` in ``u``'s dtype.

    Raises:
      ValueError: on inconsistent shapes or sizes, non-float inputs, or an ``fft_size`` too large for
        this device's memory, saying what to change.
      TypeError: for a non-integer ``fft_size`` or ``keep_frequencies``.

    Non-finite inputs: every output bin of an FFT mixes every input sample, so a NaN or inf anywhere in
    one (batch, channel) signal of ``u`` or a gate, or in one channel of ``k``, makes that whole output
    signal NaN, its earlier samples included. This is inherent to FFT convolution, in every
    implementation (the reference too); only the XLA path's direct sums (causal kernels of at most
    ``FFTConvXlaConfig.direct_max_taps`` taps) keep a NaN to the outputs that depend on it. Where inputs
    may be bad, check them first: ``bool(jnp.isfinite(u).all())`` eagerly, or
    ``jaxflash.utils.check_values(jnp.isfinite(u), "u has a non-finite value")``, which raises eagerly
    and is a ``checkify`` check under ``jit`` when value checks are on (see :mod:`jaxflash.utils`).
    """
    u, k, skip, pre_gate, post_gate = (
        None if a is None else jnp.asarray(a) for a in (u, k, skip, pre_gate, post_gate)
    )
    n, keep = spec.validate(u, k, skip, pre_gate, post_gate, causal, fft_size, keep_frequencies)
    return dispatch(
        "fftconv",
        implementation,
        u,
        k,
        skip,
        pre_gate,
        post_gate,
        causal=causal,
        fft_size=n,
        keep_frequencies=keep,
        config=config,
    )


def bidirectional_kernel(
    k_forward: Float[Array, "seq channels"], k_reverse: Float[Array, "seq channels"]
) -> Float[Array, "2*seq channels"]:
    """M2-BERT's length-``2 * seq`` circular kernel from a causal and an anti-causal kernel.

    ``k = pad(k_forward, (0, L)) + pad(flip(k_reverse), (L, 0))``: ``k_forward[d]`` sits at lag ``d``
    and ``k_reverse[d - 1]`` at lag ``-d``, so with ``fftconv(..., causal=False)``
    ``y[t] = sum_{d >= 0} k_forward[d] x[t - d] + sum_{d >= 1} k_reverse[d - 1] x[t + d]``.
    """
    k_forward, k_reverse = jnp.asarray(k_forward), jnp.asarray(k_reverse)
    if k_forward.ndim != 2 or k_forward.shape != k_reverse.shape:
        raise ValueError(
            f"k_forward and k_reverse must both be [seq, channels]; got {k_forward.shape=} and "
            f"{k_reverse.shape=}"
        )
    zeros = jnp.zeros_like(k_forward)
    return jnp.concatenate([k_forward, zeros], axis=0) + jnp.concatenate([zeros, k_reverse[::-1]], axis=0)


def short_conv(
    u: Float[Array, "batch seq channels"],
    w: Float[Array, "taps channels"],
    *,
    bias: Float[Array, " channels"] | None = None,
    implementation: str | None = None,
) -> Float[Array, "batch seq channels"]:
    """Depthwise causal convolution with a short kernel: ``y[t] = sum_j w[j] u[t - taps + 1 + j] + bias``.

    The orientation is that of ``torch.nn.Conv1d(groups=channels, padding=taps - 1)`` truncated to
    the first ``seq`` outputs (and of Flax's ``padding="CAUSAL"``), as H3, Hyena and M2 use it:
    ``w[-1]`` multiplies the current step, so their checkpoints' weights carry over unflipped
    (``w[j, c] = weight[c, 0, j]``).

    ``u``, ``w`` and ``bias`` must be floating point (array-likes are converted with ``jnp.asarray``);
    integer inputs raise ``ValueError`` rather than being truncated. Returns ``u``'s dtype.
    """
    u, w, bias = (None if a is None else jnp.asarray(a) for a in (u, w, bias))
    spec.validate_short_conv(u, w, bias)
    return dispatch("short_conv", implementation, u, w, bias)


# --- implementations -----------------------------------------------------------------------------------


def _fftconv_pallas(
    u, k, skip, pre_gate, post_gate, *, causal, fft_size, keep_frequencies, config, implementation
):
    config = FFTConvConfig() if config is None else config
    compiled = implementation == "pallas"
    seq, kernel_len = u.shape[1], k.shape[0]
    if causal and keep_frequencies is None:
        n = kernel.smallest_fft_size(seq + kernel_len - 1, compiled)
    else:
        n = fft_size  # fixed by the bins (frequency-sparse) or by the circular kernel
    reason = kernel.fft_size_ok(n, compiled, config)
    if reason is not None:
        raise NotImplementedError(reason)
    if u.dtype not in (jnp.float32, jnp.bfloat16, jnp.float16):
        raise NotImplementedError(f"the Pallas kernel takes f32, bf16 or f16 inputs; got {u.dtype}")
    kept = None if keep_frequencies is None else spec.kept_frequency_mask(n, keep_frequencies)
    return kernel.fftconv(
        u,
        k,
        skip,
        pre_gate,
        post_gate,
        fft_size=n,
        kept=kept,
        interpret=interpret_for(implementation),
        config=config,
    )


@functools.partial(jax.jit, static_argnames=("causal", "fft_size", "keep_frequencies"))
def _fftconv_reference(u, k, skip, pre_gate, post_gate, *, causal, fft_size, keep_frequencies):
    del causal  # the size-N circular convolution covers both: causal sizes have N >= L + L_k - 1
    return spec.reference(
        u, k, skip, pre_gate, post_gate, fft_size=fft_size, keep_frequencies=keep_frequencies
    )


register("fftconv", "xla", config_type=FFTConvXlaConfig)(fftconv_xla)
# The Pallas paths are registered unjitted: the NotImplementedError for unsupported sizes must reach the
# dispatcher before tracing; the kernel call itself is jitted inside. The compiled kernel is not the
# default until it has been checked and timed against cuFFT on a GPU (BENCHMARKS.md); ask for it with
# implementation="pallas"; `make gpu-check` runs it first.
register("fftconv", "pallas", default=False, config_type=FFTConvConfig)(
    functools.partial(_fftconv_pallas, implementation="pallas")
)
register("fftconv", "pallas_interpret", config_type=FFTConvConfig)(
    functools.partial(_fftconv_pallas, implementation="pallas_interpret")
)
register("fftconv", "reference")(_fftconv_reference)
register("short_conv", "xla")(short_conv_xla)
register("short_conv", "reference")(jax.jit(spec.short_conv_reference))
