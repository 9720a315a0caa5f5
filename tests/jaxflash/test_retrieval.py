"""jaxflash.retrieval: the ranking metrics against hand-computed values, exact_search against a brute-force
NumPy ranking (ragged chunks, exact ties, cosine vs dot), BM25 on a toy corpus and against the Lucene
formula, and every input error."""

import math
import sys

import jax
import numpy as np
import pytest

from jaxflash.retrieval import (
    BM25,
    evaluate,
    exact_search,
    mrr_at_k,
    ndcg_at_k,
    precision_at_k,
    recall_at_k,
)

LOG2_3 = math.log2(3)


def _brute_force(queries, docs, k, score):
    """Scores in float64 and the ranking by (score descending, index ascending)."""
    q = np.asarray(queries, np.float64)
    d = np.asarray(docs, np.float64)
    if score == "cos_sim":
        qn, dn = np.linalg.norm(q, axis=1, keepdims=True), np.linalg.norm(d, axis=1, keepdims=True)
        q = np.divide(q, qn, out=np.zeros_like(q), where=qn > 0)
        d = np.divide(d, dn, out=np.zeros_like(d), where=dn > 0)
    scores = q @ d.T
    index = np.broadcast_to(np.arange(d.shape[0]), scores.shape)
    order = np.lexsort((index, -scores), axis=1)[:, :k]
    return np.take_along_axis(scores, order, axis=1), order


# --------------------------------------------------------------------------------------------- metrics


def test_ndcg_binary_by_hand():
    # Relevant documents 1 and 2; the ranking puts 1 at rank 2 and 2 at rank 5.
    ranking = np.array([[3, 1, 4, 0, 2]])
    qrels = [{1: 1, 2: 1}]
    idcg = 1 + 1 / LOG2_3
    np.testing.assert_allclose(ndcg_at_k(ranking, qrels, 1), [0.0])
    np.testing.assert_allclose(ndcg_at_k(ranking, qrels, 3), [(1 / LOG2_3) / idcg])
    np.testing.assert_allclose(ndcg_at_k(ranking, qrels, 3), [0.386853], atol=1e-6)
    np.testing.assert_allclose(ndcg_at_k(ranking, qrels, 5), [(1 / LOG2_3 + 1 / math.log2(6)) / idcg])
    np.testing.assert_allclose(ndcg_at_k(ranking, qrels, 5), [0.624050], atol=1e-6)
    # The relevant documents first is perfect.
    np.testing.assert_allclose(ndcg_at_k(np.array([[2, 1, 0]]), qrels, 3), [1.0])


def test_ndcg_graded_by_hand():
    # Grades 1, 3, 2 for documents 0, 2, 5; document 5 is not retrieved. Linear gain: DCG@3 = 1/1 + 3/2.
    ranking = np.array([[0, 1, 2, 3]])
    qrels = [{0: 1, 2: 3, 5: 2}]
    idcg3 = 3 + 2 / LOG2_3 + 1 / 2
    np.testing.assert_allclose(ndcg_at_k(ranking, qrels, 3), [2.5 / idcg3])
    np.testing.assert_allclose(ndcg_at_k(ranking, qrels, 3), [0.525005], atol=1e-6)
    np.testing.assert_allclose(ndcg_at_k(ranking, qrels, 1), [1 / 3])


def test_ndcg_ties_in_the_ideal_ordering():
    # Two documents share grade 2: either order of them is ideal.
    qrels = [{0: 2, 1: 2, 2: 1}]
    for perfect in ([0, 1, 2], [1, 0, 2]):
        np.testing.assert_allclose(ndcg_at_k(np.array([perfect]), qrels, 3), [1.0])
    idcg = 2 + 2 / LOG2_3 + 1 / 2
    np.testing.assert_allclose(ndcg_at_k(np.array([[2, 0, 1]]), qrels, 3), [(1 + 2 / LOG2_3 + 2 / 2) / idcg])
    np.testing.assert_allclose(ndcg_at_k(np.array([[2, 0, 1]]), qrels, 3), [0.867086], atol=1e-6)


def test_k_beyond_the_ranking_length():
    # Two ranked documents, three relevant: DCG@10 stops at rank 2, IDCG@10 counts all three.
    ranking = np.array([[1, 9]])
    qrels = [{1: 1, 7: 1, 8: 1}]
    np.testing.assert_allclose(ndcg_at_k(ranking, qrels, 10), [1 / (1 + 1 / LOG2_3 + 1 / 2)])
    np.testing.assert_allclose(recall_at_k(ranking, qrels, 10), [1 / 3])
    np.testing.assert_allclose(precision_at_k(ranking, qrels, 10), [1 / 10])
    np.testing.assert_allclose(mrr_at_k(ranking, qrels, 10), [1.0])


def test_recall_precision_mrr_by_hand():
    ranking = np.array([[5, 2, 7, 1], [4, 3, 2, 1]])
    qrels = [{7: 1, 1: 1, 9: 1}, {4: 2}]
    np.testing.assert_allclose(recall_at_k(ranking, qrels, 2), [0.0, 1.0])
    np.testing.assert_allclose(recall_at_k(ranking, qrels, 3), [1 / 3, 1.0])
    np.testing.assert_allclose(recall_at_k(ranking, qrels, 4), [2 / 3, 1.0])
    np.testing.assert_allclose(precision_at_k(ranking, qrels, 4), [2 / 4, 1 / 4])
    np.testing.assert_allclose(mrr_at_k(ranking, qrels, 2), [0.0, 1.0])
    np.testing.assert_allclose(mrr_at_k(ranking, qrels, 4), [1 / 3, 1.0])


def test_query_without_relevant_documents_is_nan_and_left_out_of_the_means():
    ranking = np.array([[0, 1, 2], [2, 1, 0], [1, 0, 2]])
    qrels = [{0: 1}, {}, {0: 0, 2: 1}]  # query 1 has no judgement, query 2 one relevant at rank 3
    for metric in (ndcg_at_k, recall_at_k, precision_at_k, mrr_at_k):
        values = metric(ranking, qrels, 3)
        assert np.isnan(values[1]) and not np.isnan(values[[0, 2]]).any(), metric.__name__
    out = evaluate(ranking, qrels, ks=(1, 3))
    assert out["num_queries"] == 3 and out["num_queries_without_relevant"] == 1
    np.testing.assert_allclose(out["ndcg@1"], 0.5)
    np.testing.assert_allclose(out["ndcg@3"], (1 + 1 / 2) / 2)
    np.testing.assert_allclose(out["recall@1"], 0.5)
    np.testing.assert_allclose(out["precision@3"], 1 / 3)
    np.testing.assert_allclose(out["mrr@3"], (1 + 1 / 3) / 2)
    assert set(out) == {f"{m}@{k}" for m in ("ndcg", "recall", "precision", "mrr") for k in (1, 3)} | {
        "num_queries",
        "num_queries_without_relevant",
    }
    assert all(isinstance(v, float) for key, v in out.items() if "@" in key)


def test_evaluate_without_any_relevant_document_is_nan():
    out = evaluate(np.array([[0, 1]]), [{}], ks=(1,))
    assert math.isnan(out["ndcg@1"]) and out["num_queries_without_relevant"] == 1


def test_default_cutoffs_are_beirs():
    out = evaluate(np.array([[0, 1]]), [{1: 1}])
    assert {"ndcg@1", "ndcg@3", "ndcg@5", "ndcg@10"} <= set(out)


def test_qrels_forms_agree(key):
    # The same judgements as a list of dicts, a graded matrix and (binarised) a boolean matrix.
    nq, nd, length = 9, 31, 12
    k1, k2 = jax.random.split(key)
    grades = np.asarray(jax.random.randint(k1, (nq, nd), 0, 4)) * (
        np.asarray(jax.random.uniform(k2, (nq, nd))) < 0.2
    )
    grades[3] = 0  # a query with no relevant document
    rng = np.random.default_rng(0)
    ranking = np.stack([rng.permutation(nd)[:length] for _ in range(nq)])
    ranking[5, 8:] = -1  # a query with fewer results
    as_dicts = [{d: int(g) for d, g in enumerate(row) if g > 0} for row in grades]
    for metric in (ndcg_at_k, recall_at_k, precision_at_k, mrr_at_k):
        for k in (1, 5, 20):
            np.testing.assert_allclose(metric(ranking, grades, k), metric(ranking, as_dicts, k))
    binary = grades > 0
    np.testing.assert_allclose(
        ndcg_at_k(ranking, binary, 10), ndcg_at_k(ranking, [{d: 1 for d in row} for row in as_dicts], 10)
    )


def test_dict_run_breaks_ties_as_trec_eval():
    # trec_eval sorts a run by score, then by document id *descending*: "b" ranks above "a".
    run = {"q1": {"a": 1.0, "b": 1.0, "c": 0.5}, "q2": {"x": 0.2, "y": 0.9}}
    qrels = {"q1": {"a": 1}, "q2": {"y": 2, "z": 1}, "q3": {"x": 1}}  # q3 is not in the run: not evaluated
    np.testing.assert_allclose(ndcg_at_k(run, qrels, 1), [0.0, 1.0])
    np.testing.assert_allclose(ndcg_at_k(run, qrels, 2), [1 / LOG2_3, 2 / (2 + 1 / LOG2_3)])
    np.testing.assert_allclose(mrr_at_k(run, qrels, 3), [1 / 2, 1.0])
    np.testing.assert_allclose(recall_at_k(run, qrels, 3), [1.0, 1 / 2])
    assert evaluate(run, qrels)["num_queries"] == 2


def test_exact_search_ranking_evaluates_as_expected(key):
    # Documents are noisy copies of the queries: query i's own document is ranked first.
    k1, k2 = jax.random.split(key)
    queries = np.asarray(jax.random.normal(k1, (6, 16)))
    docs = np.concatenate([queries + 0.01 * np.asarray(jax.random.normal(k2, (6, 16))), -queries])
    _, indices = exact_search(queries, docs, 10)
    out = evaluate(indices, [{i: 1} for i in range(6)])
    assert out["ndcg@1"] == 1.0 and out["recall@10"] == 1.0 and out["mrr@10"] == 1.0


@pytest.mark.parametrize(
    "ranking, qrels, match",
    [
        (np.zeros((0, 3), int), [], "query set is empty"),
        (np.zeros((2, 0), int), [{}, {}], "no documents"),
        (np.array([0, 1, 2]), [{0: 1}], "2-D integer"),
        (np.array([[0.0, 1.0]]), [{0: 1}], "2-D integer"),
        (np.array([[0, 1, 0]]), [{0: 1}], "more than once"),
        (np.array([[0, -2]]), [{0: 1}], "negative document indices"),
        (np.array([[0, 1]]), [{0: 1}, {1: 1}], "2 entries for 1 queries"),
        (np.array([[0, 1]]), [{0: float("nan")}], "finite number"),
        (np.array([[0, 1]]), np.ones((2, 4)), "2 rows for 1 queries"),
        (np.array([[0, 1]]), np.ones((1, 0)), "judges no documents"),
        (np.array([[0, 5]]), np.ones((1, 4)), "beyond the 4 columns"),
        (np.array([[0, 1]]), np.array([[np.nan, 1.0]]), "NaN or infinite"),
        (np.array([[0, 1]]), "relevant", "list of dicts"),
        ({}, {}, "query set is empty"),
        ({"q": {}}, {"q": {"d": 1}}, "no documents for any query"),
        ({"q": {"d": 1.0}}, [{"d": 1}], "needs qrels as a dict"),
        ({"q": {"d": float("nan")}}, {"q": {"d": 1}}, "finite score"),
        ({"q": [("d", 1.0)]}, {"q": {"d": 1}}, "must be a dict"),
    ],
)
def test_metric_input_errors(ranking, qrels, match):
    with pytest.raises(ValueError, match=match):
        ndcg_at_k(ranking, qrels, 10)


@pytest.mark.parametrize("k", [0, -3, 1.5, True, None])
def test_metric_bad_k(k):
    for metric in (ndcg_at_k, recall_at_k, precision_at_k, mrr_at_k):
        with pytest.raises(ValueError, match="k must be a positive integer"):
            metric(np.array([[0, 1]]), [{0: 1}], k)


@pytest.mark.parametrize("ks", [(), (0,), (1, -1), 10])
def test_evaluate_bad_ks(ks):
    with pytest.raises(ValueError, match="ks"):
        evaluate(np.array([[0, 1]]), [{0: 1}], ks=ks)


# ---------------------------------------------------------------------------------------- exact_search


@pytest.mark.parametrize("score", ["cos_sim", "dot"])
@pytest.mark.parametrize(
    "nq, nd, d, k, chunk_size", [(7, 539, 80, 10, 64), (3, 100, 7, 13, 33), (1, 5, 3, 2, 4)]
)
def test_exact_search_matches_brute_force(key, score, nq, nd, d, k, chunk_size):
    k1, k2 = jax.random.split(key)
    queries = jax.random.normal(k1, (nq, d))
    docs = jax.random.normal(k2, (nd, d))
    want_scores, want_indices = _brute_force(queries, docs, k, score)
    scores, indices = exact_search(queries, docs, k, score=score, chunk_size=chunk_size)
    assert scores.shape == indices.shape == (nq, k)
    assert scores.dtype == np.float32 and indices.dtype == np.int64
    np.testing.assert_array_equal(indices, want_indices)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-5)
    # One chunk holding the whole corpus gives the same ranking (scores may move by an ulp).
    whole = exact_search(queries, docs, k, score=score, chunk_size=nd)
    np.testing.assert_array_equal(whole[1], indices)
    np.testing.assert_allclose(whole[0], scores, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("chunk_size", [1, 7, 50])
def test_exact_ties_break_by_the_lower_index_under_dot(key, chunk_size):
    # Entries in {-1, 0, 1}: float32 products are exact and most scores tie.
    k1, k2 = jax.random.split(key)
    queries = np.asarray(jax.random.randint(k1, (5, 3), -1, 2))
    docs = np.asarray(jax.random.randint(k2, (50, 3), -1, 2))
    want_scores, want_indices = _brute_force(queries, docs, 20, "dot")
    assert (np.diff(want_scores, axis=1) == 0).any()
    scores, indices = exact_search(queries, docs, 20, score="dot", chunk_size=chunk_size)
    np.testing.assert_array_equal(indices, want_indices)
    np.testing.assert_array_equal(scores, want_scores)


@pytest.mark.parametrize("chunk_size", [3, 40])
def test_exact_ties_break_by_the_lower_index_under_cosine(key, chunk_size):
    # Copies of one document spread across chunks, positive multiples of another (same cosine), and zero
    # vectors (cosine 0, as BEIR's normalisation makes it).
    k1, k2 = jax.random.split(key)
    docs = np.array(jax.random.normal(k2, (40, 6)), np.float32)
    docs[[5, 17, 33]] = docs[2]
    docs[[9, 30]] = 0.0
    queries = np.array(jax.random.normal(k1, (4, 6)), np.float32)
    queries[1] = docs[2]  # the copies are its best match, tied
    queries[3] = 0.0  # a zero query scores 0 everywhere: the ranking is 0, 1, 2, ...
    scores, indices = exact_search(queries, docs, 40, score="cos_sim", chunk_size=chunk_size)
    _, want = _brute_force(queries, docs, 40, "cos_sim")
    np.testing.assert_array_equal(indices[[0, 2]], want[[0, 2]])
    np.testing.assert_array_equal(indices[1, :4], [2, 5, 17, 33])
    np.testing.assert_allclose(scores[1, :4], 1.0, rtol=1e-6)
    np.testing.assert_array_equal(indices[3], np.arange(40))
    np.testing.assert_array_equal(scores[3], 0.0)
    for q in (0, 1, 2):
        position = {int(i): p for p, i in enumerate(indices[q])}
        assert position[30] == position[9] + 1  # zero documents tie at score 0
        np.testing.assert_array_equal(scores[q][[position[9], position[30]]], 0.0)


def test_cosine_against_dot(key):
    k1, k2 = jax.random.split(key)
    queries = np.asarray(jax.random.normal(k1, (4, 12)))
    docs = np.asarray(jax.random.normal(k2, (30, 12)))
    unit_q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    unit_d = docs / np.linalg.norm(docs, axis=1, keepdims=True)
    # On unit vectors the two scores agree.
    cos = exact_search(queries, docs, 30, score="cos_sim", chunk_size=8)
    dot = exact_search(unit_q, unit_d, 30, score="dot", chunk_size=8)
    np.testing.assert_array_equal(cos[1], dot[1])
    np.testing.assert_allclose(cos[0], dot[0], atol=1e-6)
    # Cosine ignores a document's length, dot does not: a long document wins every dot ranking.
    scale = np.ones((30, 1))
    scale[11] = 1e3
    docs_scaled = np.abs(docs) * scale
    queries_positive = np.abs(queries)
    _, by_dot = exact_search(queries_positive, docs_scaled, 1, score="dot")
    np.testing.assert_array_equal(by_dot[:, 0], 11)
    np.testing.assert_array_equal(
        exact_search(queries, docs * scale, 5, score="cos_sim")[1], exact_search(queries, docs, 5)[1]
    )
    s, _ = exact_search(queries, docs * 1e-30, 5)  # tiny vectors still normalise
    np.testing.assert_allclose(s, cos[0][:, :5], atol=1e-6)


def test_k_larger_than_the_corpus_is_clamped(key):
    docs = np.asarray(jax.random.normal(key, (6, 4)))
    scores, indices = exact_search(docs[:2], docs, 100, chunk_size=4)
    assert scores.shape == indices.shape == (2, 6)
    np.testing.assert_array_equal(np.sort(indices, axis=1), np.tile(np.arange(6), (2, 1)))
    assert (np.diff(scores, axis=1) <= 0).all()
    np.testing.assert_array_equal(indices[:, 0], [0, 1])


def test_exact_search_is_deterministic_and_takes_jax_and_integer_arrays(key):
    k1, k2 = jax.random.split(key)
    queries = jax.random.normal(k1, (3, 8))
    docs = jax.random.normal(k2, (21, 8))
    first = exact_search(queries, docs, 5, chunk_size=4)
    second = exact_search(np.asarray(queries), np.asarray(docs), 5, chunk_size=4)
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    ints = exact_search(np.array([[1, 0]]), np.array([[0, 1], [2, 0], [1, 1]]), 3, score="dot")
    np.testing.assert_array_equal(ints[1], [[1, 2, 0]])
    np.testing.assert_array_equal(ints[0], [[2.0, 1.0, 0.0]])


@pytest.mark.parametrize(
    "queries, docs, kwargs, match",
    [
        (np.ones((2, 3)), np.ones((4, 3)), {"k": 0}, "k must be a positive integer"),
        (np.ones((2, 3)), np.ones((4, 3)), {"k": -1}, "k must be a positive integer"),
        (np.ones((2, 3)), np.ones((4, 3)), {"k": 2.0}, "k must be a positive integer"),
        (np.ones((2, 3)), np.ones((4, 3)), {"k": 2, "chunk_size": 0}, "chunk_size must be a positive"),
        (np.ones((2, 3)), np.ones((4, 3)), {"k": 2, "score": "l2"}, "score must be one of"),
        (np.ones(3), np.ones((4, 3)), {"k": 2}, "query_embs must be a 2-D"),
        (np.ones((2, 3)), np.ones((4, 3, 1)), {"k": 2}, "doc_embs must be a 2-D"),
        (np.ones((2, 3)), np.ones((4, 5)), {"k": 2}, "same size"),
        (np.ones((0, 3)), np.ones((4, 3)), {"k": 2}, "query set is empty"),
        (np.ones((2, 3)), np.ones((0, 3)), {"k": 2}, "corpus is empty"),
        (np.ones((2, 0)), np.ones((4, 0)), {"k": 2}, "size 0"),
        (np.array([[1.0, np.nan]]), np.ones((4, 2)), {"k": 2}, "query_embs holds NaN"),
        (np.ones((1, 2)), np.array([[np.inf, 1.0]]), {"k": 1}, "doc_embs holds NaN"),
        (np.ones((1, 2), bool), np.ones((4, 2)), {"k": 1}, "real numbers"),
        (np.full((1, 2), 1e30), np.full((3, 2), 1e30), {"k": 1, "score": "dot"}, "overflowed"),
    ],
)
def test_exact_search_input_errors(queries, docs, kwargs, match):
    with pytest.raises(ValueError, match=match):
        exact_search(queries, docs, **kwargs)


# ------------------------------------------------------------------------------------------------ BM25

TOY_CORPUS = [
    "The cat sat on the mat.",
    "Dogs bark at the mailman every morning.",
    "Quantum mechanics describes particles and waves.",
    "The stock market fell sharply today.",
    "A recipe for chocolate cake with cream.",
]


@pytest.mark.parametrize(
    "query, best", [("quantum particles", 2), ("chocolate cake recipe", 4), ("dogs bark", 1), ("cat", 0)]
)
def test_bm25_finds_the_obvious_document(query, best):
    scores, indices = BM25().fit(TOY_CORPUS).search([query], 3)
    assert indices.shape == scores.shape == (1, 3)
    assert indices[0, 0] == best and scores[0, 0] > scores[0, 1]
    assert scores.dtype == np.float32 and indices.dtype == np.int64


def test_bm25_lucene_score_by_hand():
    # Tokens (no stopwords removed): lengths 3, 2, 4, 3, 1, so avgdl = 13 / 5. "cat" is in documents 0
    # (twice) and 1, "bird" in 1 and 3 (twice).
    docs = ["cat cat dog", "cat bird", "fish fish fish fish", "dog bird bird", "emu"]
    k1, b, n, avgdl = 1.2, 0.6, 5, 13 / 5

    def term(tf, df, length):
        idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
        return idf * tf / (tf + k1 * (1 - b + b * length / avgdl))

    want = {0: term(2, 2, 3), 1: term(1, 2, 2) + term(1, 2, 2), 3: term(2, 2, 3)}
    scores, indices = BM25(k1=k1, b=b, method="lucene", stopwords=False).fit(docs).search(["cat bird"], 5)
    got = dict(zip(indices[0].tolist(), scores[0].tolist(), strict=True))
    for doc, value in want.items():
        np.testing.assert_allclose(got[doc], value, rtol=1e-6)
    assert got[2] == got[4] == 0.0
    np.testing.assert_array_equal(indices[0], [1, 0, 3, 2, 4])  # documents 0 and 3 tie: lower index first


def test_bm25_stopwords_and_unknown_terms():
    index = BM25().fit(TOY_CORPUS)
    # "the" is a stopword: "the cat" scores as "cat"; a query of no indexed term scores 0 everywhere.
    with_stopword, plain = index.search(["the cat", "cat"], 5)[0]
    np.testing.assert_array_equal(with_stopword, plain)
    scores, indices = index.search(["the", "zebra"], 5)
    np.testing.assert_array_equal(scores, 0.0)
    np.testing.assert_array_equal(indices, [[0, 1, 2, 3, 4]] * 2)
    # Keeping stopwords, "the" matches the documents that contain it.
    _, indices = BM25(stopwords=False).fit(TOY_CORPUS).search(["the"], 3)
    assert set(indices[0].tolist()) == {0, 1, 3}


def test_bm25_k_is_clamped_and_refit_replaces_the_index():
    index = BM25().fit(TOY_CORPUS)
    scores, indices = index.search(["cat", "cake"], 50)
    assert scores.shape == indices.shape == (2, 5)
    index.fit(["cake", "cat"])
    _, indices = index.search(["cat"], 5)
    np.testing.assert_array_equal(indices, [[1, 0]])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"k1": -0.1}, "k1 must be"),
        ({"b": 1.5}, "b must be"),
        ({"method": "bm42"}, "method must be one of"),
        ({"stopwords": "en"}, "stopwords must be True or False"),
    ],
)
def test_bm25_bad_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BM25(**kwargs)


def test_bm25_input_errors():
    with pytest.raises(ValueError, match="corpus is empty"):
        BM25().fit([])
    with pytest.raises(ValueError, match="no document has a token"):
        BM25().fit(["the a", "and on", "x"])
    with pytest.raises(ValueError, match="list of strings"):
        BM25().fit("one long document")
    with pytest.raises(ValueError, match=r"documents\[1\] is int"):
        BM25().fit(["cat", 3])
    with pytest.raises(RuntimeError, match="before fit"):
        BM25().search(["cat"], 1)
    index = BM25().fit(TOY_CORPUS)
    with pytest.raises(ValueError, match="query set is empty"):
        index.search([], 1)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        index.search(["cat"], 0)
    with pytest.raises(ValueError, match="list of strings"):
        index.search("cat", 1)


def test_bm25_without_bm25s_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "bm25s", None)  # makes `import bm25s` raise ImportError
    with pytest.raises(ImportError, match=r'pip install "jaxflash\[retrieval\]"'):
        BM25()
