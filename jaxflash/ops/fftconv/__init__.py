"""Depthwise long convolutions by FFT (FlashFFTConv, Fu et al. 2023, arXiv 2311.05908) and the short
causal convolutions H3, Hyena, M2 and grafting use as featurizers.

``fftconv`` computes, per channel ``c`` (depthwise), with ``x = pre_gate * u``::

    y = post_gate * (conv(x, k)[:seq] + skip * x)

where ``conv`` is the linear convolution ``sum_j k[j] x[t - j]`` (causal, implicit zero padding) or,
with ``causal=False``, the circular convolution of size ``k.shape[0]`` (the bidirectional form of
M2-BERT and long convolutions, built by :func:`bidirectional_kernel`). Every sequence mixer of H3,
Hyena, long convs and M2 reduces to this one call (``reference/models.md`` section 0).

Implementations: ``"pallas"`` (the Monarch-decomposed FFT kernels of
:mod:`jaxflash.pallas_kernels.fftconv`, GPU; config :class:`FFTConvConfig`), ``"pallas_interpret"``
(the same kernels interpreted), ``"xla"`` (rfft, overlap-add or direct sums, whichever does the least
work for the sizes; the CPU path; config :class:`FFTConvXlaConfig`), ``"reference"`` (a full complex
``jnp.fft`` convolution in the inputs' precision, float64 when x64 is on).

Modules: :mod:`.api` (the public functions and the registrations), :mod:`.spec` (validation, the kept
bins of ``keep_frequencies``, the references), :mod:`.xla` (the XLA path).
"""

from jaxflash.ops.fftconv.api import bidirectional_kernel, fftconv, short_conv
from jaxflash.ops.fftconv.spec import kept_frequency_mask, reference, short_conv_reference
from jaxflash.ops.fftconv.xla import FFTConvXlaConfig
from jaxflash.pallas_kernels.fftconv import FFTConvConfig

__all__ = [
    "FFTConvConfig",
    "FFTConvXlaConfig",
    "bidirectional_kernel",
    "fftconv",
    "kept_frequency_mask",
    "reference",
    "short_conv",
    "short_conv_reference",
]
