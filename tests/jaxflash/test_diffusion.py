"""jaxflash.diffusion against closed forms: the schedule, q_sample, the posterior, the likelihood terms
(hand-computed values), the hybrid loss and its stop-gradient, respacing, DDPM/DDIM sampling with an
oracle noise predictor, and the EMA update."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxflash.diffusion as jd
from jaxflash.testing import assert_close, random_normal

T = 1000
BETAS = np.linspace(1e-4, 0.02, T, dtype=np.float64)
ABAR = np.cumprod(1 - BETAS)


@pytest.fixture(scope="module")
def diffusion():
    return jd.create_diffusion("")


def test_linear_schedule_is_dits():
    assert_close(jd.linear_beta_schedule(T), BETAS, atol=0, rtol=0)
    # DiT scales the ends by 1000 / T for shorter chains.
    short = jd.linear_beta_schedule(100)
    assert short[0] == pytest.approx(1e-3) and short[-1] == pytest.approx(0.2)
    cos = jd.cosine_beta_schedule(T)
    assert cos.shape == (T,) and np.all((cos > 0) & (cos <= 0.999)) and np.all(np.diff(cos) >= 0)


def test_q_sample_closed_form_and_statistics(key, diffusion):
    x0 = random_normal(key, (4, 3, 2))
    noise = random_normal(jax.random.fold_in(key, 1), x0.shape)
    t = jnp.array([0, 10, 500, 999])
    a = ABAR[np.asarray(t)][:, None, None]
    want = np.sqrt(a) * np.asarray(x0, np.float64) + np.sqrt(1 - a) * np.asarray(noise, np.float64)
    assert_close(jd.q_sample(diffusion, x0, t, noise), want, atol=1e-5)

    # Over many noise draws x_t ~ N(sqrt(abar) x0, 1 - abar).
    n, step = 20000, 300
    x0 = jnp.full((n, 1), 0.7)
    xt = jd.q_sample(diffusion, x0, jnp.full((n,), step), random_normal(key, (n, 1)))
    sd = math.sqrt(1 - ABAR[step])
    assert abs(float(xt.mean()) - math.sqrt(ABAR[step]) * 0.7) < 4 * sd / math.sqrt(n)
    assert abs(float(xt.std()) / sd - 1) < 0.03
    mean, var, log_var = jd.q_mean_variance(diffusion, x0[:1], jnp.array([step]))
    assert_close(var[0, 0], 1 - ABAR[step]) and assert_close(log_var, jnp.log(var))
    assert_close(mean[0, 0], math.sqrt(ABAR[step]) * 0.7)


def test_posterior_is_the_gaussian_conditional(key, diffusion):
    x0 = random_normal(key, (5, 4))
    xt = random_normal(jax.random.fold_in(key, 1), (5, 4))
    t = jnp.array([0, 1, 2, 400, 999])
    mean, var, log_var = jd.q_posterior_mean_variance(diffusion, x0, xt, t)
    # Joint of (x_{t-1}, x_t) given x_0: x_{t-1} ~ N(sqrt(abar') x0, 1 - abar'),
    # x_t = sqrt(alpha) x_{t-1} + sqrt(beta) z; condition x_{t-1} on x_t.
    ti = np.asarray(t)
    a_prev = np.where(ti > 0, ABAR[np.maximum(ti - 1, 0)], 1.0)[:, None]
    alpha = (1 - BETAS[ti])[:, None]
    mu1, v1 = np.sqrt(a_prev) * np.asarray(x0, np.float64), 1 - a_prev
    mu2, v2 = np.sqrt(alpha) * mu1, alpha * v1 + BETAS[ti][:, None]
    cov = np.sqrt(alpha) * v1
    want_mean = mu1 + cov / v2 * (np.asarray(xt, np.float64) - mu2)
    want_var = v1 - cov**2 / v2
    assert_close(mean, want_mean, atol=1e-5)
    assert_close(var[:, 0], want_var[:, 0], atol=1e-9, rtol=1e-5)
    # The log variance is clipped at t = 0 (where beta~_0 = 0) to beta~_1.
    assert_close(log_var[1:, 0], np.log(want_var[1:, 0]), atol=1e-5)
    assert_close(log_var[0, 0], math.log(BETAS[1] * (1 - ABAR[0]) / (1 - ABAR[1])), atol=1e-5)
    # x_0 from eps inverts q_sample.
    noise = random_normal(jax.random.fold_in(key, 2), x0.shape)
    xt = jd.q_sample(diffusion, x0, t, noise)
    assert_close(jd.predict_x0_from_eps(diffusion, xt, t, noise), x0, atol=2e-4)
    # (at t = 0, sqrt(1/abar - 1) = 0.01 magnifies rounding; compare from t = 1 on)
    assert_close(jd.predict_eps_from_x0(diffusion, xt[1:], t[1:], x0[1:]), noise[1:], atol=2e-3)


def test_normal_kl_hand_values():
    # KL(N(0, 1) || N(1, 4)) = 0.5 (-1 + ln 4 + 1/4 + 1/4) = ln 2 - 1/4.
    assert float(jd.normal_kl(0.0, 0.0, 1.0, math.log(4.0))) == pytest.approx(math.log(2) - 0.25, abs=1e-6)
    assert float(jd.normal_kl(0.3, -1.2, 0.3, -1.2)) == pytest.approx(0.0, abs=1e-7)
    # KL(N(2, e) || N(0, 1)) = 0.5 (-1 + 0 - 1 + e + 4).
    assert float(jd.normal_kl(2.0, 1.0, 0.0, 0.0)) == pytest.approx(0.5 * (2 + math.e), abs=1e-5)


def _phi(z):
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))


def test_discretized_gaussian_log_likelihood_hand_values():
    ll = jd.discretized_gaussian_log_likelihood
    # Interior bin of width 2/255 around x = 0 under N(0, 1): the tanh-approximated CDF difference is
    # tanh(sqrt(2/pi) (a + 0.044715 a^3)) with a = 1/255, close to the exact mass 2/255 phi(0).
    a = 1 / 255
    approx = math.log(math.tanh(math.sqrt(2 / math.pi) * (a + 0.044715 * a**3)))
    assert float(ll(0.0, 0.0, 0.0)) == pytest.approx(approx, abs=1e-5)
    assert approx == pytest.approx(math.log(_phi(a) - _phi(-a)), abs=1e-4)
    assert approx == pytest.approx(-5.76707, abs=1e-4)
    # The edge bins are open: x = 1 takes P(X > 1 - 1/255), x = -1 takes P(X < -1 + 1/255).
    assert float(ll(1.0, 1.0, 0.0)) == pytest.approx(math.log(1 - _phi(-a)), abs=1e-4)
    z = (-1 + a - 0.5) / 0.5
    tail = math.log(0.5 * (1 + math.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z**3))))
    assert float(ll(-1.0, 0.5, math.log(0.5))) == pytest.approx(tail, abs=1e-4)


def _oracle(x0, base=None):
    """The exact noise predictor for data x0, called with original timesteps; [eps, v = -1] channels
    (v = -1 gives the posterior's own variance)."""
    base = base or jd.create_diffusion("")

    def model_fn(xt, timesteps):
        a = base.alphas_cumprod[timesteps].reshape((-1,) + (1,) * (xt.ndim - 1))
        eps = (xt - jnp.sqrt(a) * x0) / jnp.sqrt(1 - a)
        return jnp.concatenate([eps, -jnp.ones_like(eps)], axis=-1)

    return model_fn


def test_vb_is_zero_for_the_true_posterior_and_positive_otherwise(key, diffusion):
    x0 = jnp.clip(random_normal(key, (6, 4, 2)), -1, 1)
    t = jnp.array([0, 1, 5, 100, 500, 999])
    noise = random_normal(jax.random.fold_in(key, 1), x0.shape)
    xt = jd.q_sample(diffusion, x0, t, noise)
    vb, pred_x0 = jd.vb_terms_bpd(diffusion, _oracle(x0)(xt, t), x0, xt, t)
    assert_close(pred_x0, x0, atol=5e-3)
    assert np.all(np.abs(vb[1:]) < 1e-3)
    assert float(vb[0]) > 1.0  # t = 0: the decoder NLL in bits, not a KL
    # A wrong prediction: every KL term is positive.
    wrong = jnp.concatenate([random_normal(jax.random.fold_in(key, 2), x0.shape), 0.0 * x0], axis=-1)
    vb_wrong, _ = jd.vb_terms_bpd(diffusion, wrong, x0, xt, t)
    assert np.all(vb_wrong[1:] > 1e-4)


def test_training_loss_terms_and_stop_gradient(key, diffusion):
    x0 = random_normal(key, (3, 4, 2))
    noise = random_normal(jax.random.fold_in(key, 1), x0.shape)
    t = jnp.array([0, 40, 700])
    out = random_normal(jax.random.fold_in(key, 2), (3, 4, 4), scale=0.5)
    seen = []

    def terms(out):
        return jd.training_losses(diffusion, lambda xt, ts: seen.append(ts) or out, x0, t, noise)

    got = terms(out)
    assert_close(got["mse"], jnp.mean((noise - out[..., :2]) ** 2, axis=(1, 2)))
    xt = jd.q_sample(diffusion, x0, t, noise)
    assert_close(got["vb"], jd.vb_terms_bpd(diffusion, out, x0, xt, t)[0])
    assert_close(got["loss"], got["mse"] + got["vb"])
    np.testing.assert_array_equal(seen[0], t)
    # VB trains only the variance channels: its gradient on the epsilon channels is zero.
    g_vb = jax.grad(lambda o: terms(o)["vb"].sum())(out)
    assert not np.any(g_vb[..., :2]) and np.any(g_vb[..., 2:])
    g_mse = jax.grad(lambda o: terms(o)["mse"].sum())(out)
    assert_close(jax.grad(lambda o: terms(o)["loss"].sum())(out)[..., :2], g_mse[..., :2])

    fixed = jd.create_diffusion("", learn_sigma=False)
    plain = jd.training_losses(fixed, lambda xt, ts: out[..., :2], x0, t, noise)
    assert set(plain) == {"loss", "mse"} and np.allclose(plain["loss"], got["mse"])
    with pytest.raises(ValueError, match="learn_sigma doubles"):
        jd.training_losses(diffusion, lambda xt, ts: out[..., :2], x0, t, noise)
    kl = jd.training_losses(jd.create_diffusion("", use_kl=True), lambda xt, ts: out, x0, t, noise)
    assert_close(kl["loss"], T * jd.vb_terms_bpd(diffusion, out, x0, xt, t)[0], rtol=1e-5)


def test_space_timesteps_as_improved_diffusion():
    steps = jd.space_timesteps(T, "250")
    assert len(steps) == 250 and min(steps) == 0 and max(steps) == 999
    assert jd.space_timesteps(T, "ddim50") == set(range(0, T, 20))
    # improved-diffusion's docstring example: 300 steps in three sections of 10, 15 and 20.
    sections = sorted(jd.space_timesteps(300, [10, 15, 20]))
    assert len(sections) == 45 and sections[:2] == [0, 11] and sections[9] == 99 and sections[10] == 100
    assert sorted(jd.space_timesteps(10, "4")) == [0, 3, 6, 9]
    with pytest.raises(ValueError, match="integer stride"):
        jd.space_timesteps(T, "ddim999")
    with pytest.raises(ValueError, match="cannot divide"):
        jd.space_timesteps(10, "11")


@pytest.mark.parametrize("spacing", ["250", "ddim50", "10,15,20", "1000"])
def test_respaced_betas_keep_alphas_cumprod_at_the_kept_steps(spacing):
    new_betas, keep = jd.respace_betas(BETAS, jd.space_timesteps(T, spacing))
    np.testing.assert_allclose(np.cumprod(1 - new_betas), ABAR[keep], rtol=1e-12)
    d = jd.create_diffusion(spacing)
    assert d.num_timesteps == len(keep)
    assert_close(d.alphas_cumprod, ABAR[keep], atol=1e-7, rtol=1e-5)
    np.testing.assert_array_equal(d.timestep_map, keep)


def test_ddim_eta0_is_deterministic_and_the_oracle_recovers_x0(key):
    x0 = jnp.tanh(random_normal(key, (2, 4, 4, 1)))
    noise = random_normal(jax.random.fold_in(key, 1), x0.shape)
    sampler = jd.create_diffusion("ddim10")
    run = jax.jit(lambda z, k: jd.ddim_sample_loop(sampler, _oracle(x0), z, k))
    a, b = run(noise, jax.random.key(0)), run(noise, jax.random.key(1))
    assert_close(a, b, atol=0, rtol=0)
    assert_close(a, x0, atol=1e-3)
    # Stochastic DDIM (eta = 1) and ancestral DDPM also land on x0 with the oracle (no noise at t = 0).
    noisy = jd.ddim_sample_loop(sampler, _oracle(x0), noise, jax.random.key(2), eta=1.0)
    assert_close(noisy, x0, atol=1e-3)
    ddpm = jax.jit(lambda z, k: jd.p_sample_loop(jd.create_diffusion("10"), _oracle(x0), z, k))
    assert_close(ddpm(noise, jax.random.key(3)), x0, atol=1e-3)
    with pytest.raises(ValueError, match="pass a key"):
        jd.ddim_sample_loop(sampler, _oracle(x0), noise, eta=0.5)


def test_p_sample_adds_the_model_variance_noise_except_at_t0(key, diffusion):
    x = random_normal(key, (3, 5, 1))
    out = random_normal(jax.random.fold_in(key, 1), (3, 5, 2), scale=0.5)
    t = jnp.array([0, 3, 900])
    k = jax.random.key(5)
    sample, _ = jd.p_sample(diffusion, lambda xt, ts: out, x, t, k)
    mv = jd.p_mean_variance(diffusion, lambda xt, ts: out, x, t)
    z = jax.random.normal(k, x.shape)
    want = mv.mean + jnp.array([0.0, 1.0, 1.0])[:, None, None] * jnp.exp(0.5 * mv.log_variance) * z
    assert_close(sample, want, atol=1e-6)
    # The learned range interpolates log beta~ (v = -1) and log beta (v = +1).
    lo = jd.p_mean_variance(
        diffusion, lambda xt, ts: jnp.concatenate([out[..., :1], -jnp.ones_like(x)], -1), x, t
    )
    hi = jd.p_mean_variance(
        diffusion, lambda xt, ts: jnp.concatenate([out[..., :1], jnp.ones_like(x)], -1), x, t
    )
    assert_close(hi.log_variance[:, 0, 0], np.log(BETAS[np.asarray(t)]), atol=1e-5)
    assert_close(
        lo.log_variance[2, 0, 0], math.log(BETAS[900] * (1 - ABAR[899]) / (1 - ABAR[900])), atol=1e-5
    )


def test_ema_update_formula_on_pytrees_and_nnx_state(key):
    ema = {"w": jnp.ones(3), "b": jnp.zeros((), jnp.bfloat16), "step": jnp.array(4)}
    new = {"w": jnp.arange(3.0), "b": jnp.ones((), jnp.bfloat16), "step": jnp.array(9)}
    out = jd.ema_update(ema, new, 0.9)
    assert_close(out["w"], 0.9 * np.ones(3) + 0.1 * np.arange(3.0))
    assert out["b"].dtype == jnp.bfloat16 and int(out["step"]) == 9
    assert_close(jd.ema_update(ema, new, 0.0)["w"], new["w"], atol=0, rtol=0)

    a, b = nnx.Linear(2, 3, rngs=nnx.Rngs(0)), nnx.Linear(2, 3, rngs=nnx.Rngs(1))
    sa, sb = nnx.state(a, nnx.Param), nnx.state(b, nnx.Param)
    avg = jax.jit(jd.ema_update)(sa, sb)  # the default decay, DiT's 0.9999
    want = 0.9999 * sa["kernel"][...] + 0.0001 * sb["kernel"][...]
    assert_close(avg["kernel"][...], want, atol=1e-6)
    nnx.update(a, avg)
    assert_close(a.kernel[...], want, atol=1e-6)


def test_diffusion_is_a_pytree_for_jit(key, diffusion):
    x0 = random_normal(key, (2, 3, 1))
    noise = random_normal(jax.random.fold_in(key, 1), x0.shape)
    t = jnp.array([3, 600])
    fn = jax.jit(
        lambda d, x0, t, n: jd.training_losses(d, lambda xt, ts: jnp.concatenate([xt, xt], -1), x0, t, n)
    )
    eager = jd.training_losses(diffusion, lambda xt, ts: jnp.concatenate([xt, xt], -1), x0, t, noise)
    assert_close(fn(diffusion, x0, t, noise), eager, atol=1e-5)
    with pytest.raises(ValueError, match="var_type"):
        jd.gaussian_diffusion(BETAS, var_type="learned")
