r"""Noise-aware cross-entropy: the end-model loss on a label model's probabilistic labels.

Ratner, Bach, Ehrenberg, Fries, Wu, Re, "Snorkel: Rapid Training Data Creation with Weak Supervision",
VLDB 2018, section 2.3: the end model minimises the expected loss under the label model's posterior
:math:`\tilde Y = P(Y \mid \lambda)`,

.. math::  \ell(x_r) = -\sum_{c=1}^{k} \tilde Y_{rc} \log \mathrm{softmax}(z_r)_c,

averaged over the rows (snorkel's ``cross_entropy_with_probs`` with ``reduction="mean"``) or, with row
``weights`` w, the weighted mean :math:`\sum_r w_r \ell_r / \sum_r w_r` (snorkel's ``weight`` is per
*class*, not per row).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxflash.utils import check_values

# How far a row of ``probs`` may be from summing to one (float32 label-model outputs over many classes).
PROBS_SUM_TOL = 1e-4


def noise_aware_cross_entropy(logits: Any, probs: Any, weights: Any | None = None) -> jax.Array:
    """Mean (or ``weights``-weighted mean) over rows of ``-sum_c probs[r, c] log_softmax(logits)[r, c]``.

    Args:
      logits: ``[n, k]`` unnormalised scores of the end model.
      probs: ``[n, k]`` probabilistic labels (e.g. ``LabelModel.predict_proba``): rows of non-negative
        entries summing to 1 within ``PROBS_SUM_TOL``; one-hot rows give the ordinary cross-entropy.
      weights: optional ``[n]`` non-negative row weights with a positive sum.

    Returns a float32 (or wider, following ``logits``) scalar; the gradient with respect to ``logits`` is
    ``w_r (softmax(logits_r) - probs_r) / sum(w)``. Shape errors raise ``ValueError`` always; value errors
    (rows not summing to one, negative weights) raise on concrete inputs and, under ``jit``, follow
    :func:`jaxflash.utils.check_values`.
    """
    logits = jnp.asarray(logits)
    probs = jnp.asarray(probs)
    if logits.ndim != 2 or logits.shape[1] < 1:
        raise ValueError(f"logits must be [n, k], got {logits.shape=}")
    if probs.shape != logits.shape:
        raise ValueError(f"probs must have the shape of logits, got {probs.shape=} and {logits.shape=}")
    dtype = jnp.promote_types(logits.dtype, jnp.float32)
    probs = probs.astype(dtype)
    total = probs.sum(axis=1)
    check_values(
        (jnp.abs(total - 1) <= PROBS_SUM_TOL) & jnp.all(probs >= 0, axis=1),
        "probs rows must be distributions (entries >= 0 summing to 1 within {}); the sums range over "
        "[{}, {}] and the smallest entry is {}",
        PROBS_SUM_TOL,
        total.min(),
        total.max(),
        probs.min(),
    )
    per_row = -jnp.sum(probs * jax.nn.log_softmax(logits.astype(dtype), axis=1), axis=1)
    if weights is None:
        return per_row.mean()
    weights = jnp.asarray(weights)
    if weights.shape != per_row.shape:
        raise ValueError(f"weights must be [n] = {per_row.shape}, got {weights.shape=}")
    weights = weights.astype(dtype)
    check_values(
        jnp.all(weights >= 0) & (weights.sum() > 0),
        "weights must be >= 0 with a positive sum; got min {} and sum {}",
        weights.min(),
        weights.sum(),
    )
    return jnp.sum(weights * per_row) / weights.sum()
