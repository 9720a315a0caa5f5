"""FFT convolution: jaxflash's XLA path (and Pallas kernel on GPU) against a plain ``jnp.fft``
convolution, ``scipy.signal.fftconvolve`` and ``torch.fft``.

CPU cases: batch 2, 128 channels, f32, causal kernel as long as the sequence. GPU cases (``GPU_SIZES``):
FlashFFTConv's README shapes, batch 64, 768 channels, gated (``post * conv(pre * u, k)``), bf16.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

from jaxflash.bench.harness import Candidate, Case, GpuCheck, Suite
from jaxflash.testing.fftconv import check_against_reference, flashfftconv_inputs, float64_fftconv

DEFAULT_SIZES = (1024, 16384, 262144, 1048576)
QUICK_SIZES = (256, 1024)
CPU_BATCH, CPU_CHANNELS = 2, 128
# FlashFFTConv's README shapes: B=64, H=768, gated. The order-2 kernel serves FFT sizes up to
# MAX_FFT_SIZE (2048: L <= 1024); seq 2048, 4096 and 16384 run its order-3 form (4, 8 and 32 rows of
# 1024). At 16K the f32 intermediates of the order-3 path are ~26 GB.
GPU_SIZES = (256, 1024, 2048, 4096, 16384)
GPU_BATCH, GPU_CHANNELS = 64, 768


def float64_conv(x: dict[str, np.ndarray], channel_chunk: int = 8) -> np.ndarray:
    """The exact answer in float64 NumPy, a few channels at a time to bound memory at 1M samples."""
    u = x["u"]
    out = np.empty(u.shape, np.float64)
    for c0 in range(0, u.shape[2], channel_chunk):
        cs = slice(c0, c0 + channel_chunk)
        gates = {name: x[name][:, :, cs] for name in ("pre", "post") if name in x}
        out[:, :, cs] = float64_fftconv(u[:, :, cs], x["k"][:, cs], **gates, fft_size=2 * u.shape[1])
    return out


def _jnp_fft_conv(u, k, pre=None, post=None):
    """The plain ``jnp.fft`` convolution a user would write: rfft along the sequence axis, size 2L."""
    import jax.numpy as jnp

    seq = u.shape[1]
    x = u.astype(jnp.float32) if pre is None else u.astype(jnp.float32) * pre
    y = jnp.fft.irfft(
        jnp.fft.rfft(x, n=2 * seq, axis=1) * jnp.fft.rfft(k.astype(jnp.float32), n=2 * seq, axis=0)[None],
        n=2 * seq,
        axis=1,
    )[:, :seq]
    return (y if post is None else y * post).astype(u.dtype)


def _jax_candidate(name: str, x: dict[str, np.ndarray], implementation: str | None, dtype: str = "float32"):
    def setup():
        import jax
        import jax.numpy as jnp

        import jaxflash

        args = {key: jnp.asarray(v, dtype) for key, v in x.items()}
        if implementation is None:
            f = jax.jit(_jnp_fft_conv)
        else:
            f = jax.jit(
                lambda u, k, pre=None, post=None: jaxflash.fftconv(
                    u, k, pre_gate=pre, post_gate=post, implementation=implementation
                )
            )
        return lambda: f(**args)

    return Candidate(name, setup)


def _scipy_candidate(x: dict[str, np.ndarray]) -> Candidate:
    def setup():
        from scipy import signal

        u, k = x["u"], x["k"]
        seq = u.shape[1]
        return lambda: signal.fftconvolve(u, k[None], mode="full", axes=1)[:, :seq]

    return Candidate("scipy.signal.fftconvolve", setup, requires=("scipy",), peer=True)


def _torch_candidate(x: dict[str, np.ndarray]) -> Candidate:
    def setup():
        import torch

        u, k = torch.from_numpy(x["u"]), torch.from_numpy(x["k"])
        seq = u.shape[1]

        def run():
            with torch.no_grad():
                uf = torch.fft.rfft(u, n=2 * seq, dim=1)
                kf = torch.fft.rfft(k, n=2 * seq, dim=0)
                return torch.fft.irfft(uf * kf[None], n=2 * seq, dim=1)[:, :seq]

        return run

    return Candidate("torch.fft (CPU)", setup, requires=("torch",), peer=True)


def _cases(sizes: Sequence[int] | None, quick: bool) -> list[Case]:
    import jax

    if jax.default_backend() != "cpu":
        return _gpu_cases(sizes or GPU_SIZES)
    cases = []
    for seq in sizes or (QUICK_SIZES if quick else DEFAULT_SIZES):
        x = flashfftconv_inputs(CPU_BATCH, seq, CPU_CHANNELS, gated=False)
        cases.append(
            Case(
                config={"batch": CPU_BATCH, "seq": seq, "channels": CPU_CHANNELS, "dtype": "f32"},
                candidates=(
                    _jax_candidate("jaxflash xla", x, "xla"),
                    _jax_candidate("jnp.fft", x, None),
                    _scipy_candidate(x),
                    _torch_candidate(x),
                ),
                baseline="jnp.fft",
                reference=lambda x=x: float64_conv(x),
            )
        )
    return cases


def _gpu_cases(sizes: Sequence[int]) -> list[Case]:
    cases = []
    for seq in sizes:
        x = flashfftconv_inputs(GPU_BATCH, seq, GPU_CHANNELS, gated=True)
        cases.append(
            Case(
                config={
                    "batch": GPU_BATCH,
                    "seq": seq,
                    "channels": GPU_CHANNELS,
                    "gated": True,
                    "dtype": "bf16",
                },
                candidates=(
                    _jax_candidate("jaxflash pallas", x, "pallas", "bfloat16"),
                    _jax_candidate("jaxflash xla", x, "xla", "bfloat16"),
                    _jax_candidate("jnp.fft", x, None, "bfloat16"),
                ),
                baseline="jnp.fft",
                # No float64 answer here (400M-element FFTs on the host); GPU_CHECKS check numerics.
            )
        )
    return cases


SUITE = Suite(
    name="fftconv",
    description="depthwise causal FFT convolution, jaxflash vs jnp.fft, scipy and torch.fft",
    cases=_cases,
)


# --- GPU checks: the compiled kernel against the reference ------------------------------------------

_CHECKS = (
    # (name, seq, dtype, options)
    ("f32 seq 1000 gated", 1000, "float32", dict(gated=True)),
    ("f32 seq 1024 ungated", 1024, "float32", dict(gated=False)),
    ("bf16 seq 256 gated", 256, "bfloat16", dict(gated=True)),
    ("bf16 seq 1024 gated", 1024, "bfloat16", dict(gated=True)),
    ("f32 circular kernel 2x512 gated", 512, "float32", dict(gated=True, causal=False)),
    ("f32 frequency-sparse 100 bins", 512, "float32", dict(gated=False, keep=100)),
    # Order 3 (FFT size > MAX_FFT_SIZE): 8 and 4 rows of 1024 around the complex-row kernel.
    ("f32 seq 3000 gated (order 3, FFT 8192)", 3000, "float32", dict(gated=True)),
    ("bf16 seq 2048 gated (order 3, FFT 4096)", 2048, "bfloat16", dict(gated=True)),
    # Order 4 (more than MAX_DENSE_OUTER rows): 128 rows of 1024 as a 16 x 8 outer split.
    ("f32 seq 40000 gated (order 4, FFT 131072)", 40000, "float32", dict(gated=True)),
)

GPU_CHECKS = tuple(
    GpuCheck(f"fftconv pallas {name}", functools.partial(check_against_reference, seq, dtype, **kw))
    for name, seq, dtype, kw in _CHECKS
)
