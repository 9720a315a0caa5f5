"""FFT convolution: jaxflash's XLA path (and Pallas kernel on GPU) against a plain ``jnp.fft``
convolution, ``scipy.signal.fftconvolve`` and ``torch.fft`` (issue 4).

CPU cases: batch 2, 128 channels, f32, causal kernel as long as the sequence. GPU cases (``GPU_SIZES``):
FlashFFTConv's README shapes, batch 64, 768 channels, gated (``post * conv(pre * u, k)``), bf16.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxflash.bench.harness import Candidate, Case, GpuCheck, Suite

DEFAULT_SIZES = (1024, 16384, 262144, 1048576)
QUICK_SIZES = (256, 1024)
CPU_BATCH, CPU_CHANNELS = 2, 128
# FlashFFTConv README (H100): B=64, H=768, gated, chosen to fit the ~1.5 minute GPU timing budget. The
# order-2 kernel serves FFT sizes up to MAX_FFT_SIZE (2048: L <= 1024); seq 2048, 4096 and 16384 run its
# order-3 form (4, 8 and 32 rows of 1024). At 16K the f32 intermediates of the order-3 path are ~26 GB.
GPU_SIZES = (256, 1024, 2048, 4096, 16384)
GPU_BATCH, GPU_CHANNELS = 64, 768


def _inputs(batch: int, seq: int, chans: int, gated: bool, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    # FlashFFTConv's test inputs: 0.02 * randn, the kernel with an exp(-0.1 t) decay window.
    out = dict(
        u=(0.02 * rng.standard_normal((batch, seq, chans))).astype(np.float32),
        k=(0.02 * rng.standard_normal((seq, chans)) * np.exp(-0.1 * np.arange(seq))[:, None]).astype(
            np.float32
        ),
    )
    if gated:
        out["pre"] = rng.standard_normal((batch, seq, chans)).astype(np.float32)
        out["post"] = rng.standard_normal((batch, seq, chans)).astype(np.float32)
    return out


def float64_conv(x: dict[str, np.ndarray], channel_chunk: int = 8) -> np.ndarray:
    """The exact answer in float64 NumPy, a few channels at a time to bound memory at 1M samples."""
    u, k = x["u"], x["k"]
    seq = u.shape[1]
    out = np.empty(u.shape, np.float64)
    for c0 in range(0, u.shape[2], channel_chunk):
        cs = slice(c0, c0 + channel_chunk)
        uc = u[:, :, cs].astype(np.float64)
        if "pre" in x:
            uc = uc * x["pre"][:, :, cs]
        kf = np.fft.rfft(k[:, cs].astype(np.float64), n=2 * seq, axis=0)
        y = np.fft.irfft(np.fft.rfft(uc, n=2 * seq, axis=1) * kf[None], n=2 * seq, axis=1)[:, :seq]
        out[:, :, cs] = y if "post" not in x else y * x["post"][:, :, cs]
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
        x = _inputs(CPU_BATCH, seq, CPU_CHANNELS, gated=False)
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
        x = _inputs(GPU_BATCH, seq, GPU_CHANNELS, gated=True)
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


def check_against_reference(
    seq: int,
    dtype: str,
    *,
    gated: bool,
    causal: bool = True,
    keep: int | None = None,
    implementation: str = "pallas",
    batch: int = 4,
    chans: int = 48,
) -> dict[str, Any]:
    """Output and gradients of ``implementation`` against the f32 reference; raises AssertionError."""
    import jax
    import jax.numpy as jnp

    import jaxflash

    x = _inputs(batch, seq, chans, gated, seed=seq)
    k = x["k"]
    if not causal:
        k = np.concatenate([k, k[::-1]], axis=0)
    skip = np.random.default_rng(1).standard_normal(chans).astype(np.float32)
    args = [jnp.asarray(x["u"], dtype), jnp.asarray(k, dtype), jnp.asarray(skip)]
    gates = [jnp.asarray(x[g], dtype) for g in ("pre", "post")] if gated else [None, None]

    def f(impl):
        def g(u, k, skip, *gs):
            pre, post = gs if gs else (None, None)
            return jaxflash.fftconv(
                u,
                k,
                skip=skip,
                pre_gate=pre,
                post_gate=post,
                causal=causal,
                keep_frequencies=keep,
                implementation=impl,
            )

        return g

    diff = args + [g for g in gates if g is not None]
    y, vjp = jax.vjp(f(implementation), *diff)
    # The reference in f32 from the same (possibly bf16) inputs.
    diff32 = [a.astype(jnp.float32) for a in diff]
    y_ref, vjp_ref = jax.vjp(f("reference"), *diff32)
    cot = jax.random.normal(jax.random.key(0), y.shape, jnp.float32)
    grads = vjp(cot.astype(y.dtype))
    grads_ref = vjp_ref(cot)
    # Unit-free errors: each compared relative to the largest magnitude of its reference. f32 runs
    # IEEE f32 matmuls; bf16 rounds the matmul operands at each of the four DFT stages.
    rel = 1e-3 if dtype == "float32" else 4e-2
    report: dict[str, Any] = {"rel_tol": rel}
    names = ["y", "du", "dk", "dskip", "dpre", "dpost"]
    for name, a, b in zip(names, [y, *grads], [y_ref, *grads_ref], strict=False):
        a64 = np.asarray(jnp.asarray(a, jnp.float32), np.float64)
        b64 = np.asarray(b, np.float64)
        err = float(np.max(np.abs(a64 - b64)) / max(np.max(np.abs(b64)), 1e-30))
        report[f"{name}_rel_err"] = err
        if not np.isfinite(err) or err > rel:
            raise AssertionError(
                f"fftconv {implementation} {seq=} {dtype=} {gated=} {causal=} {keep=}: {name} relative "
                f"error {err:.3g} > {rel:g}"
            )
    return report


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
