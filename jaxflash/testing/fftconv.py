"""FFT convolution test cases shared by the tests, the bench and the GPU check: inputs, the float64
answer, and the check of an implementation's output and gradients against the reference."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import jaxflash
from jaxflash.testing import random_normal


def random_inputs(
    key: jax.Array,
    batch: int,
    seq: int,
    chans: int,
    kernel_len: int,
    *,
    dtype: Any = jnp.float32,
    gated: bool = True,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array | None, jax.Array | None]:
    """``(u, k, skip, pre_gate, post_gate)`` of unit scale (gates None when not ``gated``): normal ``u``,
    skip and gates, and a kernel scaled by ``1/sqrt(kernel_len)`` so the output is of unit scale too."""
    ku, kk, ks, kp, kq = jax.random.split(key, 5)
    u = random_normal(ku, (batch, seq, chans), dtype)
    k = random_normal(kk, (kernel_len, chans), dtype, scale=kernel_len**-0.5)
    skip = random_normal(ks, (chans,), dtype)
    pre = random_normal(kp, (batch, seq, chans), dtype) if gated else None
    post = random_normal(kq, (batch, seq, chans), dtype) if gated else None
    return u, k, skip, pre, post


def float64_fftconv(
    u: Any,
    k: Any,
    skip: Any = None,
    pre: Any = None,
    post: Any = None,
    *,
    fft_size: int,
    keep: int | None = None,
) -> np.ndarray:
    """float64 NumPy: the size-``fft_size`` rfft convolution of ``pre * u`` with ``k`` (only the rfft bins
    below ``keep`` when given), first ``seq`` samples, plus ``skip * x``, times ``post``."""
    u, k = _float64(u), _float64(k)
    x = u if pre is None else u * _float64(pre)
    kf = np.fft.rfft(k, n=fft_size, axis=0)
    if keep is not None:
        kf[keep:] = 0
    y = np.fft.irfft(np.fft.rfft(x, n=fft_size, axis=1) * kf[None], n=fft_size, axis=1)[:, : u.shape[1]]
    if skip is not None:
        y = y + _float64(skip) * x
    return y if post is None else y * _float64(post)


def _float64(a: Any) -> np.ndarray:
    return np.asarray(a).astype(np.float64)  # bf16 included (ml_dtypes casts)


def flashfftconv_inputs(
    batch: int, seq: int, chans: int, gated: bool, seed: int = 0
) -> dict[str, np.ndarray]:
    """FlashFFTConv's test inputs in float32 NumPy: ``0.02 * randn`` signals, a kernel with an
    ``exp(-0.1 t)`` decay window, and normal gates when ``gated`` (keys ``u, k, pre, post``)."""
    rng = np.random.default_rng(seed)
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


def check_against_reference(
    seq: int,
    dtype: str,
    *,
    gated: bool,
    causal: bool = True,
    keep: int | None = None,
    implementation: str = "pallas",
    config: Any = None,
    batch: int = 4,
    chans: int = 48,
) -> dict[str, Any]:
    """Output and gradients of ``jaxflash.fftconv(implementation=...)`` on FlashFFTConv's inputs against
    the f32 reference; returns the relative errors, raises AssertionError past the tolerance."""
    x = flashfftconv_inputs(batch, seq, chans, gated, seed=seq)
    k = x["k"]
    if not causal:
        k = np.concatenate([k, k[::-1]], axis=0)
    skip = np.random.default_rng(1).standard_normal(chans).astype(np.float32)
    args = [jnp.asarray(x["u"], dtype), jnp.asarray(k, dtype), jnp.asarray(skip)]
    gates = [jnp.asarray(x[g], dtype) for g in ("pre", "post")] if gated else [None, None]

    def f(impl, impl_config):
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
                config=impl_config,
            )

        return g

    diff = args + [g for g in gates if g is not None]
    y, vjp = jax.vjp(f(implementation, config), *diff)
    # The reference in f32 from the same (possibly bf16) inputs.
    diff32 = [a.astype(jnp.float32) for a in diff]
    y_ref, vjp_ref = jax.vjp(f("reference", None), *diff32)
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
