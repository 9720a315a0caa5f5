"""Offloaded generation (FlexGen's zig-zag schedule, :mod:`jaxflash.inference.offload`) against the same
model generating in memory, with and without prefetching the next layer.

Model: a 16-layer attention LM, width 256 (MLP 1024), vocabulary 256, f32: 50 MB of weights. The
offloaded engines get a device budget of a quarter of the model (the issue's "4x larger than the
device"): four layers' worth, of which the engine holds two (the current and the prefetched). Each
case generates ``max_new_tokens`` tokens greedily after a 64-token prompt for a block of
``gpu_batch_size * num_gpu_batches`` sequences (caches and hidden states on the host). Columns: where
the weights live, the device budget, the meter's peak
(:class:`~jaxflash.inference.offload.OffloadStats`) and the bytes each call loads. On a CPU-only
machine "device" and "host" are the same memory, so this measures the schedule's overhead (copies,
memmap reads, threads), not a PCIe link; see the module docstring of the engine.

The last cases put FlexGen's cost model (:mod:`jaxflash.inference.cost_model`) against the engine: the
hardware constants measured on this machine (:func:`calibrated_hardware`), five placements of the same
block, the model's predicted time of one ``generate`` call beside the measured one.
"""

from __future__ import annotations

import atexit
import dataclasses
import functools
import math
import shutil
import sys
import tempfile
from collections.abc import Sequence

import numpy as np

from jaxflash.bench.harness import Candidate, Case, Suite

GPU_CHECKS: tuple = ()  # no kernels: the engine runs the models' own jitted steps
GPU_SIZES = (32,)
DEFAULT_SIZES = (16,)  # max_new_tokens
QUICK_SIZES = (2,)
PROMPT = 64
GBS, NB = 4, 2
PLACEMENTS = {"host": (0.0, 1.0, 0.0), "disk": (0.0, 0.0, 1.0)}


@functools.cache
def _model(quick: bool):
    from flax import nnx

    from jaxflash.models import LanguageModel, LMConfig

    width = 256  # quick runs too: at width 128 the activations outweigh a quarter of the weights
    config = LMConfig(
        vocab_size=256,
        d_model=width,
        n_layers=16,
        d_inner=4 * width,
        max_seq_len=PROMPT + max(DEFAULT_SIZES),
        mixer="attention",
    )
    model = LanguageModel(config, rngs=nnx.Rngs(0))
    model.eval()
    return model


def _prompts(batch: int = GBS * NB, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(256, size=(batch, PROMPT)).astype(np.int32)


def _in_memory(quick: bool, new: int):
    from jaxflash.inference import generate

    def setup():
        model, prompts = _model(quick), _prompts()
        return lambda: generate(model, prompts, new, temperature=0.0).tokens

    return setup


def _policy(where: str):
    from jaxflash.inference.cost_model import Policy

    return Policy(GBS, NB, *PLACEMENTS[where], 0.0, 1.0, 0.0, 0.0, 1.0, 0.0)  # cache, hidden on the host


@functools.cache
def device_budget(quick: bool) -> int:
    """The offloaded engines' device budget: a quarter of the model's bytes."""
    from jaxflash.inference.offload import OffloadedLM

    directory = tempfile.mkdtemp(prefix="jaxflash-bench-offload-")
    probe = OffloadedLM(_model(quick), _policy("host"), offload_dir=directory)
    budget = probe.model_bytes // 4
    probe.close()
    shutil.rmtree(directory, ignore_errors=True)
    return budget


def engine(quick: bool, where: str, overlap: bool):
    """The offloaded engine of a case, its budget a quarter of the model's bytes."""
    from jaxflash.inference.offload import OffloadedLM

    directory = tempfile.mkdtemp(prefix="jaxflash-bench-offload-")
    return OffloadedLM(
        _model(quick),
        _policy(where),
        offload_dir=directory,
        overlap=overlap,
        device_budget=device_budget(quick),
    )


def _offloaded(quick: bool, new: int, where: str, overlap: bool):
    def setup():
        offloaded, prompts = engine(quick, where, overlap), _prompts()
        atexit.register(offloaded.close)
        return lambda: offloaded.generate(prompts, new)[0]

    return setup


@functools.cache
def _columns(quick: bool, new: int, where: str) -> dict[str, str]:
    offloaded = engine(quick, where, True)
    _, stats = offloaded.generate(_prompts(), new)
    moved = stats.host_to_device_bytes + stats.disk_to_device_bytes
    out = {
        "model MB": f"{offloaded.model_bytes / 1e6:.1f}",
        "budget MB": f"{offloaded.device_budget / 1e6:.1f}",
        "peak MB": f"{stats.device_peak_bytes / 1e6:.1f}",
        "loaded MB / call": f"{moved / 1e6:.0f}",
    }
    offloaded.close()
    return out


def _cases(sizes: Sequence[int] | None, quick: bool) -> list[Case]:
    cases = []
    for new in sizes or (QUICK_SIZES if quick else DEFAULT_SIZES):
        for where in PLACEMENTS:
            config = {
                "weights on": where,
                "batch": GBS * NB,
                "new tokens": new,
                **_columns(quick, new, where),
            }
            cases.append(
                Case(
                    config=config,
                    candidates=(
                        Candidate("in memory (generate)", _in_memory(quick, new)),
                        Candidate("offloaded, prefetch", _offloaded(quick, new, where, True)),
                        Candidate("offloaded, no prefetch", _offloaded(quick, new, where, False)),
                    ),
                    baseline="in memory (generate)",
                )
            )
    return cases


# --- the cost model against the engine ---------------------------------------------------------------

# Five placements for the same block (FlexGen --percent: weight GPU/CPU, cache GPU/CPU, hidden GPU/CPU).
COST_MODEL_POLICIES = {
    "w host, cache host": (0, 100, 0, 100, 0, 100),
    "w disk, cache host": (0, 0, 0, 100, 0, 100),
    "w 50% device, 50% host": (50, 50, 0, 100, 0, 100),
    "w 25/25/50, cache device": (25, 25, 100, 0, 100, 0),
    "all on device": (100, 0, 100, 0, 100, 0),
}


def _rate(fn, nbytes: float, repeats: int = 5) -> float:
    import time

    fn()
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return nbytes / best


@functools.cache
def calibrated_hardware(dtype_bytes: int = 4):
    """FlexGen's :class:`~jaxflash.inference.cost_model.Hardware` measured on this machine: host->device
    ``jax.device_put`` and device->host copies, ``numpy.memmap`` reads and writes, and matmul rates.
    FlexGen's byte terms count fp16 values; a model of ``dtype_bytes``-byte values moves
    ``dtype_bytes / 2`` times as many bytes, so the measured bandwidths are divided by that."""
    import jax
    import jax.numpy as jnp

    from jaxflash.inference.cost_model import Hardware

    scale = dtype_bytes / 2
    host = np.random.default_rng(0).standard_normal(1 << 23).astype(np.float32)  # 32 MB
    device = jax.device_put(host)
    ctog = _rate(lambda: jax.block_until_ready(jax.device_put(host)), host.nbytes)
    gtoc = _rate(lambda: np.asarray(device + 0), host.nbytes)
    directory = tempfile.mkdtemp(prefix="jaxflash-bench-calibrate-")
    path = f"{directory}/probe.bin"

    def write():
        mm = np.memmap(path, dtype=host.dtype, mode="w+", shape=host.shape)
        mm[...] = host
        mm.flush()

    ctod = _rate(write, host.nbytes)
    dtoc = _rate(lambda: np.array(np.memmap(path, dtype=host.dtype, mode="r", shape=host.shape)), host.nbytes)
    shutil.rmtree(directory, ignore_errors=True)
    a = jnp.ones((256, 256), jnp.float32)
    mm = _rate(lambda: jax.block_until_ready(a @ a), 2 * 256**3)
    b = jnp.ones((8, 64, 32), jnp.float32)
    bmm = _rate(lambda: jax.block_until_ready(jnp.einsum("bqd,bkd->bqk", b, b)), 2 * 8 * 64 * 64 * 32)
    big = 1e15  # memory is not the constraint being checked here
    return Hardware(
        ctog_bdw=ctog / scale,
        gtoc_bdw_cache=gtoc / scale,
        gtoc_bdw_hidden=gtoc / scale,
        dtoc_bdw=dtoc / scale,
        ctod_bdw_cache_p=ctod / scale,
        ctod_bdw_hidden_p=ctod / scale,
        ctod_bdw_g=ctod / scale,
        mm_flops_p=mm,
        mm_flops_g=mm,
        bmm_flops_p=bmm,
        bmm_flops_g=bmm,
        cpu_flops=bmm,
        gpu_mem=big,
        cpu_mem=big,
        nvme_mem=big,
    )


def workload(quick: bool, new: int):
    """The bench model's :class:`~jaxflash.inference.cost_model.Workload`: the engine attends on the
    device over a cache it loads whole (``cpu_cache_compute=False``)."""
    from jaxflash.inference.cost_model import Workload

    c = _model(quick).config
    return Workload(
        c.n_layers, c.d_model, c.ffn_dim, c.attention.num_heads, PROMPT, new, cpu_cache_compute=False
    )


def _measured_seconds(policy, new: int, quick: bool, repeats: int) -> float:
    """The best of ``repeats`` timed ``generate`` calls (after one warm-up) of one block of ``policy``."""
    import time

    from jaxflash.inference.offload import OffloadedLM

    directory = tempfile.mkdtemp(prefix="jaxflash-bench-offload-")
    engine = OffloadedLM(_model(quick), policy, offload_dir=directory)
    prompts = _prompts(policy.block_size, seed=1)
    try:
        engine.generate(prompts, new)
        best = math.inf
        for _ in range(repeats):
            start = time.perf_counter()
            engine.generate(prompts, new)
            best = min(best, time.perf_counter() - start)
    finally:
        engine.close()
        shutil.rmtree(directory, ignore_errors=True)
    return best


# The runs the hardware constants are fitted to (gpu batch size, GPU batches, FlexGen --percent): none
# of them is a policy the suite then evaluates the model on.
FIT_POLICIES = {
    "fit: 2x1, w host": (2, 1, (0, 100, 0, 100, 0, 100)),
    "fit: 8x1, w disk": (8, 1, (0, 0, 0, 100, 0, 100)),
    "fit: 4x4, all on device": (4, 4, (100, 0, 100, 0, 100, 0)),
    "fit: 16x1, w 50% device": (16, 1, (50, 50, 0, 100, 0, 100)),
    "fit: 2x2, w 25/25/50, cache device": (2, 2, (25, 25, 100, 0, 100, 0)),
}
_FIT_ENV = "JAXFLASH_BENCH_OFFLOAD_FIT"  # the parent's fit, passed to the peak-memory subprocesses


@functools.cache
def fitted_hardware(quick: bool, new: int):
    """:func:`calibrated_hardware` with its constants and a per-call overhead fitted
    (:func:`~jaxflash.inference.cost_model.fit_hardware`) to measured runs of :data:`FIT_POLICIES`;
    returns the :class:`~jaxflash.inference.cost_model.Fit`."""
    import json
    import os

    from jaxflash.inference.cost_model import Fit, Hardware, Policy, fit_hardware

    key = f"{quick}:{new}"
    cached = json.loads(os.environ.get(_FIT_ENV, "{}")).get(key)
    if cached is not None:
        return Fit(Hardware(**cached["hardware"]), cached["factors"], (), ())
    names = list(FIT_POLICIES)[:2] if quick else list(FIT_POLICIES)
    observations = []
    for name in names:
        gbs, nb, percent = FIT_POLICIES[name]
        policy = Policy.from_percent(gbs, nb, percent)
        observations.append((policy, _measured_seconds(policy, new, quick, repeats=1 if quick else 3)))
    fit = fit_hardware(observations, workload(quick, new), calibrated_hardware())
    factors = ", ".join(f"{g} x{f:.3g}" for g, f in fit.factors.items())
    errors = " / ".join(
        f"{100 * a:+.0f}%->{100 * b:+.0f}%" for a, b in zip(fit.errors_before, fit.errors_after, strict=True)
    )
    print(
        f"offload fit on {len(observations)} runs: {factors}, call overhead "
        f"{1e3 * fit.hardware.call_overhead:.3g} ms; errors calibrated->fitted {errors}",
        file=sys.stderr,
    )
    everything = json.loads(os.environ.get(_FIT_ENV, "{}"))
    everything[key] = {"hardware": dataclasses.asdict(fit.hardware), "factors": dict(fit.factors)}
    os.environ[_FIT_ENV] = json.dumps(everything)
    return fit


def _with_budget(hardware, budget: int, dtype_bytes: int = 4):
    """``hardware`` with the engine's device budget as GPU memory and host and disk memory to spare.
    The cost model counts fp16 bytes, so a budget of ``dtype_bytes``-byte values holds ``dtype_bytes /
    2`` times fewer of its bytes (the scale :func:`calibrated_hardware` applies to the bandwidths)."""
    return dataclasses.replace(hardware, gpu_mem=budget / (dtype_bytes / 2), cpu_mem=1e12, nvme_mem=1e12)


def _fits(quick: bool, policy, budget: int) -> bool:
    from jaxflash.inference.offload import OffloadedLM

    directory = tempfile.mkdtemp(prefix="jaxflash-bench-offload-")
    try:
        OffloadedLM(_model(quick), policy, offload_dir=directory, device_budget=budget).close()
        return True
    except ValueError:
        return False
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _policy_case(quick: bool, new: int, name: str, policy, budget: int | None) -> Case:
    from jaxflash.inference.cost_model import predict

    work = workload(quick, new)
    calibrated = predict(policy, work, calibrated_hardware()).total_time
    # Peak memory does not depend on the rates: whether the search could have picked this policy.
    admitted = predict(policy, work, _with_budget(calibrated_hardware(), device_budget(quick))).fits
    fitted = predict(policy, work, fitted_hardware(quick, new).hardware).total_time

    def setup():
        from jaxflash.inference.offload import OffloadedLM

        engine = OffloadedLM(
            _model(quick),
            policy,
            offload_dir=tempfile.mkdtemp(prefix="jaxflash-bench-offload-"),
            device_budget=budget,
        )
        atexit.register(engine.close)
        prompts = _prompts(policy.block_size)
        return lambda: engine.generate(prompts, new)[0]

    config = {
        "policy": name,
        "gbs x nb": f"{policy.gpu_batch_size}x{policy.num_gpu_batches}",
        "percent": " ".join(str(p) for p in policy.percent()),
        "new tokens": new,
        "predicted ms (calibrated)": f"{1e3 * calibrated:.1f}",
        "predicted ms (fitted)": f"{1e3 * fitted:.1f}",
        "fits the model's memory": "yes" if admitted else "no",
    }
    return Case(
        config=config,
        candidates=(Candidate("offloaded (measured)", setup),),
        baseline="offloaded (measured)",
        rate=("token", policy.block_size * new),
    )


def _cost_model_case(quick: bool, new: int, name: str) -> Case:
    from jaxflash.inference.cost_model import Policy

    return _policy_case(quick, new, name, Policy.from_percent(GBS, NB, COST_MODEL_POLICIES[name]), None)


# Hand-written policies under the device budget, for the search to beat: batch shapes by placements.
GRID_SHAPES = ((4, 2), (4, 4), (4, 8), (2, 16), (8, 4), (16, 2))
GRID_PLACEMENTS = {
    "w host": (0, 100, 0, 100, 0, 100),
    "w disk": (0, 0, 0, 100, 0, 100),
    "w 10% device": (10, 90, 0, 100, 0, 100),
}
MAX_BLOCK = 32  # the sequences there are to serve: the search may not plan a larger block


def _search_cases(quick: bool, new: int) -> list[Case]:
    """Every grid policy that fits the budget, then the policy the LP search picks, on the engine."""
    from jaxflash.inference.cost_model import Policy, format_policy, search_policy

    budget = device_budget(quick)
    shapes = GRID_SHAPES[:1] if quick else GRID_SHAPES
    placements = list(GRID_PLACEMENTS)[:1] if quick else list(GRID_PLACEMENTS)
    cases = []
    for gbs, nb in shapes:
        for where in placements:
            policy = Policy.from_percent(gbs, nb, GRID_PLACEMENTS[where])
            if _fits(quick, policy, budget):
                cases.append(_policy_case(quick, new, f"grid: {where}", policy, budget))
    work = workload(quick, new)
    for label, hardware in (
        ("fitted", fitted_hardware(quick, new).hardware),
        ("calibrated", calibrated_hardware()),
    ):
        found = search_policy(work, _with_budget(hardware, budget), max_block_size=MAX_BLOCK)
        print(
            f"offload search ({label} constants): {format_policy(found.policy, found.prediction, work)}",
            file=sys.stderr,
        )
        cases.append(_policy_case(quick, new, f"search ({label} constants)", found.policy, budget))
    return cases


def _all_cases(sizes: Sequence[int] | None, quick: bool) -> list[Case]:
    cases = _cases(sizes, quick)
    new = (sizes or (QUICK_SIZES if quick else DEFAULT_SIZES))[0]
    names = list(COST_MODEL_POLICIES)[:2] if quick else list(COST_MODEL_POLICIES)
    cases += [_cost_model_case(quick, new, name) for name in names]
    return cases + _search_cases(quick, new)


SUITE = Suite(
    name="offload",
    description="FlexGen-style offloaded generation (model 4x the device budget) vs in-memory generate",
    cases=_all_cases,
)
