"""An honest small-scale evaluation of class-conditional image samples: "digits-FD" and its companions.

FID needs an Inception network trained on ImageNet, which cannot be had here and would mean little on
8 x 8 digits. This is the same construction with a small feature network of our own, so its numbers
are comparable only with each other, never with a published FID:

- **features**: a small MLP classifier (``flatten -> 256 -> FEATURES -> classes``, tanh) trained on a
  split the generator never saw (the first half of the digits' validation split), its penultimate
  ``FEATURES``-wide layer the feature space;
- **digits-FD**: the Frechet distance between Gaussians fitted to the features of the samples and of the
  generator's training images, ``|mu_s - mu_r|^2 + tr(S_s + S_r - 2 (S_s^1/2 S_r S_s^1/2)^1/2)``;
- **label accuracy**: how often the classifier reads a conditional sample as the class it was drawn for;
- **nearest-neighbour distance**: each sample's root-mean-square pixel distance to its nearest training
  image, averaged: far below the real held-out images' value means the generator copies its data.

Every number comes with its **floor** (the same statistic for real images held out from both the
generator and the classifier, the second half of the validation split, in the same number: what a
perfect generator of that many samples would score) and its **ceiling** (uniform noise in ``[-1, 1]``).
The Frechet distance of a finite sample is biased upward, so compare sample sets of one size only.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
import struct
import zlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

FEATURES = 32  # width of the classifier's feature layer
_HIDDEN = 256


# --- statistics ---------------------------------------------------------------------------------------


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(mean [d], covariance [d, d])`` of ``features [n, d]`` in float64 (``n - 1`` normalisation)."""
    f = np.asarray(features, np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"features must be [n >= 2, d]; got shape {f.shape}")
    return f.mean(0), np.cov(f, rowvar=False)


def _psd_sqrt(m: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((m + m.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """The Frechet (2-Wasserstein) distance between ``N(mu1, sigma1)`` and ``N(mu2, sigma2)``.

    The trace of ``(sigma1 sigma2)^1/2`` is computed as that of ``(s1 sigma2 s1)^1/2`` with ``s1 =
    sigma1^1/2``, a symmetric positive semi-definite matrix, so eigenvalues suffice (no complex
    ``sqrtm``, no scipy)."""
    s1 = _psd_sqrt(sigma1)
    inner = np.linalg.eigvalsh(s1 @ sigma2 @ s1)
    cross = np.sqrt(np.clip(inner, 0, None)).sum()
    diff = np.asarray(mu1, np.float64) - np.asarray(mu2, np.float64)
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * cross)


def nearest_neighbour_distance(samples: np.ndarray, reference: np.ndarray, *, chunk: int = 256) -> float:
    """The mean over ``samples`` of the RMS pixel distance to the nearest image of ``reference``."""
    a = np.asarray(samples, np.float32).reshape(len(samples), -1)
    b = np.asarray(reference, np.float32).reshape(len(reference), -1)
    b2 = (b * b).sum(1)
    best = []
    for i in range(0, len(a), chunk):
        x = a[i : i + chunk]
        d2 = (x * x).sum(1)[:, None] + b2[None] - 2 * x @ b.T
        best.append(np.sqrt(np.clip(d2.min(1), 0, None) / a.shape[1]))
    return float(np.concatenate(best).mean())


# --- the feature classifier ------------------------------------------------------------------------------


def _init(key: jax.Array, d_in: int, classes: int) -> dict[str, Any]:
    k1, k2, k3 = jax.random.split(key, 3)

    def dense(k, n_in, n_out):
        return {"w": jax.random.normal(k, (n_in, n_out)) * np.sqrt(1.0 / n_in), "b": jnp.zeros(n_out)}

    return {
        "h": dense(k1, d_in, _HIDDEN),
        "f": dense(k2, _HIDDEN, FEATURES),
        "out": dense(k3, FEATURES, classes),
    }


def _features(params, x):
    h = jnp.tanh(x.reshape(x.shape[0], -1) @ params["h"]["w"] + params["h"]["b"])
    return jnp.tanh(h @ params["f"]["w"] + params["f"]["b"])


def _logits(params, x):
    return _features(params, x) @ params["out"]["w"] + params["out"]["b"]


@dataclasses.dataclass
class FeatureClassifier:
    """The small MLP whose penultimate layer is digits-FD's feature space (module docstring)."""

    params: Any
    image_shape: tuple[int, ...]

    @classmethod
    def fit(
        cls,
        images: np.ndarray,
        labels: np.ndarray,
        num_classes: int,
        *,
        seed: int = 0,
        steps: int = 600,
        lr: float = 3e-3,
        weight_decay: float = 1e-3,
        noise: float = 0.1,
    ) -> FeatureClassifier:
        """Full-batch AdamW on ``images [n, H, W, C]`` (with Gaussian input noise of std ``noise`` as
        augmentation), deterministic given ``seed``."""
        x = jnp.asarray(images, jnp.float32)
        y = jnp.asarray(labels, jnp.int32)
        key = jax.random.key(seed)
        params = _init(jax.random.fold_in(key, 0), int(np.prod(x.shape[1:])), num_classes)
        params = _fit(params, x, y, key, steps=steps, lr=lr, weight_decay=weight_decay, noise=noise)
        return cls(jax.device_get(params), tuple(images.shape[1:]))

    def _check(self, images: np.ndarray) -> jnp.ndarray:
        if tuple(images.shape[1:]) != self.image_shape:
            raise ValueError(
                f"images must be [n, {', '.join(map(str, self.image_shape))}]; got {images.shape}"
            )
        return jnp.asarray(images, jnp.float32)

    def features(self, images: np.ndarray) -> np.ndarray:
        return np.asarray(_features_jit(self.params, self._check(images)))

    def predict(self, images: np.ndarray) -> np.ndarray:
        return np.asarray(jnp.argmax(_logits_jit(self.params, self._check(images)), -1))


@functools.partial(jax.jit, static_argnames=("steps", "lr", "weight_decay", "noise"))
def _fit(params, x, y, key, *, steps, lr, weight_decay, noise):
    tx = optax.adamw(lr, weight_decay=weight_decay)

    def step(i, carry):
        params, opt_state = carry
        xn = x + noise * jax.random.normal(jax.random.fold_in(key, i + 1), x.shape)

        def loss(p):
            return optax.softmax_cross_entropy_with_integer_labels(_logits(p, xn), y).mean()

        updates, opt_state = tx.update(jax.grad(loss)(params), opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    return jax.lax.fori_loop(0, steps, step, (params, tx.init(params)))[0]


_features_jit = jax.jit(_features)
_logits_jit = jax.jit(_logits)


# --- the evaluator ----------------------------------------------------------------------------------------


class DigitsEvaluator:
    """digits-FD, label accuracy and nearest-neighbour distance of samples (module docstring).

    Args:
      train_images: the generator's training images ``[n, H, W, C]`` (the FD reference and the
        nearest-neighbour search set).
      heldout_images, heldout_labels: images neither the generator nor anything else trained on; the
        first half trains the feature classifier, the second half is the floor.
      num_classes: the number of classes.
      seed: the classifier's seed and the noise ceiling's.
    """

    def __init__(
        self,
        train_images: np.ndarray,
        heldout_images: np.ndarray,
        heldout_labels: np.ndarray,
        num_classes: int,
        *,
        seed: int = 0,
    ):
        n = len(heldout_images)
        if n < 20:
            raise ValueError(
                f"the evaluator needs >= 20 held-out images (half train its classifier); got {n}"
            )
        half = n // 2
        self.train_images = np.asarray(train_images, np.float32)
        self.classifier = FeatureClassifier.fit(
            heldout_images[:half], heldout_labels[:half], num_classes, seed=seed
        )
        self.floor_images = np.asarray(heldout_images[half:], np.float32)
        self.floor_labels = np.asarray(heldout_labels[half:], np.int32)
        self.num_classes = num_classes
        self.seed = seed
        self._reference = gaussian_stats(self.classifier.features(self.train_images))

    @property
    def num_samples(self) -> int:
        """The sample count the floor is measured at: evaluate this many samples."""
        return len(self.floor_images)

    def evaluate(self, images: np.ndarray, labels: np.ndarray | None = None) -> dict[str, float]:
        """``digits_fd``, ``nn_distance`` and (with the labels the samples were drawn for)
        ``label_accuracy`` of ``images [n, H, W, C]`` in ``[-1, 1]``."""
        images = np.asarray(images, np.float32)
        if not np.isfinite(images).all():
            return {"digits_fd": float("nan"), "nn_distance": float("nan"), "label_accuracy": float("nan")}
        out = {
            "digits_fd": frechet_distance(
                *gaussian_stats(self.classifier.features(images)), *self._reference
            ),
            "nn_distance": nearest_neighbour_distance(images, self.train_images),
        }
        if labels is not None:
            out["label_accuracy"] = float((self.classifier.predict(images) == np.asarray(labels)).mean())
        return out

    def bounds(self) -> dict[str, dict[str, float]]:
        """``{"floor": ..., "ceiling": ...}``: the statistics of real held-out images and of uniform
        noise, ``num_samples`` of each."""
        rng = np.random.default_rng([self.seed, 3])
        noise = rng.uniform(-1, 1, self.floor_images.shape).astype(np.float32)
        return {
            "floor": self.evaluate(self.floor_images, self.floor_labels),
            "ceiling": self.evaluate(noise, rng.integers(0, self.num_classes, len(noise))),
        }


# --- a grid of samples as a PNG ---------------------------------------------------------------------------


def image_grid(images: np.ndarray, *, columns: int = 10, pad: int = 1, scale: int = 1) -> np.ndarray:
    """``[n, H, W, C]`` images in ``[-1, 1]`` tiled into one uint8 ``[rows (H + pad), columns (W + pad),
    C]`` image (C = 1 or 3), each pixel repeated ``scale`` times."""
    x = np.clip((np.asarray(images, np.float32) + 1) * 127.5, 0, 255).round().astype(np.uint8)
    if x.ndim != 4 or x.shape[3] not in (1, 3):
        raise ValueError(f"images must be [n, H, W, 1 or 3]; got {x.shape}")
    x = x.repeat(scale, 1).repeat(scale, 2)
    n, h, w, c = x.shape
    rows = -(-n // columns)
    grid = np.zeros((rows * (h + pad) + pad, columns * (w + pad) + pad, c), np.uint8)
    for i in range(n):
        r, col = divmod(i, columns)
        grid[
            pad + r * (h + pad) : pad + r * (h + pad) + h, pad + col * (w + pad) : pad + col * (w + pad) + w
        ] = x[i]
    return grid


def write_png(path: str | pathlib.Path, image: np.ndarray) -> pathlib.Path:
    """Writes a uint8 ``[H, W]``, ``[H, W, 1]`` (grey) or ``[H, W, 3]`` (RGB) image as a PNG file."""
    img = np.asarray(image)
    if img.dtype != np.uint8 or img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] not in (1, 3)):
        raise ValueError(f"image must be uint8 [H, W], [H, W, 1] or [H, W, 3]; got {img.dtype} {img.shape}")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    h, w = img.shape[:2]
    color = 0 if img.ndim == 2 else 2
    raw = b"".join(b"\x00" + img[r].tobytes() for r in range(h))  # filter type 0 on every row

    def chunk(tag: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
        )

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, color, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png)
    return path
