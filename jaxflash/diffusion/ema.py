"""Exponential moving average of weights, as DiT's ``update_ema``."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


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
