"""The benchmark suites ``python -m jaxflash.bench`` knows, by name.

Each module named here defines ``SUITE``, a :class:`jaxflash.bench.harness.Suite`, and may define
``GPU_CHECKS`` (a tuple of :class:`~jaxflash.bench.harness.GpuCheck`) and ``GPU_SIZES`` for
``make gpu-check``. A kernel issue adds its suite by adding one line here.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from jaxflash.bench.harness import Suite

SUITE_MODULES: dict[str, str] = {
    "matmul": "jaxflash.bench.matmul",
    "attention": "jaxflash.bench.attention",
    "fftconv": "jaxflash.bench.fftconv",
    "monarch": "jaxflash.bench.monarch",
    "ws": "jaxflash.bench.ws",
    "models": "jaxflash.bench.models",
    "train": "jaxflash.bench.train",
    "inference": "jaxflash.bench.inference",
    "quant": "jaxflash.bench.quant",
    "offload": "jaxflash.bench.offload",
    "diffusion": "jaxflash.bench.diffusion",
    "retrieval": "jaxflash.bench.retrieval",
}


def suite_module(name: str) -> ModuleType:
    if name not in SUITE_MODULES:
        raise ValueError(f"unknown benchmark suite {name!r}; known suites: {sorted(SUITE_MODULES)}")
    return importlib.import_module(SUITE_MODULES[name])


def get_suite(name: str) -> Suite:
    suite = suite_module(name).SUITE
    if suite.name != name:
        raise RuntimeError(f"{SUITE_MODULES[name]}.SUITE is named {suite.name!r}, registered as {name!r}")
    return suite


def all_suites() -> list[Suite]:
    return [get_suite(name) for name in SUITE_MODULES]
