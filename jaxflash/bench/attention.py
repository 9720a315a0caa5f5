"""Attention: jaxflash's chunked XLA path and Pallas kernels against ``jax.nn.dot_product_attention``,
the naive reference and tokamax (speed-ups are over jaxflash xla: a peer at 0.5x takes twice as
long), and the compiled kernels' checks for ``make gpu-check``.

CPU suite: batch 1, 8 heads, head dim 64, f32, causal, q_len = kv_len
in 1K, 4K, 16K, 64K; time and peak memory. On an accelerator the suite switches to the
FlashAttention-3 benchmark shapes (bf16, head dim 64 and 128, seq 512 to 16K with batch x seq =
16K, causal and not) and reports TFLOP/s next to ``jax.nn.dot_product_attention`` with cuDNN and XLA.

The GPU checks run :func:`jaxflash.testing.attention.check_case`, the body the tests share.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from jaxflash.bench.harness import Candidate, Case, GpuCheck, Suite
from jaxflash.testing.attention import AttentionCase

DEFAULT_SIZES = (1024, 4096, 16384, 65536)
QUICK_SIZES = (512, 1024)
# FlashAttention-3's sweep; `make gpu-check` times GPU_SIZES, a subset that fits its ~1.5 minutes.
FA3_SIZES = (512, 1024, 2048, 4096, 8192, 16384)
GPU_SIZES = (2048, 16384)


def _dense_guard(name: str, batch: int, heads: int, n: int) -> None:
    """Skips a candidate that materialises the ``[batch, heads, n, n]`` f32 logits (twice: logits and
    probabilities) when that would take more than 60% of this machine's memory, rather than let the
    kernel's OOM killer end the whole run."""
    need = 2 * batch * heads * n * n * 4
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if need > 0.6 * total:
        raise NotImplementedError(
            f"{name} materialises the {n}x{n} attention matrix: ~{need / 2**30:.0f} GiB, "
            f"over 60% of this machine's {total / 2**30:.0f} GiB"
        )


# --- the timing suite ------------------------------------------------------------------------------------


def _attention_flops(batch: int, seq: int, heads: int, head_dim: int, causal: bool) -> float:
    flops = 4.0 * batch * seq * seq * heads * head_dim
    return flops / 2 if causal else flops


def _cases(sizes: Sequence[int] | None, quick: bool) -> list[Case]:
    import jax

    if jax.default_backend() == "cpu":
        return _cpu_cases(sizes or (QUICK_SIZES if quick else DEFAULT_SIZES))
    return _gpu_cases(sizes or (GPU_SIZES[:1] if quick else FA3_SIZES))


def _inputs(batch: int, seq: int, heads: int, head_dim: int, dtype: str):
    import jax

    from jaxflash.testing import random_normal

    kq, kk, kv = jax.random.split(jax.random.key(seq), 3)
    shape = (batch, seq, heads, head_dim)
    return random_normal(kq, shape, dtype), random_normal(kk, shape, dtype), random_normal(kv, shape, dtype)


def _cpu_cases(sizes: Sequence[int]) -> list[Case]:
    import jax

    import jaxflash

    cases = []
    batch, heads, head_dim, dtype = 1, 8, 64, "float32"
    for n in sizes:

        def ours(n=n):
            q, k, v = _inputs(batch, n, heads, head_dim, dtype)
            f = jax.jit(lambda q, k, v: jaxflash.attention(q, k, v, causal=True, implementation="xla"))
            return lambda: f(q, k, v)

        def jax_nn(n=n):
            _dense_guard("jax.nn.dot_product_attention (XLA)", batch, heads, n)
            q, k, v = _inputs(batch, n, heads, head_dim, dtype)
            f = jax.jit(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True))
            return lambda: f(q, k, v)

        def naive(n=n):
            _dense_guard("the naive reference", batch, heads, n)
            q, k, v = _inputs(batch, n, heads, head_dim, dtype)
            f = jax.jit(lambda q, k, v: jaxflash.attention(q, k, v, causal=True, implementation="reference"))
            return lambda: f(q, k, v)

        def tokamax_impl(name, n=n):
            def setup():
                import tokamax

                if name == "xla":
                    _dense_guard("tokamax xla", batch, heads, n)

                q, k, v = _inputs(batch, n, heads, head_dim, dtype)
                f = jax.jit(
                    lambda q, k, v: tokamax.dot_product_attention(
                        q, k, v, is_causal=True, implementation=name
                    )
                )
                return lambda: f(q, k, v)

            return setup

        candidates = (
            Candidate("jaxflash xla", ours),
            Candidate("jax.nn.dot_product_attention", jax_nn, peer=True),
            Candidate("naive reference", naive, peer=True),
            Candidate("tokamax xla", tokamax_impl("xla"), requires=("tokamax",), peer=True),
            Candidate("tokamax xla_chunked", tokamax_impl("xla_chunked"), requires=("tokamax",), peer=True),
        )
        cases.append(
            Case(
                config={
                    "seq": n,
                    "batch": batch,
                    "heads": heads,
                    "head_dim": head_dim,
                    "dtype": dtype,
                    "causal": True,
                },
                candidates=candidates,
                baseline="jaxflash xla",
                flops=_attention_flops(batch, n, heads, head_dim, True),
            )
        )
    return cases


def _gpu_cases(sizes: Sequence[int]) -> list[Case]:
    """FlashAttention-3 benchmark shapes: bf16, batch x seq = 16K, heads x head_dim = 2048; fwd + bwd."""
    import jax
    import jax.numpy as jnp

    import jaxflash

    cases = []
    for head_dim in (64, 128):
        heads = 2048 // head_dim
        for causal in (False, True):
            for n in sizes:
                batch = max(1, 16384 // n)

                def fwd_bwd(fn, n=n, batch=batch, heads=heads, head_dim=head_dim):
                    def setup():
                        q, k, v = _inputs(batch, n, heads, head_dim, "bfloat16")
                        loss = lambda q, k, v: jnp.sum(fn(q, k, v).astype(jnp.float32))
                        g = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
                        return lambda: g(q, k, v)

                    return setup

                ours = lambda q, k, v, c=causal: jaxflash.attention(
                    q, k, v, causal=c, implementation="pallas"
                )
                default = lambda q, k, v, c=causal: jaxflash.attention(q, k, v, causal=c)
                cudnn = lambda q, k, v, c=causal: jax.nn.dot_product_attention(
                    q, k, v, is_causal=c, implementation="cudnn"
                )
                xla = lambda q, k, v, c=causal: jax.nn.dot_product_attention(
                    q, k, v, is_causal=c, implementation="xla"
                )
                flops = _attention_flops(batch, n, heads, head_dim, causal) * 3.5  # fwd + bwd (2.5x fwd)
                cases.append(
                    Case(
                        config={
                            "seq": n,
                            "batch": batch,
                            "heads": heads,
                            "head_dim": head_dim,
                            "dtype": "bfloat16",
                            "causal": causal,
                            "pass": "fwd+bwd",
                        },
                        candidates=(
                            Candidate("jaxflash default (cudnn route)", fwd_bwd(default)),
                            Candidate("jaxflash pallas", fwd_bwd(ours)),
                            Candidate("jax.nn cudnn", fwd_bwd(cudnn), peer=True),
                            Candidate("jax.nn xla", fwd_bwd(xla), peer=True),
                        ),
                        baseline="jax.nn cudnn",
                        flops=flops,
                    )
                )
    return cases


SUITE = Suite(
    name="attention",
    description="causal attention: chunked XLA / Pallas FlashAttention vs jax.nn, naive and tokamax",
    cases=_cases,
)


# --- GPU checks ------------------------------------------------------------------------------------------


def _gpu_check(case: AttentionCase, tol_scale: float = 1.0) -> GpuCheck:
    def run() -> dict[str, Any]:
        import jax

        from jaxflash.testing import tolerance
        from jaxflash.testing.attention import check_case

        errors = check_case(case, "pallas", jax.random.key(0), tol_scale=tol_scale)
        return {
            "max_abs_err": errors["out"],
            "lse_err": errors["lse"],
            **tolerance(case.dtype, scale=tol_scale),
        }

    parts = [
        f"{case.dtype} b{case.batch} q{case.q_len} kv{case.kv_len} h{case.q_heads}/{case.kv_heads} "
        f"d{case.head_dim}"
    ]
    parts += [
        name
        for name, on in (
            ("causal", case.causal),
            ("window", case.window),
            ("segments", case.segments),
            ("kv_lengths", case.kv_lengths),
            ("block_mask", case.block_mask),
            ("soft_cap", case.logits_soft_cap),
        )
        if on
    ]
    return GpuCheck("attention fwd+bwd " + " ".join(parts), run)


# Compiled kernels with their default tiles (tiles=None) and explicit 64-row tiles. f32 cases get 4x the
# CPU tolerance (the GPU sums ~1000 keys in another order and its exp differs in the last bits); bf16 2x.
GPU_CHECKS = (
    _gpu_check(
        AttentionCase(batch=2, q_len=1000, kv_len=1000, q_heads=4, kv_heads=4, head_dim=64, tiles=None),
        tol_scale=4.0,
    ),
    _gpu_check(
        AttentionCase(
            batch=2,
            q_len=539,
            kv_len=1000,
            q_heads=8,
            kv_heads=2,
            head_dim=128,
            causal=True,
            dtype="bfloat16",
            tiles=None,
        ),
        tol_scale=2.0,
    ),
    _gpu_check(
        AttentionCase(
            batch=1,
            q_len=777,
            kv_len=777,
            q_heads=4,
            kv_heads=1,
            head_dim=80,
            causal=True,
            window=(100, 0),
            tiles=(64, 64),
        ),
        tol_scale=4.0,
    ),
    _gpu_check(
        AttentionCase(
            batch=2,
            q_len=512,
            kv_len=512,
            q_heads=2,
            kv_heads=2,
            head_dim=256,
            segments=3,
            kv_lengths=(300, 512),
            dtype="bfloat16",
            tiles=None,
        ),
        tol_scale=2.0,
    ),
    _gpu_check(
        AttentionCase(
            batch=1,
            q_len=1024,
            kv_len=1024,
            q_heads=2,
            kv_heads=2,
            head_dim=64,
            block_mask=(16, 16),
            logits_soft_cap=5.0,
            tiles=None,
        ),
        tol_scale=4.0,
    ),
)
