"""Real label matrices shipped with the package.

YouTube spam (``data/youtube_spam/``): 10 real labelling functions over YouTube comments, from the Epoxy
repository (HazyResearch/epoxy ``examples/data/``, Apache-2.0; LICENSE and README beside the files; the
texts were converted from pandas pickles to CSV). Splits: train 1586 (unlabelled), test 250 (labelled),
and a "valid" split that is **not usable as a labelled dev set**: ``L_valid`` has 120 rows, ``Y_valid`` and
``valid.csv`` 100, and the rows do not correspond (majority vote of ``L_valid`` scores 0.36-0.45 against
``Y_valid`` for every 100-row window, versus 0.73 on test). ``Y_valid`` does match the labels in
``valid.csv``. For tuning on YouTube, use :func:`youtube_dev_test_split` (a seeded split of the labelled test
rows into dev and held-out test).
"""

from __future__ import annotations

import csv
from importlib import resources

import numpy as np

from jaxflash.ws.label_matrix import from_flyingsquid, labels_from_pm1


def _data_dir():
    return resources.files("jaxflash.ws") / "data" / "youtube_spam"


def _read_texts(name: str) -> list[str]:
    with (_data_dir() / name).open(encoding="utf-8", newline="") as f:
        return [row["text"] for row in csv.DictReader(f)]


def load_youtube_spam(*, texts: bool = False) -> dict[str, np.ndarray | list[str]]:
    """The YouTube spam task in snorkel's convention (-1 abstain; 0 = ham, 1 = spam).

    Returns ``L_train [1586, 10]``, ``L_valid [120, 10]``, ``L_test [250, 10]``, ``Y_valid [100]`` (labels of
    ``valid.csv``, not of ``L_valid``: see the module docstring), ``Y_test [250]``;
    with ``texts=True`` also ``text_train``, ``text_valid``,
    ``text_test`` (lists of comment strings, aligned with the rows).
    """
    d = _data_dir()

    def npy(name: str) -> np.ndarray:
        with (d / name).open("rb") as f:
            return np.load(f, allow_pickle=False)

    out: dict[str, np.ndarray | list[str]] = {
        "L_train": from_flyingsquid(npy("L_train.npy")),
        "L_valid": from_flyingsquid(npy("L_valid.npy")),
        "Y_valid": labels_from_pm1(npy("Y_valid.npy")),
        "L_test": from_flyingsquid(npy("L_test.npy")),
        "Y_test": labels_from_pm1(npy("Y_test.npy")),
    }
    if texts:
        out["text_train"] = _read_texts("train.csv")
        out["text_valid"] = _read_texts("valid.csv")
        out["text_test"] = _read_texts("test.csv")
    return out


def youtube_dev_test_split(n_dev: int = 100, seed: int = 0) -> dict[str, np.ndarray]:
    """Splits the 250 labelled YouTube test rows into ``dev`` (``n_dev`` rows, for tuning) and ``test``.

    Returns ``dev_idx``, ``test_idx`` (row indices into ``L_test``), ``L_dev``, ``Y_dev``, ``L_test``,
    ``Y_test``. Numbers tuned on ``dev`` must be reported on this ``test`` part only.
    """
    data = load_youtube_spam()
    n = data["L_test"].shape[0]
    if not 0 < n_dev < n:
        raise ValueError(f"n_dev must be in 1..{n - 1}, got {n_dev}")
    perm = np.random.default_rng(seed).permutation(n)
    dev_idx, test_idx = np.sort(perm[:n_dev]), np.sort(perm[n_dev:])
    return {
        "dev_idx": dev_idx,
        "test_idx": test_idx,
        "L_dev": data["L_test"][dev_idx],
        "Y_dev": data["Y_test"][dev_idx],
        "L_test": data["L_test"][test_idx],
        "Y_test": data["Y_test"][test_idx],
    }
