"""``make demo``: run what jaxflash has, end to end, on real-size inputs, and say what was done.

Until the training job exists (``python -m jaxflash.train``), the main job is this tour: the device
and the op registry, then each public op on real-size inputs through the default dispatch, checked
against its reference, then one benchmark suite through the harness. Every step prints what it
computed and how it was checked; a step that cannot run says why, and the run fails if one errors.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

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


def _bench(quick: bool) -> str:
    from jaxflash.bench.harness import markdown_table, run_suite
    from jaxflash.bench.suites import get_suite

    sizes = [256] if quick else [1024]
    results = run_suite(get_suite("matmul"), sizes=sizes, repeats=5, memory=False, log=lambda s: None)
    return "benchmark harness, suite 'matmul' (CPU timings when on CPU):\n" + markdown_table(results)


STEPS: list[tuple[str, Step]] = [
    ("environment and op registry", _environment),
    ("benchmark harness", _bench),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jaxflash.demo", description=__doc__.split("\n")[0])
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
