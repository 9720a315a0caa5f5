"""Class-labelled images for diffusion training: scikit-learn's bundled 8 x 8 handwritten digits.

``digits`` is the 1,797 images of ``sklearn.datasets.load_digits`` (the test part of the UCI "Optical
Recognition of Handwritten Digits" set, 10 classes, grey levels 0-16; scikit-learn ships the file, so
nothing is downloaded; install ``jaxflash[diffusion]``). Pixels are mapped to ``[-1, 1]`` by
``x / 8 - 1``, channels last (``[N, 8, 8, 1]``), and optionally resized to ``image_size`` (bilinear,
``jax.image.resize``; 16 makes 64 patch-2 tokens, where locality means more than in 16).

The split: one permutation of the 1,797 images seeded by ``[seed, 2]`` (a stream of its own, see
:mod:`jaxflash.data.base`) puts the last ``round(validation_fraction * 1797)`` in ``"validation"``, the
rest in ``"train"``. The validation images are never trained on; the digits evaluation
(:mod:`jaxflash.diffusion.evaluate`) divides them between its feature classifier and its real
held-out reference.
"""

from __future__ import annotations

import functools

import numpy as np

from jaxflash.data.base import Batch, Dataset, check_split
from jaxflash.utils import check_int

DIGITS_SIZE = 8  # the images' native side
DIGITS_CLASSES = 10
_DIGITS_SPLIT_STREAM = 2  # the split's permutation: default_rng([seed, 2])


class ImageDataset(Dataset):
    """Images ``[num_examples, H, W, C]`` in ``[-1, 1]`` with class labels, batched as
    ``dict(images=float32 [B, H, W, C], labels=int32 [B], weights=float32 [B])``."""

    def __init__(
        self, *, name: str, split: str, seed: int, images: np.ndarray, labels: np.ndarray, num_classes: int
    ):
        if images.ndim != 4 or images.shape[1] != images.shape[2] or labels.shape != images.shape[:1]:
            raise ValueError(
                f"images must be [num_examples, side, side, channels] with labels [num_examples]; got "
                f"{images.shape=}, {labels.shape=}"
            )
        super().__init__(name=name, split=split, num_examples=images.shape[0], seed=seed)
        self.num_classes = check_int("num_classes", num_classes)
        if labels.min() < 0 or labels.max() >= num_classes:
            raise ValueError(f"labels must lie in [0, num_classes={num_classes})")
        self.images = np.ascontiguousarray(images, np.float32)
        self.labels = np.asarray(labels, np.int32)
        self.images.flags.writeable = False
        self.labels.flags.writeable = False

    @property
    def image_size(self) -> int:
        return self.images.shape[1]

    @property
    def channels(self) -> int:
        return self.images.shape[3]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, split={self.split!r}, image_size={self.image_size}, "
            f"channels={self.channels}, num_classes={self.num_classes}, num_examples={self.num_examples})"
        )

    def describe(self) -> str:
        return f"{self.image_size}x{self.image_size}x{self.channels} images, {self.num_classes} classes"

    def _batch(self, indices: np.ndarray) -> Batch:
        return dict(
            images=self.images[indices].copy(),
            labels=self.labels[indices].copy(),
            weights=np.ones(len(indices), np.float32),
        )


@functools.lru_cache(maxsize=1)
def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:  # pragma: no cover - the test extra installs it
        raise ImportError(
            "the digits dataset is scikit-learn's bundled copy: pip install 'jaxflash[diffusion]' "
            "(or scikit-learn)"
        ) from err
    digits = load_digits()
    images = digits.images.astype(np.float32)[..., None] / 8.0 - 1.0  # grey 0..16 -> [-1, 1]
    return images, digits.target.astype(np.int32)


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """``[N, H, W, C]`` to ``[N, size, size, C]``, bilinear (``jax.image.resize``, no antialiasing
    when enlarging); the same array when the size is already right."""
    if images.shape[1] == size and images.shape[2] == size:
        return images
    import jax

    shape = (images.shape[0], size, size, images.shape[3])
    out = jax.image.resize(np.asarray(images, np.float32), shape, method="linear")
    return np.clip(np.asarray(out, np.float32), -1.0, 1.0)


def digits_split(
    split: str, *, image_size: int = DIGITS_SIZE, validation_fraction: float = 0.1, seed: int = 0
) -> ImageDataset:
    """Split ``split`` of the digits (module docstring), ``image_size`` pixels a side."""
    check_split(split)
    image_size = check_int("image_size", image_size)
    if image_size < DIGITS_SIZE:
        raise ValueError(
            f"image_size={image_size} would shrink the {DIGITS_SIZE}x{DIGITS_SIZE} digits; use >= 8"
        )
    images, labels = _load_digits()
    order = np.random.default_rng([seed, _DIGITS_SPLIT_STREAM]).permutation(len(images))
    n_val = max(1, round(validation_fraction * len(images)))
    rows = order[-n_val:] if split == "validation" else order[:-n_val]
    return ImageDataset(
        name="digits",
        split=split,
        seed=seed,
        images=resize_images(images[np.sort(rows)], image_size),
        labels=labels[np.sort(rows)],
        num_classes=DIGITS_CLASSES,
    )
