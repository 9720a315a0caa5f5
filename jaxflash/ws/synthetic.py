"""Label matrices sampled from known models, for tests and benchmarks.

``sample_label_matrix``: the conditionally independent model FlyingSquid and snorkel assume. Each LF i
votes with probability ``coverage[i]`` independently of Y and, when it votes, is right with probability
``accuracy[i]`` (a wrong vote picks one of the other classes uniformly). The true joint accuracy
P(lambda_i = Y) is ``coverage * accuracy``, the quantity :meth:`FlyingSquid.estimated_accuracies` estimates.

Samplers take a JAX PRNG key for reproducibility but draw with NumPy (seeded from the key's data): they
run once per shape, where tracing and compiling JAX programs would cost more than the sampling itself.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from jaxflash.ws.label_matrix import ABSTAIN


def _rng(key: jax.Array) -> np.random.Generator:
    return np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())


def sample_label_matrix(
    key: jax.Array,
    n: int,
    accuracy: Any,
    coverage: Any,
    class_balance: Any,
    *,
    dependent_pairs: tuple[tuple[int, int], ...] = (),
    copy_prob: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Samples ``(L [n, m], Y [n])`` from the conditionally independent model (see module docstring).

    ``dependent_pairs``: for each ``(i, j)``, LF j copies LF i's vote with probability ``copy_prob``
    (then it is no longer independent of i given Y); used to test known dependencies.
    """
    rng = _rng(key)
    accuracy = np.asarray(accuracy, np.float64)
    coverage = np.asarray(coverage, np.float64)
    cb = np.asarray(class_balance, np.float64)
    k, m = cb.shape[0], accuracy.shape[0]
    Y = rng.choice(k, size=n, p=cb / cb.sum()).astype(np.int32)
    votes = rng.random((n, m), np.float32) < coverage
    correct = rng.random((n, m), np.float32) < accuracy
    wrong = (Y[:, None] + rng.integers(1, k, (n, m))) % k if k > 2 else 1 - Y[:, None]
    L = np.where(votes, np.where(correct, Y[:, None], wrong), ABSTAIN).astype(np.int32)
    for i, j in dependent_pairs:
        copy = rng.random(n) < copy_prob
        L[:, j] = np.where(copy, L[:, i], L[:, j])
    return L, Y


def _chain(rng: np.random.Generator, n: int, v: int, p_pos: float, persistence: float) -> np.ndarray:
    """``[n, v]`` 0/1 stationary two-state chain with P(1) = p_pos and lag-1 autocorrelation persistence."""
    p_to_pos = (1 - persistence) * p_pos  # P(0 -> 1); P(1 -> 0) = (1 - persistence)(1 - p_pos)
    p_stay_pos = 1 - (1 - persistence) * (1 - p_pos)
    Y = np.empty((n, v), np.int32)
    Y[:, 0] = rng.random(n) < p_pos
    u = rng.random((n, v))
    for t in range(1, v):
        Y[:, t] = np.where(Y[:, t - 1] == 1, u[:, t] < p_stay_pos, u[:, t] < p_to_pos)
    return Y


def sample_temporal(
    key: jax.Array, n: int, v: int, accuracy: Any, coverage: Any, p_pos: float, persistence: float
) -> tuple[np.ndarray, np.ndarray]:
    """Sequences of ``v`` frames: ``Y_t`` a stationary two-state Markov chain (P(Y_t=1) = ``p_pos``,
    autocorrelation ``persistence``), ``m_frame`` LFs per frame as in :func:`sample_label_matrix`.

    Returns ``L [n, v * m_frame]`` (frame-major columns, FlyingSquid's temporal layout) and ``Y [n, v]``.
    """
    rng = _rng(key)
    accuracy = np.asarray(accuracy, np.float64)
    coverage = np.asarray(coverage, np.float64)
    m_frame = accuracy.shape[0]
    Y = _chain(rng, n, v, p_pos, persistence)
    votes = rng.random((n, v, m_frame)) < coverage
    correct = rng.random((n, v, m_frame)) < accuracy
    lab = np.where(correct, Y[:, :, None], 1 - Y[:, :, None])
    L = np.where(votes, lab, ABSTAIN).reshape(n, v * m_frame).astype(np.int32)
    return L, Y


def sample_dugong(
    key: jax.Array,
    n: int,
    T: int,
    windows: Any,
    alpha: Any,
    beta: Any,
    prior_pos: float,
    persistence: float,
    *,
    copy: tuple[int, int, float] | None = None,
) -> tuple[list[np.ndarray], np.ndarray]:
    """Sequences from :class:`jaxflash.ws.Dugong`'s model: chain labels ``Y [n, T]`` (0/1) and, per source j,
    votes ``[n, T // windows[j]]`` (-1 abstain): a vote with probability ``beta[j]``, +1 with probability
    ``(1 + alpha[j] * mean(Y_window)) / 2`` in +-1 units.

    ``copy=(j, o, q)``: source o replaces its vote by source j's with probability q (same window),
    a conditional correlation ``q * (beta_j - a_j^2 Ybar^2)`` on co-located votes.
    """
    rng = _rng(key)
    Y = _chain(rng, n, T, prior_pos, persistence)
    ypm = 2.0 * Y - 1.0
    votes = []
    for j, w in enumerate(windows):
        ybar = ypm.reshape(n, T // w, w).mean(axis=2)
        vote = rng.random(ybar.shape) < beta[j]
        up = rng.random(ybar.shape) < (1 + alpha[j] * ybar) / 2
        votes.append(np.where(vote, up.astype(np.int32), ABSTAIN).astype(np.int32))
    if copy is not None:
        j, o, q = copy
        take = rng.random(votes[o].shape) < q
        votes[o] = np.where(take, votes[j], votes[o]).astype(np.int32)
    return votes, Y
