"""Perfectly Balanced on the digits (jaxflash.contrastive.balanced): views, the coarse grouping, the
spurious split's correlation and balance, the linear probe, a few steps of each encoder lowering its
loss, Thanos' concatenated width, a tiny end-to-end run and its table, and the input errors."""

import dataclasses

import jax
import numpy as np
import pytest

from jaxflash.contrastive.balanced import (
    COARSE_GROUPS,
    METHODS,
    BalancedConfig,
    augment,
    coarse_labels,
    embed,
    group_accuracies,
    linear_probe,
    load_digits_split,
    main,
    markdown,
    run_balanced,
    spurious_split,
    train_component,
    train_methods,
)

# One small config for every training test, so that each encoder's step compiles once.
SMALL = BalancedConfig(steps=30, batch_size=64, lr=3e-3, width=32, embed_dim=16, projection_dim=16)


@pytest.fixture(scope="module")
def data():
    return load_digits_split("test")


@pytest.fixture(scope="module")
def subset(data):
    rows = np.random.default_rng(0).choice(len(data.train_labels), 160, replace=False)
    return data.train_images[rows], coarse_labels(data.train_labels[rows])


def test_split_is_stratified_and_validation_never_reads_test(data):
    assert len(data.train_labels) + len(data.test_labels) == 1797
    assert data.train_images.shape[1:] == (8, 8, 1) and data.train_images.dtype == np.float32
    assert data.train_images.min() == 0.0 and data.train_images.max() == 1.0
    for digit in range(10):
        share = np.mean(data.test_labels == digit) / np.mean(data.train_labels == digit)
        assert share == pytest.approx(1.0, abs=0.05)
    val = load_digits_split("validation")
    assert len(val.train_labels) + len(val.test_labels) == len(data.train_labels)
    train_rows = {x.tobytes() for x in data.train_images}
    assert all(x.tobytes() in train_rows for x in val.test_images)


@pytest.mark.parametrize("shape", [(5, 8, 8, 1), (3, 7, 9, 2)])
def test_augment_shapes_range_and_determinism(key, shape):
    images = jax.random.uniform(jax.random.fold_in(key, 1), shape)
    view = augment(key, images)
    assert view.shape == shape and float(view.min()) >= 0.0 and float(view.max()) <= 1.0
    np.testing.assert_array_equal(view, augment(key, images))
    assert not np.array_equal(view, augment(jax.random.fold_in(key, 2), images))
    identity = augment(key, images, max_shift=0, noise_std=0.0, erase_prob=0.0)
    np.testing.assert_array_equal(identity, images)


def test_augment_shift_and_erase_by_hand(key):
    images = np.zeros((64, 8, 8, 1), np.float32)
    images[:, 3, 4] = 1.0
    view = np.asarray(augment(key, images, noise_std=0.0, erase_prob=0.0))
    rows, cols = np.nonzero(view[..., 0])[1:]
    assert set(np.abs(rows - 3)) | set(np.abs(cols - 4)) <= {0, 1}  # moved by at most one pixel
    assert len(rows) == 64  # nothing falls off an 8x8 image from the middle
    ones = np.ones((64, 8, 8, 1), np.float32)
    erased = np.asarray(augment(key, ones, max_shift=0, noise_std=0.0, erase_prob=1.0))
    assert set((erased == 0).sum(axis=(1, 2, 3)).tolist()) == {4}  # one 2x2 patch each
    with pytest.raises(ValueError, match="erase_size"):
        augment(key, ones, erase_size=9)


def test_coarse_groups_cover_each_digit_once():
    digits = [d for group in COARSE_GROUPS for d in group]
    assert sorted(digits) == list(range(10))
    coarse = coarse_labels(np.arange(10))
    for k, group in enumerate(COARSE_GROUPS):
        assert set(np.flatnonzero(coarse == k)) == set(group)
    with pytest.raises(ValueError, match="digits"):
        coarse_labels([3, 10])


def test_spurious_split_correlated_in_train_and_balanced_in_test(data):
    c = 0.95
    s = spurious_split(data, correlation=c)
    coarse = coarse_labels(s.train_labels)
    for k in (0, 1):
        in_class = coarse == k
        assert np.mean(s.train_attributes[in_class] == k) == pytest.approx(c, abs=1 / in_class.sum())
    for digit in range(10):
        in_digit = s.test_labels == digit
        assert np.mean(s.test_attributes[in_digit]) == pytest.approx(0.5, abs=1 / in_digit.sum())
    test_coarse = coarse_labels(s.test_labels)
    sizes = [np.sum((test_coarse == k) & (s.test_attributes == a)) for k in (0, 1) for a in (0, 1)]
    assert max(sizes) - min(sizes) <= 10
    # The frame is the outer ring at full brightness; the interior is the original image.
    framed = s.test_attributes == 1
    assert np.all(s.test_images[framed][:, 0] == 1.0) and np.all(s.test_images[framed][:, :, -1] == 1.0)
    np.testing.assert_array_equal(s.test_images[:, 1:-1, 1:-1], data.test_images[:, 1:-1, 1:-1])
    np.testing.assert_array_equal(s.test_images[~framed], data.test_images[~framed])
    np.testing.assert_array_equal(spurious_split(data).train_attributes, s.train_attributes)


def test_probe_separates_linearly_separable_embeddings():
    rng = np.random.default_rng(0)
    centres = 4.0 * rng.normal(size=(6, 12))
    labels = rng.integers(0, 6, 600)
    features = centres[labels] + rng.normal(size=(600, 12))
    predictions = linear_probe(features[:400], labels[:400], features[400:])
    assert np.mean(predictions == labels[400:]) > 0.97
    with pytest.raises(ValueError, match="one d"):
        linear_probe(features[:400], labels[:400], features[400:, :5])


def test_group_accuracies_by_hand():
    r = group_accuracies([0, 0, 1, 1, 1, 0], [0, 0, 1, 1, 0, 1], [0, 1, 0, 1, 0, 1])
    assert r["y=0,a=0"] == 0.5 and r["y=0,a=1"] == 1.0 and r["y=1,a=0"] == 1.0 and r["y=1,a=1"] == 0.5
    assert r["worst_group"] == 0.5 and r["average"] == pytest.approx(4 / 6)


# supcon_cnce runs the spread loss, supcon_autoencoder SupCon and the autoencoder's cross-entropy and
# MSE: together every loss path of the four components (the other two are their parts).
@pytest.mark.parametrize("component", ["supcon_cnce", "supcon_autoencoder"])
def test_a_few_steps_lower_the_loss(subset, component):
    images, labels = subset
    model, losses = train_component(component, images, labels, SMALL, seed=0)
    assert losses.shape == (SMALL.steps,) and np.all(np.isfinite(losses))
    assert losses[-5:].mean() < losses[:5].mean()
    if component == "supcon_autoencoder":  # both losses' paths; once is enough
        _, again = train_component(component, images, labels, SMALL, seed=0)
        np.testing.assert_array_equal(losses, again)  # a function of the seed


def test_thanos_embedding_is_both_backbones_side_by_side(subset):
    images, labels = subset
    models = train_methods(["thanos", "supcon_cnce"], images, labels, SMALL, seed=0)
    cnce, autoencoder = models["thanos"]
    assert models["supcon_cnce"][0] is cnce  # one training shared by both rows
    both = embed(models["thanos"], images)
    assert both.shape == (len(images), 2 * SMALL.embed_dim)
    np.testing.assert_array_equal(both[:, : SMALL.embed_dim], embed([cnce], images))
    np.testing.assert_array_equal(both[:, SMALL.embed_dim :], embed([autoencoder], images))


def test_tiny_run_and_table():
    results = run_balanced([0], SMALL, methods=["supcon"], evaluate_on="validation")
    r = results["methods"]["supcon"]
    assert len(r["fine_accuracy"]) == 1 and 0.0 <= r["worst_group_mean"] <= r["average_mean"] <= 1.0
    assert r["fine_accuracy_mean"] > 0.3  # far above chance (0.1) even after 30 steps
    table = markdown(results)
    assert "| supcon |" in table and "51.8" in table and "pixels" in table


def test_bad_input():
    with pytest.raises(ValueError, match="methods"):
        run_balanced([0], SMALL, methods=["simclr"])
    with pytest.raises(ValueError, match="methods"):
        run_balanced([0], SMALL, methods=[])
    with pytest.raises(ValueError, match="seeds"):
        run_balanced([], SMALL)
    with pytest.raises(ValueError, match="steps"):
        BalancedConfig(steps=0)
    with pytest.raises(ValueError, match="steps"):
        main(["--out", "unused", "--steps", "-3"])
    with pytest.raises(ValueError, match="alpha"):
        dataclasses.replace(SMALL, alpha=1.5)
    with pytest.raises(ValueError, match="evaluate_on"):
        load_digits_split("train")
    with pytest.raises(ValueError, match="component"):
        train_component("simclr", np.zeros((4, 8, 8, 1)), np.zeros(4, int), SMALL, seed=0)
    assert set(METHODS) == {"supcon", "supcon_cnce", "supcon_autoencoder", "autoencoder", "thanos"}
