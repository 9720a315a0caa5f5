"""Ancestral DDPM and DDIM sampling, one step and the whole chain (a ``lax.fori_loop``, jit friendly).

DDPM (``p_sample``)::

    x_{t-1} = mu(x_t) + [t > 0] exp(log sigma_t^2 / 2) z,   z ~ N(0, I)

DDIM (Song et al. 2021, ``ddim_sample``), with ``eps_hat`` recomputed from the predicted ``x_0``::

    sigma_t = eta sqrt((1 - abar_{t-1}) / (1 - abar_t)) sqrt(1 - abar_t / abar_{t-1})
    x_{t-1} = sqrt(abar_{t-1}) x0_hat + sqrt(1 - abar_{t-1} - sigma_t^2) eps_hat + [t > 0] sigma_t z

``eta = 0`` is deterministic. Both walk the chain's steps ``T-1, ..., 0`` of a (possibly respaced)
:class:`~jaxflash.diffusion.Diffusion`; the model sees the original timesteps. ``clip_denoised``
defaults to False, what DiT's ``sample.py`` passes for latents (improved-diffusion's default is True).
Classifier-free guidance is the model function's business, e.g.
``lambda x, t: dit.forward_with_cfg(x, t, y, 4.0)``.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float, Int

from jaxflash.diffusion.gaussian import ModelFn, extract, p_mean_variance, predict_eps_from_x0
from jaxflash.diffusion.schedule import Diffusion
from jaxflash.utils import check_real


def _step_t(diffusion: Diffusion, x: jax.Array, i: jax.Array) -> jax.Array:
    return jnp.full((x.shape[0],), diffusion.num_timesteps - 1 - i, jnp.int32)


def p_sample(
    diffusion: Diffusion,
    model_fn: ModelFn,
    x: Float[Array, "b ..."],
    t: Int[Array, " b"],
    key: jax.Array,
    *,
    clip_denoised: bool = False,
) -> tuple[Float[Array, "b ..."], Float[Array, "b ..."]]:
    """One ancestral step: ``(x_{t-1}, pred_x0)``; no noise where ``t == 0``."""
    out = p_mean_variance(diffusion, model_fn, x, t, clip_denoised=clip_denoised)
    noise = jax.random.normal(key, x.shape, x.dtype)
    nonzero = (t != 0).astype(x.dtype).reshape((-1,) + (1,) * (x.ndim - 1))
    return out.mean + nonzero * jnp.exp(0.5 * out.log_variance) * noise, out.pred_x0


def p_sample_loop(
    diffusion: Diffusion,
    model_fn: ModelFn,
    noise: Float[Array, "b ..."],
    key: jax.Array,
    *,
    clip_denoised: bool = False,
) -> Float[Array, "b ..."]:
    """The ancestral sampler from ``x_T = noise`` to ``x_0``, step ``i`` drawing with ``fold_in(key, i)``."""

    def body(i, x):
        t = _step_t(diffusion, x, i)
        x, _ = p_sample(diffusion, model_fn, x, t, jax.random.fold_in(key, i), clip_denoised=clip_denoised)
        return x

    return jax.lax.fori_loop(0, diffusion.num_timesteps, body, noise)


def ddim_sample(
    diffusion: Diffusion,
    model_fn: ModelFn,
    x: Float[Array, "b ..."],
    t: Int[Array, " b"],
    key: jax.Array | None = None,
    *,
    eta: float = 0.0,
    clip_denoised: bool = False,
) -> tuple[Float[Array, "b ..."], Float[Array, "b ..."]]:
    """One DDIM step: ``(x_{t-1}, pred_x0)``. ``key`` is needed only when ``eta != 0``."""
    out = p_mean_variance(diffusion, model_fn, x, t, clip_denoised=clip_denoised)
    eps = predict_eps_from_x0(diffusion, x, t, out.pred_x0)
    n = x.ndim
    abar = extract(diffusion.alphas_cumprod, t, n)
    abar_prev = extract(diffusion.alphas_cumprod_prev, t, n)
    sigma = eta * jnp.sqrt((1 - abar_prev) / (1 - abar)) * jnp.sqrt(1 - abar / abar_prev)
    mean = out.pred_x0 * jnp.sqrt(abar_prev) + jnp.sqrt(1 - abar_prev - sigma**2) * eps
    if isinstance(eta, int | float) and eta == 0:
        return mean, out.pred_x0
    if key is None:
        raise ValueError("DDIM with eta != 0 draws noise: pass a key")
    noise = jax.random.normal(key, x.shape, x.dtype)
    nonzero = (t != 0).astype(x.dtype).reshape((-1,) + (1,) * (n - 1))
    return mean + nonzero * sigma * noise, out.pred_x0


def ddim_sample_loop(
    diffusion: Diffusion,
    model_fn: ModelFn,
    noise: Float[Array, "b ..."],
    key: jax.Array | None = None,
    *,
    eta: float = 0.0,
    clip_denoised: bool = False,
) -> Float[Array, "b ..."]:
    """DDIM from ``x_T = noise`` to ``x_0`` over the chain's steps (respace with ``"ddimN"`` or ``"N"``)."""
    if key is None and not (isinstance(eta, int | float) and eta == 0):
        raise ValueError("DDIM with eta != 0 draws noise: pass a key")

    def body(i, x):
        t = _step_t(diffusion, x, i)
        step_key = None if key is None else jax.random.fold_in(key, i)
        x, _ = ddim_sample(diffusion, model_fn, x, t, step_key, eta=eta, clip_denoised=clip_denoised)
        return x

    return jax.lax.fori_loop(0, diffusion.num_timesteps, body, noise)


SAMPLERS = ("ddim", "ddpm")


def sample_dit(
    model: Any,
    labels: Int[Array, " b"],
    key: jax.Array,
    *,
    diffusion: Diffusion,
    cfg_scale: float = 1.0,
    sampler: str = "ddim",
    eta: float = 0.0,
    guidance_channels: int | None = None,
    clip_denoised: bool = False,
) -> Float[Array, "b h w c"]:
    """Class-conditional images from a :class:`jaxflash.models.DiT`, jitted: noise ``x_T`` drawn from
    ``key``, then the ``sampler`` chain (``"ddim"`` with ``eta``, or ancestral ``"ddpm"``) of
    ``diffusion`` (respace it for fewer steps, e.g. ``create_diffusion("ddim50")``).

    ``cfg_scale`` 1 calls ``model(x, t, labels)``; any other scale calls ``model.forward_with_cfg``
    with ``guidance_channels`` (None: every image channel). Put the model in evaluation mode first
    (``model.eval()``) so that no label is dropped at random. ``clip_denoised`` clips each predicted
    ``x_0`` to ``[-1, 1]`` (right for pixels; DiT's latents pass False).
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler={sampler!r}; choose one of {SAMPLERS}")
    cfg_scale = check_real("cfg_scale", cfg_scale, at_least=0.0)
    cfg = model.config
    labels = jnp.asarray(labels, jnp.int32)
    if labels.ndim != 1:
        raise ValueError(f"labels must be a 1-D array of class ids; got shape {labels.shape}")
    shape = (labels.shape[0], cfg.input_size, cfg.input_size, cfg.in_channels)
    graphdef, state = nnx.split(model)
    return _sample_dit(
        graphdef,
        state,
        labels,
        key,
        diffusion,
        jnp.float32(cfg_scale),
        guided=cfg_scale != 1,
        sampler=sampler,
        eta=eta,
        guidance_channels=guidance_channels,
        clip_denoised=clip_denoised,
        shape=shape,
    )


@functools.partial(
    jax.jit,
    static_argnames=("graphdef", "guided", "sampler", "eta", "guidance_channels", "clip_denoised", "shape"),
)
def _sample_dit(
    graphdef,
    state,
    labels,
    key,
    diffusion,
    cfg_scale,
    *,
    guided,
    sampler,
    eta,
    guidance_channels,
    clip_denoised,
    shape,
):
    model = nnx.merge(graphdef, state)
    if guided:

        def model_fn(x, t):
            return model.forward_with_cfg(x, t, labels, cfg_scale, guidance_channels=guidance_channels)
    else:

        def model_fn(x, t):
            return model(x, t, labels)

    noise_key, chain_key = jax.random.split(key)
    noise = jax.random.normal(noise_key, shape, jnp.float32)
    if sampler == "ddpm":
        return p_sample_loop(diffusion, model_fn, noise, chain_key, clip_denoised=clip_denoised)
    return ddim_sample_loop(diffusion, model_fn, noise, chain_key, eta=eta, clip_denoised=clip_denoised)
