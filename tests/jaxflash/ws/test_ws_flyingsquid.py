"""FlyingSquid: parity with the original package on YouTube, convergence on sampled data, structure
variants (multi-class, temporal, dependencies, online), degenerate matrices, bad input and persistence."""

import itertools
import warnings

import jax
import numpy as np
import pytest

from jaxflash.ws import FlyingSquid, MajorityVote, OnlineFlyingSquid, load_youtube_spam
from jaxflash.ws.label_matrix import to_flyingsquid
from jaxflash.ws.synthetic import sample_label_matrix, sample_temporal


@pytest.fixture(scope="module")
def youtube():
    return load_youtube_spam()


def _numpy_triplets(L, dependent=()):
    """Per LF, its triplet values sqrt|M_ij M_ik / M_jk| (0 where M_jk = 0) over the pairs j < k of other
    LFs, leaving out triplets that hold a dependent pair: loops in float64."""
    x = to_flyingsquid(L).astype(np.float64)
    n, m = x.shape
    M = x.T @ x / n
    dep = {frozenset(e) for e in dependent}
    out = []
    for i in range(m):
        vals = []
        for j, k in itertools.combinations([q for q in range(m) if q != i], 2):
            if any(frozenset(e) in dep for e in ((i, j), (i, k), (j, k))):
                continue
            vals.append(np.sqrt(abs(M[i, j] * M[i, k] / M[j, k])) if M[j, k] != 0 else 0.0)
        out.append(np.array(vals))
    return out


def _numpy_reference(L, cb1, method):
    """Plain NumPy transcription of the original package's fully independent fit (loops, FS convention)."""
    Lfs = to_flyingsquid(L).astype(np.float64)
    n, m = Lfs.shape
    M = Lfs.T @ Lfs / n
    acc = np.zeros(m)
    for i in range(m):
        vals = []
        for j, k in itertools.combinations([x for x in range(m) if x != i], 2):
            vals.append(np.sqrt(abs(M[i, j] * M[i, k] / M[j, k])) if M[j, k] != 0 else 0.0)
        acc[i] = np.mean(vals) if method == "triplet_mean" else np.median(vals)
    p0 = (Lfs == 0).mean(0)
    p1 = (Lfs == 1).mean(0)
    # FlyingSquid's 6x6 system B e = r for the clique (lambda_i, Y), e in its order
    # (1,+),(0,+),(-1,+),(1,-),(0,-),(-1,-), solved with a dense solve rather than our closed form.
    C = np.array([[1, 1, 1], [1, 0, 0], [0, 1, 0]])
    D = np.array([[0, 0, 0], [0, 0, 1], [0, 0, 0]])
    B = np.block([[C, C], [C, D]])
    mus = []
    for i in range(m):
        r = np.array([1, p1[i], p0[i], cb1, 0.5 * (1 + acc[i] - p0[i]), cb1 * p0[i]])
        e = np.abs(np.linalg.solve(B, r))
        e /= e.sum()
        mus.append(e)
    mus = np.array(mus)
    level = np.where(Lfs == 1, 0, np.where(Lfs == 0, 1, 2))
    pos = np.prod(mus[np.arange(m), level], axis=1) / cb1 ** (m - 2)
    neg = np.prod(mus[np.arange(m), level + 3], axis=1) / (1 - cb1) ** (m - 2)
    return pos / (pos + neg), mus[:, 0] + mus[:, 5]


@pytest.mark.parametrize("method", ["triplet_mean", "triplet_median"])
def test_matches_numpy_transcription_of_original(youtube, method):
    fs = FlyingSquid(solve_method=method).fit(youtube["L_train"], class_balance=[0.4, 0.6])
    p_ref, acc_ref = _numpy_reference(youtube["L_train"], 0.6, method)
    np.testing.assert_allclose(fs.estimated_accuracies(), acc_ref, atol=1e-5)
    np.testing.assert_allclose(fs.predict_proba(youtube["L_train"])[:, 1], p_ref, atol=1e-4)


def test_youtube_parity_published_numbers(youtube):
    """The original package (flyingsquid 0.0.0a0 with pgmpy 0.1.19), class balance [0.4, 0.6] and
    triplet_median, scores acc 0.8360 and F1 0.8161 on YouTube test (also the Epoxy notebook's output)."""
    fs = FlyingSquid(solve_method="triplet_median").fit(youtube["L_train"], class_balance=[0.4, 0.6])
    # The original thresholds predict_proba_marginalized > 0.5 (ties -> class 0).
    pred = (fs.predict_proba(youtube["L_test"])[:, 1] > 0.5).astype(int)
    Y = youtube["Y_test"]
    acc = np.mean(pred == Y)
    tp = np.sum((pred == 1) & (Y == 1))
    f1 = 2 * tp / (np.sum(pred == 1) + np.sum(Y == 1))
    assert acc == pytest.approx(0.8360, abs=5e-4)
    assert f1 == pytest.approx(0.8161, abs=5e-4)
    scores = fs.score(youtube["L_test"], Y, ["accuracy", "f1"])
    assert scores["accuracy"] == pytest.approx(0.836, abs=5e-4)  # no exact ties with this prior
    # The original with triplet_mean and a uniform class balance: accuracy 0.7840.
    fs = FlyingSquid(solve_method="triplet_mean").fit(youtube["L_train"])
    pred = (fs.predict_proba(youtube["L_test"])[:, 1] > 0.5).astype(int)
    assert np.mean(pred == Y) == pytest.approx(0.7840, abs=5e-4)


@pytest.mark.parametrize("m", [5, 20])
def test_accuracies_converge_as_n_grows(m, key):
    """Joint accuracies P(lf = Y) recovered to within 0.06 / 0.02 / 0.008 at n = 1e3 / 1e4 / 1e5."""
    rng = np.random.default_rng(m)
    acc = rng.uniform(0.65, 0.9, m)
    cov = rng.uniform(0.3, 0.9, m)
    truth = acc * cov
    errs = []
    for n, tol in [(1_000, 0.06), (10_000, 0.03), (100_000, 0.008)]:
        L, _ = sample_label_matrix(jax.random.fold_in(key, n), n, acc, cov, [0.35, 0.65])
        fs = FlyingSquid(solve_method="triplet_median").fit(L, class_balance=[0.35, 0.65])
        err = np.abs(fs.estimated_accuracies() - truth).max()
        assert err < tol, (n, err)
        errs.append(err)
    assert errs[-1] < errs[0]


@pytest.mark.slow
@pytest.mark.parametrize("m", [5, 20, 100])
def test_accuracies_converge_large_n(m, key):
    rng = np.random.default_rng(100 + m)
    acc = rng.uniform(0.65, 0.9, m)
    cov = rng.uniform(0.2, 0.9, m)
    L, Y = sample_label_matrix(key, 1_000_000, acc, cov, [0.5, 0.5])
    for method in ("triplet_mean", "triplet_median"):
        fs = FlyingSquid(solve_method=method, posterior="bayes").fit(L)
        assert np.abs(fs.estimated_accuracies() - acc * cov).max() < 0.004


def test_single_triplet_method(key):
    acc = np.array([0.85, 0.8, 0.75, 0.7, 0.9, 0.8, 0.7])
    cov = np.full(7, 0.6)
    L, _ = sample_label_matrix(key, 100_000, acc, cov, [0.5, 0.5])
    fs = FlyingSquid(solve_method="triplet").fit(L)
    assert np.abs(fs.estimated_accuracies() - acc * cov).max() < 0.02
    # each LF's |E[lambda Y]| is the value of one of its own triplets, not an aggregate over several
    cands = _numpy_triplets(L)
    for i in range(7):
        assert np.abs(cands[i] - fs.a_[0, i]).min() < 1e-6, i
    assert not np.allclose(fs.a_[0], [np.median(c) for c in cands], rtol=1e-6)
    # the seed fixes the choice
    again = FlyingSquid(solve_method="triplet", triplet_seed=0).fit(L)
    np.testing.assert_array_equal(again.a_, fs.a_)
    others = [FlyingSquid(solve_method="triplet", triplet_seed=s).fit(L).a_ for s in range(1, 6)]
    assert any(not np.array_equal(o, fs.a_) for o in others)


def test_class_balance_from_dev_labels(key):
    L, Y = sample_label_matrix(key, 20_000, [0.8] * 4, [0.5] * 4, [0.3, 0.7])
    fs = FlyingSquid().fit(L, Y_dev=Y[:1000])
    np.testing.assert_allclose(fs.class_balance_, np.bincount(Y[:1000], minlength=2) / 1000)
    assert FlyingSquid().fit(L).class_balance_.tolist() == [0.5, 0.5]


def test_multiclass_one_vs_rest(key):
    acc = np.array([0.8, 0.7, 0.75, 0.85, 0.65, 0.8])
    cov = np.array([0.6, 0.5, 0.8, 0.4, 0.7, 0.5])
    cb = [0.2, 0.3, 0.5]
    L, Y = sample_label_matrix(key, 100_000, acc, cov, cb)
    fs = FlyingSquid(cardinality=3, solve_method="triplet_median").fit(L, class_balance=cb)
    assert np.abs(fs.estimated_accuracies() - acc * cov).max() < 0.015
    p = fs.predict_proba(L[:500])
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-6)
    from jaxflash.ws import MajorityVote

    assert (
        fs.score(L, Y)["accuracy"]
        > MajorityVote(3, class_balance=cb).score(L, Y, tie_policy="prior")["accuracy"] - 0.005
    )
    soft = FlyingSquid(cardinality=3, multiclass_normalization="softmax").fit(L, class_balance=cb)
    ps = soft.predict_proba(L[:50])
    np.testing.assert_allclose(ps.sum(axis=1), 1.0, atol=1e-6)
    assert ps.max() < p.max()  # a softmax of probabilities is flatter (WRENCH's quirk)


def test_temporal_chain_model(key):
    acc = [0.8, 0.7, 0.75, 0.85]
    cov = [0.5, 0.6, 0.4, 0.7]
    L, Y = sample_temporal(key, 40_000, 3, acc, cov, p_pos=0.4, persistence=0.8)
    fs = FlyingSquid(v=3, posterior="bayes").fit(L, Y_dev=Y[:2000])
    truth = np.tile(np.array(acc) * np.array(cov), 3)
    assert np.abs(fs.estimated_accuracies() - truth).max() < 0.02
    p = fs.predict_proba(L[:7])
    assert p.shape == (7, 8)
    marg = fs.predict_proba_marginalized(L[:7])
    assert marg.shape == (7, 3, 2)
    np.testing.assert_allclose(marg.sum(-1), 1.0, atol=1e-6)
    # the chain prior helps: better than the per-frame model of frame 1 alone
    single = FlyingSquid(posterior="bayes").fit(L[:, 4:8], Y_dev=Y[:2000, 1])
    acc_chain = np.mean(fs.predict(L)[:, 1] == Y[:, 1])
    acc_single = np.mean(single.predict(L[:, 4:8], tie_policy="prior") == Y[:, 1])
    assert acc_chain > acc_single + 0.01
    assert fs.predict(L).shape == Y.shape


def test_known_dependency_improves_fit(key):
    acc = np.array([0.8, 0.7, 0.75, 0.85, 0.7, 0.8])
    cov = np.full(6, 0.7)
    L, Y = sample_label_matrix(key, 100_000, acc, cov, [0.5, 0.5], dependent_pairs=((0, 1),), copy_prob=0.8)
    plain = FlyingSquid(solve_method="triplet_median", posterior="bayes").fit(L)
    dep = FlyingSquid(solve_method="triplet_median", posterior="bayes", lambda_edges=[(0, 1)]).fit(L)
    # with the edge, no triplet holds the pair (0, 1): the medians are over the other triplets only
    cands = _numpy_triplets(L, dependent=[(0, 1)])
    np.testing.assert_allclose(dep.a_[0], [np.median(c) for c in cands], rtol=1e-5)
    assert len(cands[0]) == len(cands[1]) == 6 and len(cands[2]) == 9  # of 10 pairs each
    truth = acc * cov
    assert np.abs(dep.estimated_accuracies()[2:] - truth[2:]).max() < 0.015
    assert dep.score(L, Y)["accuracy"] > plain.score(L, Y)["accuracy"]
    pm = dep.pair_mu_[0, 0]
    np.testing.assert_allclose(pm.sum(), 1.0, atol=1e-5)
    np.testing.assert_allclose(pm.sum(axis=1), dep.mu_[0, 0], atol=2e-3)  # matches mu_0 after IPF


def test_online_refits_on_rolling_buffer(key):
    L, Y = sample_label_matrix(key, 3_000, [0.85, 0.8, 0.75, 0.9], [0.6] * 4, [0.5, 0.5])
    online = OnlineFlyingSquid(buffer_capacity=500, update_frequency=100, posterior="bayes")
    with pytest.raises(ValueError, match="not fitted"):
        online.predict_proba(L[:3])
    for start in range(0, 3_000, 250):
        online.partial_fit(L[start : start + 250])
    assert online.n_refits == 30
    np.testing.assert_array_equal(online.buffer, L[-500:])
    batch = FlyingSquid(posterior="bayes").fit(L[-500:])
    np.testing.assert_allclose(online.predict_proba(L[:100]), batch.predict_proba(L[:100]), atol=1e-6)


def test_all_abstain_rows_get_the_prior(youtube):
    L = youtube["L_train"]
    empty = np.full((3, L.shape[1]), -1)
    bayes = FlyingSquid(posterior="bayes").fit(L, class_balance=[0.4, 0.6])
    np.testing.assert_allclose(bayes.predict_proba(empty), [[0.4, 0.6]] * 3, atol=1e-5)
    fs = FlyingSquid().fit(L, class_balance=[0.4, 0.6])  # original: the prior enters squared
    np.testing.assert_allclose(fs.predict_proba(empty), [[0.16 / 0.52, 0.36 / 0.52]] * 3, atol=1e-5)
    uniform = FlyingSquid().fit(L)
    assert np.all(uniform.predict(empty) == -1)  # a 50/50 row is a tie -> abstain by default
    assert np.all(uniform.predict(empty, tie_policy="prior") == 0)


def test_bad_input_raises_value_error(youtube):
    L = youtube["L_train"]
    fs = FlyingSquid()
    with pytest.raises(ValueError, match="at least 3"):
        fs.fit(L[:, :2])
    with pytest.raises(ValueError, match="2-D"):
        fs.fit(L[:, 0])
    with pytest.raises(ValueError, match="cardinality=2"):
        fs.fit(np.where(L == 1, 2, L))
    with pytest.raises(ValueError, match="convention"):
        fs.fit(to_flyingsquid(L) - 1)
    bad = L.astype(float)
    bad[3, 4] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        fs.fit(bad)
    silent = L.copy()
    silent[:, 2] = -1
    with pytest.raises(ValueError, match="never vote"):
        fs.fit(silent)
    with pytest.raises(ValueError, match="2..127"):
        FlyingSquid(cardinality=128)
    with pytest.raises(ValueError, match="cardinality=2"):
        fs.fit(np.where(L == 1, 257, L))  # would wrap to 1 in int8: caught before the conversion
    with pytest.raises(ValueError, match="Y_dev"):
        fs.fit(L, Y_dev=np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="Y_dev"):
        FlyingSquid(v=2).fit(np.concatenate([L[:, :5], L[:, 5:]], axis=1), Y_dev=np.array([0, 1]))
    with pytest.raises(ValueError, match="shape"):
        fs.fit(L, class_balance=[0.2, 0.3, 0.5])
    with pytest.raises(ValueError, match="zero prior"):
        fs.fit(L, class_balance=[0.0, 1.0])
    with pytest.raises(ValueError, match="not fitted"):
        FlyingSquid().predict_proba(L)
    fs.fit(L)
    with pytest.raises(ValueError, match="columns"):
        fs.predict_proba(L[:, :9])
    with pytest.raises(ValueError, match="solve_method"):
        FlyingSquid(solve_method="sgd")
    with pytest.raises(ValueError, match="multiple of v"):
        FlyingSquid(v=3).fit(L)
    with pytest.raises(ValueError, match="lambda_edges"):
        FlyingSquid(lambda_edges=[(0, 10)]).fit(L)


def test_save_load_roundtrip(youtube, tmp_path):
    fs = FlyingSquid(solve_method="triplet_median", lambda_edges=[(0, 1)]).fit(
        youtube["L_train"], class_balance=[0.4, 0.6]
    )
    path = tmp_path / "fs.npz"
    fs.save(path)
    again = FlyingSquid.load(path)
    assert again.solve_method == "triplet_median" and again.lambda_edges == [(0, 1)]
    np.testing.assert_array_equal(again.predict_proba(youtube["L_test"]), fs.predict_proba(youtube["L_test"]))
    with np.load(path, allow_pickle=False) as data:  # readable without pickle
        assert "mu" in data.files


def test_warm_fit_reuses_compiled_programs(key):
    """Fits and predictions on new matrices of a nearby row count (one padding bucket) compile nothing:
    JAX reports every compilation through jax.monitoring."""
    L1, _ = sample_label_matrix(key, 2_000, [0.8] * 7, [0.5] * 7, [0.5, 0.5])
    L2, _ = sample_label_matrix(jax.random.fold_in(key, 1), 2_000, [0.7] * 7, [0.6] * 7, [0.5, 0.5])
    FlyingSquid().fit(L1).predict_proba(L1)
    compiles = []

    def listener(event, duration, **kwargs):
        if event.startswith("/jax/core/compile"):
            compiles.append(event)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        FlyingSquid().fit(L2).predict_proba(L2)
        FlyingSquid().fit(L2[:1990]).predict(L2[:1990])
        assert compiles == []
        FlyingSquid().fit(L2[:333]).predict_proba(L2[:333])  # another bucket: the listener sees it
        assert compiles
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def _no_warnings(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return fn(*args, **kwargs)


def test_lf_pair_that_never_co_votes(key):
    """LFs 0 and 1 never vote together (M_01 = 0): their triplets with each other say nothing, so the
    default leaves them out and recovers every accuracy; the PyPI release counted them as 0."""
    acc = np.array([0.8, 0.8, 0.75, 0.85, 0.7])
    L, _ = sample_label_matrix(key, 20_000, acc, [0.5] * 5, [0.5, 0.5])
    L[L[:, 0] != -1, 1] = -1  # LF 1 abstains wherever LF 0 votes
    cover = (L != -1).mean(axis=0)
    drop = _no_warnings(FlyingSquid(solve_method="triplet_mean").fit, L)
    keep = _no_warnings(FlyingSquid(solve_method="triplet_mean", drop_zero_triplets=False).fit, L)
    # E[lambda Y | vote] = 2 acc - 1 for every LF, the pair included
    np.testing.assert_allclose(drop.a_[0] / cover, 2 * acc - 1, atol=0.04)
    assert not drop.accuracy_fallback_.any() and not drop.majority_vote_
    # kept as 0: LFs 2..4 have one zero pair (0, 1) of 6, LFs 0 and 1 three zero pairs of 6
    np.testing.assert_allclose(keep.a_[0, 2:], drop.a_[0, 2:] * 5 / 6, rtol=1e-6)
    np.testing.assert_allclose(keep.a_[0, :2], drop.a_[0, :2] / 2, rtol=1e-6)
    # the mean over the informative triplets only, against NumPy loops
    ref = [np.mean(c[c != 0]) for c in _numpy_triplets(L)]
    np.testing.assert_allclose(drop.a_[0], ref, rtol=1e-5)


def _isolated_lf_matrix(key, n=20_000):
    """Five independent LFs plus LF 5, which votes only on rows where the others all abstain."""
    acc = np.array([0.8, 0.75, 0.85, 0.7, 0.9])
    L, Y = sample_label_matrix(key, n, acc, [0.4] * 5, [0.5, 0.5])
    ku, kc = jax.random.split(jax.random.fold_in(key, 7))
    votes = (L == -1).all(axis=1) & np.asarray(jax.random.bernoulli(ku, 0.5, (n,)))
    right = np.asarray(jax.random.bernoulli(kc, 0.9, (n,)))
    lone = np.where(votes, np.where(right, Y, 1 - Y), -1)
    return np.concatenate([L, lone[:, None]], axis=1), Y, acc


@pytest.mark.parametrize("method", ["triplet", "triplet_mean", "triplet_median"])
def test_lf_without_overlapping_partners_gets_the_mean_accuracy(key, method):
    L, _, acc = _isolated_lf_matrix(key)
    cover = (L != -1).mean(axis=0)
    with pytest.warns(UserWarning, match=r"LF column\(s\) \[5\] have no informative triplet") as rec:
        fs = FlyingSquid(solve_method=method).fit(L)
    assert len([w for w in rec if "FlyingSquid" in str(w.message)]) == 1
    np.testing.assert_array_equal(fs.accuracy_fallback_[0], [False] * 5 + [True])
    alpha = fs.a_[0] / cover
    np.testing.assert_allclose(alpha[:5], 2 * acc - 1, atol=0.05)
    assert alpha[5] == pytest.approx(alpha[:5].mean(), rel=1e-5)  # coverage from float32 sums
    assert f"{(1 + alpha[:5].mean()) / 2:.3f}" in str(rec[0].message)
    # rows where only LF 5 votes follow its vote; they would be tied at accuracy 0
    lone = (L[:, :5] == -1).all(axis=1) & (L[:, 5] != -1)
    assert lone.sum() > 500
    np.testing.assert_array_equal(fs.predict(L[lone]), L[lone, 5])


@pytest.mark.parametrize("cardinality", [2, 3])
def test_matrix_without_overlap_falls_back_to_majority_vote(key, cardinality, tmp_path):
    """At most one vote per row: no triplet is informative, so FlyingSquid is a majority vote."""
    n, m = 3_000, 5
    kw, kv, kc = jax.random.split(key, 3)
    which = np.asarray(jax.random.randint(kw, (n,), -1, m))  # the one LF that votes, or none
    vote = np.asarray(jax.random.randint(kv, (n,), 0, cardinality))
    L = np.full((n, m), -1)
    L[np.flatnonzero(which >= 0), which[which >= 0]] = vote[which >= 0]
    L[:7, :2] = np.array([[0, 1]] * 7)  # a few tied rows with two votes (LFs 0 and 1 co-vote only here)
    L[:7, 2:] = -1
    with pytest.warns(UserWarning, match="falls back to majority vote"):
        fs = FlyingSquid(cardinality=cardinality).fit(L)
    assert fs.majority_vote_ and fs.accuracy_fallback_.all()
    mv = MajorityVote(cardinality)
    np.testing.assert_allclose(fs.predict_proba(L), mv.predict_proba(L), atol=1e-7)
    np.testing.assert_array_equal(fs.predict(L), mv.predict(L))
    voted = (L != -1).sum(axis=1) == 1
    np.testing.assert_array_equal(fs.predict(L[voted]), L[voted].max(axis=1))
    # whatever the class prior
    cb = np.arange(1, cardinality + 1) / np.arange(1, cardinality + 1).sum()
    with pytest.warns(UserWarning, match="majority vote"):
        skewed = FlyingSquid(cardinality=cardinality).fit(L, class_balance=cb)
    np.testing.assert_array_equal(skewed.predict(L[voted]), L[voted].max(axis=1))
    assert np.all(skewed.predict(L[:7], tie_policy="prior") == 1)  # a 0-1 tie -> the larger prior, 1
    skewed.save(tmp_path / "fs.npz")
    np.testing.assert_array_equal(
        FlyingSquid.load(tmp_path / "fs.npz").predict_proba(L), skewed.predict_proba(L)
    )


def test_temporal_model_without_overlap_falls_back_to_majority_vote(key):
    n, v, m_frame = 2_000, 2, 3
    kw, kv = jax.random.split(key)
    which = np.asarray(jax.random.randint(kw, (n, v), 0, m_frame))
    vote = np.asarray(jax.random.randint(kv, (n, v), 0, 2))
    L = np.full((n, v * m_frame), -1)
    for t in range(v):
        L[np.arange(n), t * m_frame + which[:, t]] = vote[:, t]
    with pytest.warns(UserWarning, match="majority vote"):
        fs = FlyingSquid(v=v, posterior="bayes").fit(L)
    np.testing.assert_array_equal(fs.predict(L), vote)
    np.testing.assert_allclose(fs.predict_proba(L).sum(axis=1), 1.0)


@pytest.mark.parametrize("method", ["triplet", "triplet_mean", "triplet_median"])
@pytest.mark.parametrize("drop_zero_triplets", [True, False])
def test_single_vote_rows_are_never_tied(key, method, drop_zero_triplets):
    """Sparse LFs that rarely co-vote: whatever the triplets give, a row with one vote follows it."""
    m = 8
    cov = np.array([0.3, 0.3, 0.3, 0.02, 0.02, 0.02, 0.02, 0.02])
    L, _ = sample_label_matrix(key, 5_000, np.full(m, 0.8), cov, [0.5, 0.5])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # sparse LFs may get the fallback: not the point here
        fs = FlyingSquid(solve_method=method, drop_zero_triplets=drop_zero_triplets).fit(L)
    single = (L != -1).sum(axis=1) == 1
    assert single.sum() > 1000
    np.testing.assert_array_equal(fs.predict(L[single]), L[single].max(axis=1))
    assert np.all(fs.a_[0] > 0)


def test_multiclass_all_abstain_rows_and_online_silent_lf(key):
    L, _ = sample_label_matrix(key, 5_000, [0.8] * 5, [0.6] * 5, [0.2, 0.3, 0.5])
    fs = FlyingSquid(cardinality=3, posterior="bayes").fit(L, class_balance=[0.2, 0.3, 0.5])
    p = fs.predict_proba(np.full((2, 5), -1))
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-6)
    assert np.all(np.argmax(p, axis=1) == 2)  # the most likely class a priori
    # an LF silent in the whole buffer is tolerated online (accuracy 0, no effect on the posterior)
    online = OnlineFlyingSquid(buffer_capacity=200, update_frequency=200, cardinality=3)
    Ls = L[:200].copy()
    Ls[:, 4] = -1
    online.partial_fit(Ls)
    assert online.n_refits == 1 and online.model.estimated_accuracies()[4] == 0.0
    assert np.all(np.isfinite(online.predict_proba(L[:10])))


def test_fit_matches_numpy_over_row_chunks_and_padding(key):
    """The one pass over L (row chunks of a padded copy) and the estimator on it, against float64 NumPy:
    the triplet accuracies, the vote rates in the clique marginals and the dependent pairs' joints."""
    n, m = 20_001, 7  # padded to 20480 rows: five chunks of 4096
    pairs = [(0, 1), (2, 5)]
    L, _ = sample_label_matrix(key, n, np.linspace(0.65, 0.9, m), np.linspace(0.3, 0.8, m), [0.45, 0.55])
    fs = FlyingSquid(lambda_edges=pairs).fit(L, class_balance=[0.45, 0.55])
    np.testing.assert_allclose(fs.a_[0], [np.mean(c) for c in _numpy_triplets(L, pairs)], rtol=1e-5)
    mu = fs.mu_[0]  # [m, level (-1, +1, abstain), y]
    np.testing.assert_allclose(mu[:, 2].sum(-1), (L == -1).mean(axis=0), atol=1e-6)
    np.testing.assert_allclose(mu[:, 1].sum(-1), (L == 1).mean(axis=0), atol=1e-6)
    level = np.where(L == -1, 2, L)
    for p, (i, j) in enumerate(pairs):
        expected = np.zeros((3, 3))
        np.add.at(expected, (level[:, i], level[:, j]), 1.0 / n)
        np.testing.assert_allclose(fs.pair_mu_[0, p].sum(-1), expected, atol=1e-4)


def test_binary_probabilities_keep_tiny_values_accurate(key):
    """predict_proba (v = 1) against the posterior computed in float64 NumPy from the fitted clique
    marginals: both probabilities of a row to a small relative error, even when one is below 1e-13."""
    m = 12
    L, _ = sample_label_matrix(key, 4000, np.full(m, 0.95), np.full(m, 0.9), np.array([0.5, 0.5]))
    model = FlyingSquid().fit(L, class_balance=[0.5, 0.5])
    level = np.where(L == -1, 2, L)
    log_mu = np.log(model.mu_[0][np.arange(m), level])  # [n, m, y]: log P(lambda_i = l_i, Y = y)
    log_py = np.log(model.class_balance_)
    s = log_mu.sum(axis=1) - m * log_py + 2 * log_py  # the original's prior power: #cliques - 2 separators
    d = s[:, 1] - s[:, 0]
    assert np.abs(d).max() > 30  # some rows have a probability below 1e-13
    p = model.predict_proba(L)
    np.testing.assert_allclose(p[:, 1], np.exp(-np.logaddexp(0.0, -d)), rtol=1e-4, atol=0)
    np.testing.assert_allclose(p[:, 0], np.exp(-np.logaddexp(0.0, d)), rtol=1e-4, atol=0)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-12)
