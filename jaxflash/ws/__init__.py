"""Weak supervision: label matrices, labelling functions and label models (FlyingSquid, snorkel's MeTaL
matrix completion, Dugong, Epoxy, Liger) with a scikit-learn-like ``fit / predict_proba / predict / score``
API.

Convention everywhere (snorkel's): ``L[n_points, n_lfs]`` with -1 = abstain and classes 0..k-1;
:func:`from_flyingsquid` / :func:`to_flyingsquid` convert FlyingSquid's 0-abstain, +-1 matrices.
Every label model (MajorityVote, FlyingSquid, MatrixCompletionLabelModel, Dugong, Liger) is a
:class:`LabelModel`; Epoxy extends a label matrix for a label model to read (see :mod:`jaxflash.ws.epoxy`
for why it is not one). :class:`NoiseAwareClassifier` is the end model: a classifier over the points'
features trained on a label model's probabilities (noise-aware cross-entropy) through the train step.
"""

from jaxflash.ws.base import LabelModel, classification_metrics, probs_to_preds
from jaxflash.ws.datasets import load_youtube_spam, youtube_dev_test_split
from jaxflash.ws.dugong import Dugong, DugongSource
from jaxflash.ws.embeddings import hashed_ngram_embeddings
from jaxflash.ws.end_model import MLPClassifier, NoiseAwareClassifier
from jaxflash.ws.epoxy import Epoxy
from jaxflash.ws.flyingsquid import FlyingSquid, OnlineFlyingSquid
from jaxflash.ws.label_matrix import (
    ABSTAIN,
    LabelingFunction,
    apply_lfs,
    check_label_matrix,
    from_flyingsquid,
    label_coverage,
    label_vectors,
    labeling_function,
    labels_from_pm1,
    labels_to_pm1,
    lf_summary,
    to_flyingsquid,
)
from jaxflash.ws.liger import Liger, kmeans
from jaxflash.ws.majority import MajorityVote
from jaxflash.ws.matrix_completion import MatrixCompletionLabelModel

__all__ = [
    "ABSTAIN",
    "Dugong",
    "DugongSource",
    "Epoxy",
    "FlyingSquid",
    "LabelModel",
    "LabelingFunction",
    "Liger",
    "MajorityVote",
    "MLPClassifier",
    "MatrixCompletionLabelModel",
    "NoiseAwareClassifier",
    "OnlineFlyingSquid",
    "apply_lfs",
    "check_label_matrix",
    "classification_metrics",
    "from_flyingsquid",
    "hashed_ngram_embeddings",
    "kmeans",
    "label_coverage",
    "label_vectors",
    "labeling_function",
    "labels_from_pm1",
    "labels_to_pm1",
    "lf_summary",
    "load_youtube_spam",
    "probs_to_preds",
    "to_flyingsquid",
    "youtube_dev_test_split",
]
