"""``make gpu-check``: every compiled Pallas kernel against its reference on the GPU, then GPU timings.

Written for the lent CUDA machine: no network, JAX for CUDA already installed, no pytest needed. It
runs, within a time budget (8 minutes by default):

1. the device report (what JAX sees);
2. every bench module's ``GPU_CHECKS``: the compiled kernel (``implementation="pallas"``) against
   its reference, forward and backward; a suite's checks share one child process (one JAX start), and
   a check that runs past ``--check-seconds`` is killed with it, the rest going on in a fresh one;
3. every bench suite on the GPU at the module's ``GPU_SIZES``, peers included where installed, each
   suite in its own process, killed after ``--suite-seconds``.

Work that the budget leaves no time for is listed as not run. Full results go to ``--out`` (or
``JAXFLASH_GPU_CHECK_OUT``) as JSON and markdown; a short table is printed last. The exit code is 1
when a check fails or errors, 2 when no GPU is found (unless ``--allow-cpu``, for testing the script).
"""

from __future__ import annotations

import argparse
import json
import os
import select
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Iterable
from typing import Any

from jaxflash.bench.harness import Result, machine_info, markdown_table, run_suite
from jaxflash.bench.suites import get_suite, suite_module

OUT_ENV_VAR = "JAXFLASH_GPU_CHECK_OUT"

# What a short GPU session should see first: the kernels with compiled checks not yet passed on a GPU
# (BENCHMARKS.md lists which), then attention, then the suites without kernels of their own.
GPU_ORDER = (
    "fftconv",
    "monarch",
    "diffusion",
    "attention",
    "matmul",
    "models",
    "train",
    "inference",
    "quant",
    "offload",
    "ws",
    "retrieval",
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jaxflash.bench.gpu_check", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--out", default=os.environ.get(OUT_ENV_VAR, "gpu-check-results"), help="results folder"
    )
    parser.add_argument(
        "--budget-seconds", type=float, default=480.0, help="stop starting new work after this"
    )
    parser.add_argument(
        "--suites", nargs="+", default=list(GPU_ORDER), help="bench modules to include, in this order"
    )
    parser.add_argument("--no-timings", action="store_true", help="correctness checks only")
    parser.add_argument(
        "--allow-cpu", action="store_true", help="run on a machine without a GPU (testing only)"
    )
    parser.add_argument(
        "--check-seconds",
        type=float,
        default=150.0,
        help="a check still running after this is killed (a compile that never ends)",
    )
    parser.add_argument(
        "--suite-seconds",
        type=float,
        default=240.0,
        help="each suite's timings run in their own process, killed after this",
    )
    parser.add_argument("--child-checks", nargs="+", metavar="SUITE INDEX", help=argparse.SUPPRESS)
    parser.add_argument("--child-timings", metavar="SUITE", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_checks:
        return _child_checks(args.child_checks[0], [int(i) for i in args.child_checks[1:]])
    if args.child_timings:
        return _child_timings(args.child_timings)
    start = time.monotonic()
    deadline = start + args.budget_seconds
    os.makedirs(args.out, exist_ok=True)

    import jax

    info = machine_info()
    gpus = [d for d in jax.devices() if d.platform == "gpu"]
    print(f"devices: {jax.devices()}", flush=True)
    print(f"jax {info['jax']}, jaxlib {info['jaxlib']}, backend {info['backend']}", flush=True)
    if not gpus and not args.allow_cpu:
        print("no GPU found: this check needs a CUDA machine (pass --allow-cpu to exercise the script)")
        _write(args.out, info, [], {}, "no GPU found")
        return 2

    checks: list[dict[str, Any]] = []
    for name in args.suites:
        module = suite_module(name)
        names = [check.name for check in getattr(module, "GPU_CHECKS", ())]
        results = run_checks_in_child(name, range(len(names)), args.check_seconds, deadline)
        for index, check_name in enumerate(names):
            row = dict(suite=name, check=check_name, **results[index])
            print(f"check {name}/{check_name}: {row['status']} {row.get('detail', '')}", flush=True)
            checks.append(row)

    timings: dict[str, Any] = {}
    if not args.no_timings:
        for name in args.suites:
            left = deadline - time.monotonic()
            if left <= 0:
                timings[name] = "not run: time budget spent"
                continue
            timings[name] = run_timings_in_child(name, min(args.suite_seconds, left))
            # Written as each suite ends, so a run stopped at its limit keeps what it finished.
            res = timings[name]
            print(f"## {name}\n\n{markdown_table(res) if isinstance(res, list) else res}\n", flush=True)
            _write(args.out, info, checks, timings, "partial: still running")

    _write(args.out, info, checks, timings, None)
    print("\n# jaxflash gpu-check\n")
    print(
        f"{info['devices'][0]}; jax {info['jax']}; {time.monotonic() - start:.0f} s; results in {args.out}/\n"
    )
    for name, res in timings.items():
        print(f"## {name}\n")
        print(markdown_table(res) if isinstance(res, list) else res)
        print()
    print("## kernel checks\n")
    print(_checks_table(checks) if checks else "no compiled kernels are registered yet")
    failed = [c for c in checks if c["status"] in ("FAIL", "ERROR")]
    print(f"\n{len(checks) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


_RESULT = "GPU_CHECK_RESULT "


def run_checks_in_child(
    suite: str, indices: Iterable[int], timeout: float, deadline: float
) -> dict[int, dict[str, Any]]:
    """``GPU_CHECKS[i]`` of ``suite`` for each of ``indices``, in a child process that runs them in turn.

    A check not done ``timeout`` seconds after the previous one ended (the first one's time includes the
    JAX start) is killed with its process, and the remaining checks go on in a fresh one; so does a
    process that dies: a compile that never ends costs one check, not the session, and the checks that
    pass share one JAX and CUDA start. Checks left when ``deadline`` (a ``time.monotonic()`` value) passes
    are reported as not run.
    """
    pending = list(indices)
    rows: dict[int, dict[str, Any]] = {}
    while pending:
        if time.monotonic() >= deadline:
            rows.update({i: dict(status="not run: time budget spent") for i in pending})
            break
        cmd = [sys.executable, "-m", "jaxflash.bench.gpu_check", "--child-checks", suite, *map(str, pending)]
        with tempfile.TemporaryFile("w+") as err:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err)
            lines = _LineReader(proc.stdout)
            try:
                while pending:
                    t0 = time.monotonic()
                    limit = min(timeout, deadline - t0)
                    line = lines.next(limit)
                    seconds = round(time.monotonic() - t0, 2)
                    if line is None:  # still running at its limit, or the process died
                        if not lines.eof:
                            why = "the time budget ran out" if limit < timeout else "still compiling?"
                            row = dict(status="TIMEOUT", detail=f"not done in {limit:.0f} s ({why}); killed")
                        else:
                            proc.wait()
                            err.seek(0)
                            tail = err.read()[-400:]
                            row = dict(status="ERROR", detail=f"the process exited {proc.returncode}: {tail}")
                        rows[pending.pop(0)] = dict(row, seconds=seconds)
                        break
                    result = json.loads(line)
                    index = result.pop("index")
                    rows[index] = dict(result, seconds=seconds)
                    pending.remove(index)
            finally:
                proc.kill()
                proc.wait()
    return rows


class _LineReader:
    """Result lines of a child's stdout, each awaited with a time limit (None: none came in time, or EOF)."""

    def __init__(self, pipe: Any):
        self._fd, self._buf, self.eof = pipe.fileno(), b"", False

    def next(self, timeout: float) -> str | None:
        end = time.monotonic() + max(timeout, 0.0)
        while True:
            while b"\n" in self._buf:
                line, self._buf = self._buf.split(b"\n", 1)
                text = line.decode(errors="replace")
                if text.startswith(_RESULT):
                    return text[len(_RESULT) :]
            left = end - time.monotonic()
            if left <= 0 or not select.select([self._fd], [], [], left)[0]:
                return None
            chunk = os.read(self._fd, 65536)
            if not chunk:
                self.eof = True
                return None
            self._buf += chunk


def _child_checks(suite: str, indices: list[int]) -> int:
    checks = suite_module(suite).GPU_CHECKS
    for index in indices:
        row: dict[str, Any] = dict(index=index)
        try:
            row.update(status="pass", **checks[index].run())
        except AssertionError as e:
            row.update(status="FAIL", detail=str(e)[:500])
        except Exception as e:  # a kernel that fails to compile is a finding, not a crash
            row.update(status="ERROR", detail=f"{type(e).__name__}: {e}"[:500], trace=traceback.format_exc())
        print(_RESULT + json.dumps(row, default=str), flush=True)
    return 0


def run_timings_in_child(suite: str, timeout: float) -> list[Result] | str:
    """The suite's timings at its ``GPU_SIZES`` in a fresh process, killed after ``timeout`` seconds (a
    candidate whose compile never ends costs that suite's table, not the session)."""
    cmd = [sys.executable, "-m", "jaxflash.bench.gpu_check", "--child-timings", suite]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"not finished in {timeout:.0f} s (a compile that never ends?); killed"
    for line in proc.stdout.splitlines():
        if line.startswith(_RESULT):
            payload = json.loads(line[len(_RESULT) :])
            return [Result(**r) for r in payload] if isinstance(payload, list) else payload
    return f"error: the suite's process exited {proc.returncode}: {proc.stderr[-400:]}"


def _child_timings(suite: str) -> int:
    sizes = getattr(suite_module(suite), "GPU_SIZES", None)
    try:
        results = run_suite(
            get_suite(suite),
            sizes=sizes,
            quick=sizes is None,
            warmup=2,
            repeats=10,
            max_seconds=5.0,
            memory=False,
        )
        payload: Any = [r.__dict__ for r in results]
    except Exception as e:
        payload = f"error: {type(e).__name__}: {e}"[:500]
    print(_RESULT + json.dumps(payload, default=str), flush=True)
    return 0


def _checks_table(checks: list[dict[str, Any]]) -> str:
    lines = ["| suite | check | status | max abs err | atol | s |", "|---|---|---|---|---|---|"]
    for c in checks:
        err = c.get("max_abs_err")
        lines.append(
            f"| {c['suite']} | {c['check']} | {c['status']} | {'' if err is None else f'{err:.2e}'} "
            f"| {c.get('atol', '')} | {c.get('seconds', '')} |"
        )
    return "\n".join(lines)


def _write(out: str, info: dict[str, Any], checks: list, timings: dict, note: str | None) -> None:
    serial = {k: ([r.__dict__ for r in v] if isinstance(v, list) else v) for k, v in timings.items()}
    with open(os.path.join(out, "gpu_check.json"), "w") as f:
        json.dump(dict(machine=info, note=note, checks=checks, timings=serial), f, indent=2, default=str)
    with open(os.path.join(out, "gpu_check.md"), "w") as f:
        f.write(f"# jaxflash gpu-check, {info['date']}, {info['devices']}\n\n")
        for name, res in timings.items():
            f.write(f"## {name}\n\n{markdown_table(res) if isinstance(res, list) else res}\n\n")
        f.write("## kernel checks\n\n" + (_checks_table(checks) if checks else "none registered") + "\n")


if __name__ == "__main__":
    sys.exit(main())
