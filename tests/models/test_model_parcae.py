"""Parcae: the diagonal injection's decay is below 1 for any parameters; truncated backpropagation
through the last loop iterations; fixed loop count at eval; causality and the KV-cache step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jaxflash.models import Parcae, parcae_tiny
from jaxflash.models.parcae import AdditiveInjection, DiagonalInjection, LinearInjection

from jaxflash.testing import assert_close, random_normal


def test_diagonal_injection_decay_below_one_for_any_parameters(key):
    inj = DiagonalInjection(64, ssm_decay=0.3, rngs=nnx.Rngs(0))
    assert_close(inj.decay(), np.full(64, 0.3), atol=1e-6)  # init: the configured decay
    k1, k2 = jax.random.split(key)
    extremes = jnp.array([-1e4, -100.0, -30.0, -1.0, 0.0, 1.0, 30.0, 100.0, 1e4])
    for dt_bias, a_log in [
        (random_normal(k1, (64,), scale=50.0), random_normal(k2, (64,), scale=50.0)),
        (jnp.repeat(extremes, 9)[:64], jnp.tile(extremes, 9)[:64]),
    ]:
        inj.dt_bias.set_value(dt_bias)
        inj.A_log.set_value(a_log)
        decay = np.asarray(inj.decay())
        assert np.all(decay < 1.0) and np.all(decay >= 0.0), decay.max()


def test_injection_formulas(key):
    kh, ke, kb = jax.random.split(key, 3)
    h, e = random_normal(kh, (2, 3, 8)), random_normal(ke, (2, 3, 8))
    inj = DiagonalInjection(8, rngs=nnx.Rngs(0))
    inj.B.set_value(random_normal(kb, (8, 8)))
    dt = jax.nn.softplus(inj.dt_bias[...])
    assert_close(inj(h, e), jnp.exp(-dt * jnp.exp(inj.A_log[...])) * h + dt * (e @ inj.B[...].T), atol=1e-5)
    lin = LinearInjection(8, rngs=nnx.Rngs(1))
    assert_close(lin(h, e), jnp.concatenate([h, e], -1) @ lin.proj.kernel[...], atol=1e-5)
    assert_close(AdditiveInjection(8, rngs=nnx.Rngs(2))(h, e), h + e)


@pytest.fixture(scope="module")
def model():
    # The naive attention path compiles fastest; attention itself is tested in its own files.
    return Parcae(parcae_tiny(init_std=0.2, implementation="reference"), rngs=nnx.Rngs(3))


def test_loop_count_sampling(model):
    n, k = model.sample_loops(jax.random.key(0), 4096)
    total = np.asarray(n + k)
    cfg = model.config
    assert total.min() >= 1 and total.max() <= cfg.max_recurrence
    assert np.array_equal(np.asarray(k), np.minimum(total, cfg.backprop_depth))
    assert abs(total.mean() - cfg.mean_recurrence) < 0.2  # Poisson(3), barely clipped at 6
    assert len(np.unique(total)) > 3  # per sequence, not one count per batch


def test_truncated_backprop_through_the_last_iterations(model, key):
    e = random_normal(key, (2, 5, 32))
    h0 = random_normal(jax.random.fold_in(key, 1), (2, 5, 32), scale=0.1)
    n_list, k_list = [0, 2], [2, 1]  # T = 2 and 3; the first sequence has no gradient-free prefix
    n, k = jnp.array(n_list), jnp.array(k_list)

    def manual(core, full: bool):
        """Per sequence: n[i] iterations (gradient stopped unless full), then k[i] with gradient."""
        outs = []
        for i in range(2):
            h = h0[i : i + 1]
            for _ in range(n_list[i]):
                h = core(h, e[i : i + 1])
            if not full:
                h = jax.lax.stop_gradient(h)
            for _ in range(k_list[i]):
                h = core(h, e[i : i + 1])
            outs.append(h)
        return jnp.concatenate(outs)

    loss = lambda h: jnp.sum(jnp.sin(h))  # noqa: E731

    @nnx.jit
    def run(m):
        g_model = nnx.grad(lambda m: loss(m.truncated_loop(h0, e, n, k)))(m)
        g_manual = nnx.grad(lambda core: loss(manual(core, full=False)))(m.core)
        g_full = nnx.grad(lambda core: loss(manual(core, full=True)))(m.core)
        values = m.truncated_loop(h0, e, n, k), manual(m.core, full=True)
        return (
            nnx.state(g_model.core, nnx.Param),
            nnx.state(g_manual, nnx.Param),
            nnx.state(g_full, nnx.Param),
            values,
        )

    g_model, g_manual, g_full, values = run(model)
    assert_close(g_model, g_manual, atol=2e-5, rtol=1e-4)
    a_full = g_full["injection"]["dt_bias"][...]
    a_trunc = g_manual["injection"]["dt_bias"][...]
    assert float(jnp.max(jnp.abs(a_full - a_trunc))) > 1e-6, (
        "the early iterations must not contribute gradient"
    )
    assert_close(*values, atol=1e-5)  # values are those of all T = n + k iterations


def test_eval_runs_a_fixed_loop_count_and_train_needs_a_key(model, key):
    tokens = jax.random.randint(key, (2, 6), 0, 16)

    @nnx.jit
    def run(m, tokens, key):
        e = m.embed_tokens(tokens)
        h = m.core(m.core(jnp.zeros_like(e), e), e)
        return m(tokens, num_loops=2), m.head(h), m(tokens, train=True, key=key)

    fixed, by_hand, trained = run(model, tokens, key)
    assert_close(fixed, by_hand, atol=1e-5)
    assert trained.shape == (2, 6, 16) and bool(jnp.all(jnp.isfinite(trained)))
    with pytest.raises(ValueError, match="pass key="):
        model(tokens, train=True)
    with pytest.raises(ValueError, match="num_loops=0"):
        model(tokens, num_loops=0)


def test_parcae_is_causal_and_step_matches(model, key, checks):
    tokens = jax.random.randint(key, (2, 7), 0, 16)
    fwd = nnx.jit(lambda m, t: m(t))
    logits = fwd(model, tokens)
    later = fwd(model, tokens.at[:, 4:].set((tokens[:, 4:] + 3) % 16))
    assert_close(later[:, :4], logits[:, :4], atol=1e-5)
    assert float(jnp.max(jnp.abs(later[:, 4:] - logits[:, 4:]))) > 1e-4
    checks.step(model, tokens, expected=logits, max_len=10, atol=5e-5)
    checks.prefill(model, tokens, cut=4, max_len=10, atol=5e-5)
