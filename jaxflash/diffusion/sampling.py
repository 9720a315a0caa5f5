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

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from jaxflash.diffusion.gaussian import ModelFn, extract, p_mean_variance, predict_eps_from_x0
from jaxflash.diffusion.schedule import Diffusion


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
