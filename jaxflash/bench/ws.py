"""Weak supervision: fit time of jaxflash FlyingSquid and MatrixCompletionLabelModel vs snorkel's
LabelModel (MeTaL, its defaults: 100 SGD epochs) vs majority vote, on the YouTube spam matrices and on
synthetic matrices.

Each case times (the harness's median over repeated calls):
  ``FlyingSquid fit (warm)``: a second fit on a matrix of the same shape (compiled programs reused);
  ``FlyingSquid fit (first call)``: the JAX caches are cleared before every call, so compilation counts;
  ``FlyingSquid predict``: hard labels of the training matrix from a fitted model (warm);
  ``MatrixCompletion fit (warm)`` / ``(first call)``: jaxflash's port of snorkel's estimator with the same
  settings as the snorkel candidate (``MatrixCompletionLabelModel(seed=0).fit(L)``: snorkel's defaults,
  uniform class balance), warm and with the JAX caches cleared before every call;
  ``snorkel LabelModel fit``: ``LabelModel(cardinality=2, verbose=False).fit(L, progress_bar=False,
  seed=0)``, skipped when snorkel is not installed;
  ``MajorityVote predict``: ``predict_proba`` of the training matrix, for scale (majority vote has no fit).
Test accuracy of each model is a column of the case (computed once when the cases are built, on a held
-out sample of the same distribution for synthetic data, on ``L_test`` for YouTube; ties -> the prior's
class; ``acc MatrixCompletion`` and ``acc snorkel`` use snorkel's ``tie_break_policy='abstain'``, an
abstain counting as wrong). Targets at n = 1e6, m = 20: a warm FlyingSquid fit >= 100x faster than
snorkel's fit with accuracy within 1 point or better, and a first call under one second; a warm
MatrixCompletion fit >= 10x faster than snorkel's at accuracy within 0.01 of it (the same estimator).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import tempfile
from collections.abc import Sequence

import numpy as np

from jaxflash.bench.harness import Candidate, Case, Suite

DEFAULT_SIZES = (10_000, 100_000, 1_000_000)
QUICK_SIZES = (10_000,)
GPU_SIZES = (100_000, 1_000_000)
GPU_CHECKS: tuple = ()  # no Pallas kernels in this area
_LFS = (10, 20, 100)


@functools.cache
def _synthetic(n: int, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    import jax

    from jaxflash.ws.synthetic import sample_label_matrix

    rng = np.random.default_rng(1000 * m + 7)
    acc = rng.uniform(0.55, 0.85, m)
    cov = rng.uniform(0.05, 0.5, m)
    cb = [0.4, 0.6]
    L, _ = sample_label_matrix(jax.random.key(n * 131 + m), n, acc, cov, cb)
    L_test, Y_test = sample_label_matrix(jax.random.key(n * 131 + m + 1), 20_000, acc, cov, cb)
    return L, L_test, Y_test, np.asarray(cb)


@functools.cache
def _youtube() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from jaxflash.ws import load_youtube_spam

    d = load_youtube_spam()
    return d["L_train"], d["L_test"], d["Y_test"], np.array([0.4, 0.6])


def _snorkel_fit(L: np.ndarray):
    from snorkel.labeling.model import LabelModel

    model = LabelModel(cardinality=2, verbose=False)
    model.fit(L, progress_bar=False, seed=0)
    return model


def _mc_fit(L: np.ndarray):
    from jaxflash.ws import MatrixCompletionLabelModel

    return MatrixCompletionLabelModel(cardinality=2, seed=0).fit(L)


def _fs_fit(L: np.ndarray, cb: np.ndarray, method: str):
    from jaxflash.ws import FlyingSquid

    return FlyingSquid(solve_method=method).fit(L, class_balance=cb)


def _accuracies(data: str, n: int, m: int, method: str) -> dict[str, str]:
    """Test accuracies, cached in a file: the memory-measuring subprocesses rebuild the cases and must not
    refit every model (snorkel takes seconds at n = 1e6)."""
    has_snorkel = importlib.util.find_spec("snorkel") is not None
    key = f"{data}-{n}-{m}-{method}-matrix-completion-snorkel={has_snorkel}"
    path = os.path.join(tempfile.gettempdir(), "jaxflash-bench-ws-accuracy.json")
    try:
        with open(path) as f:
            cache = json.load(f)
    except (OSError, ValueError):
        cache = {}
    if key not in cache:
        cache[key] = _compute_accuracies(data, n, m, method)
        with open(path, "w") as f:
            json.dump(cache, f)
    return cache[key]


def _compute_accuracies(data: str, n: int, m: int, method: str) -> dict[str, str]:
    from jaxflash.ws import MajorityVote

    L, L_test, Y_test, cb = _youtube() if data == "youtube" else _synthetic(n, m)
    out = {
        "acc FlyingSquid": _fs_fit(L, cb, method).score(L_test, Y_test, tie_policy="prior")["accuracy"],
        "acc MatrixCompletion": _mc_fit(L).score(L_test, Y_test)["accuracy"],
        "acc MV": MajorityVote(class_balance=cb).score(L_test, Y_test, tie_policy="prior")["accuracy"],
    }
    if importlib.util.find_spec("snorkel") is not None:
        preds = _snorkel_fit(L).predict(L_test, tie_break_policy="abstain")
        out["acc snorkel"] = float(np.mean(preds == Y_test))
    else:
        out["acc snorkel"] = float("nan")
    return {k: f"{v:.3f}" for k, v in out.items()}


def _case(data: str, n: int, m: int, method: str, with_snorkel: bool) -> Case:
    def data_fn():
        return _youtube() if data == "youtube" else _synthetic(n, m)

    def fs_warm():
        L, _, _, cb = data_fn()
        _fs_fit(L, cb, method)  # compile once; the timed calls are warm fits
        return lambda: _fs_fit(L, cb, method).mu_

    def fs_first():
        import jax

        L, _, _, cb = data_fn()

        def thunk():
            jax.clear_caches()
            return _fs_fit(L, cb, method).mu_

        return thunk

    def fs_predict():
        L, _, _, cb = data_fn()
        model = _fs_fit(L, cb, method)
        model.predict(L)  # compile once
        return lambda: model.predict(L)

    def mc_warm():
        L = data_fn()[0]
        _mc_fit(L)  # compile once; the timed calls are warm fits
        return lambda: _mc_fit(L).mu_

    def mc_first():
        import jax

        L = data_fn()[0]

        def thunk():
            jax.clear_caches()
            return _mc_fit(L).mu_

        return thunk

    def snorkel():
        L = data_fn()[0]
        return lambda: _snorkel_fit(L).get_weights()

    def majority():
        from jaxflash.ws import MajorityVote

        L = data_fn()[0]
        mv = MajorityVote()
        return lambda: mv.predict_proba(L)

    candidates = [
        Candidate("FlyingSquid fit (warm)", fs_warm),
        Candidate("FlyingSquid fit (first call)", fs_first),
        Candidate("FlyingSquid predict", fs_predict),
        Candidate("MatrixCompletion fit (warm)", mc_warm),
        Candidate("MatrixCompletion fit (first call)", mc_first),
        Candidate("MajorityVote predict", majority),
    ]
    if with_snorkel:
        candidates.append(Candidate("snorkel LabelModel fit", snorkel, requires=("snorkel",), peer=True))
    config = {"data": data, "n": n, "m": m, **_accuracies(data, n, m, method)}
    baseline = "snorkel LabelModel fit" if importlib.util.find_spec("snorkel") else "FlyingSquid fit (warm)"
    return Case(config=config, candidates=tuple(candidates), baseline=baseline)


def _cases(sizes: Sequence[int] | None, quick: bool) -> list[Case]:
    L_train = _youtube()[0]
    cases = [_case("youtube", L_train.shape[0], L_train.shape[1], "triplet_median", True)]
    for n in sizes or (QUICK_SIZES if quick else DEFAULT_SIZES):
        for m in _LFS[:2] if quick else _LFS:
            cases.append(_case("synthetic", n, m, "triplet_mean", True))
    return cases


SUITE = Suite(
    name="ws",
    description="label-model fit: FlyingSquid, MatrixCompletion (jaxflash) vs snorkel LabelModel vs MV",
    cases=_cases,
)
