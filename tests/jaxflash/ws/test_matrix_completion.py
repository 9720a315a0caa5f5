"""MatrixCompletionLabelModel (snorkel's MeTaL LabelModel): recovery on sampled data, the objective against a
NumPy transcription, seeds, class balance, the column-permutation step, probabilities, bad input,
persistence, and parity with snorkel itself when it is installed."""

import importlib.util

import jax
import numpy as np
import pytest

from jaxflash.ws import MajorityVote, MatrixCompletionLabelModel, lf_summary, load_youtube_spam
from jaxflash.ws.matrix_completion import break_col_permutation_symmetry, matrix_completion_loss
from jaxflash.ws.synthetic import sample_label_matrix

CB = [0.35, 0.65]


@pytest.fixture(scope="module")
def youtube():
    return load_youtube_spam()


@pytest.fixture(scope="module")
def sampled():
    """L [60000, 20] from the conditionally independent model, with its LF accuracies and coverages."""
    rng = np.random.default_rng(20)
    acc = rng.uniform(0.6, 0.9, 20)
    cov = rng.uniform(0.3, 0.8, 20)
    L, Y = sample_label_matrix(jax.random.key(20), 60_000, acc, cov, CB)
    return L, Y, acc, cov


def _numpy_objective(L, k, cb, prec_init, seed):
    """snorkel's objective at its starting point, transcribed in float64 with the dense one-hot L_aug."""
    n, m = L.shape
    L_aug = np.zeros((n, m * k))
    for y in range(k):
        L_aug[:, y::k] = L == y
    O = L_aug.T @ L_aug / n  # noqa: E741 (snorkel's name)
    mu_init = np.zeros((m * k, k))
    for i in range(m):
        for y in range(k):
            mu_init[i * k + y, y] = np.clip(O[i * k + y, i * k + y] * prec_init / cb[y], 0, 1)
    mu = mu_init * np.random.RandomState(seed).random_sample()
    mask = np.ones((m * k, m * k), bool)
    for i in range(m):
        mask[i * k : (i + 1) * k, i * k : (i + 1) * k] = False
    P = np.diag(cb)
    return np.sum((O - mu @ P @ mu.T)[mask] ** 2) + np.sum((np.sum(mu @ P, 1) - np.diag(O)) ** 2)


def test_recovers_accuracies_and_beats_majority_vote(sampled):
    L, Y, acc, cov = sampled
    mc = MatrixCompletionLabelModel().fit(L, class_balance=CB)
    assert np.abs(mc.get_weights() - acc).max() < 0.015  # P(vote correct | vote), snorkel's get_weights
    assert np.abs(mc.estimated_accuracies() - acc * cov).max() < 0.01  # joint P(lf = Y)
    np.testing.assert_allclose(mc.coverage_, lf_summary(L)["coverage"], atol=1e-12)
    cprobs = mc.get_conditional_probs()
    assert cprobs.shape == (20, 3, 2)
    np.testing.assert_allclose(cprobs.sum(axis=1), 1.0, atol=1e-12)
    ours = mc.score(L, Y)["accuracy"]
    mv = MajorityVote(class_balance=CB).score(L, Y, tie_policy="prior")["accuracy"]
    assert ours > mv + 0.003, (ours, mv)


def test_multiclass_recovery(key):
    acc = np.array([0.8, 0.7, 0.75, 0.85, 0.65, 0.8, 0.7])
    cov = np.array([0.6, 0.5, 0.8, 0.4, 0.7, 0.5, 0.6])
    cb = [0.2, 0.3, 0.5]
    L, Y = sample_label_matrix(key, 50_000, acc, cov, cb)
    mc = MatrixCompletionLabelModel(cardinality=3).fit(L, class_balance=cb)
    assert np.abs(mc.get_weights() - acc).max() < 0.03
    assert (
        mc.score(L, Y)["accuracy"]
        >= MajorityVote(3, class_balance=cb).score(L, Y, tie_policy="prior")["accuracy"]
    )


@pytest.mark.parametrize("k, prec_init, seed", [(2, 0.7, 0), (3, 0.6, 11)])
def test_objective_matches_numpy_and_decreases(key, k, prec_init, seed):
    L, _ = sample_label_matrix(
        key, 3_001, [0.8, 0.7, 0.75, 0.6, 0.85], [0.5, 0.6, 0.4, 0.9, 0.3], [1 / k] * k
    )
    mc = MatrixCompletionLabelModel(k, prec_init=prec_init, seed=seed).fit(L)
    ref = _numpy_objective(L, k, np.full(k, 1 / k), prec_init, seed)
    np.testing.assert_allclose(mc.loss_history_[0], ref, rtol=1e-5)
    losses = mc.loss_history_
    assert losses.shape == (100,)
    assert losses[-1] < 0.05 * losses[0]
    assert np.all(losses[1:] < losses[0])  # momentum may overshoot on single steps


def test_loss_function_is_column_permutation_invariant(youtube):
    mc = MatrixCompletionLabelModel().fit(youtube["L_train"])
    p = np.array([0.5, 0.5], np.float32)
    m = youtube["L_train"].shape[1]
    L_aug = np.concatenate([(youtube["L_train"] == y)[:, :, None] for y in range(2)], axis=2).reshape(
        -1, 2 * m
    )
    O = (L_aug.T @ L_aug / L_aug.shape[0]).astype(np.float32)  # noqa: E741
    mask = (1 - np.kron(np.eye(m), np.ones((2, 2)))).astype(np.float32)
    args = (O, mask, p, np.zeros_like(mc.mu_, np.float32), np.float32(0.0))
    mu = mc.mu_.astype(np.float32)
    np.testing.assert_allclose(matrix_completion_loss(mu, *args), matrix_completion_loss(mu[:, ::-1], *args))


def test_permutation_step_recovers_orientation(youtube, key):
    """A flipped solution (same objective, LFs anti-correlated with Y) is turned back to the fitted one."""
    mc = MatrixCompletionLabelModel().fit(youtube["L_train"])
    flipped = mc.mu_[:, ::-1]
    np.testing.assert_array_equal(break_col_permutation_symmetry(flipped, [0.5, 0.5]), mc.mu_)
    np.testing.assert_array_equal(break_col_permutation_symmetry(mc.mu_, [0.5, 0.5]), mc.mu_)
    # classes of different prior are never exchanged (that would change the objective)
    np.testing.assert_array_equal(break_col_permutation_symmetry(flipped, [0.4, 0.6]), flipped)
    # multi-class: any permutation within the group of equal priors is undone
    L, _ = sample_label_matrix(key, 20_000, [0.8, 0.75, 0.7, 0.85], [0.6, 0.7, 0.5, 0.6], [1 / 3] * 3)
    mc3 = MatrixCompletionLabelModel(3).fit(L)
    for perm in ([1, 2, 0], [2, 0, 1], [0, 2, 1]):
        np.testing.assert_array_equal(break_col_permutation_symmetry(mc3.mu_[:, perm], [1 / 3] * 3), mc3.mu_)
    # priors [0.25, 0.25, 0.5]: only classes 0 and 1 may swap
    swapped = mc3.mu_[:, [1, 0, 2]]
    fixed = break_col_permutation_symmetry(swapped, [0.25, 0.25, 0.5])
    np.testing.assert_array_equal(fixed, mc3.mu_)
    np.testing.assert_array_equal(
        break_col_permutation_symmetry(mc3.mu_[:, [2, 1, 0]], [0.25, 0.25, 0.5])[:, 2], mc3.mu_[:, 0]
    )


def test_seed_determinism(youtube):
    L = youtube["L_train"]
    a = MatrixCompletionLabelModel(seed=123).fit(L)
    b = MatrixCompletionLabelModel(seed=123).fit(L)
    np.testing.assert_array_equal(a.mu_, b.mu_)
    np.testing.assert_array_equal(a.loss_history_, b.loss_history_)
    c = MatrixCompletionLabelModel(seed=7).fit(L)
    assert c.loss_history_[0] != a.loss_history_[0]  # another random scale of the starting point


def test_class_balance_handling(sampled):
    L, Y, _, _ = sampled
    L = L[:5000]
    assert MatrixCompletionLabelModel().fit(L).class_balance_.tolist() == [0.5, 0.5]
    given = MatrixCompletionLabelModel().fit(L, class_balance=[2, 3])
    np.testing.assert_allclose(given.class_balance_, [0.4, 0.6])
    dev = MatrixCompletionLabelModel().fit(L, Y_dev=Y[:1000])
    np.testing.assert_allclose(dev.class_balance_, np.bincount(Y[:1000], minlength=2) / 1000)
    # class_balance takes precedence over Y_dev (snorkel's order)
    both = MatrixCompletionLabelModel().fit(L, Y_dev=Y[:1000], class_balance=[0.4, 0.6])
    np.testing.assert_allclose(both.class_balance_, [0.4, 0.6])
    # an all-abstain row gets the prior; ties between equal priors abstain, "prior" picks the larger
    empty = np.full((2, L.shape[1]), -1)
    np.testing.assert_allclose(given.predict_proba(empty), [[0.4, 0.6]] * 2, atol=1e-6)
    uniform = MatrixCompletionLabelModel().fit(L)
    assert uniform.predict(empty).tolist() == [-1, -1]
    assert uniform.predict(empty, tie_policy="prior").tolist() == [0, 0]


def test_predict_proba_distributions(youtube, key):
    mc = MatrixCompletionLabelModel().fit(youtube["L_train"])
    p = mc.predict_proba(youtube["L_test"])
    assert p.shape == (250, 2) and p.dtype == np.float64
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-12)
    assert np.all(p >= 0)
    assert mc.score(youtube["L_test"], youtube["Y_test"])["accuracy"] > 0.75
    # 200 votes per row (a smaller lr: the objective grows with m^2): finite, normalised, confident rows
    L, _ = sample_label_matrix(key, 300, [0.9] * 200, [0.9] * 200, [0.5, 0.5])
    many = MatrixCompletionLabelModel(lr=1e-3).fit(L).predict_proba(L)
    assert np.all(np.isfinite(many))
    np.testing.assert_allclose(many.sum(axis=1), 1.0, atol=1e-12)


def test_bad_input_raises_value_error(youtube):
    L = youtube["L_train"]
    mc = MatrixCompletionLabelModel()
    with pytest.raises(ValueError, match="at least 3"):
        mc.fit(L[:, :2])
    with pytest.raises(ValueError, match="2-D"):
        mc.fit(L[:, 0])
    with pytest.raises(ValueError, match="cardinality=2"):
        mc.fit(np.where(L == 1, 2, L))
    bad = L.astype(float)
    bad[3, 4] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        mc.fit(bad)
    with pytest.raises(ValueError, match="boolean"):
        mc.fit(L == 1)
    with pytest.raises(ValueError, match="2..127"):
        MatrixCompletionLabelModel(cardinality=1)
    with pytest.raises(ValueError, match="optimizer"):
        MatrixCompletionLabelModel(optimizer="rmsprop")
    with pytest.raises(ValueError, match="lr"):
        MatrixCompletionLabelModel(lr=-0.1)
    with pytest.raises(ValueError, match="n_epochs"):
        MatrixCompletionLabelModel(n_epochs=2.5)
    with pytest.raises(ValueError, match="mu_eps"):
        MatrixCompletionLabelModel(mu_eps=0.7)
    with pytest.raises(ValueError, match="prec_init has 3 entries"):
        MatrixCompletionLabelModel(prec_init=[0.7, 0.7, 0.7]).fit(L)
    with pytest.raises(ValueError, match="shape"):
        mc.fit(L, class_balance=[0.2, 0.3, 0.5])
    with pytest.raises(ValueError, match="zero"):
        mc.fit(L, class_balance=[0.0, 1.0])
    with pytest.raises(ValueError, match="zero"):
        mc.fit(L, Y_dev=np.ones(10, int))  # class 0 never seen: snorkel refuses too
    with pytest.raises(ValueError, match="Y_dev"):
        mc.fit(L, Y_dev=np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="NaN"):
        MatrixCompletionLabelModel(lr=1e6).fit(L)
    with pytest.raises(ValueError, match="not fitted"):
        MatrixCompletionLabelModel().predict_proba(L)
    mc.fit(L)
    with pytest.raises(ValueError, match="columns"):
        mc.predict_proba(L[:, :9])


def test_save_load_roundtrip(youtube, tmp_path):
    mc = MatrixCompletionLabelModel(optimizer="adam", prec_init=[0.6] * 10, seed=5).fit(
        youtube["L_train"], class_balance=[0.4, 0.6]
    )
    path = tmp_path / "mc.npz"
    mc.save(path)
    again = MatrixCompletionLabelModel.load(path)
    assert again.optimizer == "adam" and again.seed == 5 and again.prec_init == [0.6] * 10
    np.testing.assert_array_equal(again.predict_proba(youtube["L_test"]), mc.predict_proba(youtube["L_test"]))
    np.testing.assert_array_equal(again.get_weights(), mc.get_weights())


@pytest.mark.skipif(importlib.util.find_spec("snorkel") is None, reason="snorkel not installed")
@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamax"])
@pytest.mark.parametrize("class_balance", [None, [0.4, 0.6]])
def test_matches_snorkel_when_installed(youtube, optimizer, class_balance):
    """Same settings as snorkel 0.10: probabilities within 1e-5 (both float32; measured ~5e-7)."""
    from snorkel.labeling.model import LabelModel

    settings = dict(optimizer=optimizer, l2=0.1, seed=3)
    ref = LabelModel(cardinality=2, verbose=False)
    ref.fit(youtube["L_train"], class_balance=class_balance, progress_bar=False, **settings)
    mc = MatrixCompletionLabelModel(**settings).fit(youtube["L_train"], class_balance=class_balance)
    np.testing.assert_allclose(
        mc.predict_proba(youtube["L_test"]), ref.predict_proba(youtube["L_test"]), atol=1e-5
    )
    np.testing.assert_allclose(mc.get_weights(), ref.get_weights(), atol=1e-5)
    np.testing.assert_allclose(mc.get_conditional_probs(), ref.get_conditional_probs(), atol=1e-5)
    np.testing.assert_array_equal(mc.predict(youtube["L_test"]), ref.predict(youtube["L_test"]))
