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
"""

from __future__ import annotations

import atexit
import functools
import shutil
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

    width = 128 if quick else 256
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


def _prompts() -> np.ndarray:
    return np.random.default_rng(0).integers(256, size=(GBS * NB, PROMPT)).astype(np.int32)


def _in_memory(quick: bool, new: int):
    from jaxflash.inference import generate

    def setup():
        model, prompts = _model(quick), _prompts()
        return lambda: generate(model, prompts, new, temperature=0.0).tokens

    return setup


def _policy(where: str):
    from jaxflash.inference.cost_model import Policy

    return Policy(GBS, NB, *PLACEMENTS[where], 0.0, 1.0, 0.0, 0.0, 1.0, 0.0)  # cache, hidden on the host


def engine(quick: bool, where: str, overlap: bool):
    """The offloaded engine of a case, its budget a quarter of the model's bytes."""
    from jaxflash.inference.offload import OffloadedLM

    model = _model(quick)
    directory = tempfile.mkdtemp(prefix="jaxflash-bench-offload-")
    probe = OffloadedLM(model, _policy(where), offload_dir=directory, overlap=overlap)
    budget = probe.model_bytes // 4
    probe.close()
    shutil.rmtree(directory, ignore_errors=True)
    directory = tempfile.mkdtemp(prefix="jaxflash-bench-offload-")
    return OffloadedLM(model, _policy(where), offload_dir=directory, overlap=overlap, device_budget=budget)


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


SUITE = Suite(
    name="offload",
    description="FlexGen-style offloaded generation (model 4x the device budget) vs in-memory generate",
    cases=_cases,
)
