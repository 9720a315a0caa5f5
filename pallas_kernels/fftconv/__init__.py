"""FlashFFTConv (Fu, Kumbong, Nguyen and Re, arXiv 2311.05908) as Pallas kernels.

Computes the gated depthwise long convolution every H3 / Hyena / M2 mixer reduces to::

    x = pre_gate * u
    y = post_gate * (real(ifft(fft(x, N) * K))[:L] + skip * x),    K = where(kept, fft(k, N), 0)

with ``u`` of length ``L`` per (batch, channel), ``k`` of length ``L_k`` per channel, FFT size ``N`` (a
power of two) and ``kept`` a boolean mask over the ``N`` bins of the complex spectrum (None keeps all):
the bins whose product the caller keeps, whose work alone is done. ``N >= L + L_k - 1`` makes the
circular convolution a causal linear one; a length-``N`` kernel gives the circular, bidirectional form.

Two algorithms, one module each, over the order-2 stages of :mod:`.stages`:

- :mod:`.order2`, for ``N <= config.max_order2_size``: the whole transform of a signal, the product and
  the inverse on chip in one kernel;
- :mod:`.outer_dft`, for larger ``N`` up to ``config.max_fft_size``: orders 3 and 4, outer DFT stages by
  XLA matmuls around a kernel that convolves each complex row on chip.

Longer sequences are served by the op's XLA path (the dispatcher falls back on the
``NotImplementedError`` that :func:`fft_size_ok` explains).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxflash.pallas_kernels.fftconv import order2, outer_dft
from jaxflash.pallas_kernels.fftconv.config import (
    INNER_FFT_SIZE,
    MAX_DENSE_OUTER,
    MAX_FFT_SIZE,
    MAX_PALLAS_FFT_SIZE,
    MIN_COMPILED_FFT_SIZE,
    FFTConvConfig,
)

from jaxflash.utils import next_pow2

__all__ = [
    "INNER_FFT_SIZE",
    "MAX_DENSE_OUTER",
    "MAX_FFT_SIZE",
    "MAX_PALLAS_FFT_SIZE",
    "MIN_COMPILED_FFT_SIZE",
    "FFTConvConfig",
    "fft_size_ok",
    "fftconv",
    "smallest_fft_size",
]


def fftconv(
    u: jax.Array,
    k: jax.Array,
    skip: jax.Array | None,
    pre_gate: jax.Array | None,
    post_gate: jax.Array | None,
    *,
    fft_size: int,
    kept: np.ndarray | None = None,
    interpret: Any = False,
    config: FFTConvConfig | None = None,
) -> jax.Array:
    """Gated depthwise FFT convolution (module docstring) with FFT size ``fft_size`` (a power of two).

    ``u``, gates: ``[B, L, C]``; ``k``: ``[L_k, C]``; ``skip``: ``[C]`` or None; ``kept``: boolean
    ``[fft_size]`` NumPy mask of the kept bins, or None. The convolution is circular of size
    ``fft_size``: causal when ``fft_size >= L + L_k - 1``. Inputs are validated by the public op
    (:func:`jaxflash.fftconv`); this checks only what the kernels themselves need.
    """
    config = FFTConvConfig() if config is None else config
    if k.shape[0] > fft_size or u.shape[1] > fft_size:
        raise ValueError(f"{u.shape=} and {k.shape=} do not fit in {fft_size=}")
    if kept is not None and np.shape(kept) != (fft_size,):
        raise ValueError(f"kept must mark each of the {fft_size=} bins; got shape {np.shape(kept)}")
    min_dim = config.min_dim if config.min_dim is not None else (1 if interpret is not False else 16)
    if skip is None:
        skip = jnp.zeros((u.shape[2],), jnp.float32)
    algorithm = order2 if fft_size <= config.max_order2_size else outer_dft
    return algorithm.fftconv(
        u,
        k,
        skip,
        pre_gate,
        post_gate,
        fft_size=fft_size,
        kept=kept,
        min_dim=min_dim,
        interpret=interpret,
        config=config,
    )


def fft_size_ok(n: int, compiled: bool, config: FFTConvConfig | None = None) -> str | None:
    """Why the kernels (with ``config``, default the default one) cannot use FFT size ``n``, or None."""
    config = FFTConvConfig() if config is None else config
    if n & (n - 1) or n < 4:
        return f"the Pallas kernel needs a power-of-two FFT size, got {n}"
    if compiled and n < MIN_COMPILED_FFT_SIZE:
        return (
            f"the compiled kernel needs FFT size >= {MIN_COMPILED_FFT_SIZE} (Triton dot dims >= 16), got {n}"
        )
    if n <= config.max_order2_size:
        return None
    if n > config.max_fft_size:
        return (
            f"FFT size {n} > {config.max_fft_size}: past the order-4 split's {config.max_dense_outer}^2 rows "
            f"of {config.inner_size} samples"
        )
    if n < 2 * config.inner_size:
        return (
            f"FFT size {n} is past max_order2_size={config.max_order2_size} but below two rows of "
            f"inner_size={config.inner_size}, the least the order-3 split takes"
        )
    return None


def smallest_fft_size(n: int, compiled: bool) -> int:
    """The power-of-two FFT size the kernels use for a circular size of at least ``n``."""
    size = max(next_pow2(n), 4)
    return max(size, MIN_COMPILED_FFT_SIZE) if compiled else size
