"""Exponential moving average of weights, as DiT's ``update_ema``: a pytree update, and the same as an
optax transformation whose state carries the average through training and checkpoints."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxflash.utils import check_real


def ema_update(ema: Any, params: Any, decay: float | jax.Array = 0.9999) -> Any:
    """``ema <- decay * ema + (1 - decay) * params`` leaf by leaf, for any matching pytrees (an
    ``nnx.State`` of parameters included); the result keeps ``ema``'s dtypes.

    Non-floating leaves (step counters, RNG counts) take ``params``'s value. DiT starts the average
    with ``decay=0`` (a copy of the weights) and then updates with 0.9999 after every step (0.999 is
    its suggestion for small experiments).
    """

    def update(e, p):
        if not jnp.issubdtype(jnp.result_type(e), jnp.floating):
            return p
        return (decay * e + (1 - decay) * p).astype(jnp.result_type(e))

    return jax.tree.map(update, ema, params)


class EmaParamsState(NamedTuple):
    """The optimizer state of :func:`ema_params`: the running average of the parameters."""

    ema_params: Any


def ema_params(decay: float) -> optax.GradientTransformation:
    """An optax transformation that leaves the updates alone and keeps, in its state, the exponential
    moving average of the parameters *after* each update: ``ema <- decay ema + (1 - decay)
    (params + updates)``, starting from the initial parameters (DiT's ``update_ema`` after every
    step, its EMA initialised as a copy of the weights).

    Put it last in an ``optax.chain`` (it must see the final updates); the average then lives in the
    optimizer state, so it is checkpointed and restored with it, and :func:`find_ema_params` reads it
    back. ``decay`` in ``[0, 1]``.
    """
    decay = check_real("decay", decay, at_least=0.0, at_most=1.0)

    def init(params):
        return EmaParamsState(jax.tree.map(lambda p: jnp.asarray(p).copy(), params))

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("ema_params needs the parameters: call tx.update(grads, state, params)")
        new = optax.apply_updates(params, updates)
        return updates, EmaParamsState(ema_update(state.ema_params, new, decay))

    return optax.GradientTransformation(init, update)


def find_ema_params(opt_state: Any) -> Any:
    """The parameter average an :func:`ema_params` transformation keeps somewhere in ``opt_state``
    (``None`` when there is none)."""
    found = optax.tree_utils.tree_get_all_with_path(opt_state, "ema_params")
    if not found:
        return None
    if len(found) > 1:
        raise ValueError("the optimizer state holds more than one ema_params average")
    return found[0][1]
