"""A W4 matmul: ``x @ W`` with ``W`` block-quantized along its contraction axis, dequantized in the kernel.

``W`` ``[K, N]`` is stored as :func:`jaxflash.quant.quantize` lays out ``quantize(W, fmt, axis=0)``: the
packed codes ``[N, K_pad / 2]`` (two 4-bit codes a byte, ``K`` zero-padded to whole blocks) and one scale
per block ``[N, K_pad / block]``. Each program computes one ``[block_m, block_n]`` tile of the output and
loops over ``K`` in chunks of ``block_k``: it loads the chunk's codes and scales, unpacks the two nibbles,
decodes them and accumulates in f32

    out[m, n] = sum_k x[m, k] W[k, n],   W[k, n] = element(code[n, k]) * scale[n, k // block]

* ``"int4"`` (FlexGen): ``W = q / scale + min`` (high nibble first; ``scale`` and ``min`` in f16).
* ``"mxfp4"``: E2M1 elements times an E8M0 scale ``2^(c - 127)`` (low nibble first).
* ``"nvfp4"``: E2M1 elements times an E4M3 block scale; the f32 tensor scale multiplies the finished tile.

The E2M1, E8M0 and E4M3 decodes are written with shifts, bitcasts and ``where`` (no table gather), so
the same body runs in the Pallas interpreter and lowers to Triton. Nibble ``2i`` and ``2i + 1`` of a byte
multiply columns ``2i`` and ``2i + 1`` of ``x``: the caller's ``x`` is split into its even and odd
columns outside the kernel, so the kernel takes two dots per chunk and never interleaves nibbles. The
op's definition, validation and reference live in :mod:`jaxflash.quant.matmul`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jaxflash.pallas_kernels.common import compiler_params

from jaxflash.quant.codes import e2m1_decode, e4m3_decode, e8m0_decode
from jaxflash.utils import cdiv, check_int, matmul_precision

FORMATS = ("int4", "mxfp4", "nvfp4")
# Triton's tl.dot needs every operand dimension >= 16.
_MIN_DOT_DIM = 16
# The K chunk when the config leaves it open: the smallest multiple of the format's block >= this.
_DEFAULT_BLOCK_K = 64


@dataclasses.dataclass(frozen=True)
class QuantMatmulConfig:
    """Tile sizes of the W4 kernel; reach them through ``quantized_matmul(..., config=...)``.

    Attributes:
      block_m: rows of ``x`` per program.
      block_n: output columns (rows of the packed codes) per program.
      block_k: elements of ``K`` per loop step; a multiple of the format's block size. None: the smallest
        such multiple >= 64.
      num_warps: Triton warps per program.
      num_stages: Triton software-pipelining stages.

    The compiled (Triton) path needs ``block_m``, ``block_n`` and ``block_k / 2`` powers of two >= 16;
    the interpreter takes any positive sizes.
    """

    block_m: int = 16
    block_n: int = 64
    block_k: int | None = None
    num_warps: int = 4
    num_stages: int = 2

    def __post_init__(self):
        for name in ("block_m", "block_n", "num_warps", "num_stages"):
            check_int(f"QuantMatmulConfig.{name}", getattr(self, name))
        if self.block_k is not None:
            check_int("QuantMatmulConfig.block_k", self.block_k, minimum=2)


def resolve_block_k(config: QuantMatmulConfig, block_size: int) -> int:
    """The K chunk for a format's ``block_size``; a ``ValueError`` when the config's is no multiple of it."""
    if config.block_k is None:
        return cdiv(max(_DEFAULT_BLOCK_K, block_size), block_size) * block_size
    if config.block_k % block_size:
        raise ValueError(
            f"QuantMatmulConfig.block_k={config.block_k} must be a multiple of the weight's block size "
            f"{block_size} (a chunk of K holds whole blocks)"
        )
    return config.block_k


def unsupported_reason(config: QuantMatmulConfig, block_size: int) -> str | None:
    """Why the compiled (Triton) kernel cannot run with these tiles, or None when it can."""
    block_k = resolve_block_k(config, block_size)
    sizes = (("block_m", config.block_m), ("block_n", config.block_n), ("block_k / 2", block_k // 2))
    for name, v in sizes:
        if v < _MIN_DOT_DIM or v & (v - 1):
            return f"the compiled kernel needs {name} a power of two >= {_MIN_DOT_DIM}; got {v}"
    if block_size & (block_size - 1):
        return f"the compiled kernel needs a power-of-two block size; got {block_size} (use 'xla')"
    return None


# --- kernel -------------------------------------------------------------------------------------


def _kernel(
    xe_ref, xo_ref, codes_ref, scales_ref, offsets_ref, tscale_ref, o_ref, *, fmt, block_k, block_size
):
    # xe_ref / xo_ref: (bm, K/2), the even / odd columns of x; codes_ref: (bn, K/2) uint8;
    # scales_ref / offsets_ref: (bn, K/block); tscale_ref: (1, 1) f32; o_ref: (bm, bn).
    bm = xe_ref.shape[0]
    bn = codes_ref.shape[0]
    half_k = block_k // 2
    blocks = block_k // block_size
    num_chunks = xe_ref.shape[1] // half_k
    dot_dtype = xe_ref.dtype
    precision = matmul_precision(dot_dtype)

    def expand(per_block: jax.Array) -> jax.Array:
        # (bn, blocks) -> (bn, block_k / 2): each block's value over its block_size / 2 bytes.
        wide = jnp.broadcast_to(per_block[:, :, None], (bn, blocks, block_size // 2))
        return wide.reshape(bn, half_k)

    def dot(xs: jax.Array, w: jax.Array) -> jax.Array:
        return jax.lax.dot_general(
            xs,
            w.astype(dot_dtype),
            (((1,), (1,)), ((), ())),
            precision=precision,
            preferred_element_type=jnp.float32,
        )

    def step(c, acc):
        bytes_ = pl.ds(pl.multiple_of(c * half_k, half_k), half_k)
        block_cols = pl.ds(c * blocks, blocks)
        packed = codes_ref[:, bytes_].astype(jnp.int32)
        low, high = packed & 0xF, (packed >> 4) & 0xF
        if fmt == "int4":
            first, second = high.astype(jnp.float32), low.astype(jnp.float32)
            scale = expand(scales_ref[:, block_cols].astype(jnp.float32))
            offset = expand(offsets_ref[:, block_cols].astype(jnp.float32))
            w_first, w_second = first / scale + offset, second / scale + offset
        else:
            codes = scales_ref[:, block_cols].astype(jnp.int32)
            scale = expand(e8m0_decode(codes) if fmt == "mxfp4" else e4m3_decode(codes))
            w_first, w_second = e2m1_decode(low) * scale, e2m1_decode(high) * scale
        acc = acc + dot(xe_ref[:, bytes_], w_first)
        return acc + dot(xo_ref[:, bytes_], w_second)

    acc = jax.lax.fori_loop(0, num_chunks, step, jnp.zeros((bm, bn), jnp.float32))
    o_ref[...] = (acc * tscale_ref[...]).astype(o_ref.dtype)


def _pad_to(a: jax.Array, shape: tuple[int, int], value: Any = 0) -> jax.Array:
    pads = [(0, s - d) for s, d in zip(shape, a.shape, strict=True)]
    return jnp.pad(a, pads, constant_values=value) if any(p for _, p in pads) else a


@functools.partial(jax.jit, static_argnames=("fmt", "block_size", "interpret", "config"))
def _quant_matmul(x, codes, scales, offsets, tensor_scale, *, fmt, block_size, interpret, config):
    m, k = x.shape
    n = codes.shape[0]
    bm, bn = config.block_m, config.block_n
    block_k = resolve_block_k(config, block_size)
    mp, np_, kp = cdiv(m, bm) * bm, cdiv(n, bn) * bn, cdiv(k, block_k) * block_k
    # Zero columns of x meet finite weights: padded int4 groups get scale 1 and minimum 0, padded FP4
    # blocks scale code 0 (value 0). Padded rows and columns of the output are cut off below.
    x = _pad_to(x, (mp, kp))
    xe, xo = x[:, 0::2], x[:, 1::2]
    codes = _pad_to(codes, (np_, kp // 2))
    scales = _pad_to(scales, (np_, kp // block_size), 1 if fmt == "int4" else 0)
    if offsets is None:
        offsets = jnp.zeros((1, 1), jnp.float32)
        offsets_spec = pl.BlockSpec((1, 1), lambda i, j: (0, 0))
    else:
        offsets = _pad_to(offsets, (np_, kp // block_size))
        offsets_spec = pl.BlockSpec((bn, kp // block_size), lambda i, j: (j, 0))
    tscale = jnp.ones((1, 1), jnp.float32) if tensor_scale is None else tensor_scale.reshape(1, 1)
    out = pl.pallas_call(
        functools.partial(_kernel, fmt=fmt, block_k=block_k, block_size=block_size),
        grid=(mp // bm, np_ // bn),
        in_specs=[
            pl.BlockSpec((bm, kp // 2), lambda i, j: (i, 0)),
            pl.BlockSpec((bm, kp // 2), lambda i, j: (i, 0)),
            pl.BlockSpec((bn, kp // 2), lambda i, j: (j, 0)),
            pl.BlockSpec((bn, kp // block_size), lambda i, j: (j, 0)),
            offsets_spec,
            pl.BlockSpec((1, 1), lambda i, j: (0, 0)),
        ],
        out_specs=pl.BlockSpec((bm, bn), lambda i, j: (i, j)),
        out_shape=jax.ShapeDtypeStruct((mp, np_), x.dtype),
        interpret=interpret,
        compiler_params=compiler_params(
            interpret,
            num_warps=config.num_warps,
            num_stages=config.num_stages,
            dimension_semantics=("parallel", "parallel"),
        ),
        name="quant_matmul_w4",
    )(xe, xo, codes, scales, offsets, tscale.astype(jnp.float32))
    return out[:m, :n]


def quant_matmul(
    x: jax.Array,
    codes: jax.Array,
    scales: jax.Array,
    offsets: jax.Array | None,
    tensor_scale: jax.Array | None,
    *,
    fmt: str,
    block_size: int,
    interpret: Any = False,
    config: QuantMatmulConfig | None = None,
) -> jax.Array:
    """``x @ W`` for 2-D ``x`` (M, K) and ``W`` (K, N) given as its packed codes (N, K_pad / 2) and
    per-block scales (N, K_pad / block_size) (plus int4 ``offsets``, NVFP4 ``tensor_scale``); (M, N) in
    ``x.dtype``, accumulated in f32.

    Raises ``ValueError`` for inconsistent shapes and ``NotImplementedError`` when compiling tiles the
    Triton backend cannot take. The public op (:func:`jaxflash.quant.matmul.quantized_matmul`) validates
    the user's input; this checks what the kernel itself needs.
    """
    config = QuantMatmulConfig() if config is None else config
    if fmt not in FORMATS:
        raise ValueError(f"fmt={fmt!r} is not one of {FORMATS}")
    if x.ndim != 2 or codes.ndim != 2 or scales.ndim != 2:
        raise ValueError(f"x, codes and scales must be 2-D; got {x.shape=}, {codes.shape=}, {scales.shape=}")
    n, k_pad = codes.shape[0], 2 * codes.shape[1]
    if k_pad % block_size or scales.shape != (n, k_pad // block_size):
        raise ValueError(f"codes and scales do not match: {codes.shape=}, {scales.shape=}, {block_size=}")
    if not k_pad - block_size < x.shape[1] <= k_pad:
        raise ValueError(f"x has {x.shape[1]} features but the codes hold K_pad={k_pad} ({x.shape=})")
    if (offsets is None) != (fmt != "int4") or (offsets is not None and offsets.shape != scales.shape):
        raise ValueError(f"int4 weights need offsets shaped like the scales; got {fmt=}, offsets={offsets}")
    if (tensor_scale is None) != (fmt != "nvfp4"):
        raise ValueError(f"nvfp4 weights (only) carry a tensor scale; got {fmt=}, {tensor_scale=}")
    resolve_block_k(config, block_size)
    if interpret is False:
        reason = unsupported_reason(config, block_size)
        if reason is not None:
            raise NotImplementedError(reason)
    return _quant_matmul(
        x,
        codes,
        scales,
        offsets,
        tensor_scale,
        fmt=fmt,
        block_size=block_size,
        interpret=interpret,
        config=config,
    )
