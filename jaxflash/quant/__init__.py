"""Block quantization: FlexGen's 4-bit integer groups, MXFP4 and NVFP4 with ScaleSearch
(:mod:`jaxflash.quant.formats`), over the E2M1 / E4M3 / E8M0 codes of :mod:`jaxflash.quant.codes`; the
W4 matmul that decodes them in a Pallas kernel (:mod:`jaxflash.quant.matmul`); post-training
quantization of a model (:mod:`jaxflash.quant.ptq`)."""

from jaxflash.quant.formats import (
    DEFAULT_BLOCK_SIZE,
    FORMATS,
    QuantizedArray,
    bits_per_element,
    block_values,
    dequantize,
    quantization_error,
    quantize,
)
from jaxflash.quant.matmul import QuantMatmulConfig, quantized_matmul

__all__ = [
    "DEFAULT_BLOCK_SIZE",
    "FORMATS",
    "QuantMatmulConfig",
    "QuantizedArray",
    "bits_per_element",
    "block_values",
    "dequantize",
    "quantization_error",
    "quantize",
    "quantized_matmul",
]
