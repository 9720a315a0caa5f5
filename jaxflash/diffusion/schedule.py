"""Noise schedules, timestep respacing and the precomputed diffusion constants.

DDPM (Ho et al. 2020) with the improved-DDPM additions (Nichol & Dhariwal 2021) as DiT's
``diffusion/`` (a copy of OpenAI's ``improved-diffusion``) computes them, in float64 NumPy, stored as
float32 arrays::

    alpha_t = 1 - beta_t,   abar_t = prod_{s <= t} alpha_s,   abar_{-1} = 1
    q(x_t | x_0)      = N(sqrt(abar_t) x_0, (1 - abar_t) I)
    q(x_{t-1} | x_t, x_0) = N(c1_t x_0 + c2_t x_t, beta~_t I)
        c1_t = beta_t sqrt(abar_{t-1}) / (1 - abar_t),   c2_t = (1 - abar_{t-1}) sqrt(alpha_t) / (1 - abar_t)
        beta~_t = beta_t (1 - abar_{t-1}) / (1 - abar_t),  log beta~ clipped: beta~_0 := beta~_1

Respacing (``space_timesteps`` / ``SpacedDiffusion``): keep a subset S of the T steps and give step k
of the new chain ``beta'_k = 1 - abar_{s_k} / abar_{s_{k-1}}``, so the new chain's ``abar'_k`` equals
the original ``abar`` at the kept steps; the model is called with the original timestep ``s_k``
(``Diffusion.timestep_map``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

MEAN_TYPES = ("epsilon", "x0")  # what the model predicts: the noise (DiT) or x_0 (predict_xstart)
VAR_TYPES = ("learned_range", "fixed_large", "fixed_small")
LOSS_TYPES = ("mse", "rescaled_mse", "kl", "rescaled_kl")


def linear_beta_schedule(num_timesteps: int = 1000) -> np.ndarray:
    """DDPM's linear betas, ``linspace(s 1e-4, s 0.02, T)`` with ``s = 1000 / T`` (float64)."""
    scale = 1000 / num_timesteps
    return np.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=np.float64)


def cosine_beta_schedule(num_timesteps: int = 1000, max_beta: float = 0.999) -> np.ndarray:
    """improved-DDPM's ``squaredcos_cap_v2``: ``beta_t = min(1 - abar(t+1)/abar(t), max_beta)`` with
    ``abar(t) = cos((t/T + 0.008) / 1.008 * pi/2)^2`` (float64)."""

    def abar(t):
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    steps = [(i / num_timesteps, (i + 1) / num_timesteps) for i in range(num_timesteps)]
    return np.array([min(1 - abar(t2) / abar(t1), max_beta) for t1, t2 in steps], dtype=np.float64)


def named_beta_schedule(name: str, num_timesteps: int) -> np.ndarray:
    """``"linear"`` (DiT's default) or ``"squaredcos_cap_v2"`` (cosine)."""
    if name == "linear":
        return linear_beta_schedule(num_timesteps)
    if name == "squaredcos_cap_v2":
        return cosine_beta_schedule(num_timesteps)
    raise ValueError(f"noise_schedule={name!r}; choose 'linear' or 'squaredcos_cap_v2'")


def space_timesteps(num_timesteps: int, section_counts: str | Sequence[int]) -> set[int]:
    """improved-diffusion's ``space_timesteps``: the original steps to keep.

    ``section_counts`` is a list (or comma-separated string) of step counts, one per equal section of
    the T steps; each section keeps its count of steps evenly spaced, first and last included
    (positions rounded as Python's ``round`` does). ``"ddimN"`` keeps ``range(0, T, stride)`` for the
    integer stride that gives exactly N steps, as the DDIM paper does. ``"250"`` gives 250 steps.
    """
    if isinstance(section_counts, str):
        if section_counts.startswith("ddim"):
            desired = int(section_counts[len("ddim") :])
            for stride in range(1, num_timesteps):
                if len(range(0, num_timesteps, stride)) == desired:
                    return set(range(0, num_timesteps, stride))
            raise ValueError(
                f"cannot create exactly {desired} steps with an integer stride of {num_timesteps}"
            )
        section_counts = [int(x) for x in section_counts.split(",")]
    size_per, extra = divmod(num_timesteps, len(section_counts))
    start, steps = 0, []
    for i, count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise ValueError(f"cannot divide a section of {size} steps into {count}")
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        steps += [start + round(stride * j) for j in range(count)]
        start += size
    return set(steps)


def respace_betas(betas: np.ndarray, use_timesteps: Iterable[int]) -> tuple[np.ndarray, np.ndarray]:
    """``(new_betas, timestep_map)``: ``beta'_k = 1 - abar_{s_k} / abar_{s_{k-1}}`` over the kept steps
    ``s_0 < s_1 < ...`` (``abar_{s_{-1}} = 1``), and ``timestep_map = [s_0, s_1, ...]`` (float64, int)."""
    alphas_cumprod = np.cumprod(1.0 - np.asarray(betas, np.float64))
    keep = sorted(set(int(s) for s in use_timesteps))
    if not keep or keep[0] < 0 or keep[-1] >= len(alphas_cumprod):
        raise ValueError(f"use_timesteps must be a non-empty subset of [0, {len(alphas_cumprod)})")
    last, new_betas = 1.0, []
    for s in keep:
        new_betas.append(1.0 - alphas_cumprod[s] / last)
        last = alphas_cumprod[s]
    return np.array(new_betas, np.float64), np.array(keep, np.int64)


def _f32(x: np.ndarray) -> jax.Array:
    return jnp.asarray(np.asarray(x, np.float64), jnp.float32)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Diffusion:
    """The constants of one Gaussian diffusion (a pytree: pass it to jitted functions or close over it).

    Arrays are ``[T]`` float32 (computed in float64), indexed by the step ``t`` of this chain;
    ``timestep_map[t]`` is the original timestep the model sees. The types are static.
    """

    betas: jax.Array
    alphas_cumprod: jax.Array
    alphas_cumprod_prev: jax.Array
    sqrt_alphas_cumprod: jax.Array
    sqrt_one_minus_alphas_cumprod: jax.Array
    sqrt_recip_alphas_cumprod: jax.Array
    sqrt_recipm1_alphas_cumprod: jax.Array
    posterior_variance: jax.Array
    posterior_log_variance_clipped: jax.Array
    posterior_mean_coef1: jax.Array
    posterior_mean_coef2: jax.Array
    log_betas: jax.Array  # the upper end of the learned log-variance range
    large_variance: jax.Array  # "fixed_large": [beta~_1, beta_1, beta_2, ...]
    large_log_variance: jax.Array
    timestep_map: jax.Array  # int32 [T]
    mean_type: str = dataclasses.field(default="epsilon", metadata=dict(static=True))
    var_type: str = dataclasses.field(default="learned_range", metadata=dict(static=True))
    loss_type: str = dataclasses.field(default="mse", metadata=dict(static=True))

    @property
    def num_timesteps(self) -> int:
        return self.betas.shape[0]

    @property
    def learn_sigma(self) -> bool:
        """Whether the model outputs ``2C`` channels, the last C interpolating the log variance."""
        return self.var_type == "learned_range"


def gaussian_diffusion(
    betas: np.ndarray,
    *,
    mean_type: str = "epsilon",
    var_type: str = "learned_range",
    loss_type: str = "mse",
    timestep_map: np.ndarray | None = None,
) -> Diffusion:
    """The :class:`Diffusion` of ``betas`` (float64 ``[T]`` in (0, 1]); ``timestep_map`` defaults to
    ``arange(T)``."""
    betas = np.asarray(betas, np.float64)
    if betas.ndim != 1 or betas.size < 2 or not np.all((betas > 0) & (betas <= 1)):
        raise ValueError(f"betas must be a 1-D array of at least 2 values in (0, 1]; got {betas!r}")
    for name, value, choices in (
        ("mean_type", mean_type, MEAN_TYPES),
        ("var_type", var_type, VAR_TYPES),
        ("loss_type", loss_type, LOSS_TYPES),
    ):
        if value not in choices:
            raise ValueError(f"{name}={value!r}; choose one of {choices}")
    alphas = 1.0 - betas
    ac = np.cumprod(alphas)
    ac_prev = np.append(1.0, ac[:-1])
    posterior_variance = betas * (1.0 - ac_prev) / (1.0 - ac)
    large = np.append(posterior_variance[1], betas[1:])
    timestep_map = np.arange(betas.size) if timestep_map is None else np.asarray(timestep_map)
    if timestep_map.shape != betas.shape:
        raise ValueError(f"timestep_map must have shape {betas.shape}; got {timestep_map.shape}")
    return Diffusion(
        betas=_f32(betas),
        alphas_cumprod=_f32(ac),
        alphas_cumprod_prev=_f32(ac_prev),
        sqrt_alphas_cumprod=_f32(np.sqrt(ac)),
        sqrt_one_minus_alphas_cumprod=_f32(np.sqrt(1.0 - ac)),
        sqrt_recip_alphas_cumprod=_f32(np.sqrt(1.0 / ac)),
        sqrt_recipm1_alphas_cumprod=_f32(np.sqrt(1.0 / ac - 1)),
        posterior_variance=_f32(posterior_variance),
        posterior_log_variance_clipped=_f32(np.log(np.append(posterior_variance[1], posterior_variance[1:]))),
        posterior_mean_coef1=_f32(betas * np.sqrt(ac_prev) / (1.0 - ac)),
        posterior_mean_coef2=_f32((1.0 - ac_prev) * np.sqrt(alphas) / (1.0 - ac)),
        log_betas=_f32(np.log(betas)),
        large_variance=_f32(large),
        large_log_variance=_f32(np.log(large)),
        timestep_map=jnp.asarray(timestep_map, jnp.int32),
        mean_type=mean_type,
        var_type=var_type,
        loss_type=loss_type,
    )


def create_diffusion(
    timestep_respacing: str | Sequence[int] | None = "",
    *,
    noise_schedule: str = "linear",
    use_kl: bool = False,
    sigma_small: bool = False,
    predict_xstart: bool = False,
    learn_sigma: bool = True,
    rescale_learned_sigmas: bool = False,
    diffusion_steps: int = 1000,
) -> Diffusion:
    """DiT's ``create_diffusion``, with its defaults: 1000 linear steps, epsilon prediction, learned
    variance range, MSE + VB loss. ``timestep_respacing`` ``""``/``None`` keeps every step; ``"250"`` or
    ``"ddim50"`` (see :func:`space_timesteps`) gives a respaced chain for sampling."""
    betas = named_beta_schedule(noise_schedule, diffusion_steps)
    if use_kl:
        loss_type = "rescaled_kl"
    elif rescale_learned_sigmas:
        loss_type = "rescaled_mse"
    else:
        loss_type = "mse"
    if timestep_respacing is None or timestep_respacing == "":
        timestep_respacing = [diffusion_steps]
    new_betas, timestep_map = respace_betas(betas, space_timesteps(diffusion_steps, timestep_respacing))
    if learn_sigma:
        var_type = "learned_range"
    else:
        var_type = "fixed_small" if sigma_small else "fixed_large"
    return gaussian_diffusion(
        new_betas,
        mean_type="x0" if predict_xstart else "epsilon",
        var_type=var_type,
        loss_type=loss_type,
        timestep_map=timestep_map,
    )
