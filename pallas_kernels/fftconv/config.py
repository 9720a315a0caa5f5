"""Launch parameters of the FFT convolution kernels and the FFT sizes they serve by default."""

from __future__ import annotations

import dataclasses

from jaxflash.utils import check_int

# Largest FFT size of the order-2 kernel; larger sizes use orders 3/4. Capped at 2048: a program holds
# `block_rows` complex N1 x N2 planes in registers, and 8192 did not compile in minutes on an H200
# (Triton spills the planes; see BENCHMARKS.md). FlashFFTConv itself switches to order 3 at 4K.
MAX_FFT_SIZE = 2048
# Orders 3/4: rows of INNER_FFT_SIZE samples (a complex row doubles the on-chip working set of a real
# one, so half the order-2 cap). Up to MAX_DENSE_OUTER rows the outer DFT is one dense matmul (order 3),
# past it two (order 4), so at most MAX_DENSE_OUTER^2 rows: FFT sizes up to 4M, FlashFFTConv's range.
INNER_FFT_SIZE = 1024
MAX_DENSE_OUTER = 64
MAX_PALLAS_FFT_SIZE = INNER_FFT_SIZE * MAX_DENSE_OUTER**2
# Triton's tl.dot needs every matmul dimension >= 16, so N1 and N2 are at least 16 when compiled.
MIN_COMPILED_FFT_SIZE = 256


@dataclasses.dataclass(frozen=True)
class FFTConvConfig:
    """Launch parameters of the kernels; reach them through ``jaxflash.fftconv(..., config=...)``.

    Attributes:
      block_rows: batch rows (signals of one channel) handled by one program of the order-2 kernel; a
        power of two. The kernel spectrum and DFT matrices are loaded once per program and reused.
      num_warps: Triton warps per program; None: 4 up to FFT size 1024, else 8.
      num_stages: Triton software-pipelining stages (>= 1).
      min_dim: smallest matmul dimension of a plan (rows and kept columns are padded up to it), a power of
        two; None: 16 when compiled (Triton's tl.dot), 1 when interpreted. Tests set 16 to run the
        compiled plan's shapes in interpret mode.
      max_order2_size: largest FFT size done by the order-2 kernel (a power of two >= 4); larger sizes
        use orders 3/4.
      inner_size: samples per row of the order-3/4 split (a power of two >= 4).
      max_dense_outer: most rows whose outer DFT is one dense stage (order 3), a power of two >= 2; more
        use two (order 4), up to ``max_dense_outer**2`` rows. Tests set these three small to run orders
        3 and 4 at small sizes.
      row_block_rows: batch rows per program of the order-3/4 row kernel (a power of two). 2 keeps its
        Triton IR no larger than the order-2 kernel's at N = 2048, which compiled on an H200.
    """

    block_rows: int = 4
    num_warps: int | None = None
    num_stages: int = 1
    min_dim: int | None = None
    max_order2_size: int = MAX_FFT_SIZE
    inner_size: int = INNER_FFT_SIZE
    max_dense_outer: int = MAX_DENSE_OUTER
    row_block_rows: int = 2

    def __post_init__(self):
        for name, minimum in (
            ("block_rows", 1),
            ("max_order2_size", 4),
            ("inner_size", 4),
            ("max_dense_outer", 2),
            ("row_block_rows", 1),
        ):
            check_int(f"FFTConvConfig.{name}", getattr(self, name), minimum=minimum, power_of_two=True)
        if self.min_dim is not None:
            check_int("FFTConvConfig.min_dim", self.min_dim, power_of_two=True)
        if self.num_warps is not None:
            check_int("FFTConvConfig.num_warps", self.num_warps)
        check_int("FFTConvConfig.num_stages", self.num_stages)

    @property
    def max_fft_size(self) -> int:
        """The largest FFT size these parameters serve: ``max_dense_outer**2`` rows of ``inner_size``."""
        return max(self.max_order2_size, self.inner_size * self.max_dense_outer**2)
