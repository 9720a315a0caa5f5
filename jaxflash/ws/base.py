"""The scikit-learn-like API shared by every label model, tie policies, metrics and save/load.

Every label model has ``fit(L, ...)``, ``predict_proba(L) -> [n, k]``, ``predict(L) -> [n]`` (classes
``0..k-1``, or ``-1`` for an abstained prediction) and ``score(L, Y, metrics)``. Fitted parameters are
saved without pickle: one ``.npz`` holding the NumPy arrays plus the configuration as a JSON string, read
back with ``allow_pickle=False``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import jax
import numpy as np

from jaxflash.ws.label_matrix import ABSTAIN, check_class_balance, check_labels

TiePolicy = Literal["abstain", "random", "prior"]
_REGISTRY: dict[str, type[LabelModel]] = {}
_TIE_TOL = 1e-5


def probs_to_preds(
    probs: Any,
    *,
    tie_policy: TiePolicy = "abstain",
    key: jax.Array | None = None,
    prior: Any | None = None,
    tol: float = _TIE_TOL,
) -> np.ndarray:
    """Hard labels from probabilities with an explicit tie policy.

    A row is tied when more than one class is within ``tol`` of its maximum (snorkel uses the same
    tolerance in ``probs_to_preds``). Policies:
      ``"abstain"``: a tied row predicts -1 (snorkel's default ``tie_break_policy='abstain'``);
      ``"random"``: one of the tied classes uniformly at random, drawn with the PRNG ``key`` (required);
      ``"prior"``: the tied class with the largest ``prior`` probability (lowest index among equal priors).
    """
    probs = np.asarray(probs, np.float64)
    if probs.ndim != 2:
        raise ValueError(f"probs must be [n, k], got shape {probs.shape}")
    if probs.shape[1] == 2:
        # Binary: a row is tied exactly when |p1 - p0| <= tol, and then both classes are tied.
        d = probs[:, 1] - probs[:, 0]
        preds = (d > 0).astype(np.int32)
        is_tie = np.abs(d) <= tol
        tied = None
    else:
        # Class-major: reductions over the k classes become k elementwise passes over contiguous rows,
        # ~3x faster in NumPy than reducing a short trailing axis at n = 10^6.
        pt = np.ascontiguousarray(probs.T)  # [k, n]
        tied = pt >= pt.max(axis=0) - tol  # [k, n]
        preds = _argmax0(pt)
        is_tie = tied.sum(axis=0) > 1
    if tie_policy == "abstain":
        preds[is_tie] = ABSTAIN
    elif tie_policy == "random":
        if key is None:
            raise ValueError("tie_policy='random' needs a PRNG key: pass key=jax.random.key(seed)")
        u = np.asarray(jax.random.uniform(key, probs.shape)).T
        draw = _argmax0(u if tied is None else np.where(tied, u, -1.0))
        preds = np.where(is_tie, draw, preds).astype(np.int32)
    elif tie_policy == "prior":
        if prior is None:
            raise ValueError("tie_policy='prior' needs a class prior (fit with class_balance or Y_dev)")
        prior = check_class_balance(prior, probs.shape[1], name="prior")
        # Largest prior wins; the lowest index among equal priors.
        if tied is None:
            preds[is_tie] = int(np.argmax(prior))
        else:
            preds = np.where(is_tie, _argmax0(np.where(tied, prior[:, None], -1.0)), preds)
            preds = preds.astype(np.int32)
    else:
        raise ValueError(f"tie_policy must be 'abstain', 'random' or 'prior', got {tie_policy!r}")
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
    """Metrics of hard predictions ``preds`` (``-1`` = abstained) against gold ``Y``.

    An abstained prediction counts as wrong for ``accuracy`` and as "not positive" for precision/recall/F1
    (binary, positive class 1); ``coverage`` is the fraction of non-abstained predictions. (snorkel's
    ``score`` instead drops abstained points before computing metrics; on YouTube test its LabelModel
    scores 0.866 that way and 0.804 counted like here.) ``f1_macro``
    averages per-class F1. ``log_loss`` needs ``probs``.
    """
    Y = np.asarray(Y)
    preds = np.asarray(preds)
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
            p = np.clip(np.asarray(probs)[np.arange(Y.size), Y], 1e-12, 1.0)
            out[metric] = float(-np.mean(np.log(p)))
        else:
            raise ValueError(
                f"unknown metric {metric!r}; known: accuracy, coverage, precision, recall, f1, "
                "f1_macro, log_loss"
            )
    return out


class LabelModel:
    """Base class: shared ``predict``/``score``/``save``/``load``.

    Subclasses implement ``fit``, ``predict_proba``, ``_config()`` (JSON-serialisable constructor
    arguments) and ``_params()`` / ``_set_params()`` (the fitted arrays).
    """

    cardinality: int
    class_balance_: np.ndarray | None = None
    _name: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _REGISTRY[cls.__name__] = cls

    # --- to implement -------------------------------------------------------------------------------
    def fit(self, L: Any, *args: Any, **kwargs: Any) -> LabelModel:
        raise NotImplementedError

    def predict_proba(self, L: Any) -> np.ndarray:
        raise NotImplementedError

    def _config(self) -> dict[str, Any]:
        raise NotImplementedError

    def _params(self) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _set_params(self, params: dict[str, np.ndarray]) -> None:
        raise NotImplementedError

    # --- shared -------------------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not getattr(self, "fitted_", False):
            raise ValueError(f"{type(self).__name__} is not fitted: call fit(L) first")

    def predict(
        self, L: Any, *, tie_policy: TiePolicy = "abstain", key: jax.Array | None = None
    ) -> np.ndarray:
        """Hard labels ``[n]`` in ``0..k-1``; ties follow ``tie_policy`` (see :func:`probs_to_preds`)."""
        return probs_to_preds(
            self.predict_proba(L), tie_policy=tie_policy, key=key, prior=self.class_balance_
        )

    def score(
        self,
        L: Any,
        Y: Any,
        metrics: Sequence[str] = ("accuracy",),
        *,
        tie_policy: TiePolicy = "abstain",
        key: jax.Array | None = None,
    ) -> dict[str, float]:
        """Metrics of ``predict(L)`` against gold ``Y`` (see :func:`classification_metrics`)."""
        probs = self.predict_proba(L)
        Y = check_labels(Y, n=probs.shape[0], cardinality=self.cardinality)
        preds = probs_to_preds(probs, tie_policy=tie_policy, key=key, prior=self.class_balance_)
        return classification_metrics(Y, preds, metrics, self.cardinality, probs)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Writes the configuration (JSON) and fitted arrays to one ``.npz`` file; no pickle."""
        self._check_fitted()
        params = {k: np.asarray(v) for k, v in self._params().items()}
        meta = json.dumps({"class": type(self).__name__, "config": self._config()})
        np.savez(path, __meta__=np.array(meta), **params)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> LabelModel:
        """Reads a model written by :meth:`save` (any subclass when called on the base class)."""
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["__meta__"]))
            params = {k: data[k] for k in data.files if k != "__meta__"}
        target = _REGISTRY.get(meta["class"])
        if target is None:
            raise ValueError(f"{path}: unknown label model class {meta['class']!r}")
        if cls is not LabelModel and not issubclass(target, cls):
            raise ValueError(f"{path} holds a {meta['class']}, not a {cls.__name__}")
        model = target(**meta["config"])
        model._set_params(params)
        model.fitted_ = True
        return model
