r"""MeTaL matrix completion: snorkel's ``LabelModel`` (snorkel 0.10), fitted in one jitted program.

Ratner, Hancock, Dunnmon, Sala, Pandey, Re, "Training Complex Models with Multi-Task Weak Supervision",
AAAI 2019 (arXiv 1810.02840); the estimator of ``snorkel.labeling.model.LabelModel``, with its objective,
initialisation, defaults and post-processing. LFs are conditionally independent given ``Y`` (snorkel's
only supported structure), so the objective needs no inverse covariance.

Model. ``Y`` in ``0..k-1`` with prior ``p`` (the class balance, ``P = diag(p)``); LF i votes ``j`` given
``Y = y`` with probability :math:`\mu_{ik+j,\,y} = P(\lambda_i = j \mid Y = y)` (``mu`` is ``[m k, k]``;
the abstain probability is what the votes leave, so it may depend on the class).

Moments. The augmented label matrix is the one-hot of the votes, ``L_aug [n, m k]`` with
``L_aug[r, ik+j] = [L[r, i] = j]`` (an abstain is a zero row block), and
:math:`O = L_{aug}^\top L_{aug} / n`: block ``(i, l)`` holds :math:`P(\lambda_i = j, \lambda_l = j')`.
It is one pass over row blocks of ``L`` (int8), each block's one-hot multiplied by itself in cache and
accumulated in int32 (exact counts up to 2^31 rows); ``L_aug`` is never built.

Objective (snorkel's ``_loss_mu``), with ``mask`` zero on the ``k x k`` diagonal blocks (an LF with
itself) and one elsewhere:

.. math:: \lVert (O - \mu P \mu^\top) \odot \mathrm{mask} \rVert_F^2
          + \lVert \mu p - \mathrm{diag}(O) \rVert^2 + \lVert \ell_2 (\mu - \mu_{init}) \rVert_F^2

(the middle term: ``sum_y mu[ik+j, y] p_y = P(lambda_i = j)``). As in snorkel, ``l2`` is also the
optimizer's weight decay (torch's ``weight_decay``: ``l2 * mu`` added to the gradient).

Initialisation: :math:`\mu_{init}[ik+y, y] = \mathrm{clip}(P(\lambda_i = y)\, \mathrm{prec}_i / p_y, 0, 1)`
(``prec_init`` = P(Y = y | lambda_i = y), 0.7 by default; zero off the diagonal), and the starting point
is ``mu_init`` times one uniform draw in [0, 1): snorkel's ``np.random.seed(seed); np.random.random()``,
reproduced with ``np.random.RandomState(seed)`` so that a seed gives snorkel's starting point.

Training: ``n_epochs`` full-batch steps of ``optimizer`` (optax): ``"sgd"`` (momentum 0.9, torch's
heavy-ball form), ``"adam"`` or ``"adamax"`` (betas (0.9, 0.999), eps 1e-8); a constant learning rate. The
whole loop is one ``lax.scan`` compiled once per (m, k, optimizer, n_epochs); ``lr``, ``l2`` and the
other numbers are arguments of the compiled program, so changing them does not recompile.

Post-processing, as snorkel: ``mu`` is clamped to ``[mu_eps, 1 - mu_eps]`` with
``mu_eps = min(0.01, 10^-ceil(log10 n))`` unless given, then :func:`break_col_permutation_symmetry`
picks, among the column permutations that leave the objective unchanged (those permuting classes of equal
prior), the one that makes the LFs most accurate.

Inference: :math:`P(Y = y \mid \lambda) \propto p_y \prod_{i:\lambda_i \ne -1} \mu_{ik+\lambda_i,\,y}`
(abstains are ignored, as in snorkel's ``predict_proba``), normalised in log space, so a row with many
votes is not 0/0 where snorkel's ``exp`` would underflow. ``predict`` breaks ties with ``tie_policy``
(snorkel's ``tie_break_policy='abstain'`` by default, the same 1e-5 tolerance).

Deviations from snorkel 0.10: ``seed`` defaults to 0 (snorkel draws its default once per process); the
training settings are constructor arguments (snorkel passes them to ``fit``); no learning-rate schedulers
or warm-up (``lr_scheduler='constant'`` only); ``l2`` is a scalar (a per-source array cannot reach
snorkel's optimizer either).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from functools import partial
from typing import Any, Literal, get_args

import jax
import jax.numpy as jnp
import numpy as np
import optax
from scipy.optimize import linear_sum_assignment

from jaxflash.utils import check_int
from jaxflash.ws.base import LabelModel, TiePolicy, check_tie_policy
from jaxflash.ws.label_matrix import (
    check_cardinality,
    check_class_balance,
    check_label_matrix,
    check_labels,
    pad_rows_int8,
    row_blocks,
)

Optimizer = Literal["sgd", "adam", "adamax"]
OPTIMIZERS: tuple[str, ...] = get_args(Optimizer)
_HIGHEST = jax.lax.Precision.HIGHEST


# --- the passes over the data (jitted) -------------------------------------------------------------


def _one_hot_votes(block: jax.Array, cardinality: int) -> jax.Array:
    """``[C, m]`` int8 votes -> ``[C, m k]`` float32 one-hot, column ``i k + j`` for LF i voting j."""
    classes = jnp.arange(cardinality, dtype=block.dtype)
    return (block[:, :, None] == classes).astype(jnp.float32).reshape(block.shape[0], -1)


@partial(jax.jit, static_argnames="cardinality")
def _overlap_counts(L: jax.Array, cardinality: int) -> jax.Array:
    """``n O = L_aug^T L_aug`` ``[m k, m k]`` int32, over row blocks; padding rows (all -1) add nothing."""
    d = L.shape[1] * cardinality

    def step(counts, block):
        x = _one_hot_votes(block, cardinality)
        # A block's counts are at most its rows (<= 8192): exact in float32, then summed in int32.
        return counts + jnp.dot(x.T, x, precision=_HIGHEST).astype(jnp.int32), None

    counts, _ = jax.lax.scan(step, jnp.zeros((d, d), jnp.int32), row_blocks(L))
    return counts


@partial(jax.jit, static_argnames="cardinality")
def _log_scores(L: jax.Array, log_mu: jax.Array, log_p: jax.Array, cardinality: int) -> jax.Array:
    """Unnormalised log posterior ``[rows, k]``: ``L_aug log(mu) + log(p)``, row block by row block."""

    def block(b):
        return jnp.dot(_one_hot_votes(b, cardinality), log_mu, precision=_HIGHEST) + log_p

    return jax.lax.map(block, row_blocks(L)).reshape(L.shape[0], cardinality)


# --- the objective and its optimisation (jitted) ---------------------------------------------------


def matrix_completion_loss(
    mu: jax.Array, overlaps: jax.Array, mask: jax.Array, p: jax.Array, mu_init: jax.Array, l2: jax.Array
) -> jax.Array:
    """snorkel's ``_loss_mu`` (module docstring): masked completion + marginals + l2 toward ``mu_init``.

    Shapes: ``mu``, ``mu_init`` ``[m k, k]``; ``overlaps`` (O), ``mask`` ``[m k, m k]``; ``p`` ``[k]``.
    """
    mu_p = mu * p  # mu @ diag(p)
    completion = jnp.sum(((overlaps - jnp.dot(mu_p, mu.T, precision=_HIGHEST)) * mask) ** 2)
    marginals = jnp.sum((mu_p.sum(axis=1) - jnp.diagonal(overlaps)) ** 2)
    return completion + marginals + l2**2 * jnp.sum((mu - mu_init) ** 2)


def _optimizer(name: str, lr: jax.Array, l2: jax.Array, momentum: jax.Array, betas: jax.Array):
    """torch's optimizers as snorkel configures them: weight decay ``l2`` added to the gradient first."""
    if name == "sgd":
        base = optax.sgd(lr, momentum=momentum)
    elif name == "adam":
        base = optax.adam(lr, b1=betas[0], b2=betas[1], eps=1e-8)
    else:
        base = optax.adamax(lr, b1=betas[0], b2=betas[1], eps=1e-8)
    return optax.chain(optax.add_decayed_weights(l2), base)


@partial(jax.jit, static_argnames=("optimizer", "n_epochs"))
def _train(
    mu0: jax.Array,
    overlaps: jax.Array,
    mask: jax.Array,
    p: jax.Array,
    mu_init: jax.Array,
    hyper: jax.Array,
    *,
    optimizer: str,
    n_epochs: int,
) -> tuple[jax.Array, jax.Array]:
    """``n_epochs`` full-batch steps from ``mu0``; returns the final ``mu`` and each step's loss (before the
    step, as snorkel logs it). ``hyper`` = (lr, l2, momentum, beta1, beta2)."""
    lr, l2, momentum = hyper[0], hyper[1], hyper[2]
    tx = _optimizer(optimizer, lr, l2, momentum, hyper[3:5])
    loss_and_grad = jax.value_and_grad(matrix_completion_loss)

    def step(carry, _):
        mu, state = carry
        loss, grad = loss_and_grad(mu, overlaps, mask, p, mu_init, l2)
        updates, state = tx.update(grad, state, mu)
        return (optax.apply_updates(mu, updates), state), loss

    (mu, _), losses = jax.lax.scan(step, (mu0, tx.init(mu0)), None, length=n_epochs)
    return mu, losses


# --- post-processing (NumPy: [m k, k] only) ---------------------------------------------------------


def break_col_permutation_symmetry(mu: Any, class_balance: Any) -> np.ndarray:
    r"""``mu`` ``[m k, k]`` with its columns permuted to trust the LFs most (snorkel's step of that name).

    A permutation ``Z`` of the classes that commutes with ``P = diag(p)`` (it only exchanges classes of
    equal prior, compared at 3 decimals as snorkel does) leaves the objective unchanged. Within each group
    of equal-prior classes, the assignment maximising :math:`\sum_i \sum_y P(\lambda_i = y, Y = y)` is
    chosen (Hungarian algorithm).
    """
    mu = np.asarray(mu, np.float64)
    p = np.asarray(class_balance, np.float64)
    k = p.shape[0]
    if mu.ndim != 2 or mu.shape[1] != k or mu.shape[0] % k:
        raise ValueError(f"mu must be [m * {k}, {k}] for {k} classes, got {mu.shape}")
    # joint[j, y] = sum_i P(lambda_i = j, Y = y)
    joint = mu.reshape(-1, k, k).sum(axis=0) * p
    groups: defaultdict[float, list[int]] = defaultdict(list)
    for y, prior in enumerate(p):
        groups[float(np.around(prior, 3))].append(y)
    perm = np.arange(k)  # new column c is old column perm[c]
    for group in groups.values():
        if len(group) > 1:
            g = np.array(group)
            # cost[old, new]: -P(lambda = new, Y = old), so the new class c takes the old column most
            # often voted c.
            old, new = linear_sum_assignment(-joint[np.ix_(g, g)].T)
            perm[g[new]] = g[old]
    return mu[:, perm]


# --- the model ----------------------------------------------------------------------------------


class MatrixCompletionLabelModel(LabelModel):
    """snorkel's ``LabelModel`` (MeTaL, conditionally independent LFs); see the module docstring.

    Args (snorkel's ``TrainConfig`` defaults):
      cardinality: number of classes k (2..127).
      n_epochs: full-batch optimisation steps (100).
      lr: learning rate, constant (0.01).
      l2: strength of the l2 prior toward ``mu_init``, also the optimizer's weight decay (0.0).
      optimizer: ``"sgd"`` (with ``momentum``), ``"adam"`` or ``"adamax"`` (with ``betas``).
      momentum: SGD momentum (0.9, snorkel's ``sgd_config``).
      betas: Adam / Adamax moment decays ((0.9, 0.999)).
      prec_init: P(Y = y | lambda_i = y) for the initialisation: one float or one per LF (0.7).
      mu_eps: clamp of the fitted ``mu`` to ``[mu_eps, 1 - mu_eps]`` (None: min(0.01, 10^-ceil(log10 n))).
      seed: fixes the random scale of the starting point, as snorkel's ``seed`` (0; snorkel's default is
        drawn once per process).
      tie_policy: how ``predict`` resolves ties (``"abstain"``, snorkel's default).

    Fitted attributes: ``mu_`` ``[m k, k]``, ``class_balance_`` ``[k]``, ``coverage_`` ``[m]``,
    ``loss_history_`` ``[n_epochs]`` (the objective before each step).
    """

    def __init__(
        self,
        cardinality: int = 2,
        *,
        n_epochs: int = 100,
        lr: float = 0.01,
        l2: float = 0.0,
        optimizer: Optimizer = "sgd",
        momentum: float = 0.9,
        betas: Sequence[float] = (0.9, 0.999),
        prec_init: float | Sequence[float] = 0.7,
        mu_eps: float | None = None,
        seed: int = 0,
        tie_policy: TiePolicy = "abstain",
    ):
        check_cardinality(cardinality)
        check_int("n_epochs", n_epochs, minimum=0)
        check_int("seed", seed, minimum=0)
        if optimizer not in OPTIMIZERS:
            raise ValueError(
                f"optimizer must be one of {', '.join(map(repr, OPTIMIZERS))}; got {optimizer!r}"
            )
        for name, value in (("lr", lr), ("l2", l2), ("momentum", momentum)):
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        betas = tuple(float(b) for b in betas)
        if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {betas}")
        if mu_eps is not None and not 0 <= mu_eps < 0.5:
            raise ValueError(f"mu_eps must be in [0, 0.5) or None, got {mu_eps!r}")
        prec = np.asarray(prec_init, np.float64)
        if prec.ndim > 1 or not np.all(np.isfinite(prec)) or np.any(prec < 0):
            raise ValueError(f"prec_init must be a number >= 0 or one per LF, got {prec_init!r}")
        self.cardinality = cardinality
        self.n_epochs = int(n_epochs)
        self.lr = float(lr)
        self.l2 = float(l2)
        self.optimizer = optimizer
        self.momentum = float(momentum)
        self.betas = betas
        self.prec_init = float(prec) if prec.ndim == 0 else prec.tolist()
        self.mu_eps = None if mu_eps is None else float(mu_eps)
        self.seed = int(seed)
        self.tie_policy = check_tie_policy(tie_policy)
        self.fitted_ = False

    # --- fit ------------------------------------------------------------------------------------------
    def _class_balance(self, class_balance: Any, Y_dev: Any) -> np.ndarray:
        """snorkel's order of precedence: ``class_balance``, counts of ``Y_dev``, uniform; no zero class."""
        k = self.cardinality
        if class_balance is not None:
            cb = check_class_balance(class_balance, k)
        elif Y_dev is not None:
            Y_dev = check_labels(Y_dev, cardinality=k, name="Y_dev")
            cb = check_class_balance(np.bincount(Y_dev, minlength=k), k, name="class counts of Y_dev")
        else:
            cb = np.full(k, 1.0 / k)
        if np.any(cb <= 0):
            raise ValueError(
                f"class balance {cb.tolist()} gives class(es) {np.flatnonzero(cb <= 0).tolist()} a zero "
                "prior; every class needs a positive prior (pass class_balance explicitly)"
            )
        return cb

    def _mu_init(self, overlaps: np.ndarray, cb: np.ndarray, m: int) -> np.ndarray:
        """``mu_init[i k + y, y] = clip(P(lambda_i = y) prec_i / p_y, 0, 1)``, zero elsewhere."""
        k = self.cardinality
        prec = np.asarray(self.prec_init, np.float64)
        prec = np.full(m, prec) if prec.ndim == 0 else prec
        if prec.shape != (m,):
            raise ValueError(f"prec_init has {prec.shape[0]} entries but L has {m} labelling functions")
        p_vote = np.diagonal(overlaps).reshape(m, k)  # P(lambda_i = y)
        mu_init = np.zeros((m, k, k))
        mu_init[:, np.arange(k), np.arange(k)] = np.clip(p_vote * prec[:, None] / cb, 0.0, 1.0)
        return mu_init.reshape(m * k, k)

    def fit(
        self, L: Any, Y_dev: Any | None = None, class_balance: Any | None = None
    ) -> MatrixCompletionLabelModel:
        """Estimates ``mu`` from ``L`` ``[n, m]`` (-1 abstain, classes 0..k-1; at least 3 LFs).

        Class balance, in snorkel's order of precedence: ``class_balance`` (k entries), the class counts
        of ``Y_dev``, uniform. Raises ``ValueError`` when the objective becomes NaN (lower ``lr``).
        """
        L = check_label_matrix(L, cardinality=self.cardinality, min_lfs=3)
        n, m = L.shape
        k = self.cardinality
        cb = self._class_balance(class_balance, Y_dev)
        overlaps = np.asarray(_overlap_counts(pad_rows_int8(L), k), np.float64) / n
        mu_init = self._mu_init(overlaps, cb, m)
        scale = np.random.RandomState(self.seed).random_sample()
        mask = 1.0 - np.kron(np.eye(m), np.ones((k, k)))
        hyper = np.array([self.lr, self.l2, self.momentum, *self.betas], np.float32)
        mu, losses = _train(
            jnp.asarray(mu_init * scale, jnp.float32),
            jnp.asarray(overlaps, jnp.float32),
            jnp.asarray(mask, jnp.float32),
            jnp.asarray(cb, jnp.float32),
            jnp.asarray(mu_init, jnp.float32),
            jnp.asarray(hyper),
            optimizer=self.optimizer,
            n_epochs=self.n_epochs,
        )
        losses = np.asarray(losses, np.float64)
        mu = np.asarray(mu, np.float64)
        if not (np.all(np.isfinite(losses)) and np.all(np.isfinite(mu))):
            epoch = int(np.argmin(np.isfinite(losses))) if not np.all(np.isfinite(losses)) else self.n_epochs
            raise ValueError(f"the objective became NaN or infinite at epoch {epoch}; lower lr={self.lr}")
        mu_eps = min(0.01, 10.0 ** -math.ceil(math.log10(n))) if self.mu_eps is None else self.mu_eps
        mu = np.clip(mu, mu_eps, 1.0 - mu_eps)
        self.mu_ = break_col_permutation_symmetry(mu, cb)
        self.class_balance_ = cb
        self.coverage_ = np.diagonal(overlaps).reshape(m, k).sum(axis=1)
        self.loss_history_ = losses
        self.m_ = m
        self.fitted_ = True
        return self

    # --- fitted quantities ----------------------------------------------------------------------------
    def get_conditional_probs(self) -> np.ndarray:
        """snorkel's ``[m, k + 1, k]`` table: ``[i, j + 1, y] = P(lambda_i = j | Y = y)``, row 0 abstains."""
        self._check_fitted()
        k = self.cardinality
        votes = self.mu_.reshape(self.m_, k, k)
        return np.concatenate([1.0 - votes.sum(axis=1, keepdims=True), votes], axis=1)

    def estimated_accuracies(self) -> np.ndarray:
        """Per-LF **joint** accuracy :math:`P(\\lambda_i = Y) = \\sum_y \\mu_{ik+y,y}\\, p_y` (an abstain
        counts as not equal), the quantity :meth:`FlyingSquid.estimated_accuracies` reports."""
        self._check_fitted()
        k = self.cardinality
        votes = self.mu_.reshape(self.m_, k, k)
        return (votes[:, np.arange(k), np.arange(k)] * self.class_balance_).sum(axis=1)

    def get_weights(self) -> np.ndarray:
        """snorkel's ``get_weights``: accuracy when voting, joint accuracy / coverage, clipped to [1e-6, 1]
        (an LF that never votes gets 1e-6)."""
        joint = self.estimated_accuracies()
        cov = self.coverage_
        return np.clip(np.where(cov > 0, joint / np.where(cov > 0, cov, 1.0), 0.0), 1e-6, 1.0)

    # --- inference ------------------------------------------------------------------------------------
    def predict_proba(self, L: Any) -> np.ndarray:
        """``[n, k]`` class probabilities :math:`P(Y \\mid \\lambda)` (abstains ignored; module docstring)."""
        self._check_fitted()
        L = check_label_matrix(L, cardinality=self.cardinality)
        if L.shape[1] != self.m_:
            raise ValueError(f"L has {L.shape[1]} columns but the model was fitted on {self.m_}")
        s = _log_scores(
            pad_rows_int8(L),
            jnp.asarray(np.log(self.mu_), jnp.float32),
            jnp.asarray(np.log(self.class_balance_), jnp.float32),
            self.cardinality,
        )
        s = np.asarray(s, np.float64)[: L.shape[0]]
        e = np.exp(s - s.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    # --- persistence ----------------------------------------------------------------------------------
    def _config(self) -> dict[str, Any]:
        return dict(
            cardinality=self.cardinality,
            n_epochs=self.n_epochs,
            lr=self.lr,
            l2=self.l2,
            optimizer=self.optimizer,
            momentum=self.momentum,
            betas=list(self.betas),
            prec_init=self.prec_init,
            mu_eps=self.mu_eps,
            seed=self.seed,
            tie_policy=self.tie_policy,
        )

    def _params(self) -> dict[str, np.ndarray]:
        return {
            "mu": self.mu_,
            "class_balance": self.class_balance_,
            "coverage": self.coverage_,
            "loss_history": self.loss_history_,
        }

    def _set_params(self, params: dict[str, np.ndarray]) -> None:
        self.mu_ = params["mu"]
        self.class_balance_ = params["class_balance"]
        self.coverage_ = params["coverage"]
        self.loss_history_ = params["loss_history"]
        self.m_ = self.mu_.shape[0] // self.cardinality
