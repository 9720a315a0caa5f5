"""What every kernel family shares: interpret mode, per-backend compiler params and tile matmuls.

One kernel body serves every backend. ``implementation="pallas"`` compiles it (Triton lowering on
GPU, Mosaic on TPU); ``implementation="pallas_interpret"`` runs the same body in the Pallas
interpreter, which is how the CPU test suite exercises kernels. Setting
``JAXFLASH_PALLAS_INTERPRET=tpu`` makes the interpreter emulate TPU semantics and raise on
out-of-bounds reads, where the plain interpreter would pad them with NaN.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from jaxflash import utils

INTERPRET_ENV_VAR = "JAXFLASH_PALLAS_INTERPRET"


def interpret_for(implementation: str) -> Any:
    """The ``interpret=`` value of ``pl.pallas_call`` for a dispatch implementation name."""
    if implementation == "pallas":
        return False
    if implementation != "pallas_interpret":
        raise ValueError(f"{implementation=} is not a Pallas implementation")
    if os.environ.get(INTERPRET_ENV_VAR, "").strip().lower() == "tpu":
        from jax.experimental.pallas import tpu as pltpu

        return pltpu.InterpretParams(out_of_bounds_reads="raise", uninitialized_memory="nan")
    return True


def compiler_params(
    interpret: Any,
    *,
    num_warps: int | None = None,
    num_stages: int | None = None,
    dimension_semantics: tuple[str, ...] | None = None,
) -> pl.CompilerParams | None:
    """Backend compiler parameters for a compiled call; None when interpreting.

    On GPU this selects the Triton lowering (Ampere and Hopper alike), which the kernels here are
    written for; on TPU, Mosaic with the given grid ``dimension_semantics``.
    """
    if interpret is not False:
        return None
    platform = utils.current_platform()
    if platform == "gpu":
        from jax.experimental.pallas import triton as pltriton

        return pltriton.CompilerParams(num_warps=num_warps, num_stages=num_stages)
    if platform == "tpu":
        from jax.experimental.pallas import tpu as pltpu

        return pltpu.CompilerParams(dimension_semantics=dimension_semantics)
    raise NotImplementedError(f"compiled Pallas kernels need a GPU or TPU; the backend is {platform!r}")


# --- matmuls inside a kernel body ------------------------------------------------------------------------


def dot(a: jax.Array, b: jax.Array, contract: tuple[tuple[int, ...], tuple[int, ...]]) -> jax.Array:
    """``lax.dot_general`` of two tiles with no batch axes, accumulating in f32 (f32 operands at
    ``HIGHEST`` precision, :func:`jaxflash.utils.matmul_precision`)."""
    return lax.dot_general(
        a,
        b,
        (contract, ((), ())),
        precision=utils.matmul_precision(a.dtype),
        preferred_element_type=jnp.float32,
    )


def dot_nn(a: jax.Array, b: jax.Array) -> jax.Array:
    """``a @ b``, as :func:`dot`."""
    return dot(a, b, ((1,), (0,)))


def dot_nt(a: jax.Array, b: jax.Array) -> jax.Array:
    """``a @ b.T``, as :func:`dot`."""
    return dot(a, b, ((1,), (1,)))


def dot_tn(a: jax.Array, b: jax.Array) -> jax.Array:
    """``a.T @ b``, as :func:`dot`."""
    return dot(a, b, ((0,), (0,)))
