"""The Gaussian log-likelihood terms of the variational bound (improved-diffusion ``losses.py``)."""

from __future__ import annotations

import math

import jax.numpy as jnp
from jaxtyping import Array, Float


def normal_kl(
    mean1: Float[Array, "*s"],
    logvar1: Float[Array, "*s"],
    mean2: Float[Array, "*s"],
    logvar2: Float[Array, "*s"],
) -> Float[Array, "*s"]:
    """``KL(N(mean1, e^logvar1) || N(mean2, e^logvar2))`` elementwise, in nats::

    0.5 (-1 + logvar2 - logvar1 + exp(logvar1 - logvar2) + (mean1 - mean2)^2 exp(-logvar2))
    """
    return 0.5 * (
        -1.0 + logvar2 - logvar1 + jnp.exp(logvar1 - logvar2) + jnp.square(mean1 - mean2) * jnp.exp(-logvar2)
    )


def approx_standard_normal_cdf(x: Float[Array, "*s"]) -> Float[Array, "*s"]:
    """The tanh approximation of the standard normal CDF,
    ``0.5 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``."""
    return 0.5 * (1.0 + jnp.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(
    x: Float[Array, "*s"], means: Float[Array, "*s"], log_scales: Float[Array, "*s"]
) -> Float[Array, "*s"]:
    """Log-probability (nats) of data ``x`` in [-1, 1], quantised to 256 levels (bins of width 2/255),
    under ``N(means, exp(log_scales)^2)``: the mass of ``x``'s bin, with the edge bins open to
    ``-inf`` (``x < -0.999``) and ``+inf`` (``x > 0.999``); probabilities clamped at 1e-12.
    """
    centered = x - means
    inv_std = jnp.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_std * (centered + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = jnp.log(jnp.maximum(cdf_plus, 1e-12))
    log_one_minus_cdf_min = jnp.log(jnp.maximum(1.0 - cdf_min, 1e-12))
    log_delta = jnp.log(jnp.maximum(cdf_plus - cdf_min, 1e-12))
    return jnp.where(x < -0.999, log_cdf_plus, jnp.where(x > 0.999, log_one_minus_cdf_min, log_delta))
