"""The forward process, the model's reverse-step distribution and DiT's training loss.

Layout: data ``x [b, ..., C]`` channels last; ``t [b]`` int steps of the chain (``0 .. T-1``). A model
is a function ``model_fn(x_t, timesteps) -> out`` called with the *original* timesteps
``diffusion.timestep_map[t]`` (what ``SpacedDiffusion``'s wrapped model passes); with a learned
variance ``out`` has ``2C`` channels, ``[eps (or x_0) prediction, v]``, ``v`` in about [-1, 1].

Equations (improved-diffusion ``gaussian_diffusion.py``)::

    q_sample:    x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps
    x_0 from eps: x_0 = sqrt(1/abar_t) x_t - sqrt(1/abar_t - 1) eps
    learned range: log sigma_t^2 = f log beta_t + (1 - f) log beta~_t,  f = (v + 1) / 2
    model mean:  mu(x_t) = c1_t x0_hat + c2_t x_t   (the posterior mean at the predicted x_0)
    L_vb(t > 0) = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) / ln 2          (bits per dim)
    L_vb(t = 0) = -log p(x_0 | x_1) / ln 2, discretised Gaussian decoder
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from jaxflash.diffusion.likelihood import discretized_gaussian_log_likelihood, normal_kl
from jaxflash.diffusion.schedule import Diffusion

ModelFn = Callable[[jax.Array, jax.Array], jax.Array]


def extract(arr: Float[Array, " T"], t: Int[Array, " b"], ndim: int) -> Float[Array, "b ..."]:
    """``arr[t]`` shaped ``[b, 1, ..., 1]`` (``ndim`` axes) to broadcast against a batch of data."""
    t = jnp.asarray(t)
    return arr[t].reshape(t.shape + (1,) * (ndim - t.ndim))


def mean_flat(x: Float[Array, "b ..."]) -> Float[Array, " b"]:
    """The mean over every axis but the batch."""
    return jnp.mean(x, axis=tuple(range(1, x.ndim)))


def q_sample(
    diffusion: Diffusion, x0: Float[Array, "b ..."], t: Int[Array, " b"], noise: Float[Array, "b ..."]
) -> Float[Array, "b ..."]:
    """A draw of ``q(x_t | x_0)``: ``sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise``."""
    n = x0.ndim
    return (
        extract(diffusion.sqrt_alphas_cumprod, t, n) * x0
        + extract(diffusion.sqrt_one_minus_alphas_cumprod, t, n) * noise
    )


def q_mean_variance(
    diffusion: Diffusion, x0: jax.Array, t: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Mean ``sqrt(abar_t) x_0``, variance ``1 - abar_t`` and log variance of ``q(x_t | x_0)``."""
    n = x0.ndim
    mean = extract(diffusion.sqrt_alphas_cumprod, t, n) * x0
    var = extract(1.0 - diffusion.alphas_cumprod, t, n)
    return mean, var, jnp.log(var)


def q_posterior_mean_variance(
    diffusion: Diffusion, x0: Float[Array, "b ..."], x_t: Float[Array, "b ..."], t: Int[Array, " b"]
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``q(x_{t-1} | x_t, x_0) = N(c1_t x_0 + c2_t x_t, beta~_t)``: mean, variance, clipped log variance."""
    n = x0.ndim
    mean = (
        extract(diffusion.posterior_mean_coef1, t, n) * x0
        + extract(diffusion.posterior_mean_coef2, t, n) * x_t
    )
    return (
        mean,
        extract(diffusion.posterior_variance, t, n),
        extract(diffusion.posterior_log_variance_clipped, t, n),
    )


def predict_x0_from_eps(diffusion: Diffusion, x_t: jax.Array, t: jax.Array, eps: jax.Array) -> jax.Array:
    """``x_0 = sqrt(1/abar_t) x_t - sqrt(1/abar_t - 1) eps``."""
    n = x_t.ndim
    return (
        extract(diffusion.sqrt_recip_alphas_cumprod, t, n) * x_t
        - extract(diffusion.sqrt_recipm1_alphas_cumprod, t, n) * eps
    )


def predict_eps_from_x0(diffusion: Diffusion, x_t: jax.Array, t: jax.Array, x0: jax.Array) -> jax.Array:
    """``eps = (sqrt(1/abar_t) x_t - x_0) / sqrt(1/abar_t - 1)``."""
    n = x_t.ndim
    return (extract(diffusion.sqrt_recip_alphas_cumprod, t, n) * x_t - x0) / extract(
        diffusion.sqrt_recipm1_alphas_cumprod, t, n
    )


class MeanVariance(NamedTuple):
    """The model's Gaussian ``p(x_{t-1} | x_t)`` and the ``x_0`` it predicts."""

    mean: jax.Array
    variance: jax.Array
    log_variance: jax.Array
    pred_x0: jax.Array


def split_output(
    diffusion: Diffusion, model_output: jax.Array, channels: int
) -> tuple[jax.Array, jax.Array | None]:
    """``(prediction, v)``: the first and last ``channels`` of a learned-variance output, else
    ``(output, None)``."""
    want = 2 * channels if diffusion.learn_sigma else channels
    if model_output.shape[-1] != want:
        raise ValueError(
            f"the model output has {model_output.shape[-1]} channels; a {diffusion.var_type!r} diffusion of "
            f"{channels}-channel data needs {want} (learn_sigma doubles them)"
        )
    if not diffusion.learn_sigma:
        return model_output, None
    return model_output[..., :channels], model_output[..., channels:]


def p_mean_variance_from_output(
    diffusion: Diffusion,
    model_output: jax.Array,
    x_t: jax.Array,
    t: jax.Array,
    *,
    clip_denoised: bool = False,
    denoised_fn: Callable[[jax.Array], jax.Array] | None = None,
) -> MeanVariance:
    """``p(x_{t-1} | x_t)`` given the model's output at ``(x_t, t)`` (see the module docstring);
    ``denoised_fn`` then clipping to [-1, 1] are applied to the predicted ``x_0``."""
    n = x_t.ndim
    pred, v = split_output(diffusion, model_output, x_t.shape[-1])
    if v is not None:
        min_log = extract(diffusion.posterior_log_variance_clipped, t, n)
        max_log = extract(diffusion.log_betas, t, n)
        frac = (v + 1) / 2
        log_variance = frac * max_log + (1 - frac) * min_log
        variance = jnp.exp(log_variance)
    elif diffusion.var_type == "fixed_large":
        variance = extract(diffusion.large_variance, t, n) * jnp.ones_like(x_t)
        log_variance = extract(diffusion.large_log_variance, t, n) * jnp.ones_like(x_t)
    else:
        variance = extract(diffusion.posterior_variance, t, n) * jnp.ones_like(x_t)
        log_variance = extract(diffusion.posterior_log_variance_clipped, t, n) * jnp.ones_like(x_t)
    x0 = pred if diffusion.mean_type == "x0" else predict_x0_from_eps(diffusion, x_t, t, pred)
    if denoised_fn is not None:
        x0 = denoised_fn(x0)
    if clip_denoised:
        x0 = jnp.clip(x0, -1.0, 1.0)
    mean, _, _ = q_posterior_mean_variance(diffusion, x0, x_t, t)
    return MeanVariance(mean, variance, log_variance, x0)


def p_mean_variance(
    diffusion: Diffusion, model_fn: ModelFn, x_t: jax.Array, t: jax.Array, **kw
) -> MeanVariance:
    """:func:`p_mean_variance_from_output` of ``model_fn(x_t, timestep_map[t])``."""
    return p_mean_variance_from_output(diffusion, model_fn(x_t, diffusion.timestep_map[t]), x_t, t, **kw)


def vb_terms_bpd(
    diffusion: Diffusion,
    model_output: jax.Array,
    x0: jax.Array,
    x_t: jax.Array,
    t: jax.Array,
    *,
    clip_denoised: bool = False,
) -> tuple[Float[Array, " b"], Float[Array, "b ..."]]:
    """``(L_vb [b], pred_x0)`` in bits per dimension: the posterior KL for ``t > 0``, the discretised
    decoder NLL of ``x_0`` at ``t = 0`` (module docstring)."""
    true_mean, _, true_log_var = q_posterior_mean_variance(diffusion, x0, x_t, t)
    out = p_mean_variance_from_output(diffusion, model_output, x_t, t, clip_denoised=clip_denoised)
    kl = mean_flat(normal_kl(true_mean, true_log_var, out.mean, out.log_variance)) / math.log(2.0)
    nll = -discretized_gaussian_log_likelihood(x0, out.mean, 0.5 * out.log_variance)
    nll = mean_flat(nll) / math.log(2.0)
    return jnp.where(t == 0, nll, kl), out.pred_x0


def training_losses(
    diffusion: Diffusion,
    model_fn: ModelFn,
    x0: Float[Array, "b ..."],
    t: Int[Array, " b"],
    noise: Float[Array, "b ..."],
) -> dict[str, Float[Array, " b"]]:
    """DiT's per-example loss terms at steps ``t`` with ``noise``: ``{"loss", "mse", "vb"}`` (``"mse"``
    and ``"vb"`` for the MSE loss types; the mean over the batch is the training loss).

    MSE types: ``mse = mean((target - pred)^2)`` with target ``noise`` (or ``x_0``); with a learned
    variance ``vb = L_vb`` computed from ``[stop_gradient(pred), v]``, so the bound trains only the
    variance and the MSE alone the mean (improved-DDPM's hybrid loss); ``rescaled_mse`` scales ``vb``
    by ``T / 1000``; ``loss = mse + vb``. KL types: ``loss = L_vb`` (``rescaled_kl``: times ``T``).
    """
    x_t = q_sample(diffusion, x0, t, noise)
    model_output = model_fn(x_t, diffusion.timestep_map[t])
    if diffusion.loss_type in ("kl", "rescaled_kl"):
        vb, _ = vb_terms_bpd(diffusion, model_output, x0, x_t, t)
        scale = diffusion.num_timesteps if diffusion.loss_type == "rescaled_kl" else 1
        return {"loss": vb * scale}
    pred, v = split_output(diffusion, model_output, x0.shape[-1])
    terms = {}
    if v is not None:
        frozen = jnp.concatenate([jax.lax.stop_gradient(pred), v], axis=-1)
        vb, _ = vb_terms_bpd(diffusion, frozen, x0, x_t, t)
        if diffusion.loss_type == "rescaled_mse":
            vb = vb * (diffusion.num_timesteps / 1000.0)
        terms["vb"] = vb
    target = x0 if diffusion.mean_type == "x0" else noise
    terms["mse"] = mean_flat(jnp.square(target - pred))
    terms["loss"] = terms["mse"] + terms["vb"] if "vb" in terms else terms["mse"]
    return terms
