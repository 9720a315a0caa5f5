"""Label-matrix convention, converters, LF summaries, labelling functions, and MajorityVote."""

import importlib.util

import jax
import numpy as np
import pytest

from jaxflash.ws import (
    ABSTAIN,
    MajorityVote,
    apply_lfs,
    check_label_matrix,
    from_flyingsquid,
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
    """Transcription of snorkel 0.10 MajorityLabelVoter.predict_proba (reference notes 2.3)."""
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
    padded = np.concatenate([probs, np.full((500, 1), -1.0)], axis=1)
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
    """Reference notes 2.4: MV on YouTube test, ties -> class 0 gives 0.776, ties -> class 1 gives 0.860."""
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
