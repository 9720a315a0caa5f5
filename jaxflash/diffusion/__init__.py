"""Gaussian diffusion for DiT: DDPM/improved-DDPM schedules, losses and samplers as pure functions.

Installed as ``jaxflash.diffusion``; a port of DiT's ``diffusion/`` package (itself OpenAI's
``improved-diffusion``), channels-last and jit friendly::

    diffusion = create_diffusion("")            # 1000 linear steps, learned variance, MSE + VB loss
    t = jax.random.randint(key, (b,), 0, diffusion.num_timesteps)
    losses = training_losses(diffusion, lambda x, t: dit(x, t, y), x0, t, noise)
    sampler = create_diffusion("250")           # respaced chain; "ddim50" for DDIM striding
    x0 = p_sample_loop(sampler, lambda x, t: dit.forward_with_cfg(x, t, y, 4.0), noise, key)
    ema = ema_update(ema, nnx.state(dit, nnx.Param), 0.9999)

Modules: ``schedule`` (betas, respacing, the :class:`Diffusion` constants), ``gaussian`` (forward
process, posterior, the model's reverse step, the loss), ``likelihood`` (normal KL, discretised
Gaussian log-likelihood), ``sampling`` (DDPM, DDIM, :func:`sample_dit`), ``ema`` (the average, also as
an optax transformation), ``evaluate`` (digits-FD and its floor and ceiling, sample grids as PNG),
``graft`` (stage 1 of grafting: the teacher's operator activations and their distillation).
"""

from jaxflash.diffusion.chipmunk import ChipmunkConfig, ChipmunkStats, chipmunk_sample
from jaxflash.diffusion.ema import EmaParamsState, ema_params, ema_update, find_ema_params
from jaxflash.diffusion.evaluate import DigitsEvaluator, frechet_distance
from jaxflash.diffusion.gaussian import (
    MeanVariance,
    mean_flat,
    p_mean_variance,
    p_mean_variance_from_output,
    predict_eps_from_x0,
    predict_x0_from_eps,
    q_mean_variance,
    q_posterior_mean_variance,
    q_sample,
    training_losses,
    vb_terms_bpd,
)
from jaxflash.diffusion.graft import (
    Activations,
    collect_activations,
    distill_operator,
    finetune,
    regression_loss,
)
from jaxflash.diffusion.likelihood import (
    approx_standard_normal_cdf,
    discretized_gaussian_log_likelihood,
    normal_kl,
)
from jaxflash.diffusion.sampling import ddim_sample, ddim_sample_loop, p_sample, p_sample_loop, sample_dit
from jaxflash.diffusion.schedule import (
    Diffusion,
    cosine_beta_schedule,
    create_diffusion,
    gaussian_diffusion,
    linear_beta_schedule,
    named_beta_schedule,
    respace_betas,
    space_timesteps,
)

__all__ = [
    "Activations",
    "ChipmunkConfig",
    "ChipmunkStats",
    "Diffusion",
    "DigitsEvaluator",
    "EmaParamsState",
    "MeanVariance",
    "approx_standard_normal_cdf",
    "chipmunk_sample",
    "collect_activations",
    "cosine_beta_schedule",
    "create_diffusion",
    "ddim_sample",
    "ddim_sample_loop",
    "discretized_gaussian_log_likelihood",
    "distill_operator",
    "ema_params",
    "ema_update",
    "find_ema_params",
    "finetune",
    "frechet_distance",
    "gaussian_diffusion",
    "linear_beta_schedule",
    "mean_flat",
    "named_beta_schedule",
    "normal_kl",
    "p_mean_variance",
    "p_mean_variance_from_output",
    "p_sample",
    "p_sample_loop",
    "predict_eps_from_x0",
    "predict_x0_from_eps",
    "q_mean_variance",
    "q_posterior_mean_variance",
    "q_sample",
    "regression_loss",
    "respace_betas",
    "sample_dit",
    "space_timesteps",
    "training_losses",
    "vb_terms_bpd",
]
