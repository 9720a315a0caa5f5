"""jaxflash: IO-aware attention, FFT convolution and Monarch kernels in JAX/Pallas, the sequence
models built on them, weak-supervision label models, and high-throughput inference.

The public ops are attributes of this package (``jaxflash.attention``, ``jaxflash.fftconv``, ...),
imported on first use so that ``import jaxflash`` stays light; the Flax models
(``jaxflash.models``) and the training code (``jaxflash.train``) are separate subpackages.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from jaxflash.ops import registry as _dispatch
from jaxflash.ops.registry import IMPLEMENTATIONS

__version__ = "0.1.0.dev0"

# Public name -> the module that defines it. Modules named with a trailing ":" are exposed whole.
_PUBLIC: dict[str, str] = {
    "attention": "jaxflash.ops.attention",
    "shared_prefix_attention": "jaxflash.ops.attention",
    "decode_attention": "jaxflash.ops.attention",
    "fftconv": "jaxflash.ops.fftconv",
    "short_conv": "jaxflash.ops.fftconv",
    "bidirectional_kernel": "jaxflash.ops.fftconv",
    "monarch_matmul": "jaxflash.ops.monarch",
    "blockdiag_matmul": "jaxflash.ops.monarch",
    "causal_monarch_conv": "jaxflash.ops.causal_monarch",
    "column_sparse_attention": "jaxflash.ops.column_sparse_attention",
    "column_sums": "jaxflash.ops.column_sparse_attention",
    "topk_columns": "jaxflash.ops.column_sparse_attention",
    "mask_to_indices": "jaxflash.ops.column_sparse_attention",
    "linear_attention": "jaxflash.ops.linear_attention",
    "linear_attention_step": "jaxflash.ops.linear_attention",
    "LinearAttentionState": "jaxflash.ops.linear_attention",
    "elu_feature_map": "jaxflash.ops.linear_attention",
    "monarch": "jaxflash.ops.monarch:",
    "ws": "jaxflash.ws:",
}

# Modules whose import registers implementations with the dispatcher.
_OP_MODULES = (
    "jaxflash.ops.attention",
    "jaxflash.ops.column_sparse_attention",
    "jaxflash.ops.fftconv",
    "jaxflash.ops.linear_attention",
    "jaxflash.ops.monarch",
    "jaxflash.quant.matmul",
)


def __getattr__(name: str) -> Any:
    target = _PUBLIC.get(name)
    if target is None:
        raise AttributeError(f"module 'jaxflash' has no attribute {name!r}")
    module = importlib.import_module(target.rstrip(":"))
    value = module if target.endswith(":") else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))


def load_ops() -> None:
    """Imports every op module that exists in this install, so each registers its implementations."""
    for module in _OP_MODULES:
        if importlib.util.find_spec(module) is not None:
            importlib.import_module(module)


def registered(op: str | None = None) -> dict[str, tuple[str, ...]]:
    """Op name -> the implementations registered for it."""
    load_ops()
    return _dispatch.registered(op)


def supported(op: str | None = None, platform: str | None = None) -> dict[str, tuple[str, ...]]:
    """Op name -> the implementations that can run on ``platform`` (default: this device)."""
    load_ops()
    return _dispatch.supported(op, platform)


__all__ = ["IMPLEMENTATIONS", "__version__", "load_ops", "registered", "supported", *_PUBLIC]
