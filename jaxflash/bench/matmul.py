"""Dense matmul: XLA's ``jnp.matmul`` against NumPy's BLAS, the dense baseline structured matrices
(Monarch) are later compared with, and a check that the harness measures what a BLAS delivers."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from jaxflash.bench.harness import Candidate, Case, Suite

DEFAULT_SIZES = (256, 1024, 2048)
QUICK_SIZES = (128, 256)
GPU_SIZES = (1024, 4096, 8192)
# Above this the float64 reference product on the host costs more than the timings themselves.
MAX_REFERENCE_N = 2048


def _cases(sizes: Sequence[int] | None, quick: bool) -> list[Case]:
    import jax
    import jax.numpy as jnp

    cases = []
    dtypes = ("float32", "bfloat16") if jax.default_backend() != "cpu" else ("float32",)
    for n in sizes or (QUICK_SIZES if quick else DEFAULT_SIZES):
        for dtype in dtypes:
            rng = np.random.default_rng(n)
            a64 = rng.standard_normal((n, n))
            b64 = rng.standard_normal((n, n))

            def jax_setup(n=n, dtype=dtype, a64=a64, b64=b64):
                a = jnp.asarray(a64, dtype)
                b = jnp.asarray(b64, dtype)
                f = jax.jit(jnp.matmul)
                return lambda: f(a, b)

            def numpy_setup(a64=a64, b64=b64):
                a = a64.astype(np.float32)
                b = b64.astype(np.float32)
                return lambda: a @ b

            candidates = [Candidate("jnp.matmul (XLA)", jax_setup)]
            if dtype == "float32":
                candidates.append(Candidate("numpy.matmul", numpy_setup, peer=True))
            cases.append(
                Case(
                    config={"n": n, "dtype": dtype},
                    candidates=tuple(candidates),
                    baseline="numpy.matmul" if dtype == "float32" else "jnp.matmul (XLA)",
                    reference=(lambda a64=a64, b64=b64: a64 @ b64) if n <= MAX_REFERENCE_N else None,
                    flops=2.0 * n**3,
                )
            )
    return cases


SUITE = Suite(
    name="matmul",
    description="dense n x n matmul, XLA vs NumPy BLAS (the dense baseline of the Monarch suite)",
    cases=_cases,
)
