"""Post-training weight quantization (W4) of a trained model, simulated: every Linear kernel is replaced
by ``dequantize(quantize(kernel))`` in blocks along its input (contraction) axis, so the model computes
exactly what a dequantize-on-the-fly matmul of the stored codes computes. Embeddings (and the tied
head), norms, biases and every parameter that is not a 2-D ``kernel`` stay in full precision.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxflash.quant.formats import dequantize, quantize


@dataclasses.dataclass(frozen=True)
class QuantizationReport:
    """What :func:`quantize_kernels` changed: the quantized parameters' paths, their element count, the
    bits they take stored (codes and scales), and their squared error summed over elements."""

    paths: tuple[str, ...]
    elements: int
    stored_bits: int
    squared_error: float

    @property
    def bits_per_weight(self) -> float:
        return self.stored_bits / max(self.elements, 1)


def _names(path: tuple[Any, ...]) -> list[str]:
    """A pytree path as names, without the ``value`` attribute of an nnx Variable."""
    names = [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]
    return names[:-1] if names and names[-1] == "value" else names


def kernel_name(path: tuple[Any, ...], value: Any) -> str | None:
    """The dotted name of a pytree leaf that is a Linear layer's 2-D ``kernel``, else None: the rule
    of what W4 post-training quantization quantizes."""
    names = _names(path)
    if names and names[-1] == "kernel" and getattr(value, "ndim", 0) == 2:
        return ".".join(names)
    return None


def quantize_kernels(params: Any, format: str, **kwargs) -> tuple[Any, QuantizationReport]:
    """``params`` (an ``nnx.State`` or any pytree) with every 2-D ``kernel`` round-tripped through
    ``format`` along axis 0 (a Linear's inputs), and the report. ``kwargs`` go to
    :func:`jaxflash.quant.quantize` (``scale_search``, ``block_size``, ...)."""
    paths, elements, bits, error = [], 0, 0, 0.0

    def convert(path, value):
        nonlocal elements, bits, error
        name = kernel_name(path, value)
        if name is None:
            return value
        q = quantize(value, format, axis=0, **kwargs)
        restored = dequantize(q, value.dtype)
        paths.append(name)
        elements += value.size
        bits += 8 * q.nbytes
        error += float(jnp.sum((restored.astype(jnp.float32) - value.astype(jnp.float32)) ** 2))
        return restored

    converted = jax.tree_util.tree_map_with_path(convert, params)
    if not paths:
        raise ValueError("the parameters hold no 2-D 'kernel' (no Linear layer) to quantize")
    return converted, QuantizationReport(tuple(paths), elements, bits, error)


def quantize_model(model: nnx.Module, format: str, **kwargs) -> tuple[nnx.Module, QuantizationReport]:
    """A copy of ``model`` with its Linear kernels quantized (:func:`quantize_kernels`); ``model`` is
    left as it was."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    params, report = quantize_kernels(params, format, **kwargs)
    return nnx.merge(graphdef, params, rest), report
