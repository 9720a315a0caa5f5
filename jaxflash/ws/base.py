"""The scikit-learn-like API shared by the label models, tie policies, metrics and save/load.

Every label model has ``fit(L, ...)``, ``predict_proba(L) -> [..., k]``, ``predict(L) -> [...]`` (classes
``0..k-1``, or ``-1`` for an abstained prediction) and ``score(L, Y, metrics)``. The leading axes are the
points: ``[n]`` for one label per row, ``[n, T]`` for a label per element of a sequence (Dugong).
:class:`Estimator` is the part every fitted object shares, label model or not (Epoxy extends a label
matrix and has no probabilities of its own): fitted parameters are saved without pickle, one ``.npz``
holding the NumPy arrays plus the configuration as a JSON string, read back with ``allow_pickle=False``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any, Literal, get_args

import jax
import numpy as np

from jaxflash.ws.label_matrix import ABSTAIN, check_class_balance, check_labels

TiePolicy = Literal["abstain", "random", "prior"]
TIE_POLICIES: tuple[str, ...] = get_args(TiePolicy)
_REGISTRY: dict[str, type[Estimator]] = {}
_TIE_TOL = 1e-5
# How far a row of probabilities may be from a distribution: float32 sums over up to 127 classes.
_DISTRIBUTION_TOL = 1e-4


def check_tie_policy(tie_policy: Any) -> TiePolicy:
    """Validates a tie policy: one of :data:`TIE_POLICIES`."""
    if tie_policy not in TIE_POLICIES:
        accepted = ", ".join(repr(p) for p in TIE_POLICIES)
        raise ValueError(f"tie_policy must be one of {accepted}; got {tie_policy!r}")
    return tie_policy


def _check_distributions(probs: np.ndarray, pt: np.ndarray | None) -> None:
    """Raises naming the first row of ``probs`` that is NaN, negative or does not sum to 1.

    ``pt``: the class-major copy ``probs.T`` when the caller has one (sums over contiguous rows).
    """
    total = probs[:, 0] + probs[:, 1] if pt is None else pt.sum(axis=0)
    tol = _DISTRIBUTION_TOL
    # Reductions first (a NaN makes them NaN, which fails every comparison); rows only on a failure.
    if total.min() >= 1 - tol and total.max() <= 1 + tol and probs.min() >= -tol:
        return
    r = int(np.argmin((np.abs(total - 1.0) <= tol) & (probs.min(axis=1) >= -tol)))
    raise ValueError(
        f"probs row {r} is not a probability distribution: {probs[r].tolist()} (entries must be "
        f">= 0, without NaN, and sum to 1 within {tol:g})"
    )


def probs_to_preds(
    probs: Any,
    *,
    tie_policy: TiePolicy = "abstain",
    key: jax.Array | None = None,
    prior: Any | None = None,
    tol: float = _TIE_TOL,
) -> np.ndarray:
    """Hard labels ``[n]`` from probabilities ``[n, k]`` with an explicit tie policy.

    Every row must be a distribution (no NaN, entries >= 0, sum 1 within 1e-4); a ``ValueError`` names
    the first row that is not. A row is tied when more than one class is within ``tol`` of its maximum
    (snorkel uses the same tolerance in ``probs_to_preds``). Policies:
      ``"abstain"``: a tied row predicts -1 (snorkel's default ``tie_break_policy='abstain'``);
      ``"random"``: one of the tied classes uniformly at random, drawn with the PRNG ``key`` (required);
      ``"prior"``: the tied class with the largest ``prior`` probability (lowest index among equal priors).
    """
    check_tie_policy(tie_policy)
    if tie_policy == "random" and key is None:
        raise ValueError("tie_policy='random' needs a PRNG key: pass key=jax.random.key(seed)")
    if tie_policy == "prior" and prior is None:
        raise ValueError("tie_policy='prior' needs a class prior (fit with class_balance or Y_dev)")
    probs = np.asarray(probs, np.float64)
    if probs.ndim != 2 or probs.shape[1] < 2:
        raise ValueError(f"probs must be [n, k] with k >= 2 classes, got shape {probs.shape}")
    if probs.shape[1] == 2:
        _check_distributions(probs, None)
        # Binary: a row is tied exactly when |p1 - p0| <= tol, and then both classes are tied.
        d = probs[:, 1] - probs[:, 0]
        preds = (d > 0).astype(np.int32)
        is_tie = np.abs(d) <= tol
        tied = None
    else:
        # Class-major: reductions over the k classes become k elementwise passes over contiguous rows,
        # faster in NumPy than reducing a short trailing axis.
        pt = np.ascontiguousarray(probs.T)  # [k, n]
        _check_distributions(probs, pt)
        tied = pt >= pt.max(axis=0) - tol  # [k, n]
        preds = _argmax0(pt)
        is_tie = tied.sum(axis=0) > 1
    if tie_policy == "abstain":
        preds[is_tie] = ABSTAIN
    elif tie_policy == "random":
        u = np.asarray(jax.random.uniform(key, probs.shape)).T
        draw = _argmax0(u if tied is None else np.where(tied, u, -1.0))
        preds = np.where(is_tie, draw, preds).astype(np.int32)
    else:
        prior = check_class_balance(prior, probs.shape[1], name="prior")
        # Largest prior wins; the lowest index among equal priors.
        if tied is None:
            preds[is_tie] = int(np.argmax(prior))
        else:
            preds = np.where(is_tie, _argmax0(np.where(tied, prior[:, None], -1.0)), preds)
            preds = preds.astype(np.int32)
    return preds


def _argmax0(a: np.ndarray) -> np.ndarray:
    """``np.argmax(a, axis=0)`` (first maximum wins) for a short leading axis, as int32."""
    best, idx = a[0], np.zeros(a.shape[1], np.int32)
    for c in range(1, a.shape[0]):
        better = a[c] > best
        idx[better] = c
        best = np.where(better, a[c], best)
    return idx


def classification_metrics(
    Y: Any, preds: Any, metrics: Sequence[str], cardinality: int, probs: Any | None = None
) -> dict[str, float]:
    """Metrics of hard predictions ``preds`` ``[n]`` (``-1`` = abstained) against gold ``Y`` ``[n]``.

    An abstained prediction counts as wrong for ``accuracy`` and as "not positive" for precision/recall/F1
    (binary, positive class 1); ``coverage`` is the fraction of non-abstained predictions. (snorkel's
    ``score`` instead drops abstained points before computing metrics, so it reports higher numbers for a
    model that abstains.) ``f1_macro`` averages per-class F1. ``log_loss`` needs ``probs`` ``[n, k]``.
    """
    Y = np.asarray(Y)
    preds = np.asarray(preds)
    if Y.ndim != 1 or preds.ndim != 1:
        raise ValueError(f"Y and preds must be 1-D, got Y.shape={Y.shape}, preds.shape={preds.shape}")
    if Y.shape[0] != preds.shape[0]:
        raise ValueError(f"Y has {Y.shape[0]} labels but preds has {preds.shape[0]}")
    if probs is not None:
        probs = np.asarray(probs)
        if probs.ndim != 2 or probs.shape[0] != Y.shape[0]:
            raise ValueError(
                f"probs must be [n, k] with n = {Y.shape[0]} (the labels in Y), got {probs.shape}"
            )
    out: dict[str, float] = {}

    def f1_for(c: int) -> tuple[float, float, float]:
        tp = float(np.sum((preds == c) & (Y == c)))
        pp = float(np.sum(preds == c))
        ap = float(np.sum(Y == c))
        prec = tp / pp if pp else 0.0
        rec = tp / ap if ap else 0.0
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        return prec, rec, f1

    for metric in metrics:
        if metric == "accuracy":
            out[metric] = float(np.mean(preds == Y))
        elif metric == "coverage":
            out[metric] = float(np.mean(preds != ABSTAIN))
        elif metric in ("precision", "recall", "f1"):
            if cardinality != 2:
                raise ValueError(f"metric {metric!r} is binary (positive class 1); use 'f1_macro'")
            prec, rec, f1 = f1_for(1)
            out[metric] = {"precision": prec, "recall": rec, "f1": f1}[metric]
        elif metric == "f1_macro":
            out[metric] = float(np.mean([f1_for(c)[2] for c in range(cardinality)]))
        elif metric == "log_loss":
            if probs is None:
                raise ValueError("log_loss needs probabilities")
            p = np.clip(probs[np.arange(Y.size), Y], 1e-12, 1.0)
            out[metric] = float(-np.mean(np.log(p)))
        else:
            raise ValueError(
                f"unknown metric {metric!r}; known: accuracy, coverage, precision, recall, f1, "
                "f1_macro, log_loss"
            )
    return out


class Estimator:
    """A fitted object saved and loaded without pickle.

    Subclasses implement ``fit``, ``_config()`` (the JSON-serialisable constructor arguments) and
    ``_params()`` / ``_set_params()`` (the fitted arrays); ``fit`` sets ``fitted_ = True``.
    """

    fitted_: bool = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _REGISTRY[cls.__name__] = cls

    def fit(self, *args: Any, **kwargs: Any) -> Estimator:
        raise NotImplementedError

    def _config(self) -> dict[str, Any]:
        raise NotImplementedError

    def _params(self) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _set_params(self, params: dict[str, np.ndarray]) -> None:
        raise NotImplementedError

    def _check_fitted(self) -> None:
        if not self.fitted_:
            raise ValueError(f"{type(self).__name__} is not fitted: call fit first")

    def save(self, path: str | os.PathLike[str]) -> None:
        """Writes the configuration (JSON) and fitted arrays to one ``.npz`` file; no pickle."""
        self._check_fitted()
        params = {k: np.asarray(v) for k, v in self._params().items()}
        meta = json.dumps({"class": type(self).__name__, "config": self._config()})
        np.savez(path, __meta__=np.array(meta), **params)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Estimator:
        """Reads an object written by :meth:`save` (any subclass of the class it is called on)."""
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["__meta__"]))
            params = {k: data[k] for k in data.files if k != "__meta__"}
        target = _REGISTRY.get(meta["class"])
        if target is None:
            raise ValueError(f"{path}: unknown class {meta['class']!r}")
        if not issubclass(target, cls):
            raise ValueError(f"{path} holds a {meta['class']}, not a {cls.__name__}")
        model = target(**meta["config"])
        model._set_params(params)
        model.fitted_ = True
        return model


class LabelModel(Estimator):
    """Base class of the label models: shared ``predict``/``score`` on top of ``predict_proba``.

    Subclasses implement ``fit``, ``predict_proba`` and the :class:`Estimator` hooks. ``predict`` and
    ``score`` take ``tie_policy=None`` to mean the model's own ``tie_policy`` (``"abstain"`` unless the
    model says otherwise). ``class_balance_`` (when set) is the prior used by ``tie_policy="prior"``.
    """

    cardinality: int
    class_balance_: np.ndarray | None = None
    tie_policy: TiePolicy = "abstain"

    def predict_proba(self, L: Any) -> np.ndarray:
        raise NotImplementedError

    def _labels_from_probs(
        self, probs: np.ndarray, tie_policy: TiePolicy | None, key: jax.Array | None
    ) -> np.ndarray:
        """Hard labels of ``predict_proba``'s output: one per leading index, ties by ``tie_policy``."""
        k = probs.shape[-1]
        preds = probs_to_preds(
            probs.reshape(-1, k),
            tie_policy=self.tie_policy if tie_policy is None else tie_policy,
            key=key,
            prior=self.class_balance_,
        )
        return preds.reshape(probs.shape[:-1])

    def _score_probs(
        self,
        probs: np.ndarray,
        Y: Any,
        metrics: Sequence[str],
        tie_policy: TiePolicy | None,
        key: jax.Array | None,
    ) -> dict[str, float]:
        """:func:`classification_metrics` of the hard labels of ``probs`` against ``Y`` (their shape)."""
        preds = self._labels_from_probs(probs, tie_policy, key)
        if preds.ndim == 1:
            Y = check_labels(Y, n=preds.shape[0], cardinality=self.cardinality)
        else:
            arr = np.asarray(Y)
            if arr.shape != preds.shape:
                raise ValueError(
                    f"Y must have shape {preds.shape} (a label per predicted element), got {arr.shape}"
                )
            Y = check_labels(arr.reshape(-1), cardinality=self.cardinality)
        per_label = probs.reshape(-1, probs.shape[-1]) if probs.shape[:-1] == preds.shape else None
        return classification_metrics(Y, preds.reshape(-1), metrics, self.cardinality, per_label)

    def predict(
        self, L: Any, *, tie_policy: TiePolicy | None = None, key: jax.Array | None = None
    ) -> np.ndarray:
        """Hard labels in ``0..k-1`` (``-1`` for a tie under ``"abstain"``; see :func:`probs_to_preds`)."""
        return self._labels_from_probs(self.predict_proba(L), tie_policy, key)

    def score(
        self,
        L: Any,
        Y: Any,
        metrics: Sequence[str] = ("accuracy",),
        *,
        tie_policy: TiePolicy | None = None,
        key: jax.Array | None = None,
    ) -> dict[str, float]:
        """Metrics of ``predict(L)`` against gold ``Y`` (see :func:`classification_metrics`)."""
        return self._score_probs(self.predict_proba(L), Y, metrics, tie_policy, key)
