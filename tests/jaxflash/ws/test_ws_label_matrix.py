"""Label-matrix convention, converters, LF summaries, labelling functions, and MajorityVote."""

import importlib.util
import re

import jax
import numpy as np
import pytest

from jaxflash.ws import (
    ABSTAIN,
    Dugong,
    FlyingSquid,
    MajorityVote,
    apply_lfs,
    check_label_matrix,
    classification_metrics,
    from_flyingsquid,
    label_vectors,
    labeling_function,
    labels_from_pm1,
    labels_to_pm1,
    lf_summary,
    load_youtube_spam,
    probs_to_preds,
    to_flyingsquid,
)


def test_flyingsquid_conversion_roundtrip(key):
    L_fs = np.asarray(jax.random.randint(key, (37, 6), -1, 2))
    L = from_flyingsquid(L_fs)
    np.testing.assert_array_equal(L == ABSTAIN, L_fs == 0)
    np.testing.assert_array_equal(L == 1, L_fs == 1)
    np.testing.assert_array_equal(L == 0, L_fs == -1)
    np.testing.assert_array_equal(to_flyingsquid(L), L_fs)
    np.testing.assert_array_equal(labels_to_pm1(labels_from_pm1([1, -1, 1])), [1, -1, 1])
    with pytest.raises(ValueError, match="binary"):
        to_flyingsquid([[2, 0]])
    with pytest.raises(ValueError, match="-1, 0"):
        from_flyingsquid([[3, 0]])


def test_check_label_matrix_rejects_bad_input():
    with pytest.raises(ValueError, match="2-D"):
        check_label_matrix(np.zeros(4))
    with pytest.raises(ValueError, match="no rows"):
        check_label_matrix(np.zeros((0, 3)))
    with pytest.raises(ValueError, match="NaN"):
        check_label_matrix(np.array([[0.0, np.nan]]))
    with pytest.raises(ValueError, match="integer"):
        check_label_matrix(np.array([[0.5, 1.0]]))
    with pytest.raises(ValueError, match="convention"):
        check_label_matrix(np.array([[-2, 1]]))
    with pytest.raises(ValueError, match="cardinality=2"):
        check_label_matrix(np.array([[2, 1]]), cardinality=2)
    with pytest.raises(ValueError, match="numeric"):
        check_label_matrix(np.array([["a", "b"]]))
    with pytest.raises(ValueError, match="never vote"):
        check_label_matrix(np.array([[0, -1], [1, -1]]), require_votes=True)
    with pytest.raises(ValueError, match="at least 3"):
        check_label_matrix(np.array([[0, 1]]), min_lfs=3)
    np.testing.assert_array_equal(check_label_matrix([[1.0, -1.0]]), [[1, -1]])


def test_lf_summary_hand_computed():
    L = np.array(
        [
            [0, 0, -1],
            [1, 0, -1],
            [-1, -1, 1],
            [1, -1, 1],
        ]
    )
    Y = np.array([0, 1, 1, 0])
    s = lf_summary(L, Y)
    np.testing.assert_allclose(s["coverage"], [0.75, 0.5, 0.5])
    np.testing.assert_allclose(s["overlaps"], [0.75, 0.5, 0.25])
    np.testing.assert_allclose(s["conflicts"], [0.25, 0.25, 0.0])
    np.testing.assert_array_equal(s["polarity"], [2, 1, 1])
    np.testing.assert_array_equal(s["correct"], [2, 1, 1])
    np.testing.assert_allclose(s["empirical_accuracy"], [2 / 3, 0.5, 0.5])
    with pytest.raises(ValueError, match="labels"):
        lf_summary(L, Y[:3])


def test_apply_lfs_plain_and_vectorized():
    @labeling_function()
    def has_link(text):
        return 1 if "http" in text else ABSTAIN

    @labeling_function()
    def short(text):
        return 0 if len(text) < 10 else None

    @labeling_function(vectorized=True)
    def says_check(texts):
        return np.where(np.char.find(np.asarray(texts, dtype=str), "check") >= 0, 1, ABSTAIN)

    texts = ["check http://x", "nice song", "check this out please", "hi"]
    L = apply_lfs([has_link, short, says_check], texts)
    np.testing.assert_array_equal(L, [[1, -1, 1], [-1, 0, -1], [-1, -1, 1], [-1, 0, -1]])
    assert has_link("http") == 1 and says_check("check") == 1
    with pytest.raises(ValueError, match="unique"):
        apply_lfs([has_link, has_link], texts)


def _snorkel_majority_label_voter(L, cardinality):
    """Transcription of snorkel 0.10 MajorityLabelVoter.predict_proba: uniform over the tied maxima."""
    n, m = L.shape
    probs = np.zeros((n, cardinality))
    for i in range(n):
        counts = np.zeros(cardinality)
        for j in range(m):
            if L[i, j] != -1:
                counts[L[i, j]] += 1
        probs[i] = np.where(counts == counts.max(), 1, 0)
    return probs / probs.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("cardinality", [2, 3, 5])
def test_majority_matches_snorkel_semantics(key, cardinality):
    L = np.array(jax.random.randint(key, (211, 7), -1, cardinality))
    L[:5] = -1  # all-abstain rows
    mv = MajorityVote(cardinality)
    ref = _snorkel_majority_label_voter(L, cardinality)
    np.testing.assert_allclose(mv.predict_proba(L), ref, atol=1e-7)
    np.testing.assert_allclose(mv.predict_proba(L[:5]), 1.0 / cardinality)
    preds = mv.predict(L)
    ties = (ref > 0).sum(axis=1) > 1
    np.testing.assert_array_equal(preds[ties], -1)  # snorkel's default tie_break_policy="abstain"
    np.testing.assert_array_equal(preds[~ties], ref[~ties].argmax(axis=1))


def test_majority_over_several_row_blocks(key):
    # 20000 rows are padded to 20480 and voted in 5 blocks of 4096 (label_matrix.row_blocks).
    L = np.array(jax.random.randint(key, (20_000, 9), -1, 4))
    counts = np.stack([(L == c).sum(axis=1) for c in range(4)], axis=1)
    top = (counts == counts.max(axis=1, keepdims=True)).astype(float)
    np.testing.assert_allclose(MajorityVote(4).predict_proba(L), top / top.sum(axis=1, keepdims=True))


def test_binary_tie_policies_match_the_general_rule():
    """The binary fast path against the k-class rule (a third class that can never win or tie)."""
    rng = np.random.default_rng(0)
    p1 = rng.choice([0.5, 0.5 + 4e-6, 0.5 - 4e-6, 0.5 + 2e-5, 0.1, 0.9, 0.3], size=500)
    probs = np.stack([1 - p1, p1], axis=1)
    padded = np.concatenate([probs, np.zeros((500, 1))], axis=1)  # p = 0 never reaches a row's max
    np.testing.assert_array_equal(probs_to_preds(probs), probs_to_preds(padded))
    for prior in ([0.3, 0.7], [0.5, 0.5], [0.8, 0.2]):
        got = probs_to_preds(probs, tie_policy="prior", prior=prior)
        np.testing.assert_array_equal(got, probs_to_preds(padded, tie_policy="prior", prior=[*prior, 0.0]))
    ties = np.abs(p1 - 0.5) <= 1e-5
    assert ties.sum() > 100 and (probs_to_preds(probs)[ties] == -1).all()
    draws = probs_to_preds(probs, tie_policy="random", key=jax.random.key(1))
    assert set(draws[ties]) == {0, 1}
    np.testing.assert_array_equal(draws[~ties], (p1[~ties] > 0.5).astype(int))


def test_tie_policies():
    probs = np.array([[0.5, 0.5, 0.0], [0.2, 0.4, 0.4], [0.1, 0.8, 0.1], [1 / 3, 1 / 3, 1 / 3]])
    np.testing.assert_array_equal(probs_to_preds(probs), [-1, -1, 1, -1])
    np.testing.assert_array_equal(
        probs_to_preds(probs, tie_policy="prior", prior=[0.2, 0.3, 0.5]), [1, 2, 1, 2]
    )
    np.testing.assert_array_equal(
        probs_to_preds(probs, tie_policy="prior", prior=[0.4, 0.4, 0.2]), [0, 1, 1, 0]
    )
    draws = np.array([probs_to_preds(probs, tie_policy="random", key=jax.random.key(s)) for s in range(200)])
    assert set(draws[:, 0]) == {0, 1} and set(draws[:, 1]) == {1, 2} and set(draws[:, 3]) == {0, 1, 2}
    assert np.all(draws[:, 2] == 1)
    again = probs_to_preds(probs, tie_policy="random", key=jax.random.key(3))
    np.testing.assert_array_equal(again, draws[3])  # same key, same draw
    with pytest.raises(ValueError, match="PRNG key"):
        probs_to_preds(probs, tie_policy="random")
    with pytest.raises(ValueError, match="prior"):
        probs_to_preds(probs, tie_policy="prior")
    with pytest.raises(ValueError, match="tie_policy"):
        probs_to_preds(probs, tie_policy="first")


def test_majority_youtube_reference_numbers():
    """MV on YouTube test as measured with the original data: ties -> class 0 gives 0.776, ties -> class
    1 gives 0.860 (43 tied rows, 18 of them all-abstain)."""
    d = load_youtube_spam()
    L, Y = d["L_test"], d["Y_test"]
    assert MajorityVote(tie_policy="prior", class_balance=[0.6, 0.4]).score(L, Y)[
        "accuracy"
    ] == pytest.approx(0.776)
    mv = MajorityVote().fit(Y_dev=np.ones(5, int) * 1, class_balance=[0.4, 0.6])
    assert mv.score(L, Y, tie_policy="prior")["accuracy"] == pytest.approx(0.860)
    ties = (mv.predict(L) == -1).sum()
    assert ties == 43 and (L == -1).all(axis=1).sum() == 18


def test_majority_prior_from_dev_and_persistence(tmp_path):
    mv = MajorityVote(3).fit(Y_dev=[0, 2, 2, 2, 1])
    np.testing.assert_allclose(mv.class_balance_, [0.2, 0.2, 0.6])
    mv.save(tmp_path / "mv.npz")
    again = MajorityVote.load(tmp_path / "mv.npz")
    np.testing.assert_allclose(again.class_balance_, mv.class_balance_)
    with pytest.raises(ValueError, match="Y_dev"):
        MajorityVote(2).fit(Y_dev=[0, 3])


@pytest.mark.skipif(importlib.util.find_spec("snorkel") is None, reason="snorkel not installed")
def test_majority_equals_snorkel_when_installed(key):
    from snorkel.labeling.model import MajorityLabelVoter

    L = np.asarray(jax.random.randint(key, (300, 6), -1, 3))
    np.testing.assert_allclose(MajorityVote(3).predict_proba(L), MajorityLabelVoter(3).predict_proba(L))
    np.testing.assert_array_equal(MajorityVote(3).predict(L), MajorityLabelVoter(3).predict(L))


def test_label_vectors_are_lexicographic():
    bits = label_vectors(3)
    assert bits.shape == (8, 3)
    np.testing.assert_array_equal(bits @ [4, 2, 1], np.arange(8))  # row r is r in binary, element 0 first
    with pytest.raises(ValueError, match="v must be"):
        label_vectors(0)


# --- bad input: a clear error naming the argument ----------------------------------------------------


def _bool_matrix(key):
    return np.asarray(jax.random.bernoulli(key, 0.5, (20, 4)))


@pytest.mark.parametrize(
    "call, name",
    [
        (check_label_matrix, "L"),
        (lambda L: MajorityVote().predict_proba(L), "L"),
        (lambda L: FlyingSquid().fit(L), "L"),
        (lambda L: check_label_matrix(L, name="L_dev"), "L_dev"),
        (from_flyingsquid, "L_fs"),
        (to_flyingsquid, "L"),
    ],
)
def test_boolean_label_matrix_is_refused(key, call, name):
    """False would silently become class 0 where the user meant 'abstain'."""
    with pytest.raises(ValueError, match=rf"^{name} is a boolean array; encode votes as ints: -1 = abstain"):
        call(_bool_matrix(key))


def test_boolean_votes_of_a_dugong_source_are_refused(key):
    model = Dugong(4, [("a", 1), ("b", 1), ("c", 2)])
    votes = [np.asarray(jax.random.bernoulli(key, 0.5, (5, 4 // w))) for w in (1, 1, 2)]
    with pytest.raises(ValueError, match="votes of source 'a' is a boolean array"):
        model.fit(votes)


@pytest.mark.parametrize("vectorized", [False, True])
@pytest.mark.parametrize(
    "bad, shown",
    [(True, "True"), (1.0, "1.0"), (0.5, "0.5"), ("spam", "'spam'"), (2, "2"), (-2, "-2")],
)
def test_lf_output_outside_the_classes_names_the_lf_and_the_value(vectorized, bad, shown):
    def fn(x):
        return np.array([bad] * len(x)) if vectorized else bad

    lf = labeling_function(name="lf_bad", vectorized=vectorized)(fn)
    good = labeling_function(name="lf_good")(lambda x: 0)
    with pytest.raises(
        ValueError, match=rf"labelling function 'lf_bad' returned {re.escape(shown)}[ ;]"
    ) as err:
        apply_lfs([good, lf], ["a", "b", "c"], cardinality=2)
    assert "0..1 (cardinality=2)" in str(err.value)
    if bad != 2:  # a single call does not know the cardinality
        with pytest.raises(ValueError, match=rf"'lf_bad' returned {re.escape(shown)}[ ;]"):
            lf("a")


def test_lf_output_checked_against_the_cardinality():
    lf = labeling_function(name="three")(lambda x: 2)
    np.testing.assert_array_equal(apply_lfs([lf], ["a"], cardinality=3), [[2]])
    np.testing.assert_array_equal(apply_lfs([lf], ["a"]), [[2]])  # without a cardinality: any class >= 0
    with pytest.raises(ValueError, match=r"'three' returned 2 for record 0.*0\.\.1 \(cardinality=2\)"):
        apply_lfs([lf], ["a"], cardinality=2)
    vec = labeling_function(name="vec", vectorized=True)(lambda xs: np.array([0, 5, 1]))
    with pytest.raises(ValueError, match="'vec' returned 5 for record 1"):
        apply_lfs([vec], ["a", "b", "c"], cardinality=2)


_VOTES = np.array([[1, 1, 1], [0, 0, 0], [1, 1, 0]] * 10)  # three LFs that agree often


@pytest.mark.parametrize(
    "call",
    [
        lambda: MajorityVote(tie_policy="first"),
        lambda: MajorityVote().predict(np.array([[0, 1]]), tie_policy="first"),
        lambda: MajorityVote().score(np.array([[0, 1]]), np.array([0]), tie_policy="first"),
        lambda: probs_to_preds(np.array([[0.5, 0.5]]), tie_policy="first"),
        lambda: FlyingSquid().fit(_VOTES).predict(_VOTES, tie_policy="first"),
        lambda: FlyingSquid(v=2).fit(np.tile(_VOTES, 2)).predict(np.tile(_VOTES, 2), tie_policy="first"),
    ],
)
def test_unknown_tie_policy_names_the_accepted_ones(call):
    with pytest.raises(
        ValueError, match=r"tie_policy must be one of 'abstain', 'random', 'prior'; got 'first'"
    ):
        call()


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("bad", ["nan", "negative", "sum"])
def test_probs_to_preds_refuses_rows_that_are_not_distributions(key, k, bad):
    probs = np.asarray(jax.random.dirichlet(key, np.ones(k), (9,)), np.float64)
    row = {"nan": [np.nan] + [1.0] * (k - 1), "negative": [-0.2, 1.2] + [0.0] * (k - 2)}.get(bad, [0.6] * k)
    probs[3] = row
    with pytest.raises(ValueError, match=r"^probs row 3 is not a probability distribution"):
        probs_to_preds(probs)
    probs[3] = probs[2]
    assert probs_to_preds(probs).shape == (9,)  # within the tolerance: float32 rounding is fine
    assert probs_to_preds(probs.astype(np.float32)).shape == (9,)


def test_classification_metrics_refuses_arrays_of_different_lengths():
    with pytest.raises(ValueError, match="Y has 5 labels but preds has 4"):
        classification_metrics(np.zeros(5, int), np.zeros(4, int), ["accuracy"], 2)
    with pytest.raises(ValueError, match=r"probs must be \[n, k\] with n = 5 .* got \(6, 2\)"):
        classification_metrics(np.zeros(5, int), np.zeros(5, int), ["log_loss"], 2, np.full((6, 2), 0.5))
