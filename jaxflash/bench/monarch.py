"""Monarch: ``MonarchLinear`` against a dense matmul of the same size.

For ``d`` in (1024, 4096, 16384), sqrt(d) blocks, 4096 rows of f32 (bf16 on a GPU):
the forward pass and the forward plus backward pass (gradients for the input and the weights). A Monarch
product costs ``4 d sqrt(d)`` FLOPs per row against ``2 d^2`` dense, a FLOP ratio of ``sqrt(d) / 2``
(16, 32, 64); the ``speedup`` column is the realized time ratio. The GFLOP/s column counts the dense FLOPs
for every candidate, so it reads as an effective rate. Where ``d <= 4096`` the dense baseline
multiplies by the densified Monarch matrix, so both compute the same function and the error
column checks both against a float64 evaluation.

Peer: m2's fast path (two ``torch.bmm`` with the block index leading), when torch is installed.
"""

# ruff: noqa: E741  (the m2 factor-shape letters k, q, p, l, s, r)

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np

from jaxflash.bench.harness import Candidate, Case, GpuCheck, Suite
from jaxflash.testing.monarch import check_against_reference, float64_monarch, square_factors

DEFAULT_SIZES = (1024, 4096, 16384)
QUICK_SIZES = (256, 1024)
GPU_SIZES = (1024, 4096, 16384)
ROWS = 4096
QUICK_ROWS = 512
# Above this the float64 check and the densified baseline cost more than the benchmark itself.
_MAX_CHECKED_D = 4096


def _cases(sizes: Sequence[int] | None, quick: bool) -> list[Case]:
    import jax

    cases = []
    rows = QUICK_ROWS if quick else ROWS
    # The GPU comparison is in bf16; m2's torch form runs on the host CPU there, so it is left out.
    on_cpu = jax.default_backend() == "cpu"
    dtype = "float32" if on_cpu else "bfloat16"
    for d in sizes or (QUICK_SIZES if quick else DEFAULT_SIZES):
        b = math.isqrt(d)
        if b * b != d:
            raise ValueError(f"the monarch suite uses sqrt(d) blocks; d={d} is not a perfect square")
        seed = d
        dense_flops = 2.0 * rows * d * d
        monarch_flops = 2.0 * rows * 2 * b**3
        checked = d <= _MAX_CHECKED_D
        for mode in ("fwd", "fwd+bwd"):
            factor = 1.0 if mode == "fwd" else 3.0  # backward: one product for dx, one for dW
            config = {
                "d": d,
                "blocks": b,
                "rows": rows,
                "dtype": dtype,
                "pass": mode,
                "FLOP ratio": f"{dense_flops / monarch_flops:.0f}x",
            }
            candidates = [
                Candidate("dense jnp.matmul", _dense_setup(d, rows, seed, mode, checked, dtype)),
                Candidate("MonarchLinear xla", _monarch_setup(d, rows, seed, mode, "xla", dtype)),
                Candidate("MonarchLinear pallas", _monarch_setup(d, rows, seed, mode, "pallas", dtype)),
            ]
            if on_cpu:
                torch_setup = _torch_setup(d, rows, seed, mode)
                candidates.append(Candidate("m2 torch.bmm", torch_setup, requires=("torch",), peer=True))
            reference = None
            if checked and mode == "fwd":
                reference = _reference(d, rows, seed)
            cases.append(
                Case(
                    config=config,
                    candidates=tuple(candidates),
                    baseline="dense jnp.matmul",
                    reference=reference,
                    flops=factor * dense_flops,
                )
            )
    return cases


def _inputs(d: int, rows: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed + 1).standard_normal((rows, d), dtype=np.float32)


def _reference(d: int, rows: int, seed: int):
    def run() -> np.ndarray:
        return float64_monarch(_inputs(d, rows, seed), *square_factors(d, seed))

    return run


def _dense_setup(d: int, rows: int, seed: int, mode: str, densify: bool, dtype: str = "float32"):
    def setup():
        import jax
        import jax.numpy as jnp

        from jaxflash import monarch

        x = jnp.asarray(_inputs(d, rows, seed), dtype)
        if densify:
            w = monarch.to_dense(*(jnp.asarray(a) for a in square_factors(d, seed))).T  # (in, out)
        else:
            w = jax.random.normal(jax.random.key(seed), (d, d), jnp.float32) * d**-0.5
        w = w.astype(dtype)
        if mode == "fwd":
            f = jax.jit(jnp.matmul)
            return lambda: f(x, w)
        ct = jnp.ones((rows, d), dtype)
        g = jax.jit(jax.grad(lambda x, w: jnp.vdot(jnp.matmul(x, w), ct), argnums=(0, 1)))
        return lambda: g(x, w)

    return setup


def _monarch_setup(d: int, rows: int, seed: int, mode: str, implementation: str, dtype: str = "float32"):
    def setup():
        import jax
        import jax.numpy as jnp
        from flax import nnx

        from jaxflash.models.monarch import MonarchLinear

        layer = MonarchLinear(d, d, use_bias=False, implementation=implementation, rngs=nnx.Rngs(0))
        w1, w2 = square_factors(d, seed)
        layer.w1.set_value(jnp.asarray(w1, dtype))  # replaces the array (and its dtype), unlike [...] =
        layer.w2.set_value(jnp.asarray(w2, dtype))
        graphdef, params = nnx.split(layer)
        x = jnp.asarray(_inputs(d, rows, seed), dtype)

        def forward(params, x):
            return nnx.merge(graphdef, params)(x)

        # Fail here (reported as skipped) when the implementation cannot serve this device.
        jax.eval_shape(forward, params, x)
        if mode == "fwd":
            f = jax.jit(forward)
            return lambda: f(params, x)
        ct = jnp.ones((rows, d), dtype)
        g = jax.jit(jax.grad(lambda params, x: jnp.vdot(forward(params, x), ct), argnums=(0, 1)))
        return lambda: g(params, x)

    return setup


def _torch_setup(d: int, rows: int, seed: int, mode: str):
    def setup():
        import torch

        w1, w2 = (torch.from_numpy(a) for a in square_factors(d, seed))
        k, q, p = w1.shape
        l, s, r = w2.shape
        x = torch.from_numpy(_inputs(d, rows, seed))
        w1t = w1.transpose(1, 2).contiguous()  # (k, p, q)
        w2t = w2.transpose(1, 2).contiguous()  # (l, r, s)

        def forward(x, w1t, w2t):
            h = torch.bmm(x.reshape(rows, k, p).transpose(0, 1), w1t)  # (k, B, q)
            h = h.transpose(0, 1).reshape(rows, r, l).permute(2, 0, 1)  # (l, B, r)
            return torch.bmm(h, w2t).permute(1, 2, 0).reshape(rows, s * l)

        if mode == "fwd":

            def run():
                with torch.no_grad():
                    return forward(x, w1t, w2t)

            return run
        xg, w1g, w2g = (a.clone().requires_grad_(True) for a in (x, w1t, w2t))

        def run_bwd():
            for a in (xg, w1g, w2g):
                a.grad = None
            forward(xg, w1g, w2g).sum().backward()
            return xg.grad

        return run_bwd

    return setup


SUITE = Suite(
    name="monarch",
    description="MonarchLinear (sqrt(d) blocks) vs a dense matmul of the same size, fwd and fwd+bwd, f32 "
    "(bf16 on a GPU)",
    cases=_cases,
)


# --- GPU checks: the compiled kernel against the dense reference -----------------------------------

_CHECKS = (
    # (name, w1 shape, w2 shape, rows, dtype, gradients too)
    ("f32, n=1024, 1000 rows (fwd+grads)", (32, 32, 32), (32, 32, 32), 1000, "float32", True),
    ("bf16, n=1024, 1000 rows (fwd+grads)", (32, 32, 32), (32, 32, 32), 1000, "bfloat16", True),
    ("f32, rectangular 1024 -> 2048", (64, 32, 16), (32, 64, 64), 512, "float32", True),
    ("f32, n=16384 (128 blocks), 256 rows", (128, 128, 128), (128, 128, 128), 256, "float32", False),
    ("bf16, n=4096, 4096 rows", (64, 64, 64), (64, 64, 64), 4096, "bfloat16", False),
)

GPU_CHECKS = tuple(
    GpuCheck(
        f"monarch fused kernel {name}",
        functools.partial(check_against_reference, w1, w2, rows, dtype, grads=grads),
    )
    for name, w1, w2, rows, dtype, grads in _CHECKS
)
