"""Epoxy (nearest-supporting-neighbour extension), k-means and Liger."""

import jax
import numpy as np
import pytest

from jaxflash.ws import (
    Epoxy,
    FlyingSquid,
    LabelModel,
    Liger,
    kmeans,
    label_coverage,
    load_youtube_spam,
    youtube_dev_test_split,
)
from jaxflash.ws.embeddings import hashed_ngram_embeddings


def _smooth_task(key, n, m=6, coverage=0.15, acc=0.85, dim=8):
    """Labels smooth in embedding space (two Gaussian blobs) and low-coverage, accurate LFs."""
    ky, ke, kv, kc = jax.random.split(key, 4)
    Y = np.asarray(jax.random.bernoulli(ky, 0.5, (n,))).astype(int)
    centres = np.stack([np.full(dim, -1.0), np.full(dim, 1.0)])
    emb = centres[Y] + 0.9 * np.asarray(jax.random.normal(ke, (n, dim)))
    votes = np.asarray(jax.random.uniform(kv, (n, m))) < coverage
    right = np.asarray(jax.random.uniform(kc, (n, m))) < acc
    L = np.where(votes, np.where(right, Y[:, None], 1 - Y[:, None]), -1)
    return L, emb.astype(np.float32), Y


def _brute_force(L_train, emb_train, emb, metric):
    """Nearest supporting training point per LF by explicit loops over the support."""
    n, m = emb.shape[0], L_train.shape[1]
    best = np.full((n, m), -np.inf)
    vote = np.zeros((n, m), int)
    for i in range(m):
        sup = np.flatnonzero(L_train[:, i] != -1)
        for q in range(n):
            if metric == "cosine":
                a = emb_train[sup] / np.linalg.norm(emb_train[sup], axis=1, keepdims=True)
                close = a @ (emb[q] / np.linalg.norm(emb[q]))
            else:
                close = -np.linalg.norm(emb_train[sup] - emb[q], axis=1)
            if sup.size:
                j = np.argmax(close)
                best[q, i], vote[q, i] = close[j], L_train[sup[j], i]
    return best, vote


@pytest.mark.parametrize("metric", ["cosine", "l2"])
@pytest.mark.parametrize("batch_size", [None, 5, 17])  # 5: 4 batches, the last one padded
def test_nearest_support_matches_brute_force(key, metric, batch_size):
    L, emb, _ = _smooth_task(key, 53, m=4, coverage=0.3)
    L[:, 3] = -1  # an LF with an empty support is never extended
    query = np.asarray(jax.random.normal(jax.random.fold_in(key, 1), (17, 8)))
    ep = Epoxy(metric).fit(L, emb)
    best, vote = ep.nearest(query, batch_size=batch_size)
    ref_best, ref_vote = _brute_force(L, emb, query, metric)
    np.testing.assert_allclose(best, ref_best, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(vote[:, :3], ref_vote[:, :3])
    assert np.all(np.isneginf(best[:, 3]))


def test_extend_rules_and_l2_direction(key):
    L_train = np.array([[1, 0], [0, -1], [-1, 1]])
    emb_train = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]], np.float32)
    ep = Epoxy("l2").fit(L_train, emb_train)
    L = np.array([[-1, -1], [0, -1], [-1, -1]])
    emb = np.array([[0.5, 0.0], [9.0, 0.0], [50.0, 50.0]], np.float32)
    out = ep.extend(L, emb, thresholds=[1.0, 1.5])
    # Supports: LF0 votes on train rows 0 (1) and 1 (0); LF1 on rows 0 (0) and 2 (1).
    # row 0 at (0.5, 0): nearest support of both LFs is train row 0 at distance 0.5 -> votes 1 and 0.
    # row 1 at (9, 0): LF0 keeps its own vote; LF1's nearest support is row 0 at 9 > 1.5 -> abstain.
    # row 2 at (50, 50): everything is farther than the radius -> abstains stay.
    np.testing.assert_array_equal(out, [[1, 0], [0, -1], [-1, -1]])
    out_far = ep.extend(L, emb, thresholds=[100.0, 100.0])
    np.testing.assert_array_equal(out_far[1], [0, 0])  # LF1: train row 0 (distance 9) beats row 2 (13.5)
    # (50, 50) is nearer train rows 1 and 2 (64.0) than row 0 (70.7): taking the largest distance,
    # the original code's l2 bug, would give [1, 0] instead.
    np.testing.assert_array_equal(out_far[2], [0, 1])
    assert np.all(out_far != -1)


def test_epoxy_thresholds_from_dev_improve_held_out(key):
    L, emb, Y = _smooth_task(key, 1_500)
    tr, dev, te = slice(0, 1000), slice(1000, 1200), slice(1200, None)
    ep = Epoxy("cosine").fit(L[tr], emb[tr])
    t = ep.select_thresholds(L[dev], emb[dev], Y[dev])
    assert t.shape == (6,) and np.all(t < 1.0)
    L_tr, L_te = ep.extend(L[tr], emb[tr]), ep.extend(L[te], emb[te])
    assert label_coverage(L_te) > label_coverage(L[te]) + 0.2
    base = FlyingSquid(posterior="bayes").fit(L[tr]).score(L[te], Y[te], tie_policy="prior")["accuracy"]
    ext = FlyingSquid(posterior="bayes").fit(L_tr).score(L_te, Y[te], tie_policy="prior")["accuracy"]
    assert ext > base + 0.1


def test_epoxy_youtube_hashed_embeddings():
    """YouTube: thresholds tuned on a dev split of the labelled rows, scored on the rest (never on dev)."""
    d = load_youtube_spam(texts=True)
    split = youtube_dev_test_split(100, seed=0)
    e_train = hashed_ngram_embeddings(d["text_train"], 512, idf_from=d["text_train"])
    e_test = hashed_ngram_embeddings(d["text_test"], 512, idf_from=d["text_train"])
    ep = Epoxy("cosine").fit(d["L_train"], e_train)
    ep.select_thresholds(split["L_dev"], e_test[split["dev_idx"]], split["Y_dev"])
    L_te = ep.extend(split["L_test"], e_test[split["test_idx"]])
    fs = FlyingSquid(solve_method="triplet_median").fit(d["L_train"], class_balance=[0.4, 0.6])
    fs_x = FlyingSquid(solve_method="triplet_median").fit(
        ep.extend(d["L_train"], e_train), class_balance=[0.4, 0.6]
    )
    base = fs.score(split["L_test"], split["Y_test"], tie_policy="prior")["accuracy"]
    ext = fs_x.score(L_te, split["Y_test"], tie_policy="prior")["accuracy"]
    assert ext > base + 0.03, (base, ext)


def test_epoxy_bad_input(key):
    L, emb, Y = _smooth_task(key, 50)
    ep = Epoxy().fit(L, emb)
    with pytest.raises(ValueError, match="rows"):
        Epoxy().fit(L, emb[:40])
    bad = emb.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        Epoxy().fit(L, bad)
    with pytest.raises(ValueError, match="Y_dev has 100 labels but the label matrix has 120"):
        ep.select_thresholds(np.full((120, 6), -1), np.zeros((120, 8)), np.zeros(100, int))
    with pytest.raises(ValueError, match="no thresholds"):
        ep.extend(L, emb)
    with pytest.raises(ValueError, match="metric"):
        Epoxy("dot")
    with pytest.raises(ValueError, match=r"\[n, 8\]"):
        ep.nearest(np.zeros((3, 5)))
    with pytest.raises(ValueError, match="batch_size"):
        ep.nearest(emb, batch_size=0)
    with pytest.raises(ValueError, match="not fitted"):
        Epoxy().extend(L, emb, thresholds=0.5)
    with pytest.raises(ValueError, match="L_train is a boolean array"):
        Epoxy().fit(L == 1, emb)


def test_epoxy_save_load_and_not_a_label_model(key, tmp_path):
    L, emb, Y = _smooth_task(key, 300)
    ep = Epoxy("l2").fit(L[:200], emb[:200])
    ep.select_thresholds(L[200:250], emb[200:250], Y[200:250])
    ep.save(tmp_path / "epoxy.npz")
    again = Epoxy.load(tmp_path / "epoxy.npz")
    assert again.metric == "l2" and not isinstance(again, LabelModel)
    np.testing.assert_array_equal(again.thresholds_, ep.thresholds_)
    np.testing.assert_array_equal(again.extend(L[250:], emb[250:]), ep.extend(L[250:], emb[250:]))
    with pytest.raises(ValueError, match="holds a Epoxy, not a LabelModel"):
        LabelModel.load(tmp_path / "epoxy.npz")


def test_liger_with_one_part_is_epoxy_then_flyingsquid(key):
    """The label-model form of Epoxy: one part, one class balance."""
    L, emb, Y = _smooth_task(key, 1_200)
    tr, dev, te = slice(0, 800), slice(800, 1000), slice(1000, None)
    lg = Liger(n_clusters=1, balance_grid=[0.6]).fit(L[tr], emb[tr], L[dev], emb[dev], Y[dev])
    ep = Epoxy("cosine").fit(L[tr], emb[tr])
    ep.select_thresholds(L[dev], emb[dev], Y[dev])
    fs = FlyingSquid(solve_method="triplet_median").fit(ep.extend(L[tr], emb[tr]), class_balance=[0.4, 0.6])
    np.testing.assert_allclose(lg.predict_proba(L[te], emb[te]), fs.predict_proba(ep.extend(L[te], emb[te])))
    assert lg.score(L[te], emb[te], Y[te]) == fs.score(ep.extend(L[te], emb[te]), Y[te], tie_policy="prior")


def test_kmeans_recovers_separated_blobs(key):
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    lab = np.repeat(np.arange(3), 40)
    x = centres[lab] + 0.5 * np.asarray(jax.random.normal(key, (120, 2)))
    c, a = kmeans(jax.random.fold_in(key, 1), x, 3)
    # the partition equals the true one up to a relabelling
    mapping = {int(t): int(np.bincount(a[lab == t]).argmax()) for t in range(3)}
    assert len(set(mapping.values())) == 3
    np.testing.assert_array_equal(a, np.array([mapping[int(t)] for t in lab]))
    for t in range(3):
        np.testing.assert_allclose(c[mapping[t]], x[lab == t].mean(axis=0), atol=1e-4)
    with pytest.raises(ValueError, match="n >= k"):
        kmeans(key, x[:2], 3)


def test_liger_per_part_accuracies(key, tmp_path):
    """LF accuracies that flip between two regions: one global model cannot fit both, per-part models can."""
    n, dim = 2_400, 6
    ky, kr, ke, kv, kc = jax.random.split(key, 5)
    Y = np.asarray(jax.random.bernoulli(ky, 0.5, (n,))).astype(int)
    region = np.asarray(jax.random.bernoulli(kr, 0.5, (n,))).astype(int)
    centres = np.array([[-4.0] * dim, [4.0] * dim])
    emb = (centres[region] + np.asarray(jax.random.normal(ke, (n, dim)))).astype(np.float32)
    acc = np.where(region[:, None] == 0, [0.9, 0.9, 0.9, 0.55, 0.55, 0.55], [0.55, 0.55, 0.55, 0.9, 0.9, 0.9])
    votes = np.asarray(jax.random.uniform(kv, (n, 6))) < 0.7
    right = np.asarray(jax.random.uniform(kc, (n, 6))) < acc
    L = np.where(votes, np.where(right, Y[:, None], 1 - Y[:, None]), -1)
    tr, dev, te = slice(0, 1600), slice(1600, 1900), slice(1900, None)
    lg = Liger(n_clusters=2, metric="l2").fit(
        L[tr], emb[tr], L[dev], emb[dev], Y[dev], thresholds=[-np.inf] * 6
    )  # no extension: isolate the parts
    assert np.array_equal(lg.epoxy_.extend(L[te], emb[te]), L[te])
    liger_acc = lg.score(L[te], emb[te], Y[te])["accuracy"]
    global_acc = FlyingSquid(posterior="bayes").fit(L[tr]).score(L[te], Y[te], tie_policy="prior")["accuracy"]
    assert liger_acc > global_acc + 0.03, (liger_acc, global_acc)
    lg.save(tmp_path / "liger.npz")
    again = Liger.load(tmp_path / "liger.npz")
    np.testing.assert_array_equal(again.predict_proba(L[te], emb[te]), lg.predict_proba(L[te], emb[te]))
    # the per-part models see the accuracy flip
    acc0 = [m.estimated_accuracies()[:3].mean() - m.estimated_accuracies()[3:].mean() for m in lg.models_]
    assert min(acc0) < -0.1 and max(acc0) > 0.1


def test_liger_bad_input(key):
    L, emb, Y = _smooth_task(key, 60)
    with pytest.raises(ValueError, match="Y_dev"):
        Liger().fit(L, emb, L[:20], emb[:20], Y[:19])
    with pytest.raises(ValueError, match="at least 3"):
        Liger().fit(L[:, :2], emb, L[:20, :2], emb[:20], Y[:20])
    with pytest.raises(ValueError, match="not fitted"):
        Liger().predict_proba(L, emb)
