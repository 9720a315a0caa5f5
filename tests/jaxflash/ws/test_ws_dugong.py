"""Dugong on data generated from its model with known parameters."""

import numpy as np
import pytest

from jaxflash.ws import Dugong, DugongSource, LabelModel, MajorityVote
from jaxflash.ws.dugong import chain_correlation
from jaxflash.ws.synthetic import sample_dugong

T = 8
WINDOWS = [1, 1, 1, 2, 4, 8]  # three frame sources, a 2-frame window, a half-sequence window, a scene source
ALPHA = np.array([0.6, 0.5, 0.7, 0.8, 0.6, 0.9])
BETA = np.array([0.5, 0.4, 0.6, 0.7, 0.8, 0.9])
SOURCES = [DugongSource(f"s{j}", w) for j, w in enumerate(WINDOWS)]


def test_chain_correlation_matches_sampled_chain(key):
    _, Y = sample_dugong(key, 50_000, T, [1, 1, 1], [0.5] * 3, [0.5] * 3, 0.3, 0.6)
    ypm = 2.0 * Y - 1
    np.testing.assert_allclose(ypm.T @ ypm / ypm.shape[0], chain_correlation(T, 0.3, 0.6), atol=0.02)


def test_recovers_accuracies_and_coverage(key):
    votes, Y = sample_dugong(key, 20_000, T, WINDOWS, ALPHA, BETA, 0.4, 0.7)
    model = Dugong(T, SOURCES, prior_pos=0.4, persistence=0.7).fit(votes)
    np.testing.assert_allclose(model.accuracies_, ALPHA, atol=0.04)
    np.testing.assert_allclose(model.coverage_, BETA, atol=0.02)
    # the prior can also come from dev labels
    from_dev = Dugong(T, SOURCES).fit(votes, Y_dev=Y[:2000])
    assert from_dev.prior_pos == pytest.approx(0.4, abs=0.03)
    assert from_dev.persistence == pytest.approx(0.7, abs=0.05)
    np.testing.assert_allclose(from_dev.accuracies_, ALPHA, atol=0.05)


def test_posterior_beats_frame_majority_vote(key):
    votes, Y = sample_dugong(key, 3_000, T, WINDOWS, ALPHA, BETA, 0.4, 0.7)
    model = Dugong(T, SOURCES, prior_pos=0.4, persistence=0.7).fit(votes)
    p = model.predict_proba(votes)
    assert p.shape == (3_000, T, 2)
    np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-6)
    frames = np.stack(votes[:3], axis=-1).reshape(-1, 3)
    mv = MajorityVote(class_balance=[0.6, 0.4]).score(frames, Y.reshape(-1), tie_policy="prior")["accuracy"]
    dugong = model.score(votes, Y)["accuracy"]
    assert dugong > mv + 0.05, (dugong, mv)
    # a sequence without votes gets the prior marginals
    silent = [np.full((1, T // w), -1) for w in WINDOWS]
    np.testing.assert_allclose(model.predict_proba(silent)[0, :, 1], 0.4, atol=1e-5)


def test_recovers_source_correlation(key):
    votes, Y = sample_dugong(key, 20_000, T, WINDOWS, ALPHA, BETA, 0.4, 0.7, copy=(0, 1, 0.7))
    model = Dugong(T, SOURCES, prior_pos=0.4, persistence=0.7, correlated_pairs=[(0, 1)]).fit(votes)
    # for frame sources the copy model's conditional covariance is q (beta_0 - a_0^2)
    expected = 0.7 * (BETA[0] - (ALPHA[0] * BETA[0]) ** 2)
    assert model.correlations_[(0, 1)] == pytest.approx(expected, abs=0.02)
    np.testing.assert_allclose(model.accuracies_[2:], ALPHA[2:], atol=0.04)
    naive = Dugong(T, SOURCES, prior_pos=0.4, persistence=0.7).fit(votes)
    assert model.score(votes, Y)["accuracy"] >= naive.score(votes, Y)["accuracy"]


def test_save_load_roundtrip(key, tmp_path):
    votes, _ = sample_dugong(key, 2_000, T, WINDOWS, ALPHA, BETA, 0.4, 0.7, copy=(0, 1, 0.5))
    model = Dugong(T, SOURCES, prior_pos=0.4, persistence=0.7, correlated_pairs=[(0, 1)]).fit(votes)
    model.save(tmp_path / "dugong.npz")
    again = LabelModel.load(tmp_path / "dugong.npz")
    assert isinstance(again, Dugong)
    assert again.correlations_ == model.correlations_ and again.sources == model.sources
    np.testing.assert_array_equal(
        again.predict_proba([v[:50] for v in votes]), model.predict_proba([v[:50] for v in votes])
    )


def test_bad_input(key):
    votes, _ = sample_dugong(key, 100, T, WINDOWS, ALPHA, BETA, 0.4, 0.7)
    with pytest.raises(ValueError, match="at least 3"):
        Dugong(T, SOURCES[:2])
    with pytest.raises(ValueError, match="divide"):
        Dugong(T, [*SOURCES[:3], DugongSource("odd", 3)])
    with pytest.raises(ValueError, match="sequence_length"):
        Dugong(20, SOURCES)
    model = Dugong(T, SOURCES)
    with pytest.raises(ValueError, match=r"\[n, 4\]"):
        model.fit([*votes[:3], votes[3][:, :3], *votes[4:]])
    with pytest.raises(ValueError, match="sequences"):
        model.fit([votes[0][:50], *votes[1:]])
    bad = [v.astype(float) for v in votes]
    bad[2][0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        model.fit(bad)
    with pytest.raises(ValueError, match="-1 \\(abstain\\), 0 or 1"):
        model.fit([votes[0] + 2, *votes[1:]])
    with pytest.raises(ValueError, match="never vote"):
        model.fit([np.full_like(votes[0], -1), *votes[1:]])
    with pytest.raises(ValueError, match="Y_dev"):
        model.fit(votes, Y_dev=np.zeros((10, T - 1), int))
    with pytest.raises(ValueError, match="not fitted"):
        Dugong(T, SOURCES).predict_proba(votes)
    with pytest.raises(ValueError, match="no pair of other sources independent"):
        Dugong(T, SOURCES[:3], correlated_pairs=[(0, 1)])
    frames = [v[:, :T].copy() for v in votes[:3]]  # three frame sources
    frames[2][:50] = -1  # s2 votes only on sequences where s0 and s1 are silent
    frames[0][50:] = frames[1][50:] = -1
    with pytest.raises(ValueError, match=r"\['s0', 's1', 's2'\] have no informative triplet"):
        Dugong(T, SOURCES[:3]).fit(frames)


def test_label_model_api_per_element(key):
    """predict / score with a label per element, ties by tie_policy as in every label model."""
    votes, Y = sample_dugong(key, 2_000, T, WINDOWS, ALPHA, BETA, 0.5, 0.7)
    model = Dugong(T, SOURCES, prior_pos=0.5, persistence=0.7).fit(votes)
    p = model.predict_proba(votes)
    pred = model.predict(votes)
    assert pred.shape == (2_000, T)
    np.testing.assert_array_equal(pred, np.where(np.abs(p[..., 1] - 0.5) <= 1e-5, -1, p[..., 1] > 0.5))
    silent = [np.full((1, T // w), -1) for w in WINDOWS]
    assert np.all(model.predict(silent) == -1)  # the 0.5 prior: a tie, abstained
    assert np.all(model.predict(silent, tie_policy="prior") == 0)  # equal priors: the lowest class
    scores = model.score(votes, Y, ["accuracy", "f1", "log_loss"])
    assert scores["accuracy"] == pytest.approx(np.mean(pred == Y))
    assert 0 < scores["log_loss"] < np.log(2)
    with pytest.raises(ValueError, match=rf"Y must have shape \(2000, {T}\)"):
        model.score(votes, Y[:, 1:])
    with pytest.raises(ValueError, match="tie_policy must be one of"):
        model.predict(votes, tie_policy="first")
