"""Measuring candidates against their peers in one run.

A *suite* yields *cases* (one configuration each: sizes, dtype). A case holds *candidates*: jaxflash's
implementations and the peers they are compared with (NumPy, SciPy, torch, tokamax, ...). Every
candidate of a case is timed in the same process, one after another: warm-up calls (which include
compilation), then the median of several timed calls, each ended by ``block_until_ready``. Each
candidate's peak memory is measured in a subprocess of its own, so one candidate's allocations never
count against another. Results are reported as speed-ups over the case's named baseline.

A peer that is not installed is reported as skipped with the reason, never dropped.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

Thunk = Callable[[], Any]


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One contender of a case.

    Attributes:
      name: label in the table, e.g. ``"jaxflash xla"`` or ``"torch.fft"``.
      setup: builds the inputs (not timed) and returns the thunk that is timed.
      requires: modules that must be importable; when one is missing the candidate is skipped.
      peer: True for a comparison peer, False for a jaxflash implementation.
    """

    name: str
    setup: Callable[[], Thunk]
    requires: tuple[str, ...] = ()
    peer: bool = False


@dataclasses.dataclass(frozen=True)
class Case:
    """One configuration of a suite.

    Attributes:
      config: what distinguishes the case, shown as leading columns (``{"n": 1024, "dtype": "f32"}``).
      candidates: the contenders, all timed in this run.
      baseline: the candidate name ratios are taken against.
      reference: optional; returns the exact answer (float64) for the max-error column.
      flops: optional; floating-point operations of one call, for a GFLOP/s column.
      rate: optional ``(unit, count)``: ``count`` things of ``unit`` per call (``("token", 128)``), for
        a rate column (``token/s``), when the cases of a suite do different amounts of work.
    """

    config: dict[str, Any]
    candidates: tuple[Candidate, ...]
    baseline: str
    reference: Callable[[], np.ndarray] | None = None
    flops: float | None = None
    rate: tuple[str, float] | None = None


@dataclasses.dataclass(frozen=True)
class Suite:
    """A named benchmark: ``cases(sizes, quick)`` returns the cases to run."""

    name: str
    description: str
    cases: Callable[[Sequence[int] | None, bool], list[Case]]


@dataclasses.dataclass(frozen=True)
class GpuCheck:
    """A compiled kernel against its reference on the accelerator, for ``make gpu-check``.

    ``run()`` raises ``AssertionError`` on a mismatch and otherwise returns details to report, such
    as ``{"max_abs_err": 3e-3, "atol": 1e-2}``. A bench module lists its checks in ``GPU_CHECKS``.
    """

    name: str
    run: Callable[[], dict[str, Any]]


@dataclasses.dataclass
class Result:
    config: dict[str, Any]
    candidate: str
    peer: bool
    status: str  # "ok", "skipped: ...", "error: ..."
    median_s: float | None = None
    min_s: float | None = None
    runs: int = 0
    speedup: float | None = None  # baseline median / this median
    peak_mib: float | None = None
    max_error: float | None = None
    gflops: float | None = None
    rate: str | None = None  # e.g. "412 token/s"


def missing_requirement(candidate: Candidate) -> str | None:
    for module in candidate.requires:
        if importlib.util.find_spec(module.split(".")[0]) is None:
            return module
    return None


def sync(x: Any) -> Any:
    """Waits for every JAX array in ``x``; other values (NumPy, torch on CPU) are already done."""
    import jax

    for leaf in jax.tree.leaves(x):
        if hasattr(leaf, "block_until_ready"):
            leaf.block_until_ready()
    return x


def time_thunk(thunk: Thunk, *, warmup: int, repeats: int, max_seconds: float) -> tuple[list[float], Any]:
    """Runs ``thunk`` ``warmup`` times, then times up to ``repeats`` calls within ``max_seconds``."""
    out = None
    for _ in range(max(warmup, 1)):
        out = sync(thunk())
    times: list[float] = []
    budget_end = time.perf_counter() + max_seconds
    for _ in range(repeats):
        start = time.perf_counter()
        out = sync(thunk())
        times.append(time.perf_counter() - start)
        if time.perf_counter() > budget_end:
            break
    return times, out


def max_error(out: Any, reference: np.ndarray) -> float:
    import jax.numpy as jnp

    leaf = out[0] if isinstance(out, tuple | list) else out
    if hasattr(leaf, "detach"):  # torch tensor
        leaf = leaf.detach().cpu().numpy()
    arr = np.asarray(
        jnp.asarray(leaf, jnp.float32) if str(getattr(leaf, "dtype", "")) == "bfloat16" else leaf
    )
    return float(np.max(np.abs(arr.astype(np.float64) - reference)))


def run_suite(
    suite: Suite,
    *,
    sizes: Sequence[int] | None = None,
    quick: bool = False,
    warmup: int = 2,
    repeats: int = 7,
    max_seconds: float = 10.0,
    memory: bool = True,
    only: Sequence[str] | None = None,
    log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True),
) -> list[Result]:
    """Times every candidate of every case of ``suite``; see the module docstring."""
    results: list[Result] = []
    for case_index, case in enumerate(suite.cases(sizes, quick)):
        reference = None
        if case.reference is not None:
            reference = np.asarray(case.reference(), np.float64)
        case_results: list[Result] = []
        for cand in case.candidates:
            if only and cand.name not in only and cand.name != case.baseline:
                continue
            res = Result(config=dict(case.config), candidate=cand.name, peer=cand.peer, status="ok")
            missing = missing_requirement(cand)
            if missing:
                res.status = f"skipped: {missing} not installed (pip install 'jaxflash[bench]')"
                case_results.append(res)
                log(f"{suite.name} {case.config} {cand.name}: {res.status}")
                continue
            try:
                thunk = cand.setup()
                times, out = time_thunk(thunk, warmup=warmup, repeats=repeats, max_seconds=max_seconds)
                res.median_s = statistics.median(times)
                res.min_s = min(times)
                res.runs = len(times)
                if reference is not None:
                    res.max_error = max_error(out, reference)
                if case.flops:
                    res.gflops = case.flops / res.median_s / 1e9
                if case.rate:
                    unit, count = case.rate
                    res.rate = f"{count / res.median_s:.4g} {unit}/s"
                del thunk, out
            except NotImplementedError as e:
                res.status = f"skipped: {e}".splitlines()[0]
            except Exception as e:  # a failing candidate is reported, not fatal to the run
                res.status = f"error: {type(e).__name__}: {e}".splitlines()[0][:200]
            if memory and res.status == "ok":
                res.peak_mib = measure_peak_memory(suite.name, case_index, cand.name, sizes, quick)
            log(f"{suite.name} {case.config} {cand.name}: {res.status} {_fmt_ms(res.median_s)}")
            case_results.append(res)
        base = next((r for r in case_results if r.candidate == case.baseline and r.median_s), None)
        for r in case_results:
            if base is not None and r.median_s:
                r.speedup = base.median_s / r.median_s
        results.extend(case_results)
    return results


# --- peak memory, one subprocess per candidate ------------------------------------------------------


def measure_peak_memory(
    suite_name: str, case_index: int, candidate: str, sizes: Sequence[int] | None, quick: bool
) -> float | None:
    """Peak memory (MiB) one call of ``candidate`` adds over its inputs, measured in a fresh process.

    On CPU this is the rise of the process's resident-set high-water mark during the call (reset
    after set-up and warm-up through /proc/self/clear_refs); on an accelerator, the rise of the
    device allocator's peak. None when it could not be measured.
    """
    spec = json.dumps(dict(suite=suite_name, case=case_index, candidate=candidate, sizes=sizes, quick=quick))
    # A fixed mmap threshold makes glibc return every large freed buffer to the OS at once; with its
    # default, adaptive threshold the warm-up call's freed buffers stay resident and the measured
    # call reuses them, so its temporaries would not show in the high-water mark.
    env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false", MALLOC_MMAP_THRESHOLD_="131072")
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "jaxflash.bench.harness", spec],
            capture_output=True,
            text=True,
            timeout=600,
            env=env,
        )
    except subprocess.TimeoutExpired:
        return None
    for line in proc.stdout.splitlines()[::-1]:
        if line.startswith("PEAK_MIB="):
            value = line.split("=", 1)[1]
            return None if value == "None" else float(value)
    return None


def _memory_child(spec: dict[str, Any]) -> float | None:
    from jaxflash.bench.suites import get_suite

    case = get_suite(spec["suite"]).cases(spec["sizes"], spec["quick"])[spec["case"]]
    cand = next(c for c in case.candidates if c.name == spec["candidate"])
    thunk = cand.setup()
    sync(thunk())  # compile and warm caches outside the measured window
    device = _accelerator()
    if device is not None:
        stats = device.memory_stats() or {}
        before = stats.get("bytes_in_use", 0)
        sync(thunk())
        peak = (device.memory_stats() or {}).get("peak_bytes_in_use")
        return None if peak is None else max(peak - before, 0) / 2**20
    _release_free_memory()
    if not _reset_rss_peak():
        return None
    before = _status_kib("VmRSS")
    sync(thunk())
    peak = _status_kib("VmHWM")
    return max(peak - before, 0) / 1024


def _accelerator():
    import jax

    dev = jax.devices()[0]
    return None if dev.platform == "cpu" else dev


def _release_free_memory() -> None:
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the fixed mmap threshold has to do
        pass


def _reset_rss_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


# --- reporting ----------------------------------------------------------------------------------------


def _fmt_ms(seconds: float | None) -> str:
    return "" if seconds is None else f"{seconds * 1e3:.3f} ms"


def markdown_table(results: Sequence[Result], baseline_of: dict[str, str] | None = None) -> str:
    """The results as a GitHub markdown table, one row per candidate per case."""
    config_keys: list[str] = []
    for r in results:
        for k in r.config:
            if k not in config_keys:
                config_keys.append(k)
    has_err = any(r.max_error is not None for r in results)
    has_mem = any(r.peak_mib is not None for r in results)
    has_flops = any(r.gflops is not None for r in results)
    has_rate = any(r.rate is not None for r in results)
    header = [*config_keys, "candidate", "median ms", "speedup vs baseline"]
    header += ["GFLOP/s"] * has_flops + ["rate"] * has_rate
    header += ["peak MiB"] * has_mem + ["max abs err"] * has_err + ["status"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in results:
        row = [str(r.config.get(k, "")) for k in config_keys]
        row += [r.candidate, "" if r.median_s is None else f"{r.median_s * 1e3:.3f}"]
        row += ["" if r.speedup is None else f"{r.speedup:.2f}x"]
        if has_flops:
            row.append("" if r.gflops is None else f"{r.gflops:.1f}")
        if has_rate:
            row.append(r.rate or "")
        if has_mem:
            row.append("" if r.peak_mib is None else f"{r.peak_mib:.1f}")
        if has_err:
            row.append("" if r.max_error is None else f"{r.max_error:.2e}")
        row.append(r.status)
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def machine_info() -> dict[str, Any]:
    import platform

    import jax
    import jaxlib

    devices = jax.devices()
    return dict(
        date=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        host=platform.node(),
        platform=platform.platform(),
        processor=", ".join(filter(None, [platform.processor() or platform.machine(), _cpu_model()])),
        cpu_count=os.cpu_count(),
        python=platform.python_version(),
        jax=jax.__version__,
        jaxlib=jaxlib.__version__,
        numpy=np.__version__,
        backend=jax.default_backend(),
        devices=[f"{d.platform}:{d.device_kind}" for d in devices],
    )


def _cpu_model() -> str:
    """CPU model and widest vector ISA from /proc/cpuinfo (Linux), e.g. 'Intel(R) Xeon(R) Processor, AVX-512';
    timings on two machines that both say "2 CPU cores, x86_64" differed 2x on matmuls without it."""
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
    except OSError:
        return ""
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    fields = {key.strip(): value.strip() for key, value in fields.items()}
    model, flags = fields.get("model name", ""), fields.get("flags", "").split()
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else ""
    return ", ".join(filter(None, [model, isa]))


if __name__ == "__main__":  # the memory-measuring child of measure_peak_memory
    print(f"PEAK_MIB={_memory_child(json.loads(sys.argv[1]))}", flush=True)
