"""The end model of weak supervision: a classifier trained on a label model's probabilistic labels.

Snorkel's pipeline ends here: the label model turns the label matrix into ``P(Y | lambda)`` for every
training point, and a discriminative model over the points' *features* learns from those soft labels
with the noise-aware cross-entropy (:func:`jaxflash.losses.noise_aware_cross_entropy`), so it can
generalise beyond the labelling functions' coverage. :class:`NoiseAwareClassifier` is that model, an
MLP (logistic regression with ``hidden=()``), trained through the training system's own step
(:func:`jaxflash.train.make_train_step`: jitted once, donated state, AdamW, clipping), with the
package's ``fit / predict_proba / predict / score`` API.

Rows with ``weights`` 0 (e.g. points every labelling function abstained on: snorkel filters them) do
not count. Minibatches are drawn without replacement per epoch, the order a pure function of the seed
and the step.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxflash.losses import noise_aware_cross_entropy
from jaxflash.utils import check_int
from jaxflash.ws.base import classification_metrics


class MLPClassifier(nnx.Module):
    """``features [n, d] -> logits [n, k]``: Linear+ReLU layers of widths ``hidden``, then a Linear."""

    def __init__(self, d_in: int, num_classes: int, hidden: tuple[int, ...] = (), *, rngs: nnx.Rngs):
        widths = (d_in, *hidden)
        self.layers = nnx.List(
            [nnx.Linear(a, b, rngs=rngs) for a, b in zip(widths[:-1], widths[1:], strict=True)]
        )
        self.out = nnx.Linear(widths[-1], num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        for layer in self.layers:
            x = jax.nn.relu(layer(x))
        return self.out(x)


def noise_aware_loss(model: nnx.Module, batch: dict[str, jax.Array], key: Any, *, train: bool = True):
    """The train step's loss (``jaxflash.train.Sums``): the weighted sum of the rows' noise-aware
    cross-entropies, the rows' weight, and the weight of rows whose argmax matches the soft label's."""
    from jaxflash.train import Sums

    del key, train  # no dropout
    logits = model(batch["inputs"]).astype(jnp.float32)
    weights = batch["weights"]
    total = weights.sum()
    # noise_aware_cross_entropy is the weighted mean; the step wants the sum (it divides by the weight).
    loss = noise_aware_cross_entropy(logits, batch["probs"], jnp.where(total > 0, weights, 1.0)) * total
    agree = (jnp.argmax(logits, -1) == jnp.argmax(batch["probs"], -1)).astype(jnp.float32)
    return Sums(loss=loss, weight=total, correct=(agree * weights).sum())


class NoiseAwareClassifier:
    """An end model fitted on probabilistic labels (module docstring).

    Args:
      hidden: widths of the hidden layers (``()`` = logistic regression).
      steps: optimizer steps; batch_size: rows per step; lr, weight_decay: AdamW's; clip_norm: gradient
      clipping (None = off); seed: initialisation and minibatch order.
    """

    def __init__(
        self,
        hidden: tuple[int, ...] = (64,),
        *,
        steps: int = 500,
        batch_size: int = 128,
        lr: float = 1e-2,
        weight_decay: float = 1e-4,
        clip_norm: float | None = 1.0,
        seed: int = 0,
    ):
        self.hidden = tuple(check_int("hidden width", h) for h in hidden)
        self.steps = check_int("steps", steps)
        self.batch_size = check_int("batch_size", batch_size)
        if not lr > 0:
            raise ValueError(f"lr must be > 0; got {lr!r}")
        self.lr, self.weight_decay, self.clip_norm = lr, weight_decay, clip_norm
        self.seed = check_int("seed", seed, minimum=0)
        self.model_: MLPClassifier | None = None
        self.loss_history_: np.ndarray | None = None

    def _check_features(self, X: Any) -> np.ndarray:
        X = np.asarray(X, np.float32)
        if X.ndim != 2 or not np.isfinite(X).all():
            raise ValueError(f"X must be finite features [n, d]; got shape {X.shape}")
        return X

    def fit(self, X: Any, probs: Any, weights: Any | None = None) -> NoiseAwareClassifier:
        """Train on features ``X [n, d]`` and label-model probabilities ``probs [n, k]`` (rows summing to
        one); optional row ``weights [n]`` (0 drops a row)."""
        from jaxflash.train.step import init_state, make_train_step, split_model

        X = self._check_features(X)
        probs = np.asarray(probs, np.float32)
        if probs.ndim != 2 or probs.shape[0] != X.shape[0]:
            raise ValueError(f"probs must be [n, k] with n = {X.shape[0]} rows of X; got {probs.shape}")
        if not (np.all(probs >= 0) and np.allclose(probs.sum(1), 1.0, atol=1e-4)):
            raise ValueError("probs rows must be distributions (entries >= 0 summing to 1): predict_proba's")
        w = np.ones(len(X), np.float32) if weights is None else np.asarray(weights, np.float32)
        if w.shape != (len(X),) or not (np.all(w >= 0) and w.sum() > 0):
            raise ValueError(f"weights must be [n] = [{len(X)}], >= 0 with a positive sum")
        n, k = probs.shape
        batch_size = min(self.batch_size, n)
        model = MLPClassifier(X.shape[1], k, self.hidden, rngs=nnx.Rngs(self.seed))
        adamw = optax.adamw(self.lr, weight_decay=self.weight_decay)
        if self.clip_norm is None:
            tx = adamw
        else:
            tx = optax.chain(optax.clip_by_global_norm(self.clip_norm), adamw)
        graphdef = split_model(model)[0]
        state = init_state(model, tx, jax.random.key(self.seed))
        step = jax.jit(make_train_step(graphdef, tx, noise_aware_loss), donate_argnums=0)
        data = {"inputs": jnp.asarray(X), "probs": jnp.asarray(probs), "weights": jnp.asarray(w)}
        losses = []
        per_epoch = n // batch_size
        order_epoch, order = -1, None
        for s in range(self.steps):
            epoch, position = divmod(s, per_epoch)
            if epoch != order_epoch:  # one permutation per epoch, not per step
                order_epoch, order = epoch, np.random.default_rng([self.seed, epoch]).permutation(n)
            rows = jnp.asarray(order[position * batch_size : (position + 1) * batch_size])
            state, metrics = step(state, {name: values[rows] for name, values in data.items()})
            losses.append(metrics["loss"])
        self.loss_history_ = np.asarray(jax.device_get(losses))
        if not np.isfinite(self.loss_history_).all():
            raise ValueError("the end model's loss became non-finite; lower lr or scale the features")
        self.model_ = nnx.merge(graphdef, state.params, state.rest)
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        if self.model_ is None:
            raise RuntimeError("call fit() before predict_proba()")
        return np.asarray(jax.nn.softmax(self.model_(jnp.asarray(self._check_features(X))), axis=-1))

    def predict(self, X: Any) -> np.ndarray:
        """The most probable class (a classifier does not abstain)."""
        return np.argmax(self.predict_proba(X), axis=-1)

    def score(self, X: Any, Y: Any, metrics: tuple[str, ...] = ("accuracy",)) -> dict[str, float]:
        probs = self.predict_proba(X)
        return classification_metrics(np.asarray(Y), probs.argmax(-1), metrics, probs.shape[1], probs=probs)
