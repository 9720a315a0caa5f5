"""The 4- and 8-bit number formats of block floating point, as integer codes in ``uint8``.

* **E2M1** (FP4, ``float4_e2m1fn``): sign, 2 exponent bits (bias 1), 1 mantissa bit; the magnitudes
  ``0, 0.5, 1, 1.5, 2, 3, 4, 6``; no infinity or NaN. Code ``s eem`` in the low 4 bits.
* **E4M3** (``float8_e4m3fn``): bias 7, subnormal step ``2^-9``, largest 448, NaN ``0x7F`` / ``0xFF``;
  no infinity. The NVFP4 block scale.
* **E8M0** (``float8_e8m0fnu``): an unsigned power of two ``2^(code - 127)``, codes ``0 .. 254``; ``0xFF``
  is NaN; no zero. The MXFP4 block scale.

Encoders round to nearest, ties to even, as ``ml_dtypes`` does, and **saturate** where a value is beyond
the largest finite one (the OCP MX rule for conversions; ``ml_dtypes`` instead gives NaN for E4M3). Every
function is ``jnp`` only; the decoders use shifts, bitcasts and ``where`` (no table gather), so the
Pallas kernels of :mod:`jaxflash.pallas_kernels.quant_matmul` call them in registers.
"""

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, UInt8

E2M1_MAX = 6.0
E4M3_MAX = 448.0
E4M3_NAN = 0x7F
E8M0_NAN = 0xFF
E8M0_BIAS = 127

# The E2M1 magnitudes by code 0..7; codes 8..15 are their negatives (8 is -0).
E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)


def _pow2(exponent: jax.Array) -> jax.Array:
    """``2^exponent`` in f32 for int32 exponents in the normal range ``[-126, 127]``, from the bits."""
    return jax.lax.bitcast_convert_type((exponent + 127) << 23, jnp.float32)


def e2m1_decode(codes: UInt8[Array, "*s"]) -> Float[Array, "*s"]:
    """The f32 value of each E2M1 code (low 4 bits of ``codes``): ``0, 0.5, 1, 1.5, 2, 3, 4, 6`` and
    their negatives. Shifts and ``where`` only (no table gather), so kernels can call it."""
    code = codes.astype(jnp.int32) & 0xF
    exponent = (code >> 1) & 0x3
    half = (code & 0x1).astype(jnp.float32) * 0.5
    magnitude = jnp.where(exponent == 0, half, (1.0 + half) * _pow2(jnp.maximum(exponent, 1) - 1))
    return jnp.where((code & 0x8) != 0, -magnitude, magnitude)


def e2m1_encode(x: Float[Array, "*s"]) -> UInt8[Array, "*s"]:
    """The nearest E2M1 code of each value (ties to the even code), saturating at ±6. ``-0`` and
    negatives that round to zero get code 8 (``-0``), as ``ml_dtypes`` gives. NaN gives code 0."""
    x = jnp.asarray(x, jnp.float32)
    a = jnp.abs(x)
    magnitude = jnp.zeros(x.shape, jnp.uint8)
    for k in range(len(E2M1_VALUES) - 1):
        midpoint = (E2M1_VALUES[k] + E2M1_VALUES[k + 1]) / 2
        # A tie goes to the even code: up when k + 1 is even, down when k is.
        up = a >= midpoint if k % 2 else a > midpoint
        magnitude = magnitude + up.astype(jnp.uint8)
    sign = jnp.where(jnp.signbit(x) & ~jnp.isnan(x), jnp.uint8(8), jnp.uint8(0))
    return magnitude | sign


def e4m3_decode(codes: UInt8[Array, "*s"]) -> Float[Array, "*s"]:
    """The f32 value of each E4M3 code; ``0x7F`` and ``0xFF`` are NaN (kernel-safe, as e2m1_decode)."""
    code = codes.astype(jnp.int32)
    exponent = (code >> 3) & 0xF
    mantissa = (code & 0x7).astype(jnp.float32)
    normal = (1.0 + mantissa * 0.125) * _pow2(jnp.maximum(exponent, 1) - 7)
    magnitude = jnp.where(exponent == 0, mantissa * (2.0**-9), normal)
    value = jnp.where((code & 0x80) != 0, -magnitude, magnitude)
    return jnp.where((code & 0x7F) == E4M3_NAN, jnp.nan, value)


def e4m3_encode_positive(v: Float[Array, "*s"]) -> UInt8[Array, "*s"]:
    """The nearest E4M3 code of each value ``v >= 0`` (ties to even), saturating at 448 (code 0x7E).
    NaN gives the NaN code 0x7F."""
    v = jnp.asarray(v, jnp.float32)
    finite = jnp.minimum(jnp.where(jnp.isnan(v), 0.0, v), E4M3_MAX)
    _, e = jnp.frexp(finite)  # finite = m 2^e, m in [0.5, 1): the binade's exponent is e - 1
    exponent = jnp.maximum(e - 1, -6)  # below 2^-6 the step stays 2^-9 (subnormals)
    steps = jnp.round(jnp.ldexp(finite, 3 - exponent))  # in units of the binade's step; half to even
    # steps in [8, 16] for a normal binade (16 carries into the next), [0, 8] for subnormals.
    carry = steps >= 16
    exponent = jnp.where(carry, exponent + 1, exponent)
    steps = jnp.where(carry, steps / 2, steps)
    is_normal = steps >= 8
    field = jnp.where(is_normal, exponent + 7, 0)
    mantissa = jnp.where(is_normal, steps - 8, steps)
    codes = (field * 8 + mantissa).astype(jnp.uint8)
    return jnp.where(jnp.isnan(v), jnp.uint8(E4M3_NAN), codes)


def e8m0_decode(codes: UInt8[Array, "*s"]) -> Float[Array, "*s"]:
    """``2^(code - 127)`` in f32 from the bits; ``0xFF`` is NaN. Code 0, ``2^-127``, is an f32 subnormal,
    which XLA flushes to zero anyway: it decodes as 0 (only a block of values below ``2^-125``, f32
    subnormals themselves, would use it)."""
    code = codes.astype(jnp.int32)
    value = jax.lax.bitcast_convert_type(code << 23, jnp.float32)
    value = jnp.where(code == 0, 0.0, value)
    return jnp.where(code == E8M0_NAN, jnp.nan, value)


def e8m0_from_exponent(exponent: Array) -> UInt8[Array, "*s"]:
    """The E8M0 code of ``2^exponent``, the exponent clamped to the format's ``[-127, 127]``."""
    return (jnp.clip(exponent, -E8M0_BIAS, E8M0_BIAS) + E8M0_BIAS).astype(jnp.uint8)


def pack_nibbles(codes: UInt8[Array, "*s n"], *, high_first: bool = False) -> UInt8[Array, "*s n/2"]:
    """Two 4-bit codes per byte along the last axis (even length). ``high_first=False`` puts element
    ``2i`` in the low nibble (OCP MX, PyTorch's ``float4_e2m1fn_x2``); ``True`` in the high nibble
    (FlexGen's ``q[even] << 4 | q[odd]``)."""
    if codes.shape[-1] % 2:
        raise ValueError(f"pack_nibbles needs an even last axis; got shape {codes.shape}")
    first, second = codes[..., 0::2] & 0xF, codes[..., 1::2] & 0xF
    if high_first:
        return (first << 4) | second
    return (second << 4) | first


def unpack_nibbles(packed: UInt8[Array, "*s m"], *, high_first: bool = False) -> UInt8[Array, "*s 2m"]:
    """The inverse of :func:`pack_nibbles`."""
    low, high = packed & 0xF, packed >> 4
    first, second = (high, low) if high_first else (low, high)
    return jnp.stack([first, second], axis=-1).reshape(*packed.shape[:-1], 2 * packed.shape[-1])
