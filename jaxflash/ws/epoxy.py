"""Epoxy: extend labelling functions to nearby points in an embedding space.

Chen, Fu, Dao, Sala, Hooper, Fatahalian, Re, "Train and You'll Miss It: Interactive Model Iteration with
Weak Supervision and Pre-Trained Embeddings" (arXiv 2006.15168); code HazyResearch/epoxy.

For each LF i and each point x where it abstains, let n_i(x) be the nearest *training* point on which
LF i votes (its support). The extended vote is lambda_i(n_i(x)) when n_i(x) is within the LF's radius
t_i, and an abstain otherwise:

* ``metric="cosine"``: nearest = largest cosine similarity s; within radius iff ``s >= t_i``;
* ``metric="l2"``: nearest = smallest Euclidean distance d; within radius iff ``d <= t_i``. (The original
  code's l2 branch kept the *largest* value, the wrong direction for a distance; WRENCH's port fixed it.)

Taking the nearest supporting neighbour over all classes is the original rule "vote +1 if the closest
+1 support is closer than the closest -1 support and within t_i", generalised to k classes. Votes an
LF already cast are never changed. An LF with an empty support is never extended.

Thresholds are chosen on labelled dev data only (:meth:`Epoxy.select_thresholds`): independently per LF,
the radius maximising (correct - wrong) among the *new* votes it would add on dev; an LF whose best net
gain is not positive is not extended (threshold ``inf`` for cosine, ``-inf`` for l2).

Why ``Epoxy`` is not a :class:`~jaxflash.ws.LabelModel`: its output is a label matrix, not class
probabilities, so it has no ``predict_proba`` of its own; any label model then reads the extended votes,
as in the paper (FlyingSquid). It shares the :class:`~jaxflash.ws.base.Estimator` base (``fit``, ``save``,
``load``). The label-model form, extension followed by FlyingSquid, is
``Liger(n_clusters=1, balance_grid=[p])`` (:mod:`jaxflash.ws.liger`: one part, class balance ``[1 - p, p]``).
"""

from __future__ import annotations

from functools import partial
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from jaxflash.ws.base import Estimator
from jaxflash.ws.label_matrix import ABSTAIN, check_label_matrix, check_labels

Metric = Literal["cosine", "l2"]
_CHUNK_ELEMENTS = 1 << 24  # query-batch x n_lfs x n_train scores held at once by default


def _check_embeddings(emb: Any, n: int, name: str) -> np.ndarray:
    arr = np.asarray(emb, np.float32)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D [n_points, dim], got shape {arr.shape}")
    if arr.shape[0] != n:
        raise ValueError(f"{name} has {arr.shape[0]} rows but the label matrix has {n}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or inf")
    return arr


@partial(jax.jit, static_argnames=("metric", "chunk"))
def _nearest_support(
    query: jax.Array, train: jax.Array, support: jax.Array, votes: jax.Array, metric: str, chunk: int
) -> tuple[jax.Array, jax.Array]:
    """Closeness (similarity, or minus the distance) to and vote of the nearest support point per LF.

    query [q, d] (q a multiple of chunk), train [t, d], support [m, t] bool, votes [m, t].
    Returns ([q, m] closeness, -inf where the support is empty; [q, m] vote).
    """
    if metric == "cosine":
        train = train / jnp.maximum(jnp.linalg.norm(train, axis=1, keepdims=True), 1e-12)
        query = query / jnp.maximum(jnp.linalg.norm(query, axis=1, keepdims=True), 1e-12)
    sq_train = jnp.sum(train * train, axis=1)

    def block(qc):
        dots = jnp.dot(qc, train.T, precision=jax.lax.Precision.HIGHEST)  # [b, t]
        if metric == "cosine":
            close = dots
        else:
            d2 = jnp.sum(qc * qc, axis=1, keepdims=True) - 2 * dots + sq_train[None, :]
            close = -jnp.sqrt(jnp.maximum(d2, 0.0))
        masked = jnp.where(support[None], close[:, None, :], -jnp.inf)  # [b, m, t]
        idx = jnp.argmax(masked, axis=-1)  # [b, m]
        best = jnp.take_along_axis(masked, idx[..., None], axis=-1)[..., 0]
        vote = jnp.take_along_axis(votes[None], idx[..., None], axis=-1)[..., 0]
        return best, vote

    q = query.shape[0]
    best, vote = jax.lax.map(block, query.reshape(q // chunk, chunk, -1))
    return best.reshape(q, -1), vote.reshape(q, -1)


class Epoxy(Estimator):
    """Nearest-supporting-neighbour extension of LF votes (see the module docstring).

    Usage: ``Epoxy("cosine").fit(L_train, emb_train)``, then ``select_thresholds(L_dev, emb_dev, Y_dev)``
    (or pass thresholds yourself), then ``extend(L, emb)`` for any split; fit a label model on the
    extended train matrix and predict on extended test. ``save``/``load`` keep the training votes and
    embeddings (the neighbours are searched among them) and the thresholds.
    """

    def __init__(self, metric: Metric = "cosine"):
        if metric not in ("cosine", "l2"):
            raise ValueError(f"metric must be 'cosine' or 'l2', got {metric!r}")
        self.metric = metric
        self.thresholds_: np.ndarray | None = None
        self.fitted_ = False

    def fit(self, L_train: Any, emb_train: Any) -> Epoxy:
        L_train = check_label_matrix(L_train, name="L_train")
        self.L_train_ = L_train
        self.emb_train_ = _check_embeddings(emb_train, L_train.shape[0], "emb_train")
        self.fitted_ = True
        return self

    def nearest(self, emb: Any, batch_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(closeness [n, m], vote [n, m])`` of each LF's nearest supporting training point.

        Closeness is the cosine similarity, or the negated L2 distance; ``-inf`` where the LF never votes.
        ``batch_size``: query points scored at once (default: about 2^24 ``batch x n_lfs x n_train``
        scores); the result does not depend on it.
        """
        self._check_fitted()
        emb = np.asarray(emb, np.float32)
        if emb.ndim != 2 or emb.shape[1] != self.emb_train_.shape[1]:
            raise ValueError(f"embeddings must be [n, {self.emb_train_.shape[1]}], got {emb.shape}")
        n = emb.shape[0]
        m, t = self.L_train_.shape[1], self.L_train_.shape[0]
        if batch_size is None:
            batch_size = _CHUNK_ELEMENTS // max(m * t, 1)
        elif batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        chunk = int(max(1, min(n, batch_size)))
        pad = (-n) % chunk
        query = np.concatenate([emb, np.zeros((pad, emb.shape[1]), np.float32)]) if pad else emb
        support = (self.L_train_ != ABSTAIN).T
        best, vote = _nearest_support(
            jnp.asarray(query),
            jnp.asarray(self.emb_train_),
            jnp.asarray(support),
            jnp.asarray(self.L_train_.T),
            self.metric,
            chunk,
        )
        return np.asarray(best)[:n], np.asarray(vote)[:n]

    def _closeness_threshold(self, thresholds: Any, m: int) -> np.ndarray:
        t = np.broadcast_to(np.asarray(thresholds, np.float64), (m,)).copy()
        if np.isnan(t).any():
            raise ValueError("thresholds contain NaN")
        return t if self.metric == "cosine" else -t

    def extend(self, L: Any, emb: Any, thresholds: Any | None = None) -> np.ndarray:
        """``L`` with abstains replaced by the nearest supporting neighbour's vote when within radius."""
        self._check_fitted()
        L = check_label_matrix(L)
        if L.shape[1] != self.L_train_.shape[1]:
            raise ValueError(f"L has {L.shape[1]} LFs, the training matrix {self.L_train_.shape[1]}")
        emb = _check_embeddings(emb, L.shape[0], "emb")
        if thresholds is None:
            if self.thresholds_ is None:
                raise ValueError("no thresholds: pass thresholds= or call select_thresholds() on dev data")
            thresholds = self.thresholds_
        t = self._closeness_threshold(thresholds, L.shape[1])
        best, vote = self.nearest(emb)
        extend = (L == ABSTAIN) & (best >= t[None, :]) & np.isfinite(best)
        return np.where(extend, vote, L).astype(np.int32)

    def select_thresholds(self, L_dev: Any, emb_dev: Any, Y_dev: Any, n_candidates: int = 50) -> np.ndarray:
        """Per-LF radius maximising (correct - wrong) of the new votes on labelled dev data.

        Candidates are the dev points' own nearest-support distances (so every distinct outcome is
        reachable), thinned to ``n_candidates`` quantiles. Stores and returns the thresholds.
        """
        self._check_fitted()
        L_dev = check_label_matrix(L_dev, name="L_dev")
        Y_dev = check_labels(Y_dev, n=L_dev.shape[0], name="Y_dev")
        emb_dev = _check_embeddings(emb_dev, L_dev.shape[0], "emb_dev")
        best, vote = self.nearest(emb_dev)
        m = L_dev.shape[1]
        never = np.inf if self.metric == "cosine" else -np.inf
        out = np.full(m, never)
        for i in range(m):
            cand_rows = (L_dev[:, i] == ABSTAIN) & np.isfinite(best[:, i])
            if not cand_rows.any():
                continue
            closeness = best[cand_rows, i]
            gain = np.where(vote[cand_rows, i] == Y_dev[cand_rows], 1, -1)
            cands = np.unique(np.quantile(closeness, np.linspace(0, 1, n_candidates)))
            nets = [(gain[closeness >= c]).sum() for c in cands]
            j = int(np.argmax(nets))
            if nets[j] > 0:
                out[i] = cands[j] if self.metric == "cosine" else -cands[j]
        self.thresholds_ = out
        return out

    # --- persistence -------------------------------------------------------------------------------
    def _config(self) -> dict[str, Any]:
        return {"metric": self.metric}

    def _params(self) -> dict[str, np.ndarray]:
        params = {"L_train": self.L_train_, "emb_train": self.emb_train_}
        if self.thresholds_ is not None:
            params["thresholds"] = self.thresholds_
        return params

    def _set_params(self, params: dict[str, np.ndarray]) -> None:
        self.fit(params["L_train"], params["emb_train"])
        self.thresholds_ = params.get("thresholds")
