r"""Dugong: multi-resolution weak supervision over sequences.

Sala, Varma, Fries, Fu, Sagawa, Khattar, Ramamoorthy, Xiao, Fatahalian, Priest, Re, "Multi-Resolution
Weak Supervision for Sequential Data", NeurIPS 2019 (arXiv 1910.09505). No public code exists; the model
and estimator below are derived here from the paper's setting (sources labelling elements, windows or
whole sequences; a known prior over the latent sequence; parameter sharing across time; closed-form
recovery of accuracies and correlations; per-element posteriors). Where the paper's exact equations may
differ, this module documents what it does.

Model. A sequence of ``T`` elements with latent labels :math:`Y_t \in \{-1,+1\}` drawn from the prior
:math:`\bar P_Y`: a stationary two-state Markov chain with :math:`P(Y_t=+1)=\pi` and lag-1
autocorrelation ``persistence`` r, so :math:`E[Y_s Y_t] = \mu^2 + (1-\mu^2) r^{|s-t|}`,
:math:`\mu = 2\pi - 1`. Source j has a resolution ``window`` :math:`w_j` (1 = frame, T = scene, anything
dividing T = window) and emits one vote :math:`\lambda_{j,W} \in \{-1, 0, +1\}` per aligned window W of
:math:`w_j` elements (snorkel convention on input: -1 abstain, 0/1 classes). It abstains with probability
:math:`1-\beta_j` independently of Y; when it votes, :math:`P(\lambda_{j,W}=+1 \mid Y) = (1 + \alpha_j
\bar Y_W)/2` with :math:`\bar Y_W` the mean label of the window, i.e. the source is connected to every
element it covers. :math:`\alpha_j` and :math:`\beta_j` are **shared across all windows and time steps**
(parameter sharing), so every window adds samples to the same parameters. Sources are conditionally
independent given Y, except for declared ``correlated_pairs`` of equal resolution, whose co-located votes
have an extra conditional covariance :math:`c_{jl}`.

Recovery (closed form). With :math:`a_j = \beta_j\alpha_j`, conditional independence gives, for votes of
two sources on windows A, B, :math:`E[\lambda_{j,A}\lambda_{l,B}] = a_j a_l K_{AB}` with the known
:math:`K_{AB} = E[\bar Y_A \bar Y_B]` from the prior. Pooling every window pair by least squares,
:math:`\hat g_{jl} = \sum_{AB} K_{AB}\hat m_{AB} / \sum_{AB} K_{AB}^2` estimates :math:`a_j a_l`
(:math:`\hat m_{AB}` the empirical mean of :math:`\lambda_{j,A}\lambda_{l,B}`). The triplet identity then
recovers each accuracy as in FlyingSquid: :math:`|a_j| = \mathrm{median}_{l,k}\sqrt{|\hat g_{jl}\hat g_{jk}
/ \hat g_{lk}|}` over pairs not involving a correlated pair; signs assume better-than-random sources.
:math:`\hat\beta_j` is the vote rate, :math:`\hat\alpha_j = \hat a_j / \hat\beta_j` (clipped to
:math:`\pm 0.999`), and for a correlated pair :math:`\hat c_{jl} = \mathrm{mean}_W(\hat m_{WW} - \hat a_j
\hat a_l K_{WW})`. Needs at least 3 sources.

Posterior. :math:`P(\mathbf Y \mid \lambda) \propto \bar P_Y(\mathbf Y) \prod_{j,W}
P(\lambda_{j,W} \mid \bar Y_W)`, computed exactly by enumerating the :math:`2^T` label vectors (``T <= 16``),
then marginalised per element. The votes of a correlated pair enter with weight :math:`1/(1+\rho_{jl})`
each, :math:`\rho_{jl}` their recovered conditional correlation (a tempered composite likelihood: the
joint factor of the pair is not modelled exactly). A sequence with no votes gets the prior marginals.

API. ``Dugong`` is a :class:`~jaxflash.ws.LabelModel` (``fit / predict_proba / predict / score / save /
load``) with two differences that multi-resolution sources force. Its input is a list of vote arrays,
one ``[n, T // w_j]`` per source, not one ``[n, m]`` label matrix: sources of different resolutions cast
different numbers of votes per sequence. Its outputs have a label per *element*: ``predict_proba`` is
``[n, T, 2]``, ``predict`` ``[n, T]``, and ``score`` takes ``Y`` ``[n, T]``. Ties follow ``tie_policy``
as in every label model (``"prior"`` uses ``[1 - prior_pos, prior_pos]``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxflash.ws.base import LabelModel
from jaxflash.ws.label_matrix import ABSTAIN, _as_numeric, check_labels, label_vectors
from jaxflash.ws.triplets import aggregate_triplets, triplet_mask, triplet_values

_MAX_T = 16


@dataclasses.dataclass(frozen=True)
class DugongSource:
    """A source: ``window`` elements per vote (1 frame, T scene, or any divisor of T)."""

    name: str
    window: int


def chain_correlation(T: int, prior_pos: float, persistence: float) -> np.ndarray:
    """``E[Y_s Y_t]`` [T, T] of the stationary two-state chain prior."""
    mu = 2 * prior_pos - 1
    lag = np.abs(np.arange(T)[:, None] - np.arange(T)[None, :])
    return mu**2 + (1 - mu**2) * persistence**lag


def _window_matrix(T: int, w: int) -> np.ndarray:
    """[T // w, T] averaging matrix: row W is 1/w on the elements of window W."""
    return np.kron(np.eye(T // w), np.full((1, w), 1.0 / w))


@jax.jit
def _log_posterior(
    pos: list[jax.Array],
    neg: list[jax.Array],
    log_up: list[jax.Array],
    log_down: list[jax.Array],
    log_prior: jax.Array,
) -> jax.Array:
    """[n, 2^T] log posterior: prior + sum over sources of votes @ log-likelihood tables."""
    out = log_prior[None, :]
    for p, q, u, d in zip(pos, neg, log_up, log_down, strict=True):
        out = (
            out
            + jnp.dot(p, u.T, precision=jax.lax.Precision.HIGHEST)
            + jnp.dot(q, d.T, precision=jax.lax.Precision.HIGHEST)
        )
    return out


class Dugong(LabelModel):
    """Multi-resolution sequential label model (see the module docstring for the derivation and the API).

    Args:
      sequence_length: T, elements per sequence (<= 16: the posterior enumerates 2^T label vectors).
      sources: one :class:`DugongSource` (or ``(name, window)`` pair) per source; ``window`` divides T.
      prior_pos, persistence: the chain prior (P(Y_t = class 1), lag-1 autocorrelation); ``fit`` can
        estimate both from ``Y_dev``.
      correlated_pairs: known dependent source pairs ``(j, l)`` (same window).
    """

    cardinality = 2

    def __init__(
        self,
        sequence_length: int,
        sources: Sequence[DugongSource | tuple[str, int]],
        prior_pos: float = 0.5,
        persistence: float = 0.0,
        correlated_pairs: Sequence[tuple[int, int]] = (),
    ):
        if not 1 <= sequence_length <= _MAX_T:
            raise ValueError(
                f"sequence_length must be in 1..{_MAX_T} (exact posterior over 2^T label "
                f"vectors), got {sequence_length}"
            )
        sources = [s if isinstance(s, DugongSource) else DugongSource(*s) for s in sources]
        if len(sources) < 3:
            raise ValueError(f"Dugong needs at least 3 sources for the triplet recovery, got {len(sources)}")
        for s in sources:
            if s.window < 1 or sequence_length % s.window:
                raise ValueError(
                    f"source {s.name!r}: window {s.window} must divide sequence_length {sequence_length}"
                )
        if not 0 < prior_pos < 1 or not -1 < persistence < 1:
            raise ValueError(
                f"need 0 < prior_pos < 1 and -1 < persistence < 1, got {prior_pos}, {persistence}"
            )
        m = len(sources)
        pairs = [tuple(int(x) for x in p) for p in correlated_pairs]
        for j, o in pairs:
            if not (0 <= j < m and 0 <= o < m) or j == o:
                raise ValueError(f"correlated pair {(j, o)} is not two distinct source indices 0..{m - 1}")
            if sources[j].window != sources[o].window:
                raise ValueError(f"correlated pair {(j, o)} must have equal windows")
        self._mask = triplet_mask(m, pairs)
        lacking = np.flatnonzero(~self._mask.any(axis=(1, 2)))
        if lacking.size:
            raise ValueError(
                f"source(s) {[sources[j].name for j in lacking]} have no pair of other sources independent "
                "of them and of each other; the triplet recovery needs one (fewer correlated_pairs)"
            )
        self.T = sequence_length
        self.sources = sources
        self.prior_pos = prior_pos
        self.persistence = persistence
        self.correlated_pairs = pairs
        self.fitted_ = False

    @property
    def class_balance_(self) -> np.ndarray:  # type: ignore[override]
        """``[1 - prior_pos, prior_pos]``: the per-element prior, used by ``tie_policy="prior"``."""
        return np.array([1 - self.prior_pos, self.prior_pos])

    # --- input ------------------------------------------------------------------------------------
    def _check_votes(self, votes: Sequence[Any]) -> list[np.ndarray]:
        if len(votes) != len(self.sources):
            raise ValueError(f"got votes for {len(votes)} sources, the model has {len(self.sources)}")
        out, n = [], None
        for s, v in zip(self.sources, votes, strict=True):
            name = f"votes of source {s.name!r}"
            arr = _as_numeric(v, name, votes=True)
            if arr.dtype.kind == "f" and np.isnan(arr).any():
                raise ValueError(f"{name} contain NaN; encode a missing vote as -1")
            expect = self.T // s.window
            if arr.ndim != 2 or arr.shape[1] != expect:
                raise ValueError(f"{name} (window {s.window}) must be [n, {expect}], got {arr.shape}")
            if n is not None and arr.shape[0] != n:
                raise ValueError(f"source {s.name!r} has {arr.shape[0]} sequences, others {n}")
            n = arr.shape[0]
            if not np.isin(arr, (ABSTAIN, 0, 1)).all():
                raise ValueError(f"{name} must be -1 (abstain), 0 or 1")
            out.append(np.where(arr == ABSTAIN, 0.0, 2.0 * arr - 1.0))  # +-1 / 0
        if not n:
            raise ValueError("no sequences")
        return out

    # --- fit ---------------------------------------------------------------------------------------
    def fit(self, votes: Sequence[Any], Y_dev: Any | None = None) -> Dugong:
        """Recovers accuracies, vote rates and correlations from unlabelled votes (list, one per source).

        ``Y_dev`` [n_dev, T] (0/1), when given, sets the chain prior (class rate and lag-1 correlation).
        """
        V = self._check_votes(votes)
        m = len(V)
        silent = [self.sources[j].name for j in range(m) if not np.any(V[j] != 0)]
        if silent:
            raise ValueError(f"source(s) {silent} never vote; their accuracy cannot be estimated")
        if Y_dev is not None:
            Yd = np.asarray(Y_dev)
            if Yd.ndim != 2 or Yd.shape[1] != self.T:
                raise ValueError(f"Y_dev must be [n_dev, {self.T}], got {Yd.shape}")
            Yd = 2.0 * check_labels(Yd.reshape(-1), cardinality=2, name="Y_dev").reshape(Yd.shape) - 1
            mu = float(np.clip(Yd.mean(), -0.98, 0.98))
            lag1 = float(np.mean(Yd[:, 1:] * Yd[:, :-1])) if self.T > 1 else mu**2
            self.prior_pos = (mu + 1) / 2
            self.persistence = float(np.clip((lag1 - mu**2) / (1 - mu**2), -0.98, 0.98))
        C = chain_correlation(self.T, self.prior_pos, self.persistence)
        A = [_window_matrix(self.T, s.window) for s in self.sources]
        n = V[0].shape[0]
        g = np.zeros((m, m))
        for j in range(m):
            for o in range(j + 1, m):
                K = A[j] @ C @ A[o].T  # E[Ybar_A Ybar_B]
                M = V[j].T @ V[o] / n
                g[j, o] = g[o, j] = np.sum(K * M) / np.sum(K * K)
        a = aggregate_triplets(triplet_values(g), self._mask, "triplet_median", drop_uninformative=True)
        lacking = np.flatnonzero(a == 0)
        if lacking.size:
            raise ValueError(
                f"source(s) {[self.sources[j].name for j in lacking]} have no informative triplet (two "
                "other sources that co-vote with them and with each other); their accuracy cannot be "
                "recovered"
            )
        beta = np.array([np.mean(v != 0) for v in V])
        self.a_ = a
        self.coverage_ = beta
        self.accuracies_ = np.clip(a / beta, -0.999, 0.999)  # alpha_j: E[vote * Ybar | vote]
        self.correlations_: dict[tuple[int, int], float] = {}
        self._weights = np.ones(m)
        for j, o in self.correlated_pairs:
            Kd = np.diag(A[j] @ C @ A[o].T)
            Md = np.mean(V[j] * V[o], axis=0)
            c = float(np.mean(Md - a[j] * a[o] * Kd))
            self.correlations_[(j, o)] = c
            var_j = beta[j] - a[j] ** 2 * np.mean(Kd)
            var_l = beta[o] - a[o] ** 2 * np.mean(Kd)
            rho = float(np.clip(c / np.sqrt(max(var_j * var_l, 1e-12)), 0.0, 1.0))
            self._weights[j] = min(self._weights[j], 1 / (1 + rho))
            self._weights[o] = min(self._weights[o], 1 / (1 + rho))
        self.fitted_ = True
        return self

    # --- posterior ---------------------------------------------------------------------------------
    def _log_prior(self, Y: np.ndarray) -> np.ndarray:
        p, r = self.prior_pos, self.persistence
        stay_pos = 1 - (1 - r) * (1 - p)
        to_pos = (1 - r) * p
        lp = np.where(Y[:, 0] > 0, np.log(p), np.log(1 - p))
        prev, nxt = Y[:, :-1] > 0, Y[:, 1:] > 0
        trans = np.where(prev, np.where(nxt, stay_pos, 1 - stay_pos), np.where(nxt, to_pos, 1 - to_pos))
        return lp + np.log(trans).sum(axis=1)

    def predict_proba(self, votes: Sequence[Any]) -> np.ndarray:
        """Per-element posteriors ``[n, T, 2]``: ``P(Y_t = class | votes)``."""
        self._check_fitted()
        V = self._check_votes(votes)
        Y = 2.0 * label_vectors(self.T) - 1.0  # [2^T, T] in +-1
        pos, neg, up, down = [], [], [], []
        for j, (s, v) in enumerate(zip(self.sources, V, strict=True)):
            ybar = Y @ _window_matrix(self.T, s.window).T  # [2^T, windows]
            al = self.accuracies_[j]
            w = self._weights[j]
            pos.append(jnp.asarray(v > 0, jnp.float32))
            neg.append(jnp.asarray(v < 0, jnp.float32))
            up.append(jnp.asarray(w * np.log((1 + al * ybar) / 2), jnp.float32))
            down.append(jnp.asarray(w * np.log((1 - al * ybar) / 2), jnp.float32))
        logp = np.asarray(
            _log_posterior(pos, neg, up, down, jnp.asarray(self._log_prior(Y), jnp.float32)), np.float64
        )
        logp -= logp.max(axis=1, keepdims=True)
        post = np.exp(logp)
        post /= post.sum(axis=1, keepdims=True)
        p1 = post @ (Y > 0).astype(np.float64)  # [n, T]
        return np.stack([1 - p1, p1], axis=-1)

    # --- persistence -------------------------------------------------------------------------------
    def _config(self) -> dict[str, Any]:
        return dict(
            sequence_length=self.T,
            sources=[[s.name, s.window] for s in self.sources],
            prior_pos=self.prior_pos,
            persistence=self.persistence,
            correlated_pairs=[list(p) for p in self.correlated_pairs],
        )

    def _params(self) -> dict[str, np.ndarray]:
        corr = np.array([self.correlations_[p] for p in self.correlated_pairs], np.float64)
        return dict(
            a=self.a_,
            coverage=self.coverage_,
            accuracies=self.accuracies_,
            weights=self._weights,
            correlations=corr,
        )

    def _set_params(self, params: dict[str, np.ndarray]) -> None:
        self.a_, self.coverage_ = params["a"], params["coverage"]
        self.accuracies_, self._weights = params["accuracies"], params["weights"]
        self.correlations_ = {
            p: float(c) for p, c in zip(self.correlated_pairs, params["correlations"], strict=True)
        }
