"""Block-quantized arrays: FlexGen's 4-bit integer groups, MXFP4 and NVFP4, with ScaleSearch.

Each format splits ``x`` along one axis into blocks, stores one scale per block and a 4-bit code per
element, two codes to a byte (:func:`jaxflash.quant.codes.pack_nibbles`):

* ``"int4"`` (FlexGen ``compression.py``, min-max asymmetric): per group of ``block_size`` (default
  64), ``scale = 15 / (max - min)``, ``q = clip(round((x - min) scale), 0, 15)``, ``x^ = q / scale + min``;
  ``scale`` and ``min`` stored in ``scale_dtype`` (f16, as FlexGen; the codes are computed with the stored
  values). A constant group (``max == min``) gets codes 0 and dequantizes to its value exactly, where
  FlexGen's ``15 / 0`` gives NaN.
* ``"mxfp4"`` (OCP MX v1.0): blocks of 32 E2M1 elements, one E8M0 scale ``X = 2^(floor(log2 amax) - 2)``
  (2 = E2M1's largest exponent), elements ``E2M1(x / X)`` saturating at ±6.
* ``"nvfp4"``: blocks of 16 E2M1 elements, an E4M3 block scale and an f32 tensor scale
  ``s_t = amax(x) / (448 * 6)`` (torchao ``per_tensor_amax_to_scale``): ``s_b = E4M3(amax_b / 6 / s_t)``,
  elements ``E2M1(x / (s_b s_t))``. A block whose scale rounds to E4M3 zero stores codes 0 (dequantizes to 0).

**ScaleSearch** (Gupta et al., "Search Your Block Floating Point Scales!", arXiv 2605.12464):
``scale_search=w`` tries, for every block, the ``2w + 1`` scale codes within ``w`` code steps of the
max-based one (NVFP4: E4M3 codes, 8 steps a binade, so ``w = 8`` is one binade each way; MXFP4: E8M0
exponents) and keeps the one with the least squared error of the dequantized block. The max-based scale
is a candidate and wins ties, so the searched error never exceeds it; the result is deterministic.

Non-finite input: eager calls raise ``ValueError``. Under ``jit`` (no check possible), ``±inf`` saturates
in the FP4 formats and a NaN makes its block's scale NaN, so the whole block dequantizes to NaN.
"""

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from jaxflash.quant import codes as C

FORMATS = ("int4", "mxfp4", "nvfp4")
# The block size each format's specification fixes (int4's group size is free: FlexGen's default 64).
SPEC_BLOCK_SIZE = {"mxfp4": 32, "nvfp4": 16}
DEFAULT_BLOCK_SIZE = {"int4": 64, **SPEC_BLOCK_SIZE}
# Scale codes a search may use: E4M3 without 0 (zero scale) and 0x7F (NaN); E8M0 without 0xFF (NaN).
_SCALE_CODE_RANGE = {"nvfp4": (1, 0x7E), "mxfp4": (0, 0xFE)}


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class QuantizedArray:
    """A block-quantized array. ``codes``: the packed 4-bit codes, ``[*rest, padded_len / 2]`` with the
    quantized axis moved last and zero-padded to whole blocks; ``scales``: per block ``[*rest, blocks]``
    (uint8 E4M3 / E8M0 codes, or the int4 groups' ``scale_dtype`` scales); ``offsets``: the int4 groups'
    minima (None otherwise); ``tensor_scale``: NVFP4's f32 scale (None otherwise)."""

    codes: jax.Array
    scales: jax.Array
    offsets: jax.Array | None
    tensor_scale: jax.Array | None
    format: str = dataclasses.field(metadata=dict(static=True))
    shape: tuple[int, ...] = dataclasses.field(metadata=dict(static=True))
    axis: int = dataclasses.field(metadata=dict(static=True))
    block_size: int = dataclasses.field(metadata=dict(static=True))
    dtype: Any = dataclasses.field(metadata=dict(static=True))

    @property
    def nbytes(self) -> int:
        """Bytes held: codes, scales, offsets and the tensor scale."""
        parts = (self.codes, self.scales, self.offsets, self.tensor_scale)
        return sum(p.size * p.dtype.itemsize for p in parts if p is not None)


def check_format(format: str, block_size: int | None) -> int:
    """The block size to use for ``format`` (its default when None); a clear error otherwise."""
    if format not in FORMATS:
        raise ValueError(f"format={format!r} is not a quantization format; choose one of {FORMATS}")
    if block_size is None:
        return DEFAULT_BLOCK_SIZE[format]
    if isinstance(block_size, bool) or not isinstance(block_size, int | np.integer):
        raise ValueError(f"block_size must be an int; got {block_size!r}")
    if format in SPEC_BLOCK_SIZE and block_size != SPEC_BLOCK_SIZE[format]:
        raise ValueError(
            f"{format} blocks hold {SPEC_BLOCK_SIZE[format]} elements by its specification; got "
            f"block_size={block_size} (use block_size=None or {SPEC_BLOCK_SIZE[format]})"
        )
    if block_size < 2 or block_size % 2:
        raise ValueError(f"int4 groups need an even block_size >= 2 (two codes a byte); got {block_size}")
    return int(block_size)


def _check_scale_search(format: str, scale_search: int) -> int:
    if isinstance(scale_search, bool) or not isinstance(scale_search, int | np.integer) or scale_search < 0:
        raise ValueError(f"scale_search must be an int >= 0 (0 = the max-based scale); got {scale_search!r}")
    if scale_search and format == "int4":
        raise ValueError("scale_search applies to the block floating point formats (mxfp4, nvfp4), not int4")
    return int(scale_search)


def _blocks(x: jax.Array, axis: int, block_size: int) -> jax.Array:
    """``x`` with ``axis`` moved last, zero-padded to whole blocks: ``[*rest, blocks, block_size]``."""
    x = jnp.moveaxis(x, axis, -1)
    pad = -x.shape[-1] % block_size
    x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, pad)])
    return x.reshape(*x.shape[:-1], x.shape[-1] // block_size, block_size)


def _fp4_elements(blocks: jax.Array, scale: jax.Array) -> jax.Array:
    """E2M1 codes of ``blocks / scale`` (scale ``[..., blocks, 1]``); a zero scale gives codes 0."""
    safe = jnp.where(scale == 0, 1.0, scale)
    return jnp.where(scale == 0, jnp.uint8(0), C.e2m1_encode(blocks / safe))


def _sse(blocks: jax.Array, scale: jax.Array) -> jax.Array:
    """Squared error of each block quantized with ``scale``: ``[..., blocks]``."""
    restored = C.e2m1_decode(_fp4_elements(blocks, scale)) * scale
    return jnp.sum((blocks - restored) ** 2, axis=-1)


def _search(blocks: jax.Array, base: jax.Array, decode, scale_of, format: str, window: int) -> jax.Array:
    """The scale code within ``window`` of ``base`` that minimises each block's squared error; the
    offsets are tried in the order 0, -1, +1, -2, ... so ties keep the code nearest ``base``."""
    low, high = _SCALE_CODE_RANGE[format]
    offsets = [0] + [s * d for d in range(1, window + 1) for s in (-1, 1)]
    base = base.astype(jnp.int32)
    candidates = jnp.stack([jnp.clip(base + d, low, high) for d in offsets], axis=-1)  # [..., blocks, k]
    scales = scale_of(decode(candidates.astype(jnp.uint8)))
    errors = _sse(blocks[..., None, :], scales[..., None])  # [..., blocks, k]
    best = jnp.argmin(errors, axis=-1)  # first minimum: the earliest offset in the order above
    return jnp.take_along_axis(candidates, best[..., None], axis=-1)[..., 0].astype(jnp.uint8)


def _mxfp4_scales(blocks: jax.Array, window: int) -> jax.Array:
    amax = jnp.max(jnp.abs(blocks), axis=-1)
    _, e = jnp.frexp(amax)  # floor(log2 amax) = e - 1 for amax > 0
    exponent = jnp.where(amax > 0, e - 1 - 2, -C.E8M0_BIAS)  # an all-zero block: the smallest scale
    codes = C.e8m0_from_exponent(exponent)
    codes = jnp.where(jnp.isnan(amax), jnp.uint8(C.E8M0_NAN), codes)
    if window:
        searched = _search(blocks, codes, C.e8m0_decode, lambda s: s, "mxfp4", window)
        codes = jnp.where(jnp.isnan(amax), codes, searched)
    return codes


def _nvfp4_tensor_scale(x: jax.Array) -> jax.Array:
    amax = jnp.max(jnp.abs(x)).astype(jnp.float32)
    return jnp.where(amax > 0, amax / (C.E4M3_MAX * C.E2M1_MAX), 1.0)


def _nvfp4_scales(blocks: jax.Array, tensor_scale: jax.Array, window: int) -> jax.Array:
    amax = jnp.max(jnp.abs(blocks), axis=-1)
    codes = C.e4m3_encode_positive(amax / C.E2M1_MAX / tensor_scale)
    if window:
        searched = _search(blocks, codes, C.e4m3_decode, lambda s: s * tensor_scale, "nvfp4", window)
        # An all-zero block keeps its zero scale; a NaN block keeps its NaN scale.
        codes = jnp.where((amax > 0) & ~jnp.isnan(amax), searched, codes)
    return codes


def _check_finite(x: jax.Array) -> None:
    if isinstance(x, jax.core.Tracer):
        return
    if not bool(jnp.all(jnp.isfinite(x))):
        raise ValueError(
            "quantize got non-finite values (inf or NaN); block formats store finite values only. "
            "Replace them first (jnp.nan_to_num), or see jaxflash.quant.formats for what happens under jit"
        )


def quantize(
    x: Float[Array, "..."],
    format: str,
    *,
    axis: int = -1,
    block_size: int | None = None,
    scale_search: int = 0,
    scale_dtype: Any = jnp.float16,
    tensor_scale: Float[Array, ""] | float | None = None,
) -> QuantizedArray:
    """``x`` quantized in ``format`` (``"int4"``, ``"mxfp4"`` or ``"nvfp4"``, module docstring) in
    blocks of ``block_size`` along ``axis``. ``scale_search``: the ScaleSearch window in scale-code
    steps (0 = the max-based scale; 8 = one binade each way for NVFP4, 1 = one exponent for MXFP4).
    ``scale_dtype``: int4's stored scale and minimum. ``tensor_scale``: NVFP4's tensor scale (default
    ``amax / (448 * 6)``; give one to share it across tensors or calls)."""
    block_size = check_format(format, block_size)
    window = _check_scale_search(format, scale_search)
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"quantize takes a floating-point array; got dtype {x.dtype}")
    if x.ndim == 0:
        raise ValueError("quantize takes an array with at least one axis; got a scalar")
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(f"axis={axis} is out of range for an array of shape {x.shape}")
    _check_finite(x)
    if tensor_scale is not None:
        tensor_scale = jnp.asarray(tensor_scale, jnp.float32)
    return _quantize(x, tensor_scale, format, axis % x.ndim, block_size, window, jnp.dtype(scale_dtype))


@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5, 6))
def _quantize(x, tensor_scale, format, axis, block_size, window, scale_dtype) -> QuantizedArray:
    blocks = _blocks(x.astype(jnp.float32), axis, block_size)
    offsets = tensor = None
    if format == "int4":
        # Padding must not widen a group's range: pad with the axis's last element, not 0.
        length = x.shape[axis]
        if length % block_size:
            filler = jnp.moveaxis(x, axis, -1)[..., -1:].astype(jnp.float32)
            index = jnp.arange(blocks.shape[-2] * block_size) >= length
            flat = blocks.reshape(*blocks.shape[:-2], -1)
            blocks = jnp.where(index, filler, flat).reshape(blocks.shape)
        low, high = jnp.min(blocks, axis=-1), jnp.max(blocks, axis=-1)
        finfo = jnp.finfo(scale_dtype)
        scale = jnp.where(high > low, 15.0 / jnp.where(high > low, high - low, 1.0), float(finfo.max))
        scales = jnp.minimum(scale, float(finfo.max)).astype(scale_dtype)
        offsets = low.astype(scale_dtype)
        q = jnp.round(
            (blocks - offsets[..., None].astype(jnp.float32)) * scales[..., None].astype(jnp.float32)
        )
        elements = jnp.clip(q, 0, 15).astype(jnp.uint8)
    elif format == "mxfp4":
        scales = _mxfp4_scales(blocks, window)
        elements = _fp4_elements(blocks, C.e8m0_decode(scales)[..., None])
    else:
        tensor = _nvfp4_tensor_scale(x) if tensor_scale is None else tensor_scale
        scales = _nvfp4_scales(blocks, tensor, window)
        elements = _fp4_elements(blocks, (C.e4m3_decode(scales) * tensor)[..., None])
    elements = elements.reshape(*elements.shape[:-2], -1)
    codes = C.pack_nibbles(elements, high_first=format == "int4")
    return QuantizedArray(codes, scales, offsets, tensor, format, tuple(x.shape), axis, block_size, x.dtype)


def block_values(q: QuantizedArray) -> Float[Array, "*rest blocks block"]:
    """The dequantized blocks in f32, ``[*rest, blocks, block_size]`` (the quantized axis last, padded)."""
    elements = C.unpack_nibbles(q.codes, high_first=q.format == "int4")
    elements = elements.reshape(*q.scales.shape, q.block_size)
    if q.format == "int4":
        scale = q.scales.astype(jnp.float32)[..., None]
        return elements.astype(jnp.float32) / scale + q.offsets.astype(jnp.float32)[..., None]
    if q.format == "mxfp4":
        scale = C.e8m0_decode(q.scales)
    else:
        scale = C.e4m3_decode(q.scales) * q.tensor_scale
    return C.e2m1_decode(elements) * scale[..., None]


@functools.partial(jax.jit, static_argnums=1)
def dequantize(q: QuantizedArray, dtype: Any = None) -> jax.Array:
    """The array ``q`` holds, in ``dtype`` (default the quantized array's own)."""
    values = block_values(q)
    values = values.reshape(*values.shape[:-2], -1)[..., : q.shape[q.axis]]
    return jnp.moveaxis(values, -1, q.axis).astype(dtype or q.dtype)


def quantization_error(x: Float[Array, "..."], format: str, **kwargs) -> Float[Array, ""]:
    """Mean squared error of ``dequantize(quantize(x, format, **kwargs))`` against ``x`` (f32)."""
    x = jnp.asarray(x, jnp.float32)
    return jnp.mean((dequantize(quantize(x, format, **kwargs), jnp.float32) - x) ** 2)


def bits_per_element(q: QuantizedArray) -> float:
    """Stored bits per element of the original array (codes, scales and any offsets)."""
    return 8 * q.nbytes / math.prod(q.shape)
