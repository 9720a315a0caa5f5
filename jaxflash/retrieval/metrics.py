r"""Ranking metrics as BEIR reports them (pytrec_eval, i.e. trec_eval): nDCG@k, recall@k, P@k, MRR@k.

For a query with ranked documents :math:`d_1, d_2, \dots` and relevance grades :math:`rel(d)` (unjudged
documents are 0), cut at rank ``k``:

.. math::  \mathrm{DCG@k} = \sum_{i=1}^{k} \frac{rel(d_i)}{\log_2(i + 1)}, \qquad
           \mathrm{nDCG@k} = \mathrm{DCG@k} / \mathrm{IDCG@k},

with linear gain (trec_eval's ``ndcg_cut``) and IDCG@k the DCG@k of the query's judged documents sorted by
grade. Recall@k is the number of relevant documents in the top ``k`` over the number of relevant documents
(trec_eval's ``recall_k``); P@k divides that count by ``k`` even when fewer documents were ranked
(``P_k``); MRR@k is :math:`1 / i` for the first relevant :math:`d_i` with :math:`i \le k`, else 0. A document
is *relevant* when its grade is positive (for integer grades, trec_eval's default relevance level 1);
non-positive grades add no gain, as in trec_eval.

Inputs, in one of two forms:

* ``ranking``: an integer array ``[num_queries, length]`` of document indices, best first (the
  ``indices`` of :func:`~jaxflash.retrieval.exact_search`); ``-1`` marks an empty slot (a query with fewer
  results). ``qrels``: a list of ``num_queries`` dicts ``{doc_index: grade}``, or a boolean / graded array
  ``[num_queries, num_documents]``.
* BEIR's dicts: ``ranking = {query_id: {doc_id: score}}`` and ``qrels = {query_id: {doc_id: grade}}``.

Ties: an array ranking is taken in the order given (:func:`~jaxflash.retrieval.exact_search` already breaks
equal scores by the lower document index). A dict run is sorted as trec_eval sorts it: score descending, then
document id descending as strings (trec_eval's ``comp_sim_docno``), so tied scores rank as pytrec_eval ranks
them.

Queries without a relevant document have no defined nDCG or recall: their per-query values are NaN, and
:func:`evaluate` averages over the other queries and reports how many there were. (BEIR drops queries
absent from its qrels the same way; trec_eval would score a query judged all non-relevant 0.) The queries
are those of ``ranking``: for a dict run, queries in ``qrels`` but not in the run are not evaluated, as in
pytrec_eval.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from jaxtyping import Float

from jaxflash.utils import check_int

DEFAULT_KS = (1, 3, 5, 10)


class _Judged:
    """A ranking resolved against its qrels: everything the metrics need, one row per query."""

    def __init__(self, gains: np.ndarray, ideal: np.ndarray, num_relevant: np.ndarray):
        self.gains = gains  # [nq, length]: grade of the document at each rank (0: non-relevant or empty)
        self.ideal = ideal  # [nq, m]: the query's positive grades, sorted descending, zero-padded
        self.num_relevant = num_relevant  # [nq]: documents with a positive grade


def ndcg_at_k(ranking: Any, qrels: Any, k: int) -> Float[np.ndarray, " nq"]:
    """nDCG@k of each query (linear gain, log2 discount); NaN for a query without a relevant document."""
    return _ndcg(_judge(ranking, qrels), check_int("k", k))


def recall_at_k(ranking: Any, qrels: Any, k: int) -> Float[np.ndarray, " nq"]:
    """Recall@k of each query: relevant documents in the top ``k`` over all relevant ones; NaN without any."""
    return _recall(_judge(ranking, qrels), check_int("k", k))


def precision_at_k(ranking: Any, qrels: Any, k: int) -> Float[np.ndarray, " nq"]:
    """P@k of each query: relevant documents in the top ``k``, over ``k``; NaN without a relevant document."""
    return _precision(_judge(ranking, qrels), check_int("k", k))


def mrr_at_k(ranking: Any, qrels: Any, k: int) -> Float[np.ndarray, " nq"]:
    """Reciprocal rank of the first relevant document within the top ``k`` (0 if none is there) of each
    query; NaN for a query without a relevant document."""
    return _mrr(_judge(ranking, qrels), check_int("k", k))


def evaluate(ranking: Any, qrels: Any, ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """Mean nDCG, recall, precision and MRR at each cutoff in ``ks``, over the queries that have a
    relevant document.

    Returns ``{"ndcg@10": ..., "recall@10": ..., "precision@10": ..., "mrr@10": ..., "num_queries": n,
    "num_queries_without_relevant": m}`` with a key per metric and cutoff; ``num_queries`` counts every
    query of ``ranking``, and the means are over the ``n - m`` others (NaN when ``m == n``).
    """
    if isinstance(ks, numbers.Integral) or len(ks) == 0:
        raise ValueError(f"ks must be a non-empty sequence of positive integers; got {ks!r}")
    ks = [check_int("each of ks", k) for k in ks]
    judged = _judge(ranking, qrels)
    has_relevant = judged.num_relevant > 0
    out: dict[str, float] = {}
    for name, metric in (("ndcg", _ndcg), ("recall", _recall), ("precision", _precision), ("mrr", _mrr)):
        for k in ks:
            values = metric(judged, k)[has_relevant]
            out[f"{name}@{k}"] = float(values.mean()) if values.size else math.nan
    out["num_queries"] = int(has_relevant.size)
    out["num_queries_without_relevant"] = int((~has_relevant).sum())
    return out


def _discounts(n: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(2, n + 2, dtype=np.float64))


def _undefined_where_no_relevant(values: np.ndarray, judged: _Judged) -> np.ndarray:
    return np.where(judged.num_relevant > 0, values, np.nan)


def _ndcg(judged: _Judged, k: int) -> np.ndarray:
    gains, ideal = judged.gains[:, :k], judged.ideal[:, :k]
    dcg = gains @ _discounts(gains.shape[1])
    idcg = ideal @ _discounts(ideal.shape[1])
    with np.errstate(divide="ignore", invalid="ignore"):
        return _undefined_where_no_relevant(dcg / idcg, judged)


def _hits(judged: _Judged, k: int) -> np.ndarray:
    return (judged.gains[:, :k] > 0).sum(axis=1)


def _recall(judged: _Judged, k: int) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return _undefined_where_no_relevant(_hits(judged, k) / judged.num_relevant, judged)


def _precision(judged: _Judged, k: int) -> np.ndarray:
    return _undefined_where_no_relevant(_hits(judged, k) / k, judged)


def _mrr(judged: _Judged, k: int) -> np.ndarray:
    relevant = judged.gains[:, :k] > 0
    first = np.argmax(relevant, axis=1)
    values = np.where(relevant.any(axis=1), 1.0 / (first + 1.0), 0.0)
    return _undefined_where_no_relevant(values, judged)


def _judge(ranking: Any, qrels: Any) -> _Judged:
    if isinstance(ranking, Mapping):
        return _judge_dicts(ranking, qrels)
    return _judge_array(ranking, qrels)


def _judge_array(ranking: Any, qrels: Any) -> _Judged:
    ranking = np.asarray(ranking)
    if ranking.ndim != 2 or not (np.issubdtype(ranking.dtype, np.integer) or ranking.size == 0):
        raise ValueError(
            "ranking must be a 2-D integer array [num_queries, length] of document indices (or a dict run "
            f"{{query_id: {{doc_id: score}}}}); got shape {ranking.shape} and dtype {ranking.dtype}"
        )
    num_queries, length = ranking.shape
    if num_queries == 0:
        raise ValueError(f"the query set is empty ({ranking.shape=}); pass at least one query")
    if length == 0:
        raise ValueError(f"the ranking lists no documents ({ranking.shape=}); is the corpus empty?")
    ranking = ranking.astype(np.int64)
    if (ranking < -1).any():
        raise ValueError("ranking holds negative document indices; only -1 (an empty slot) is allowed")
    ordered = np.sort(ranking, axis=1)
    repeated = (ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0)
    if repeated.any():
        q = int(np.argwhere(repeated)[0, 0])
        raise ValueError(f"ranking lists a document more than once for query {q}: {ranking[q].tolist()}")
    empty = ranking < 0

    if (
        isinstance(qrels, Sequence)
        and not isinstance(qrels, str)
        and all(isinstance(r, Mapping) for r in qrels)
    ):
        if len(qrels) != num_queries:
            raise ValueError(f"qrels has {len(qrels)} entries for {num_queries} queries in the ranking")
        gains = np.zeros((num_queries, length))
        grades = []
        for q, judgements in enumerate(qrels):
            row = {int(d): _grade(g, q, d) for d, g in judgements.items()}
            gains[q] = [row.get(int(d), 0.0) for d in ranking[q]]
            grades.append([g for g in row.values() if g > 0])
        gains[empty] = 0.0
        return _Judged(np.maximum(gains, 0.0), _ideal(grades), np.array([len(g) for g in grades]))

    matrix = np.asarray(qrels)
    if matrix.ndim != 2 or not (matrix.dtype == bool or np.issubdtype(matrix.dtype, np.number)):
        raise ValueError(
            "qrels must be a list of dicts {doc_index: grade} or a boolean / graded array "
            f"[num_queries, num_documents]; got {type(qrels).__name__} of shape {matrix.shape}"
        )
    if matrix.shape[0] != num_queries:
        raise ValueError(f"qrels has {matrix.shape[0]} rows for {num_queries} queries in the ranking")
    if matrix.shape[1] == 0:
        raise ValueError(f"qrels judges no documents ({matrix.shape=}); is the corpus empty?")
    matrix = matrix.astype(np.float64)
    if not np.isfinite(matrix).all():
        raise ValueError("qrels holds NaN or infinite grades")
    if ranking.max() >= matrix.shape[1]:
        raise ValueError(
            f"ranking holds document index {int(ranking.max())}, "
            f"beyond the {matrix.shape[1]} columns of qrels"
        )
    positive = np.maximum(matrix, 0.0)
    gains = np.take_along_axis(positive, np.where(empty, 0, ranking), axis=1)
    gains[empty] = 0.0
    ideal = -np.sort(-positive, axis=1)
    num_relevant = (positive > 0).sum(axis=1)
    return _Judged(gains, ideal[:, : max(1, int(num_relevant.max()))], num_relevant)


def _judge_dicts(run: Mapping, qrels: Any) -> _Judged:
    if not isinstance(qrels, Mapping):
        raise ValueError(
            "a dict run {query_id: {doc_id: score}} needs qrels as a dict {query_id: {doc_id: grade}}; "
            f"got {type(qrels).__name__}"
        )
    if len(run) == 0:
        raise ValueError("the query set is empty: the run has no queries")
    if not any(len(docs) for docs in run.values()):
        raise ValueError("the run ranks no documents for any query; is the corpus empty?")
    length = max(len(docs) for docs in run.values())
    gains = np.zeros((len(run), length))
    grades = []
    for q, (query_id, docs) in enumerate(run.items()):
        if not isinstance(docs, Mapping):
            raise ValueError(f"run[{query_id!r}] must be a dict {{doc_id: score}}; got {type(docs).__name__}")
        for doc_id, s in docs.items():
            if not (isinstance(s, numbers.Real) and math.isfinite(s)):
                raise ValueError(f"run[{query_id!r}][{doc_id!r}] must be a finite score; got {s!r}")
        judgements = qrels.get(query_id, {})
        row = {str(d): _grade(g, query_id, d) for d, g in judgements.items()}
        ranked = sorted(docs.items(), key=lambda item: (item[1], str(item[0])), reverse=True)
        gains[q, : len(ranked)] = [max(row.get(str(d), 0.0), 0.0) for d, _ in ranked]
        grades.append([g for g in row.values() if g > 0])
    return _Judged(gains, _ideal(grades), np.array([len(g) for g in grades]))


def _grade(value: Any, query: Any, doc: Any) -> float:
    if isinstance(value, bool):
        return float(value)
    if not (isinstance(value, numbers.Real) and math.isfinite(value)):
        raise ValueError(
            f"qrels grade for query {query!r}, document {doc!r} must be a finite number; got {value!r}"
        )
    return float(value)


def _ideal(grades: list[list[float]]) -> np.ndarray:
    ideal = np.zeros((len(grades), max(1, max(len(g) for g in grades))))
    for q, g in enumerate(grades):
        ideal[q, : len(g)] = sorted(g, reverse=True)
    return ideal
