"""noise_aware_cross_entropy: ordinary cross-entropy on one-hot targets, a known value, its gradient,
weights, jit, and clear errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxflash.losses import noise_aware_cross_entropy


def _random_probs(key, n, k):
    return np.asarray(jax.nn.softmax(2.0 * jax.random.normal(key, (n, k)), axis=1), np.float64)


@pytest.mark.parametrize("n, k", [(1, 2), (7, 3), (539, 11)])
def test_one_hot_equals_cross_entropy(key, n, k):
    k1, k2 = jax.random.split(key)
    logits = 3.0 * jax.random.normal(k1, (n, k))
    y = jax.random.randint(k2, (n,), 0, k)
    ref = -jnp.mean(jax.nn.log_softmax(logits, axis=1)[jnp.arange(n), y])
    got = noise_aware_cross_entropy(logits, jax.nn.one_hot(y, k))
    np.testing.assert_allclose(got, ref, rtol=1e-6)


def test_known_value():
    # row 0: p = (0.25, 0.75), logits (0, ln 3): softmax = p, so the loss is the entropy of p.
    # row 1: p = (1, 0), logits (0, 0): -log(1/2).
    logits = np.array([[0.0, np.log(3.0)], [0.0, 0.0]])
    probs = np.array([[0.25, 0.75], [1.0, 0.0]])
    entropy = -(0.25 * np.log(0.25) + 0.75 * np.log(0.75))
    np.testing.assert_allclose(noise_aware_cross_entropy(logits, probs), (entropy + np.log(2)) / 2, rtol=1e-6)
    w = np.array([3.0, 1.0])
    np.testing.assert_allclose(
        noise_aware_cross_entropy(logits, probs, w), (3 * entropy + np.log(2)) / 4, rtol=1e-6
    )


@pytest.mark.parametrize("weighted", [False, True])
def test_gradient_is_softmax_minus_probs(key, weighted):
    n, k = 13, 5
    k1, k2, k3 = jax.random.split(key, 3)
    logits = jax.random.normal(k1, (n, k))
    probs = _random_probs(k2, n, k)
    w = np.asarray(jax.random.uniform(k3, (n,), minval=0.1, maxval=2.0)) if weighted else None
    grad = jax.grad(noise_aware_cross_entropy)(logits, probs, w)
    scale = (w / w.sum())[:, None] if weighted else 1.0 / n
    np.testing.assert_allclose(grad, (jax.nn.softmax(logits, axis=1) - probs) * scale, atol=1e-6)


def test_stable_for_large_logits_and_jit(key):
    logits = jnp.array([[1e4, -1e4, 0.0], [50.0, 49.0, -3e3]])
    probs = jnp.array([[0.5, 0.5, 0.0], [0.1, 0.9, 0.0]])
    got = jax.jit(noise_aware_cross_entropy)(logits, probs)
    assert np.isfinite(got)
    x = np.asarray(logits, np.float64)
    log_softmax = x - x.max(1, keepdims=True)
    log_softmax -= np.log(np.exp(log_softmax).sum(1, keepdims=True))
    ref = -np.mean(np.sum(np.asarray(probs) * log_softmax, axis=1))
    np.testing.assert_allclose(got, ref, rtol=1e-6)


def test_errors():
    logits = np.zeros((4, 3))
    probs = np.full((4, 3), 1 / 3)
    with pytest.raises(ValueError, match="shape"):
        noise_aware_cross_entropy(logits, probs[:, :2])
    with pytest.raises(ValueError, match=r"\[n, k\]"):
        noise_aware_cross_entropy(np.zeros(4), np.zeros(4))
    with pytest.raises(ValueError, match="sum"):
        noise_aware_cross_entropy(logits, probs * 0.9)
    with pytest.raises(ValueError, match=">= 0"):
        noise_aware_cross_entropy(logits, np.array([[1.5, -0.5, 0.0]] * 4))
    with pytest.raises(ValueError, match="weights must be"):
        noise_aware_cross_entropy(logits, probs, np.ones(3))
    with pytest.raises(ValueError, match="positive sum"):
        noise_aware_cross_entropy(logits, probs, np.zeros(4))
    with pytest.raises(ValueError, match="positive sum"):
        noise_aware_cross_entropy(logits, probs, np.array([1.0, -1.0, 1.0, 1.0]))
