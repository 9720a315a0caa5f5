"""``python -m jaxflash.demo ops``: a tour of the kernels on real-size inputs, saying what was done.

(``make demo`` trains a model: ``python -m jaxflash.train demo``.) The tour: the device and the op
registry, then each public op on real-size inputs through the default dispatch, checked against its
reference, then one benchmark suite through the harness. Every step prints what it computed and how it
was checked; a step that cannot run says why, and the run fails if one errors.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

import numpy as np

Step = Callable[[bool], str]


def _environment(quick: bool) -> str:
    import jax

    import jaxflash

    lines = [f"jax {jax.__version__} on {jax.default_backend()}: {jax.devices()}"]
    for op, impls in jaxflash.supported().items():
        lines.append(f"{op}: registered {jaxflash.registered(op)[op]}, runnable here {impls}")
    if len(lines) == 1:
        lines.append("no ops are registered yet")
    return "\n".join(lines)


def _timed(fn, *args):
    import jax

    jax.block_until_ready(fn(*args))  # compile
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return out, time.perf_counter() - start


def _attention(quick: bool) -> str:
    import jax
    import jax.numpy as jnp

    import jaxflash

    seq = 512 if quick else 4096
    kq, kk, kv = jax.random.split(jax.random.key(0), 3)
    shape = (1, seq, 8, 64)
    q, k, v = (jax.random.normal(key, shape, jnp.float32) for key in (kq, kk, kv))
    f = jax.jit(lambda q, k, v: jaxflash.attention(q, k, v, causal=True))
    out, seconds = _timed(f, q, k, v)
    # The naive form on the last 64 queries: the rows that see every key.
    ref = jaxflash.attention(q[:, -64:], k, v, causal=True, implementation="reference")
    err = float(jnp.max(jnp.abs(out[:, -64:] - ref)))
    g = jax.jit(jax.grad(lambda q, k, v: jaxflash.attention(q, k, v, causal=True).sum(), argnums=(0, 1, 2)))
    grads, grad_seconds = _timed(g, q, k, v)
    finite = all(bool(jnp.isfinite(x).all()) for x in grads)
    return (
        f"causal attention, batch 1, {seq} tokens, 8 heads, head dim 64, f32, default implementation: "
        f"{seconds * 1e3:.1f} ms forward, {grad_seconds * 1e3:.1f} ms forward+backward "
        f"(gradients finite: {finite}); max abs error against the naive form on the last 64 queries {err:.2e}"
    )


def _fftconv(quick: bool) -> str:
    import jax
    import jax.numpy as jnp

    import jaxflash

    seq = 1024 if quick else 16384
    rng = np.random.default_rng(0)
    u = rng.standard_normal((2, seq, 128)).astype(np.float32)
    k = (rng.standard_normal((seq, 128)) * np.exp(-np.arange(seq) / 256)[:, None]).astype(np.float32)
    out, seconds = _timed(jax.jit(jaxflash.fftconv), jnp.asarray(u), jnp.asarray(k))
    n = 2 * seq
    exact = np.fft.irfft(np.fft.rfft(u.astype(np.float64), n, axis=1) * np.fft.rfft(k, n, axis=0), n, axis=1)
    err = float(np.max(np.abs(np.asarray(out, np.float64) - exact[:, :seq])))
    return (
        f"causal FFT convolution, batch 2, {seq} tokens, 128 channels, kernel as long as the sequence, f32: "
        f"{seconds * 1e3:.1f} ms; max abs error against float64 NumPy {err:.2e}"
    )


def _monarch(quick: bool) -> str:
    import jax
    import jax.numpy as jnp

    import jaxflash

    d, rows = (256, 512) if quick else (4096, 4096)
    nb = int(round(d**0.5))
    w1 = jax.random.normal(jax.random.key(1), (nb, nb, nb), jnp.float32) / nb**0.5
    w2 = jax.random.normal(jax.random.key(2), (nb, nb, nb), jnp.float32) / nb**0.5
    x = jax.random.normal(jax.random.key(3), (rows, d), jnp.float32)
    out, seconds = _timed(jax.jit(jaxflash.monarch_matmul), x, w1, w2)
    dense = jaxflash.monarch.to_dense(w1, w2)
    ref, dense_seconds = _timed(jax.jit(lambda x, m: x @ m.T), x, dense)
    err = float(jnp.max(jnp.abs(out - ref)))
    return (
        f"Monarch product, d={d} with {nb} blocks, {rows} rows, f32: {seconds * 1e3:.1f} ms against "
        f"{dense_seconds * 1e3:.1f} ms for the same matrix dense ({dense_seconds / seconds:.1f}x); "
        f"max abs difference {err:.2e}"
    )


def _weak_supervision(quick: bool) -> str:
    from jaxflash import ws

    data = ws.load_youtube_spam()
    model = ws.FlyingSquid(cardinality=2, solve_method="triplet_median")
    model.fit(data["L_train"], class_balance=np.array([0.4, 0.6]))
    metrics = model.score(data["L_test"], data["Y_test"], metrics=("accuracy", "f1"))
    return (
        f"FlyingSquid (triplet_median, class balance [0.4, 0.6]) on the YouTube spam label matrices "
        f"({data['L_train'].shape[0]} train comments, 10 LFs): test accuracy {metrics['accuracy']:.3f}, "
        f"F1 {metrics['f1']:.3f} (published: 0.836, 0.816)"
    )


def _bench(quick: bool) -> str:
    from jaxflash.bench.harness import markdown_table, run_suite
    from jaxflash.bench.suites import get_suite

    sizes = [256] if quick else [1024]
    results = run_suite(get_suite("matmul"), sizes=sizes, repeats=5, memory=False, log=lambda s: None)
    return "benchmark harness, suite 'matmul' (CPU timings when on CPU):\n" + markdown_table(results)


STEPS: list[tuple[str, Step]] = [
    ("environment and op registry", _environment),
    ("attention", _attention),
    ("FFT convolution", _fftconv),
    ("Monarch matmul", _monarch),
    ("weak supervision", _weak_supervision),
    ("benchmark harness", _bench),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jaxflash.demo", description=__doc__.split("\n")[0])
    parser.add_argument("tour", nargs="?", choices=["ops"], default="ops", help="the tour to run (ops)")
    parser.add_argument("--quick", action="store_true", help="small sizes (for tests)")
    args = parser.parse_args(argv)
    failures = 0
    for title, step in STEPS:
        start = time.perf_counter()
        print(f"== {title}", flush=True)
        try:
            print(step(args.quick))
            print(f"   ({time.perf_counter() - start:.1f} s)\n", flush=True)
        except NotImplementedError as e:
            print(f"   not available here: {e}\n", flush=True)
        except Exception as e:
            failures += 1
            print(f"   FAILED: {type(e).__name__}: {e}\n", flush=True)
    done = len(STEPS) - failures
    print(f"demo: {done} of {len(STEPS)} steps completed" + (f", {failures} failed" if failures else ""))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
