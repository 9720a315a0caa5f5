"""``x @ W`` with a block-quantized weight: W4 matmul over the int4 / MXFP4 / NVFP4 formats.

``W`` ``[K, N]`` is a :class:`~jaxflash.quant.formats.QuantizedArray` quantized along its contraction
axis, ``quantize(W, fmt, axis=0)``: its packed codes are ``[N, K_pad / 2]``, its scales
``[N, K_pad / block_size]`` (:mod:`jaxflash.quant.formats` gives the layout and each format's decode).

Public function:

- :func:`quantized_matmul` ``(x, w)``: ``x @ dequantize(w)`` over any leading batch dimensions of ``x``,
  accumulated in f32, in ``x``'s dtype.

Implementations (op ``"quantized_matmul"``): ``"pallas"`` (GPU: the kernel of
:mod:`jaxflash.pallas_kernels.quant_matmul` reads the 4-bit codes and decodes them tile by tile; config
:class:`QuantMatmulConfig`), ``"pallas_interpret"`` (the same body in the interpreter), ``"xla"``
(dequantize, then one dot; the CPU default) and ``"reference"`` (the same at ``HIGHEST`` precision).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from jaxflash.ops.registry import dispatch, register
from jaxflash.pallas_kernels import quant_matmul as _kernel
from jaxflash.pallas_kernels.common import interpret_for
from jaxflash.pallas_kernels.quant_matmul import QuantMatmulConfig
from jaxflash.quant.formats import QuantizedArray, dequantize

__all__ = ["QuantMatmulConfig", "quantized_matmul", "reference"]


def _validate(x: Any, w: Any) -> None:
    if not isinstance(w, QuantizedArray):
        raise ValueError(
            f"w must be a QuantizedArray (jaxflash.quant.quantize(W, format, axis=0)); got {type(w).__name__}"
        )
    if len(w.shape) != 2 or w.axis != 0:
        raise ValueError(
            f"w must be a 2-D weight [K, N] quantized along axis 0 (K, the contraction axis): "
            f"quantize(W, format, axis=0); got shape={w.shape}, axis={w.axis}"
        )
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"x must be a floating-point array; got dtype {x.dtype}")
    if x.ndim < 1 or x.shape[-1] != w.shape[0]:
        raise ValueError(f"x.shape={x.shape} must end in K={w.shape[0]} features (w.shape={w.shape})")


def quantized_matmul(
    x: Float[Array, "*batch k"],
    w: QuantizedArray,
    *,
    implementation: str | Sequence[str] | None = None,
    config: QuantMatmulConfig | Mapping[str, Any] | None = None,
) -> Float[Array, "*batch n"]:
    """``x @ dequantize(w)`` without materialising the dequantized weight (on the Pallas paths).

    Args:
      x: (..., K), any floating dtype and leading batch dimensions; array-likes go through ``jnp.asarray``.
      w: a :class:`QuantizedArray` of a 2-D weight ``[K, N]`` quantized along axis 0.
      implementation: ``"pallas"``, ``"pallas_interpret"``, ``"xla"``, ``"reference"`` or None (best).
      config: a :class:`QuantMatmulConfig` (the kernel's tiles) or a mapping ``{implementation: config}``;
        None: each implementation's default.

    Returns:
      (..., N) in ``x.dtype``; products accumulate in f32.
    """
    x = jnp.asarray(x)
    _validate(x, w)
    k, n = w.shape
    batch = x.shape[:-1]
    if math.prod(batch) == 0:
        return jnp.zeros((*batch, n), x.dtype)
    y = dispatch("quantized_matmul", implementation, x.reshape(-1, k), w, config=config)
    return y.reshape(*batch, n)


def reference(x: Float[Array, "m k"], w: QuantizedArray) -> Float[Array, "m n"]:
    """The ground truth: the dequantized f32 weight, one f32 dot at ``HIGHEST`` precision."""
    dense = dequantize(w, jnp.float32)
    y = jnp.dot(x.astype(jnp.float32), dense, precision=jax.lax.Precision.HIGHEST)
    return y.astype(x.dtype)


@register("quantized_matmul", "xla")
@jax.jit
def _quantized_matmul_xla(x: jax.Array, w: QuantizedArray) -> jax.Array:
    return reference(x, w)


@register("quantized_matmul", "reference")
@jax.jit
def _quantized_matmul_reference(x: jax.Array, w: QuantizedArray) -> jax.Array:
    return reference(x, w)


def _quantized_matmul_pallas(implementation: str) -> Callable[..., jax.Array]:
    def call(x: jax.Array, w: QuantizedArray, *, config: QuantMatmulConfig | None) -> jax.Array:
        return _kernel.quant_matmul(
            x,
            w.codes,
            w.scales,
            w.offsets,
            w.tensor_scale,
            fmt=w.format,
            block_size=w.block_size,
            interpret=interpret_for(implementation),
            config=config,
        )

    return call


# Not the default: it has not been measured against the XLA path (dequantize, then one dot) on a GPU.
register("quantized_matmul", "pallas", platforms=("gpu",), default=False, config_type=QuantMatmulConfig)(
    _quantized_matmul_pallas("pallas")
)
register("quantized_matmul", "pallas_interpret", config_type=QuantMatmulConfig)(
    _quantized_matmul_pallas("pallas_interpret")
)
