"""The checks every model runs before computing: the config's type, the parameters' size, the token
ids' shape, dtype and range, sequence lengths, and positions within a recurrent state.

Shape, dtype and size errors raise at once, eagerly or under ``jit``. Checks on *values* (token ids in
``[0, vocab_size)``, a step position inside the cache) go through :func:`jaxflash.utils.check_values`:
they raise ``ValueError`` on concrete arrays (eager calls); under ``jit`` the values are unknown while
tracing, so they are skipped unless value checks are on (``JAXFLASH_VALUE_CHECKS=1`` or ``with
jaxflash.utils.value_checks():``, then run the jitted function under ``checkify.checkify``). Skipped, an
out-of-range id reads a NaN embedding row and a step past the cache overwrites its last slot.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxflash.utils import check_values, fits_in_memory, is_traced, memory_estimate_message


def require_config(config: Any, config_class: type, model: str) -> None:
    """``TypeError`` unless ``config`` is a ``config_class``: a dict is not accepted, so that every field
    is validated and typed once, by the config class."""
    if isinstance(config, config_class):
        return
    build = f"{config_class.__name__}(**config)" if isinstance(config, Mapping) else config_class.__name__
    raise TypeError(
        f"{model} takes a {config_class.__name__}; got {type(config).__name__}. Build one with {build} "
        "or a preset from jaxflash.models.PRESETS"
    )


def _parameter_shapes(model_class: type, config: Any) -> list[jax.ShapeDtypeStruct]:
    model = nnx.eval_shape(lambda: model_class(config, rngs=nnx.Rngs(0)))
    return jax.tree.leaves(nnx.state(model, nnx.Param))


def parameter_count(model_class: type, config: Any) -> int:
    """Parameters of ``model_class(config)``, from shapes alone (nothing is allocated)."""
    return sum(math.prod(x.shape) for x in _parameter_shapes(model_class, config))


def check_parameters_fit(model_class: type, config: Any, rngs: nnx.Rngs) -> None:
    """``ValueError`` with the estimate when the parameters cannot fit in memory, before any is made.

    Only for an eager build: under ``jit`` or ``eval_shape`` (``rngs`` traced) nothing is allocated
    here, and a sharded initialisation may spread the parameters over many devices.
    """
    if is_traced(nnx.state(rngs)):
        return
    shapes = _parameter_shapes(model_class, config)
    nbytes = sum(math.prod(x.shape) * x.dtype.itemsize for x in shapes)
    if not fits_in_memory(nbytes):
        count = sum(math.prod(x.shape) for x in shapes)
        raise ValueError(
            memory_estimate_message(f"{model_class.__name__} ({count:,} parameters)", nbytes)
            + "; shrink vocab_size, d_model, n_layers, d_inner or max_seq_len"
        )


def check_token_ids(
    ids: Any, size: int, *, name: str = "tokens", size_name: str = "vocab_size", step: bool = False
) -> jax.Array:
    """Integer ids ``[batch, seq]`` (``[batch]`` for a recurrent ``step``) in ``[0, size)``."""
    ids = jnp.asarray(ids)
    if step and ids.ndim != 1:
        raise ValueError(f"step takes one id per sequence, {name} of shape [batch]; got shape {ids.shape}")
    if not step and ids.ndim != 2:
        hint = f"; add a batch axis ({name}[None])" if ids.ndim == 1 else ""
        raise ValueError(f"{name} must have shape [batch, seq]; got shape {ids.shape}{hint}")
    if not jnp.issubdtype(ids.dtype, jnp.integer):
        raise TypeError(f"{name} must be integer ids; got dtype {ids.dtype}")
    check_values(
        (ids >= 0) & (ids < size),
        f"{name} must lie in [0, {size_name}={size}); got min {{}} and max {{}}",
        ids.min(),
        ids.max(),
    )
    return ids


def check_length(name: str, length: int, max_seq_len: int) -> None:
    """A sequence (or cache) length within the model's ``max_seq_len``."""
    if length > max_seq_len:
        raise ValueError(f"{name} {length} exceeds max_seq_len={max_seq_len}; raise the config's max_seq_len")


def check_step_position(
    pos: jax.Array,
    max_len: int,
    what: str = "state from init_state",
    fix: str = "call init_state with a larger max_len (at most max_seq_len)",
) -> None:
    """A value check that a recurrent step stays inside its fixed-length ``what``: past it,
    ``dynamic_update_slice`` clamps and silently overwrites the last slot (and an embedding lookup
    reads a NaN row)."""
    check_values(pos < max_len, f"step at position {{}} is past max_len={max_len} of the {what}; {fix}", pos)


def check_prefill_length(length: int, max_len: int) -> None:
    """A prompt of ``length`` tokens must fit the ``max_len`` of the decode state it fills."""
    if length > max_len:
        raise ValueError(
            f"prompt of length {length} does not fit a decode state of max_len={max_len}; "
            "raise max_len (at most max_seq_len) or shorten the prompt"
        )
