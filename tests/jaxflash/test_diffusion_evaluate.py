"""digits-FD and its companions (jaxflash.diffusion.evaluate), the PNG writer, the EMA transformation
and the DiT sampler's argument checks."""

import struct
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.linalg
from flax import nnx
from jaxflash.models import DiT, dit_tiny

from jaxflash.data import DataConfig, make_dataset
from jaxflash.diffusion import (
    DigitsEvaluator,
    create_diffusion,
    ema_params,
    ema_update,
    find_ema_params,
    frechet_distance,
    sample_dit,
)
from jaxflash.diffusion.evaluate import gaussian_stats, image_grid, nearest_neighbour_distance, write_png


def test_frechet_distance_is_the_closed_form():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(400, 6)), rng.normal(size=(300, 6)) @ rng.normal(size=(6, 6)) + 0.5
    mu1, s1 = gaussian_stats(a)
    mu2, s2 = gaussian_stats(b)
    want = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(want, rel=1e-8)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-9)
    # Two isotropic Gaussians: |mu1 - mu2|^2 + d (s1 - s2)^2 with standard deviations s1, s2.
    eye = np.eye(3)
    assert frechet_distance(np.zeros(3), 4 * eye, np.ones(3), eye) == pytest.approx(3 + 3 * (2 - 1) ** 2)


def test_nearest_neighbour_distance_by_hand():
    reference = np.array([[0.0, 0.0], [1.0, 1.0]])
    samples = np.array([[0.0, 0.0], [1.0, 0.0], [3.0, 1.0]])
    # RMS over the 2 pixels: 0, sqrt(1/2), sqrt(4/2).
    want = np.mean([0.0, np.sqrt(0.5), np.sqrt(2.0)])
    assert nearest_neighbour_distance(samples, reference, chunk=2) == pytest.approx(want, rel=1e-6)


@pytest.fixture(scope="module")
def evaluator():
    train = make_dataset(DataConfig(name="digits", validation_fraction=0.2), "train")
    held_out = make_dataset(DataConfig(name="digits", validation_fraction=0.2), "validation")
    return DigitsEvaluator(train.images, held_out.images, held_out.labels, 10, seed=0), train, held_out


def test_the_evaluator_orders_real_blurred_and_noise(evaluator):
    ev, train, held_out = evaluator
    bounds = ev.bounds()
    floor, ceiling = bounds["floor"], bounds["ceiling"]
    assert ev.num_samples == held_out.num_examples - held_out.num_examples // 2
    assert floor["label_accuracy"] > 0.8 and ceiling["label_accuracy"] < 0.3
    assert floor["digits_fd"] < ceiling["digits_fd"] and floor["nn_distance"] < ceiling["nn_distance"]
    # Degraded real images land between: each held-out image mixed half with noise.
    rng = np.random.default_rng(1)
    noisy = 0.5 * ev.floor_images + 0.5 * rng.uniform(-1, 1, ev.floor_images.shape)
    mid = ev.evaluate(noisy, ev.floor_labels)
    assert floor["digits_fd"] < mid["digits_fd"] < ceiling["digits_fd"]
    # Copies of training images: the memorisation signal is a nearest-neighbour distance of 0.
    copies = ev.evaluate(train.images[: ev.num_samples], train.labels[: ev.num_samples])
    assert copies["nn_distance"] == pytest.approx(0.0, abs=1e-3) and floor["nn_distance"] > 0.05
    # Deterministic, and non-finite samples score NaN instead of raising.
    assert ev.evaluate(noisy, ev.floor_labels) == mid
    assert np.isnan(ev.evaluate(np.full_like(noisy, np.nan))["digits_fd"])
    with pytest.raises(ValueError, match="images must be"):
        ev.evaluate(noisy[..., 0])


def _read_png(data: bytes) -> np.ndarray:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    i, chunks = 8, {}
    while i < len(data):
        (n,) = struct.unpack(">I", data[i : i + 4])
        tag, body = data[i + 4 : i + 8], data[i + 8 : i + 8 + n]
        (crc,) = struct.unpack(">I", data[i + 8 + n : i + 12 + n])
        assert crc == zlib.crc32(tag + body) & 0xFFFFFFFF
        chunks[tag] = chunks.get(tag, b"") + body
        i += 12 + n
    w, h, depth, color = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    channels = {0: 1, 2: 3}[color]
    raw = np.frombuffer(zlib.decompress(chunks[b"IDAT"]), np.uint8).reshape(h, 1 + w * channels)
    assert depth == 8 and (raw[:, 0] == 0).all()
    return raw[:, 1:].reshape(h, w, channels)


@pytest.mark.parametrize("channels", [1, 3])
def test_png_round_trip_of_a_grid(tmp_path, channels):
    images = np.random.default_rng(0).uniform(-1, 1, (13, 4, 5, channels)).astype(np.float32)
    grid = image_grid(images, columns=5, pad=1, scale=2)
    assert grid.shape == (3 * 9 + 1, 5 * 11 + 1, channels) and grid.dtype == np.uint8
    np.testing.assert_array_equal(grid[1:9:2, 1:11:2], np.round((images[0] + 1) * 127.5).astype(np.uint8))
    path = write_png(tmp_path / "grid.png", grid)
    np.testing.assert_array_equal(_read_png(path.read_bytes()), grid)
    with pytest.raises(ValueError, match="uint8"):
        write_png(tmp_path / "bad.png", grid.astype(np.float32))


def test_ema_params_transformation_keeps_the_average_of_the_updated_parameters():
    params = {"w": jnp.arange(3.0), "b": jnp.ones(())}
    tx = optax.chain(optax.sgd(0.1), ema_params(0.9))
    state = tx.init(params)
    want = jax.tree.map(jnp.copy, params)
    for i in range(4):
        grads = jax.tree.map(lambda p, scale=i + 1: p * scale, params)
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        want = ema_update(want, params, 0.9)
    got = find_ema_params(state)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    # decay 0 is a copy of the weights; the updates pass through unchanged.
    tx0 = ema_params(0.0)
    state0 = tx0.init(params)
    upd = jax.tree.map(jnp.ones_like, params)
    out, state0 = tx0.update(upd, state0, params)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool((a == b).all()), out, upd))
    np.testing.assert_array_equal(find_ema_params(state0)["w"], params["w"] + 1)
    assert find_ema_params(optax.adam(1e-3).init(params)) is None
    with pytest.raises(ValueError, match="needs the parameters"):
        tx0.update(upd, state0)
    with pytest.raises(ValueError, match="decay"):
        ema_params(1.5)


def test_sample_dit_shapes_determinism_and_bad_input():
    model = DiT(dit_tiny(), rngs=nnx.Rngs(0))
    model.eval()
    chain = create_diffusion("ddim3", diffusion_steps=30)
    labels = jnp.array([0, 3, 7])
    a = sample_dit(model, labels, jax.random.key(0), diffusion=chain)
    b = sample_dit(model, labels, jax.random.key(0), diffusion=chain, cfg_scale=2.0)
    assert a.shape == (3, 8, 8, 1) and np.isfinite(np.asarray(a)).all()
    # adaLN-Zero at init outputs zero for every label, so guidance changes nothing.
    np.testing.assert_allclose(a, b, atol=1e-6)
    np.testing.assert_array_equal(a, sample_dit(model, labels, jax.random.key(0), diffusion=chain))
    with pytest.raises(ValueError, match="sampler"):
        sample_dit(model, labels, jax.random.key(0), diffusion=chain, sampler="euler")
    with pytest.raises(ValueError, match="cfg_scale"):
        sample_dit(model, labels, jax.random.key(0), diffusion=chain, cfg_scale=-1.0)
