r"""Perfectly Balanced on scikit-learn's digits: coarse-to-fine transfer and worst-group accuracy.

    python -m jaxflash.contrastive.balanced --seeds 0 1 2 --out runs/balanced                 # the table
    python -m jaxflash.contrastive.balanced --seeds 0 --split validation --out runs/balanced_val

Chen, Fu, Narayan, Zhang, Song, Fatahalian, Re, "Perfectly Balanced: Improving Transfer and Robustness of
Supervised Contrastive Learning", ICML 2022 (arXiv 2204.07596; code ``HazyResearch/thanos-code``). SupCon
trained on coarse labels pulls each class together until its subclasses are no longer told apart; spreading
the class out again - the class-conditional InfoNCE (cNCE), or a class-conditional autoencoder - keeps
them. The paper trains on CIFAR-10's two superclasses and probes its ten classes. Here:

**Data** (:func:`load_digits_split`). The 1,797 digits of :mod:`jaxflash.data.images`, grey levels scaled
to [0, 1] (``[n, 8, 8, 1]``), split 70 / 30 into train and test, stratified by digit, by a permutation
seeded by ``split_seed``. ``evaluate_on="validation"`` holds out a stratified 20 % of train instead and
never reads test: settings are chosen there. The coarse labels (:data:`COARSE_GROUPS`, :func:`coarse_labels`)
put digits 0-4 in class 0 and 5-9 in class 1, a grouping by no visual trait, as animal / vehicle is none.
Every method is trained on the coarse labels only.

**Views** (:func:`augment`). Two per image and step: a shift by up to one pixel along each axis (zero
padding), gaussian noise (std 0.05, clipped to [0, 1]), and with probability 1/2 a 2x2 patch set to 0.

**Model** (:class:`BalancedModel`). An MLP encoder 64 -> 128 -> 128 -> 64 (ReLU between), whose output is
the embedding that the probes read; a projection head 64 -> 128 -> 64, L2-normalised, that the contrastive
losses see (SupCon's layout); for the autoencoder, a linear classifier on the embedding and an MLP decoder
64 -> 128 -> 64 pixels (sigmoid). The Thanos code's encoder is a ViT and its decoder a ResNet-18; these are
their digits-sized stand-ins.

**Methods** (:data:`METHODS`), AdamW with cosine decay, two views per image:

* ``supcon``: :func:`jaxflash.losses.supcon_loss` over the 2B views, without the other positives in the
  denominator (the Thanos code's ``pos_in_denom=False``), so that it differs from the next only by cNCE;
* ``supcon_cnce``: :func:`jaxflash.losses.spread_loss`, :math:`(1 - \alpha) L_{SupCon} + \alpha L_{cNCE}`;
* ``supcon_autoencoder``: SupCon plus the class-conditional autoencoder loss, on one encoder;
* ``autoencoder``: the class-conditional autoencoder alone, :math:`L_{AE} = L_{CE}` (coarse label, label
  smoothing 0.1) :math:`+ \lambda\,` MSE of the decoder's reconstruction of the un-augmented image;
* ``thanos``: the ``supcon_cnce`` and ``autoencoder`` embeddings concatenated, two backbones trained
  separately (the same two trainings as those rows).

**Evaluations.** (1) Coarse-to-fine transfer: multinomial logistic regression (:func:`linear_probe`) on
the frozen, standardised train embeddings with the fine labels, accuracy on test. (2) Robustness
(:func:`spurious_split`): a bright one-pixel frame is drawn on 95 % of coarse class 1's train images and
on 5 % of class 0's, and on half of each digit's test images; each method is trained on those train
images with coarse labels, a probe is fitted on the train coarse labels, and the test accuracy is given
over all images (``average``; test is balanced) and for the worst of the four (coarse class, frame)
groups (``worst_group``), as for Waterbirds. ``pixels`` is the probe on the raw pixels, for scale.

**Settings** (:class:`BalancedConfig`'s defaults): temperature 0.5 and the equal SupCon / cNCE weights
(alpha 0.5) are the Thanos code's defaults; steps, learning rate and widths were set once for this size
and not swept (``--split validation`` is there for choosing them; test was never used for that). The
same settings serve the robustness run. The paper's CIFAR-10 accuracies (:data:`PAPER_CIFAR10`) are
printed beside ours for the ordering only: the data, encoders and budgets differ.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import pathlib
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jaxtyping import Array, Float, Int

from jaxflash.data.images import _load_digits
from jaxflash.losses import spread_loss, supcon_loss
from jaxflash.utils import check_int, check_real

# Digits 0-4 are coarse class 0, digits 5-9 coarse class 1.
COARSE_GROUPS: tuple[tuple[int, ...], ...] = ((0, 1, 2, 3, 4), (5, 6, 7, 8, 9))
NUM_FINE = 10

# One encoder each; "thanos" is two of them side by side.
COMPONENTS = ("supcon", "supcon_cnce", "supcon_autoencoder", "autoencoder")
METHOD_COMPONENTS: dict[str, tuple[str, ...]] = {
    "supcon": ("supcon",),
    "supcon_cnce": ("supcon_cnce",),
    "supcon_autoencoder": ("supcon_autoencoder",),
    "autoencoder": ("autoencoder",),
    "thanos": ("supcon_cnce", "autoencoder"),
}
METHODS = tuple(METHOD_COMPONENTS)
_CONTRASTIVE = ("supcon", "supcon_cnce", "supcon_autoencoder")
_AUTOENCODING = ("supcon_autoencoder", "autoencoder")

# Coarse-to-fine transfer accuracy on CIFAR-10 from the Thanos code's README (shared/reference
# weak_supervision.md section 5.2); the class-conditional autoencoder alone is not in that table.
PAPER_CIFAR10: dict[str, float | None] = {
    "supcon": 51.8,
    "supcon_cnce": 77.1,
    "supcon_autoencoder": 71.7,
    "autoencoder": None,
    "thanos": 79.1,
}
EVALUATE_ON = ("test", "validation")

# Streams of default_rng([seed, stream]), one per use, so that no two draws share a sequence.
_SPLIT_STREAM = 0
_VALIDATION_STREAM = 1
_FRAME_STREAM = 2
_BATCH_STREAM = 3


@dataclasses.dataclass(frozen=True)
class BalancedConfig:
    """Everything one training run reads besides its seed (module docstring for the choices)."""

    steps: int = 1500  # optimizer steps per encoder
    batch_size: int = 256  # images per step (two views each); capped at the training set's size
    lr: float = 1e-3  # AdamW peak learning rate, cosine-decayed to 0 over `steps`
    weight_decay: float = 1e-4  # AdamW decoupled weight decay
    temperature: float = 0.5  # tau of SupCon and cNCE (the Thanos code's default)
    alpha: float = 0.5  # cNCE's weight in the spread loss (the Thanos code's a_lc = a_spread = 1)
    label_smoothing: float = 0.1  # of the autoencoder's coarse-label cross-entropy
    recon_weight: float = 1.0  # lambda: the autoencoder's MSE weight beside the cross-entropy
    width: int = 128  # hidden width of encoder, head and decoder
    embed_dim: int = 64  # the embedding the probes read
    projection_dim: int = 64  # the L2-normalised head output the contrastive losses read
    max_shift: int = 1  # augmentation: pixels of shift along each axis, zero padded
    noise_std: float = 0.05  # augmentation: gaussian noise on [0, 1] pixels
    erase_size: int = 2  # augmentation: side of the erased square patch
    erase_prob: float = 0.5  # augmentation: probability that a view has its patch erased
    spurious_correlation: float = 0.95  # share of a coarse class's train images with its own frame value
    split_seed: int = 0  # the train / validation / test split and the frames; not the training seed

    def __post_init__(self):
        for name in ("steps", "batch_size", "width", "embed_dim", "projection_dim", "erase_size"):
            check_int(name, getattr(self, name))
        check_int("max_shift", self.max_shift, minimum=0)
        check_int("split_seed", self.split_seed, minimum=0)
        check_real("lr", self.lr, above=0.0)
        check_real("temperature", self.temperature, above=0.0)
        for name in ("weight_decay", "recon_weight", "noise_std"):
            check_real(name, getattr(self, name), at_least=0.0)
        for name in ("alpha", "erase_prob", "spurious_correlation"):
            check_real(name, getattr(self, name), at_least=0.0, at_most=1.0)
        check_real("label_smoothing", self.label_smoothing, at_least=0.0, below=1.0)


# --- data ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DigitsSplit:
    """Images ``float32 [n, 8, 8, 1]`` in [0, 1] with their digits; ``*_attributes`` (1 = framed) only
    in a :func:`spurious_split`."""

    train_images: np.ndarray
    train_labels: np.ndarray  # int32 digits 0-9
    test_images: np.ndarray  # the test split, or the validation part of train
    test_labels: np.ndarray
    train_attributes: np.ndarray | None = None
    test_attributes: np.ndarray | None = None


def coarse_labels(fine_labels: Any) -> np.ndarray:
    """The :data:`COARSE_GROUPS` class of each digit, ``int32`` like the input's shape."""
    fine = np.asarray(fine_labels)
    if fine.size and (fine.min() < 0 or fine.max() >= NUM_FINE):
        raise ValueError(f"fine labels must be digits 0-{NUM_FINE - 1}; got {fine.min()}..{fine.max()}")
    table = np.empty(NUM_FINE, np.int32)
    for group, digits in enumerate(COARSE_GROUPS):
        table[list(digits)] = group
    return table[fine]


def stratified_split(labels: Any, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``(kept, held)``: sorted indices, ``round(fraction * count)`` of each label's rows held out at
    random."""
    labels = np.asarray(labels)
    held = []
    for value in np.unique(labels):
        rows = np.flatnonzero(labels == value)
        held.append(rng.permutation(rows)[: round(fraction * len(rows))])
    held = np.sort(np.concatenate(held))
    return np.setdiff1d(np.arange(len(labels)), held), held


def load_digits_split(
    evaluate_on: str = "test",
    *,
    seed: int = 0,
    test_fraction: float = 0.3,
    validation_fraction: float = 0.2,
) -> DigitsSplit:
    """Train against ``"test"`` (the stratified ``test_fraction`` of the digits), or, for choosing
    settings, the rest of train against its stratified ``validation_fraction`` (``"validation"``)."""
    if evaluate_on not in EVALUATE_ON:
        raise ValueError(f"evaluate_on must be one of {EVALUATE_ON}; got {evaluate_on!r}")
    check_real("test_fraction", test_fraction, above=0.0, below=1.0)
    check_real("validation_fraction", validation_fraction, above=0.0, below=1.0)
    images, labels = _load_digits()
    images = (images + 1.0) / 2.0  # jaxflash.data's [-1, 1] back to grey / 16
    train, test = stratified_split(labels, test_fraction, np.random.default_rng([seed, _SPLIT_STREAM]))
    if evaluate_on == "validation":
        fit, held = stratified_split(
            labels[train], validation_fraction, np.random.default_rng([seed, _VALIDATION_STREAM])
        )
        train, test = train[fit], train[held]
    return DigitsSplit(images[train], labels[train], images[test], labels[test])


def add_frame(images: np.ndarray, framed: np.ndarray, *, value: float = 1.0) -> np.ndarray:
    """The images with their outer one-pixel ring raised to ``value`` where ``framed``."""
    ring = np.ones(images.shape[1:3], bool)
    ring[1:-1, 1:-1] = False
    frame = np.where(ring[None, :, :, None], np.maximum(images, value), images)
    return np.where(np.asarray(framed, bool)[:, None, None, None], frame, images).astype(np.float32)


def spurious_split(data: DigitsSplit, *, correlation: float = 0.95, seed: int = 0) -> DigitsSplit:
    """``data`` with the frame attribute (module docstring): in train, ``round(correlation * n)`` of
    coarse class k's n images have frame value k (class 0 unframed, class 1 framed), the rest the other;
    in test, half of each digit's images (rounded down) are framed."""
    check_real("correlation", correlation, at_least=0.0, at_most=1.0)
    rng = np.random.default_rng([seed, _FRAME_STREAM])
    coarse = coarse_labels(data.train_labels)
    train_attr = np.empty(len(coarse), np.int32)
    for k in np.unique(coarse):
        rows = rng.permutation(np.flatnonzero(coarse == k))
        own = round(correlation * len(rows))
        train_attr[rows[:own]] = k
        train_attr[rows[own:]] = 1 - k
    test_attr = np.zeros(len(data.test_labels), np.int32)
    for digit in np.unique(data.test_labels):
        rows = rng.permutation(np.flatnonzero(data.test_labels == digit))
        test_attr[rows[: len(rows) // 2]] = 1
    return DigitsSplit(
        add_frame(data.train_images, train_attr),
        data.train_labels,
        add_frame(data.test_images, test_attr),
        data.test_labels,
        train_attr,
        test_attr,
    )


def augment(
    key: jax.Array,
    images: Float[Array, "b h w c"],
    *,
    max_shift: int = 1,
    noise_std: float = 0.05,
    erase_size: int = 2,
    erase_prob: float = 0.5,
) -> Float[Array, "b h w c"]:
    """One random view of each image (module docstring), a pure function of ``key``."""
    b, h, w, c = images.shape
    if erase_size > min(h, w):
        raise ValueError(f"erase_size={erase_size} does not fit in {h}x{w} images")
    k_shift, k_noise, k_erase, k_corner = jax.random.split(key, 4)
    shifts = jax.random.randint(k_shift, (b, 2), -max_shift, max_shift + 1)
    pad = ((0, 0), (max_shift, max_shift), (max_shift, max_shift), (0, 0))
    padded = jnp.pad(images, pad)

    def crop(image, shift):
        return jax.lax.dynamic_slice(image, (max_shift + shift[0], max_shift + shift[1], 0), (h, w, c))

    views = jax.vmap(crop)(padded, shifts)
    views = jnp.clip(views + noise_std * jax.random.normal(k_noise, views.shape, views.dtype), 0.0, 1.0)
    corner = jax.random.randint(k_corner, (b, 2), 0, jnp.array([h, w]) - erase_size + 1)
    rows, cols = jnp.arange(h), jnp.arange(w)
    in_rows = (rows >= corner[:, :1]) & (rows < corner[:, :1] + erase_size)  # [b, h]
    in_cols = (cols >= corner[:, 1:]) & (cols < corner[:, 1:] + erase_size)  # [b, w]
    erased = in_rows[:, :, None] & in_cols[:, None, :] & jax.random.bernoulli(k_erase, erase_prob, (b, 1, 1))
    return jnp.where(erased[..., None], 0.0, views)


# --- model ---------------------------------------------------------------------------------------------


class MLP(nnx.Module):
    """``[b, widths[0]] -> [b, widths[-1]]``: Linear layers with a ReLU between each two."""

    def __init__(self, widths: Sequence[int], *, rngs: nnx.Rngs):
        self.layers = nnx.List(
            [nnx.Linear(a, b, rngs=rngs) for a, b in zip(widths[:-1], widths[1:], strict=True)]
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        for layer in self.layers[:-1]:
            x = jax.nn.relu(layer(x))
        return self.layers[-1](x)


class BalancedModel(nnx.Module):
    """One encoder of :data:`COMPONENTS` (module docstring): the embedding, and the projection head,
    classifier and decoder that its component's loss needs (``None`` where it needs none)."""

    def __init__(
        self,
        component: str,
        image_shape: tuple[int, int, int],
        num_classes: int,
        config: BalancedConfig,
        *,
        rngs: nnx.Rngs,
    ):
        _check_component(component)
        pixels = int(np.prod(image_shape))
        self.image_shape = tuple(image_shape)
        self.encoder = MLP((pixels, config.width, config.width, config.embed_dim), rngs=rngs)
        contrastive, autoencoding = component in _CONTRASTIVE, component in _AUTOENCODING
        e, w = config.embed_dim, config.width
        self.head = MLP((e, w, config.projection_dim), rngs=rngs) if contrastive else None
        self.classifier = nnx.Linear(e, num_classes, rngs=rngs) if autoencoding else None
        self.decoder = MLP((e, w, pixels), rngs=rngs) if autoencoding else None

    def embed(self, images: Float[Array, "b h w c"]) -> Float[Array, "b e"]:
        return self.encoder(images.reshape(images.shape[0], -1))

    def project(self, embedding: Float[Array, "b e"]) -> Float[Array, "b p"]:
        z = self.head(embedding)
        return z * jax.lax.rsqrt(jnp.maximum(jnp.sum(z * z, axis=-1, keepdims=True), 1e-24))

    def reconstruct(self, embedding: Float[Array, "b e"]) -> Float[Array, "b h w c"]:
        return jax.nn.sigmoid(self.decoder(embedding)).reshape(-1, *self.image_shape)


def component_loss(
    component: str,
    config: BalancedConfig,
    model: BalancedModel,
    images: Float[Array, "b h w c"],
    labels: Int[Array, " b"],
    key: jax.Array,
) -> jax.Array:
    """The training loss of one encoder on two fresh views of ``images`` with coarse ``labels``."""
    key_a, key_b = jax.random.split(key)
    views_of = functools.partial(
        augment,
        images=images,
        max_shift=config.max_shift,
        noise_std=config.noise_std,
        erase_size=config.erase_size,
        erase_prob=config.erase_prob,
    )
    views = jnp.concatenate([views_of(key_a), views_of(key_b)])  # [2b, h, w, c]: view a, then view b
    both = jnp.concatenate([labels, labels])
    embedding = model.embed(views)
    loss = jnp.zeros((), jnp.float32)
    if component in _CONTRASTIVE:
        z = model.project(embedding)
        if component == "supcon_cnce":
            z_a, z_b = jnp.split(z, 2)
            loss += spread_loss(z_a, z_b, labels, temperature=config.temperature, alpha=config.alpha)
        else:
            loss += supcon_loss(z, both, temperature=config.temperature, positives_in_denominator=False)
    if component in _AUTOENCODING:
        logits = model.classifier(embedding)
        targets = optax.smooth_labels(jax.nn.one_hot(both, logits.shape[-1]), config.label_smoothing)
        cross_entropy = optax.softmax_cross_entropy(logits, targets).mean()
        mse = jnp.mean((model.reconstruct(embedding) - jnp.concatenate([images, images])) ** 2)
        loss += cross_entropy + config.recon_weight * mse
    return loss


# --- training ------------------------------------------------------------------------------------------


def _check_component(component: str) -> None:
    if component not in COMPONENTS:
        raise ValueError(f"unknown component {component!r}; the encoders are {COMPONENTS}")


def check_methods(methods: Sequence[str]) -> tuple[str, ...]:
    """``methods`` as a tuple, or a ``ValueError`` naming the unknown ones."""
    if isinstance(methods, str):
        methods = (methods,)
    methods = tuple(methods)
    unknown = [m for m in methods if m not in METHOD_COMPONENTS]
    if unknown or not methods:
        raise ValueError(f"methods must be a non-empty selection of {METHODS}; got {list(methods)}")
    return methods


@functools.lru_cache(maxsize=16)
def _jitted_step(graphdef: nnx.GraphDef, component: str, config: BalancedConfig):
    # One compilation per (model graph, component, config): the seeds reuse it.
    from jaxflash.train.step import Sums, make_train_step

    tx = optax.adamw(optax.cosine_decay_schedule(config.lr, config.steps), weight_decay=config.weight_decay)

    def loss_fn(model, batch, key):
        loss = component_loss(component, config, model, batch["images"], batch["labels"], key)
        one = jnp.ones((), jnp.float32)
        return Sums(loss=loss, weight=one, correct=jnp.zeros((), jnp.float32))

    return tx, jax.jit(make_train_step(graphdef, tx, loss_fn), donate_argnums=0)


def train_component(
    component: str,
    images: np.ndarray,
    labels: np.ndarray,
    config: BalancedConfig,
    *,
    seed: int,
    num_classes: int | None = None,
) -> tuple[BalancedModel, np.ndarray]:
    """One encoder trained on ``images [n, h, w, c]`` with coarse ``labels [n]``; returns it and the loss
    of every step. The initialisation, the batches and the views are functions of ``seed``."""
    from jaxflash.train.step import init_state, split_model

    _check_component(component)
    check_int("seed", seed, minimum=0)
    images = np.asarray(images, np.float32)
    labels = np.asarray(labels, np.int32)
    if images.ndim != 4 or labels.shape != images.shape[:1] or len(labels) < 2:
        raise ValueError(
            f"need images [n >= 2, h, w, c] and labels [n]; got {images.shape=}, {labels.shape=}"
        )
    num_classes = int(labels.max()) + 1 if num_classes is None else num_classes
    model = BalancedModel(component, images.shape[1:], num_classes, config, rngs=nnx.Rngs(seed))
    graphdef, _, _ = split_model(model)
    tx, step = _jitted_step(graphdef, component, config)
    state = init_state(model, tx, jax.random.key(seed))
    batch_size = min(config.batch_size, len(images))
    per_epoch = len(images) // batch_size
    rng = np.random.default_rng([seed, _BATCH_STREAM])
    losses = []
    for s in range(config.steps):
        if s % per_epoch == 0:
            order = rng.permutation(len(images))
        rows = order[(s % per_epoch) * batch_size : (s % per_epoch + 1) * batch_size]
        state, metrics = step(state, dict(images=images[rows], labels=labels[rows]))
        losses.append(metrics["loss"])
    if int(state.bad_step) >= 0:
        raise FloatingPointError(
            f"the {component} loss became non-finite at step {int(state.bad_step)}; lower lr={config.lr}"
        )
    nnx.update(model, state.params, state.rest)
    return model, np.asarray(jnp.stack(losses))


def train_methods(
    methods: Sequence[str], images: np.ndarray, labels: np.ndarray, config: BalancedConfig, *, seed: int
) -> dict[str, tuple[BalancedModel, ...]]:
    """The encoders of each method (``thanos``: two), each component trained once and shared."""
    methods = check_methods(methods)
    trained: dict[str, BalancedModel] = {}
    for method in methods:
        for component in METHOD_COMPONENTS[method]:
            if component not in trained:
                trained[component] = train_component(component, images, labels, config, seed=seed)[0]
    return {m: tuple(trained[c] for c in METHOD_COMPONENTS[m]) for m in methods}


def embed(models: Sequence[BalancedModel], images: np.ndarray) -> np.ndarray:
    """``[n, sum of embed dims]``: the embeddings of ``models``, side by side (Thanos' concatenation)."""
    images = jnp.asarray(images, jnp.float32)
    return np.concatenate([np.asarray(m.embed(images)) for m in models], axis=1)


# --- evaluation ----------------------------------------------------------------------------------------


def linear_probe(
    train_features: np.ndarray, train_labels: np.ndarray, test_features: np.ndarray, *, c: float = 1.0
) -> np.ndarray:
    """Predicted labels of ``test_features`` from multinomial logistic regression (L2, inverse strength
    ``c``, L-BFGS) fitted on the train features, both standardised by the train mean and deviation."""
    from sklearn.linear_model import LogisticRegression

    train_features = np.asarray(train_features, np.float64)
    test_features = np.asarray(test_features, np.float64)
    if (
        train_features.ndim != 2
        or test_features.ndim != 2
        or train_features.shape[1] != test_features.shape[1]
    ):
        raise ValueError(
            f"features must be [n, d] with one d; got {train_features.shape=}, {test_features.shape=}"
        )
    mean = train_features.mean(axis=0)
    scale = np.where(train_features.std(axis=0) > 0, train_features.std(axis=0), 1.0)
    probe = LogisticRegression(C=c, max_iter=5000)
    probe.fit((train_features - mean) / scale, np.asarray(train_labels))
    return probe.predict((test_features - mean) / scale)


def group_accuracies(predictions: Any, labels: Any, attributes: Any) -> dict[str, float]:
    """``average`` (all rows), ``worst_group`` and one entry per ``"y=<label>,a=<attribute>"`` group."""
    predictions, labels, attributes = (np.asarray(a) for a in (predictions, labels, attributes))
    correct = predictions == labels
    groups = {
        f"y={y},a={a}": float(correct[(labels == y) & (attributes == a)].mean())
        for y in np.unique(labels)
        for a in np.unique(attributes)
        if ((labels == y) & (attributes == a)).any()
    }
    return dict(average=float(correct.mean()), worst_group=min(groups.values()), **groups)


def evaluate_seed(
    data: DigitsSplit, methods: Sequence[str], config: BalancedConfig, *, seed: int
) -> dict[str, dict[str, float]]:
    """Both evaluations of each method for one training seed: ``fine_accuracy`` (transfer), and
    ``average`` / ``worst_group`` (robustness, on :func:`spurious_split` of ``data``)."""
    methods = check_methods(methods)
    results: dict[str, dict[str, float]] = {}
    transfer = train_methods(methods, data.train_images, coarse_labels(data.train_labels), config, seed=seed)
    for method, models in transfer.items():
        predictions = linear_probe(
            embed(models, data.train_images), data.train_labels, embed(models, data.test_images)
        )
        results[method] = dict(fine_accuracy=float(np.mean(predictions == data.test_labels)))
    spurious = spurious_split(data, correlation=config.spurious_correlation, seed=config.split_seed)
    train_coarse, test_coarse = coarse_labels(spurious.train_labels), coarse_labels(spurious.test_labels)
    robust = train_methods(methods, spurious.train_images, train_coarse, config, seed=seed)
    for method, models in robust.items():
        predictions = linear_probe(
            embed(models, spurious.train_images), train_coarse, embed(models, spurious.test_images)
        )
        results[method].update(group_accuracies(predictions, test_coarse, spurious.test_attributes))
    return results


def pixel_baseline(data: DigitsSplit, config: BalancedConfig) -> dict[str, float]:
    """The same probes on the raw pixels (no training, so no seed)."""
    flat = lambda x: x.reshape(len(x), -1)
    fine = linear_probe(flat(data.train_images), data.train_labels, flat(data.test_images))
    spurious = spurious_split(data, correlation=config.spurious_correlation, seed=config.split_seed)
    coarse = linear_probe(
        flat(spurious.train_images), coarse_labels(spurious.train_labels), flat(spurious.test_images)
    )
    return dict(
        fine_accuracy=float(np.mean(fine == data.test_labels)),
        **group_accuracies(coarse, coarse_labels(spurious.test_labels), spurious.test_attributes),
    )


def run_balanced(
    seeds: Sequence[int],
    config: BalancedConfig = BalancedConfig(),
    *,
    methods: Sequence[str] = METHODS,
    evaluate_on: str = "test",
    log: bool = False,
) -> dict[str, Any]:
    """Every method over ``seeds``: per-seed values, their mean and std (ddof 1) under ``"methods"``,
    the pixel probe under ``"pixels"``, and the wall-clock seconds."""
    methods = check_methods(methods)
    seeds = [check_int("seed", s, minimum=0) for s in seeds]
    if not seeds:
        raise ValueError("seeds must name at least one training seed, e.g. [0, 1, 2]")
    start = time.perf_counter()
    data = load_digits_split(evaluate_on, seed=config.split_seed)
    per_seed = []
    for seed in seeds:
        per_seed.append(evaluate_seed(data, methods, config, seed=seed))
        if log:
            row = ", ".join(f"{m} {r['fine_accuracy']:.3f}" for m, r in per_seed[-1].items())
            print(f"seed {seed} ({time.perf_counter() - start:.0f} s): fine accuracy {row}", flush=True)
    summary = {}
    for method in methods:
        values: dict[str, Any] = dict(paper_cifar10=PAPER_CIFAR10[method])
        for metric in per_seed[0][method]:
            v = np.array([r[method][metric] for r in per_seed])
            values[metric] = v.tolist()
            values[f"{metric}_mean"] = float(v.mean())
            values[f"{metric}_std"] = float(v.std(ddof=1)) if len(v) > 1 else 0.0
        summary[method] = values
    return dict(
        evaluate_on=evaluate_on,
        seeds=seeds,
        config=dataclasses.asdict(config),
        coarse_groups=[list(g) for g in COARSE_GROUPS],
        train_size=len(data.train_labels),
        test_size=len(data.test_labels),
        methods=summary,
        pixels=pixel_baseline(data, config),
        seconds=time.perf_counter() - start,
    )


def markdown(results: dict[str, Any]) -> str:
    """The table: fine-label probe accuracy and worst-group / average accuracy, in %, mean ± std."""
    split = results["evaluate_on"]
    lines = [
        f"| method | fine accuracy ({split}) | worst-group | average | paper CIFAR-10 fine |",
        "|---|---|---|---|---|",
    ]

    def cell(r, k):
        return f"{100 * r[k + '_mean']:.1f} ± {100 * r[k + '_std']:.1f}"

    for method, r in results["methods"].items():
        paper = "-" if r["paper_cifar10"] is None else f"{r['paper_cifar10']:.1f}"
        lines.append(
            f"| {method} | {cell(r, 'fine_accuracy')} | {cell(r, 'worst_group')} | {cell(r, 'average')} "
            f"| {paper} |"
        )
    p = results["pixels"]
    lines.append(
        f"| pixels (no training) | {100 * p['fine_accuracy']:.1f} | {100 * p['worst_group']:.1f} "
        f"| {100 * p['average']:.1f} | - |"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m jaxflash.contrastive.balanced", description=__doc__.split("\n")[0]
    )
    defaults = BalancedConfig()
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds")
    p.add_argument("--out", required=True, help="folder for results.json and results.md")
    p.add_argument("--steps", type=int, default=defaults.steps)
    p.add_argument("--lr", type=float, default=defaults.lr)
    p.add_argument("--temperature", type=float, default=defaults.temperature)
    p.add_argument("--alpha", type=float, default=defaults.alpha)
    p.add_argument("--recon-weight", type=float, default=defaults.recon_weight)
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument(
        "--split", choices=EVALUATE_ON, default="test", help="validation: for choosing settings, test unread"
    )
    args = p.parse_args(argv)
    config = dataclasses.replace(
        defaults,
        steps=args.steps,
        lr=args.lr,
        temperature=args.temperature,
        alpha=args.alpha,
        recon_weight=args.recon_weight,
    )
    results = run_balanced(args.seeds, config, methods=args.methods, evaluate_on=args.split, log=True)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = markdown(results)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(table + "\n")
    print(table)
    print(f"{len(results['seeds'])} seeds in {results['seconds']:.0f} s; wrote {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
