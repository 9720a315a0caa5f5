"""Liger: partition the embedding space, fit per-part accuracies, extend votes.

Chen, Fu, Narayan, Fatahalian, Re, "Shoring Up the Foundations: Fusing Model Embeddings and Weak
Supervision" (UAI 2022, arXiv 2203.13270); code HazyResearch/liger.

1. Extend every split's LF votes with Epoxy's nearest-supporting-neighbour rule against the *train*
   points (:mod:`jaxflash.ws.epoxy`), thresholds given or selected on dev.
2. Partition the train embeddings with k-means (:func:`kmeans`, in JAX); dev/test points go to the
   nearest centroid (cosine: centroids of the L2-normalised embeddings).
3. Fit one FlyingSquid model per part on the extended train rows of that part, so LF accuracies may differ
   between regions of the embedding space. As in the original, each part's class balance is chosen from
   a grid (``balance_grid`` = P(Y=1)) by accuracy on the dev points of that part (ties: the value nearest
   the dev class rate); a part with no dev point uses the class balance of all of ``Y_dev``. Unlike the
   original scripts (which re-select the balance on test before reporting, ``tune_test=True``),
   everything here is tuned on dev only.

Binary tasks only (as the original). An LF silent in a part gets accuracy 0 there (FlyingSquid's
``allow_silent_lfs``). With ``n_clusters=1`` and a one-value ``balance_grid=[p]`` this is Epoxy followed
by FlyingSquid with class balance ``[1 - p, p]``: Epoxy as a label model.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxflash.ws.base import LabelModel, TiePolicy
from jaxflash.ws.epoxy import Epoxy, Metric, _check_embeddings
from jaxflash.ws.flyingsquid import FlyingSquid, SolveMethod
from jaxflash.ws.label_matrix import check_label_matrix, check_labels


@partial(jax.jit, static_argnames=("k", "n_iter"))
def _kmeans(key: jax.Array, x: jax.Array, k: int, n_iter: int) -> tuple[jax.Array, jax.Array]:
    n = x.shape[0]
    sq = jnp.sum(x * x, axis=1)

    def dist2(c):
        return jnp.maximum(sq[:, None] - 2 * x @ c.T + jnp.sum(c * c, axis=1)[None, :], 0.0)

    # k-means++ seeding: each new centre drawn with probability proportional to D(x)^2.
    k0, key = jax.random.split(key)
    centers = jnp.zeros((k, x.shape[1]), x.dtype).at[0].set(x[jax.random.randint(k0, (), 0, n)])

    def seed(i, carry):
        centers, key = carry
        key, sub = jax.random.split(key)
        d = jnp.where(jnp.arange(k)[None, :] < i, dist2(centers), jnp.inf).min(axis=1)
        idx = jax.random.categorical(sub, jnp.log(jnp.maximum(d, 1e-30)))
        return centers.at[i].set(x[idx]), key

    centers, _ = jax.lax.fori_loop(1, k, seed, (centers, key))

    def lloyd(_, centers):
        assign = jnp.argmin(dist2(centers), axis=1)
        onehot = jax.nn.one_hot(assign, k, dtype=x.dtype)
        count = onehot.sum(axis=0)
        new = (onehot.T @ x) / jnp.maximum(count, 1.0)[:, None]
        return jnp.where(count[:, None] > 0, new, centers)  # an emptied cluster keeps its centre

    centers = jax.lax.fori_loop(0, n_iter, lloyd, centers)
    return centers, jnp.argmin(dist2(centers), axis=1)


def kmeans(key: jax.Array, x: Any, k: int, n_iter: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means with k-means++ seeding. Returns ``(centroids [k, d], assignment [n])``."""
    x = np.asarray(x, np.float32)
    if x.ndim != 2 or x.shape[0] < k or k < 1:
        raise ValueError(f"kmeans needs x [n, d] with n >= k >= 1, got x.shape={x.shape}, k={k}")
    c, a = _kmeans(key, jnp.asarray(x), k, n_iter)
    return np.asarray(c), np.asarray(a)


class Liger(LabelModel):
    """Per-part FlyingSquid on Epoxy-extended votes (see the module docstring).

    ``predict_proba``, ``predict`` and ``score`` take the embeddings too: ``(L, emb)``, ``(L, emb, Y)``.
    Ties default to the class prior of ``Y_dev`` (``tie_policy="prior"``), as the per-part tuning does.
    """

    tie_policy: TiePolicy = "prior"

    def __init__(
        self,
        n_clusters: int = 2,
        metric: Metric = "cosine",
        solve_method: SolveMethod = "triplet_median",
        balance_grid: list[float] | None = None,
        seed: int = 0,
        n_iter: int = 50,
    ):
        if n_clusters < 1:
            raise ValueError(f"n_clusters must be >= 1, got {n_clusters}")
        self.cardinality = 2
        self.n_clusters = n_clusters
        self.metric = metric
        self.solve_method = solve_method
        self.balance_grid = list(np.arange(0.01, 0.99, 0.05)) if balance_grid is None else list(balance_grid)
        self.seed = seed
        self.n_iter = n_iter
        self.fitted_ = False

    def _normalise(self, emb: np.ndarray) -> np.ndarray:
        if self.metric != "cosine":
            return emb
        return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)

    def _assign(self, emb: np.ndarray) -> np.ndarray:
        x = self._normalise(emb)
        d = ((x[:, None, :] - self.centroids_[None]) ** 2).sum(-1)
        return np.argmin(d, axis=1)

    def fit(
        self,
        L_train: Any,
        emb_train: Any,
        L_dev: Any,
        emb_dev: Any,
        Y_dev: Any,
        thresholds: Any | None = None,
    ) -> Liger:
        """Extends, partitions and fits; ``thresholds`` default to Epoxy's dev selection."""
        L_train = check_label_matrix(L_train, cardinality=2, min_lfs=3, require_votes=True, name="L_train")
        L_dev = check_label_matrix(L_dev, cardinality=2, name="L_dev")
        if L_dev.shape[1] != L_train.shape[1]:
            raise ValueError(f"L_dev has {L_dev.shape[1]} LFs, L_train {L_train.shape[1]}")
        Y_dev = check_labels(Y_dev, n=L_dev.shape[0], cardinality=2, name="Y_dev")
        emb_train = _check_embeddings(emb_train, L_train.shape[0], "emb_train")
        emb_dev = _check_embeddings(emb_dev, L_dev.shape[0], "emb_dev")
        if L_train.shape[0] < self.n_clusters:
            raise ValueError(f"{L_train.shape[0]} training points for {self.n_clusters} clusters")

        self.epoxy_ = Epoxy(self.metric).fit(L_train, emb_train)
        if thresholds is None:
            self.epoxy_.select_thresholds(L_dev, emb_dev, Y_dev)
        else:
            self.epoxy_.thresholds_ = np.broadcast_to(
                np.asarray(thresholds, np.float64), (L_train.shape[1],)
            ).copy()
        Lx_train = self.epoxy_.extend(L_train, emb_train)
        Lx_dev = self.epoxy_.extend(L_dev, emb_dev)

        self.centroids_, part_train = kmeans(
            jax.random.key(self.seed), self._normalise(emb_train), self.n_clusters, self.n_iter
        )
        part_dev = self._assign(emb_dev)
        global_p1 = float(np.clip(Y_dev.mean(), 0.01, 0.99))
        self.models_: list[FlyingSquid] = []
        self.part_balance_ = np.zeros(self.n_clusters)
        for c in range(self.n_clusters):
            rows = Lx_train[part_train == c]
            if rows.shape[0] == 0:  # k-means++ never leaves a part empty, but keep predict defined
                rows = Lx_train
            dev_rows = part_dev == c
            best_p = global_p1
            model = FlyingSquid(solve_method=self.solve_method)
            if dev_rows.any():
                accs = []
                for p in self.balance_grid:
                    model.fit(rows, [1 - p, p], allow_silent_lfs=True)
                    accs.append(
                        float(np.mean(model.predict(Lx_dev[dev_rows], tie_policy="prior") == Y_dev[dev_rows]))
                    )
                # Among the balances tied at the best dev accuracy, the one nearest the dev class rate.
                grid = np.asarray(self.balance_grid)
                top = np.flatnonzero(np.asarray(accs) >= max(accs) - 1e-12)
                best_p = float(grid[top[np.argmin(np.abs(grid[top] - global_p1))]])
            model.fit(rows, [1 - best_p, best_p], allow_silent_lfs=True)
            self.part_balance_[c] = best_p
            self.models_.append(model)
        self.class_balance_ = np.array([1 - global_p1, global_p1])
        self.fitted_ = True
        return self

    def predict_proba(self, L: Any, emb: Any) -> np.ndarray:  # type: ignore[override]
        self._check_fitted()
        L = check_label_matrix(L, cardinality=2)
        emb = _check_embeddings(emb, L.shape[0], "emb")
        Lx = self.epoxy_.extend(L, emb)
        part = self._assign(emb)
        out = np.zeros((L.shape[0], 2))
        for c, model in enumerate(self.models_):
            rows = part == c
            if rows.any():
                out[rows] = model.predict_proba(Lx[rows])
        return out

    def predict(  # type: ignore[override]
        self, L: Any, emb: Any, *, tie_policy: TiePolicy | None = None, key: jax.Array | None = None
    ) -> np.ndarray:
        """Hard labels ``[n]``; ties follow ``tie_policy`` (default ``"prior"``)."""
        return self._labels_from_probs(self.predict_proba(L, emb), tie_policy, key)

    def score(  # type: ignore[override]
        self,
        L: Any,
        emb: Any,
        Y: Any,
        metrics: Sequence[str] = ("accuracy",),
        *,
        tie_policy: TiePolicy | None = None,
        key: jax.Array | None = None,
    ) -> dict[str, float]:
        """Metrics of ``predict(L, emb)`` against gold ``Y``."""
        return self._score_probs(self.predict_proba(L, emb), Y, metrics, tie_policy, key)

    # --- persistence: the train votes and embeddings are part of the model (Epoxy searches them) ---
    def _config(self) -> dict[str, Any]:
        return dict(
            n_clusters=self.n_clusters,
            metric=self.metric,
            solve_method=self.solve_method,
            balance_grid=[float(b) for b in self.balance_grid],
            seed=self.seed,
            n_iter=self.n_iter,
        )

    def _params(self) -> dict[str, np.ndarray]:
        parts = [m._params() for m in self.models_]
        return {
            **self.epoxy_._params(),
            "centroids": self.centroids_,
            "part_balance": self.part_balance_,
            "class_balance": self.class_balance_,
            **{f"part_{k}": np.stack([p[k] for p in parts]) for k in parts[0] if k != "class_balance"},
        }

    def _set_params(self, params: dict[str, np.ndarray]) -> None:
        self.epoxy_ = Epoxy(self.metric)
        self.epoxy_._set_params(params)
        self.centroids_ = params["centroids"]
        self.part_balance_ = params["part_balance"]
        self.class_balance_ = params["class_balance"]
        self.models_ = []
        for c, p in enumerate(self.part_balance_):
            model = FlyingSquid(solve_method=self.solve_method)
            part = {k[len("part_") :]: v[c] for k, v in params.items() if k.startswith("part_")}
            model._set_params({**part, "class_balance": np.array([1 - p, p])})
            model.fitted_ = True
            self.models_.append(model)
