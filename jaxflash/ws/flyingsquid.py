r"""FlyingSquid: closed-form label model by the triplet method.

Fu, Chen, Sala, Hooper, Fatahalian, Re, "Fast and Three-rious: Speeding Up Weak Supervision with
Triplet Methods", ICML 2020 (arXiv 2002.11955).

Model. A latent task ``Y`` in {-1,+1} and LFs lambda_i in {-1, 0 (abstain), +1}, conditionally independent
given ``Y`` unless an LF-LF edge is declared. In the binary Ising model, for LFs ``i, j`` that ``Y``
separates, :math:`E[\lambda_i \lambda_j] = E[\lambda_i Y] E[\lambda_j Y]` (``Y^2 = 1``). So for any triplet
``i, j, k`` separated by ``Y`` (:mod:`jaxflash.ws.triplets`),

.. math::  |a_i| = |E[\lambda_i Y]| = \sqrt{|M_{ij} M_{ik} / M_{jk}|},\qquad M = L^\top L / n

with abstains counted as 0 in ``M`` (uncentred, over all rows). ``solve_method``: ``"triplet"`` uses one
triplet per LF (a seeded greedy partition of the LFs), ``"triplet_mean"`` / ``"triplet_median"`` aggregate
over every valid pair ``(j, k)``. Signs follow FlyingSquid's ``all_positive`` recovery: every LF is assumed
better than random (``a_i >= 0``).

Degenerate matrices. A triplet with a zero moment (two of its LFs never vote on the same rows) carries no
information about :math:`a_i`; it is left out of the mean/median (``drop_zero_triplets=True``, as in
FlyingSquid's GitHub code; the PyPI release counted it as 0, which pulls sparse LFs toward accuracy 0).
What the informative triplets cannot estimate gets a fallback, each announced by a ``UserWarning`` that
names the LF columns:

* an LF that votes but has no informative triplet (it never co-votes with two LFs that co-vote with each
  other), or whose estimate is 0 (a median over mostly zero triplets with ``drop_zero_triplets=False``),
  gets the mean conditional accuracy :math:`\bar\alpha` of the estimated LFs,
  :math:`\alpha_j = a_j / P(\lambda_j \ne 0)`, at its own coverage:
  :math:`a_i = P(\lambda_i \ne 0)\,\bar\alpha`;
* if no LF can be estimated (no three LFs co-vote pairwise), the model falls back to majority vote:
  ``predict_proba`` is :class:`~jaxflash.ws.MajorityVote`'s (per frame for ``v > 1``), ties follow
  ``tie_policy``, and ``estimated_accuracies()`` reports every LF at :math:`P(\lambda_i = Y \mid
  \lambda_i \ne 0) = 0.7`;
* an LF that never votes in ``L`` (an error unless ``fit(..., allow_silent_lfs=True)``) has
  :math:`a_i = 0` exactly and no effect on the posterior.

So every LF that votes in ``L`` has a nonzero weight in the posterior, and a row with votes is tied only
when its weighted votes and the prior cancel exactly: with a uniform prior, a row with a single vote
predicts that vote (snorkel's LabelModel does not abstain there either).

Clique marginals. With abstains, :math:`P(\lambda_i Y = 1) = \tfrac12(1 + a_i - P(\lambda_i = 0))`, so
``estimated_accuracies()`` is the **joint** :math:`P(\lambda_i = Y)` (an abstain counts as "not equal").
The six entries of :math:`\mu_i(\lambda, y) = P(\lambda_i = \lambda, Y = y)` solve FlyingSquid's linear
system ``B e = r`` whose rows are: total mass 1, :math:`P(\lambda_i = +1)`, :math:`P(\lambda_i = 0)`,
:math:`P(Y=1)`, :math:`P(\lambda_i Y = 1)`, and :math:`P(\lambda_i = 0, Y = 1) = P(\lambda_i=0) P(Y=1)`
(abstaining is independent of ``Y``). Its closed form is

.. math::  \mu(0, \pm) = P_0 P(Y=\pm),\quad \mu(+,+) = \tfrac12[P(Y{=}1)(1-P_0) + P_+ + \rho - (1-P_0)],
           \quad \mu(-,+) = P(Y{=}1)(1-P_0) - \mu(+,+),\quad \mu(+,-) = P_+ - \mu(+,+),\quad
           \mu(-,-) = \rho - \mu(+,+)

with :math:`\rho = P(\lambda_i Y = 1)`. Negative entries (sampling noise) are flipped to their absolute
value and the clique renormalised (``flip_negative=True``, FlyingSquid's default) or clamped to 1e-8.

Known LF-LF dependencies (``lambda_edges``, each LF in at most one edge) remove from the triplets every
pair of dependent LFs, and the pair's clique :math:`P(\lambda_i, \lambda_j, Y)` is the maximum-entropy
table matching the observed :math:`P(\lambda_i, \lambda_j)` and the two estimated :math:`\mu_i, \mu_j`
(iterative proportional fitting): in the pairwise Ising model the marginal of such a clique has no
three-way interaction, so that table is the model's marginal.

Inference. Junction-tree factorisation :math:`P(Y | \lambda) \propto \prod_c \mu_c(\lambda_c, Y) /
P(Y)^{e}`. ``posterior="flyingsquid"`` reproduces the original package, which raises the separator
marginal to ``(#junction-tree edges - 1) = #cliques - 2``: the class prior then enters **squared**,
:math:`P(Y)^2 \prod_c P(\lambda_c|Y)`; this is what gives the published YouTube numbers (accuracy 0.836,
F1 0.816 with class balance [0.4, 0.6] and ``triplet_median``). ``posterior="bayes"`` uses the exact
:math:`P(Y) \prod_c P(\lambda_c | Y)`. An all-abstain row gets the prior (``bayes``) or the normalised
squared prior (``flyingsquid``). Zero clique entries are floored at 1e-12 before the log so no row is NaN.

Assumptions snorkel's LabelModel (MeTaL) does not make; both assume LFs conditionally independent given
``Y`` (FlyingSquid can relax it for declared ``lambda_edges``) and need at least 3 LFs:

* **abstaining is independent of the class**: :math:`P(\lambda_i = 0 \mid Y) = P(\lambda_i = 0)`. snorkel
  models :math:`P(\lambda_i = j \mid Y = y)` for the votes only, so an LF's abstain rate may depend on the
  class; one-sided LFs (votes for one class only) break FlyingSquid's assumption, and then
  ``estimated_accuracies() / coverage`` can exceed 1;
* **binary, symmetric accuracies**: the identity :math:`E[\lambda_i\lambda_j] = a_i a_j` holds when
  :math:`E[\lambda_i \mid Y] = a_i Y`, i.e. an LF is as accurate on class 0 as on class 1; snorkel fits a
  class-by-class table per LF. ``k > 2`` classes are one-vs-rest binary models (below), not one joint model;
* **every LF better than random** (all-positive signs), where snorkel breaks the sign symmetry with its
  ``prec_init`` and a class-permutation step;
* **the triplet method's requirements**: each LF needs two partners that co-vote with it and with each
  other (an informative triplet), else the fallback above; a declared dependent pair is never in one
  triplet, so ``lambda_edges`` must leave every LF a triplet of independent LFs;
* the default posterior counts the class prior twice (parity with the original package, above), where
  snorkel counts it once (``posterior="bayes"``).

Multi-class (``cardinality = k > 2``): one-vs-rest as in paper appendix C.2: for class c, a vote for c is
+1, a vote for another class -1, an abstain 0; each binary model gets class balance
:math:`[1 - p_c, p_c]`. All k models are fitted at once (``vmap``). The k posteriors
:math:`P_c(Y=c | \lambda)` are normalised to sum to one (WRENCH instead takes a softmax of the
probabilities, ``multiclass_normalization="softmax"``). The joint accuracy is
:math:`\sum_c P(\lambda_i = c, Y = c)`.

Cost: one jitted pass over the data, O(n m^2) (the Gram matrix ``M``), then an O(m^3) closed form on
``[m, m, m]`` triplet tensors in NumPy float64 (memory ~ 9 m^3 bytes: fine to m of a few hundred).

Temporal model (``v > 1``): ``L`` has ``v * m_frame`` columns, frame ``t`` in columns
``t*m_frame .. (t+1)*m_frame - 1`` (FlyingSquid's reshape of v consecutive frames into one row); LF columns
of frame t connect to ``Y_t`` and the ``Y_t`` form a chain with prior ``class_balance`` over the ``2^v``
label vectors in lexicographic order (:func:`~jaxflash.ws.label_vectors`). Triplets are taken within a
frame (each frame needs >= 3 LFs). The posterior over the ``2^v`` vectors is the exact
:math:`P(\mathbf{Y}) \prod_i \mu_i(\lambda_i, Y_{t(i)}) / P(Y_{t(i)})`; ``predict`` gives the frames of the
most likely vector (a tie between vectors follows ``tie_policy``, ``-1`` on every frame for ``"abstain"``)
and :meth:`FlyingSquid.predict_proba_marginalized` gives per-frame marginals.
"""

from __future__ import annotations

import warnings
from functools import partial
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from jaxflash.ws.base import LabelModel, TiePolicy
from jaxflash.ws.label_matrix import (
    ABSTAIN,
    check_cardinality,
    check_class_balance,
    check_label_matrix,
    check_labels,
    label_vectors,
    pad_rows_int8,
    row_blocks,
)
from jaxflash.ws.majority import MajorityVote
from jaxflash.ws.triplets import (
    SOLVE_METHODS,
    SolveMethod,
    aggregate_triplets,
    single_triplets,
    triplet_mask,
    triplet_values,
)

_LOG_FLOOR = 1e-12
_IPF_ITERS = 50
# P(vote correct | vote) reported for every LF when no triplet is informative (the majority-vote fallback).
_FALLBACK_PRECISION = 0.7


# --- estimator: the closed form on the moments (NumPy float64) --------------------------------------


# The closed form works on [m, m] moments only, so it is vectorized NumPy rather than jitted: for m up to a
# few hundred it runs in milliseconds, while compiling it would cost more than the whole fit.


def _fill_inestimable(a: np.ndarray, p_vote: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, bool]:
    """``a`` [c, m] with the fallback of the module docstring where an LF votes but ``a_i = 0``.

    Returns ``(a, fallback, majority_vote)``: ``fallback`` [c, m] is True where ``a`` is the fallback's,
    ``majority_vote`` whether no LF at all could be estimated.
    """
    voting = p_vote > 0.5 / n
    fallback = voting & (a <= 0)
    estimated = voting & ~fallback
    if not fallback.any():
        return a, fallback, False
    if not estimated.any():
        warnings.warn(
            "FlyingSquid: no three LFs co-vote pairwise, so no triplet gives an accuracy estimate; the "
            "model falls back to majority vote",
            UserWarning,
            stacklevel=3,
        )
        return np.where(fallback, p_vote * (2 * _FALLBACK_PRECISION - 1), a), fallback, True
    alpha = np.clip(a / np.where(voting, p_vote, 1.0), 0.0, 1.0)  # E[lambda_i Y | lambda_i votes]
    counts = estimated.sum(axis=-1)
    per_class = np.where(estimated, alpha, 0.0).sum(axis=-1) / np.maximum(counts, 1)
    per_class = np.where(counts > 0, per_class, alpha[estimated].mean())  # [c]
    for k in np.flatnonzero(fallback.any(axis=-1)):
        where = f" (one-vs-rest model of class {k})" if a.shape[0] > 1 else ""
        warnings.warn(
            f"FlyingSquid: LF column(s) {np.flatnonzero(fallback[k]).tolist()}{where} have no informative "
            "triplet (two other LFs that co-vote with them and with each other), so their accuracy cannot "
            "be estimated; they get the mean accuracy of the estimated LFs, "
            f"P(vote correct | vote) = {(1 + per_class[k]) / 2:.3f}",
            UserWarning,
            stacklevel=3,
        )
    return np.where(fallback, p_vote * per_class[:, None], a), fallback, False


def _clique_marginals(
    a: np.ndarray, p_abstain: np.ndarray, p_pos: np.ndarray, py: np.ndarray, flip_negative: bool
) -> np.ndarray:
    """mu[..., i, l, y]: l = 0 (vote -1), 1 (vote +1), 2 (abstain); y = 0 (Y=-1), 1 (Y=+1). See module doc."""
    rho = 0.5 * (1.0 + a - p_abstain)
    voted = 1.0 - p_abstain
    pp = 0.5 * (py * voted + p_pos + rho - voted)  # mu(+1, +1)
    mp = py * voted - pp  # mu(-1, +1)
    pm = p_pos - pp  # mu(+1, -1)
    mm = rho - pp  # mu(-1, -1)
    zp = py * p_abstain
    zm = (1.0 - py) * p_abstain
    mu = np.stack([np.stack([mm, mp], -1), np.stack([pm, pp], -1), np.stack([zm, zp], -1)], -2)
    mu = np.abs(mu) if flip_negative else np.where(mu < 0, 1e-8, mu)
    return mu / mu.sum(axis=(-2, -1), keepdims=True)


def _pair_marginals(joint: np.ndarray, pairs: np.ndarray, mu: np.ndarray) -> np.ndarray:
    """Max-entropy P(l_i, l_j, y) [..., P, 3, 3, 2] matching P(l_i, l_j) = joint and mu_i, mu_j (IPF)."""
    mi, mj = mu[..., pairs[:, 0], :, :], mu[..., pairs[:, 1], :, :]  # [..., P, 3, 2]
    q = np.full((*joint.shape, 2), 1.0 / 18)
    for _ in range(_IPF_ITERS):
        q = q * (joint / np.maximum(q.sum(-1), 1e-30))[..., None]
        q = q * (mi / np.maximum(q.sum(-2), 1e-30))[..., :, None, :]
        q = q * (mj / np.maximum(q.sum(-3), 1e-30))[..., None, :, :]
    return q


# --- the passes over the data (jitted) -------------------------------------------------------------


def _to_pm1(L: jax.Array, cls: jax.Array) -> jax.Array:
    """Snorkel-convention votes -> one-vs-rest +-1/0 for class ``cls`` (binary: cls=1)."""
    return jnp.where(L == ABSTAIN, 0.0, jnp.where(L == cls, 1.0, -1.0)).astype(jnp.float32)


def _level(Lpm: jax.Array) -> jax.Array:
    """+-1/0 votes -> clique index l (0: -1, 1: +1, 2: abstain)."""
    return jnp.where(Lpm == 0, 2, (Lpm > 0).astype(jnp.int32)).astype(jnp.int32)


def _moments_impl(L: jax.Array, n: jax.Array, cls: jax.Array, pairs: jax.Array):
    """The only pass over the data: M = L^T L / n, P(abstain), P(+1), and P(l_i, l_j) of dependent pairs.

    ``L`` (int8) may carry all-abstain padding rows beyond the first ``n`` (shape bucketing, see
    :func:`~jaxflash.ws.label_matrix.pad_rows_int8`): they add nothing to the sums, which are divided by
    the true ``n``. The rows are scanned in blocks (:func:`~jaxflash.ws.label_matrix.row_blocks`).
    """
    rows, m = L.shape
    blocks = row_blocks(L)
    chunk = blocks.shape[1]
    n_pairs = pairs.shape[0]

    def step(carry, block):
        G, counts = carry
        Lpm = _to_pm1(block, cls)
        # One matmul gives everything: with X = [Lpm, 1], (X^T X)[:m, :m] = n M, its diagonal counts the
        # votes (lambda^2 = 1 when voting) and its last row sums the votes, so P(+1) = (votes + sum) / 2n.
        # Padding rows are all zero in Lpm, so the ones column adds nothing where it matters.
        # One dot rather than column reductions of the [n, m] matrix, which XLA CPU runs much slower.
        X = jnp.concatenate([Lpm, jnp.ones((chunk, 1), Lpm.dtype)], axis=1)
        G = G + jnp.dot(X.T, X, precision=jax.lax.Precision.HIGHEST)
        if n_pairs:
            idx = _level(Lpm[:, pairs[:, 0]]) * 3 + _level(Lpm[:, pairs[:, 1]])  # [chunk, P]
            counts = counts + jnp.sum(jax.nn.one_hot(idx, 9, dtype=jnp.float32), axis=0)
        return (G, counts), None

    init = (jnp.zeros((m + 1, m + 1), jnp.float32), jnp.zeros((n_pairs, 9), jnp.float32))
    (G, counts), _ = jax.lax.scan(step, init, blocks)
    G = G / n
    M = G[:m, :m]
    p_vote = jnp.diagonal(M)
    p_abstain = 1.0 - p_vote
    p_pos = 0.5 * (p_vote + G[m, :m])
    if n_pairs:
        counts = counts.at[:, 8].add(-(rows - n))  # padding rows are (abstain, abstain)
        joint = (counts / n).reshape(-1, 3, 3)
    else:
        joint = jnp.zeros((0, 3, 3))
    return M, p_abstain, p_pos, joint


_moments = jax.jit(_moments_impl)
_moments_ovr = jax.jit(jax.vmap(_moments_impl, in_axes=(None, None, 0, None)))


@partial(jax.jit, static_argnames=("v",))
def _frame_scores(L: jax.Array, *tables: jax.Array, v: int) -> jax.Array:
    """:func:`_frame_scores_rows` over row blocks (:func:`~jaxflash.ws.label_matrix.row_blocks`, lax.map):
    each block's [C, m] lookups stay in cache instead of going through memory as [n, m] f32 arrays."""
    out = jax.lax.map(lambda block: _frame_scores_rows(block, *tables, v=v), row_blocks(L))
    return out.reshape(L.shape[0], v, 2)


def _frame_scores_rows(
    L: jax.Array,
    cls: jax.Array,
    log_mu: jax.Array,
    log_pair: jax.Array,
    singles: jax.Array,
    pairs: jax.Array,
    frame_of_lf: jax.Array,
    frame_of_pair: jax.Array,
    log_py_frame: jax.Array,
    v: int,
) -> jax.Array:
    """S[n, t, y] = sum over cliques c of frame t of log mu_c(lambda_c, y) - log P(Y_t = y)."""
    lvl = _level(_to_pm1(L, cls))  # [n, m]
    frame_onehot = jax.nn.one_hot(frame_of_lf, v) * singles[:, None]  # [m, v]
    outs = []
    for y in range(2):
        # log mu_i(l_i, y) - log P(Y_t(i) = y), gathered with a fused select (no [n, m, 3] temporary).
        table = log_mu[:, :, y] - log_py_frame[frame_of_lf, y][:, None]  # [m, 3]
        per_lf = jnp.where(lvl == 0, table[:, 0], jnp.where(lvl == 1, table[:, 1], table[:, 2]))
        s = jnp.dot(per_lf, frame_onehot, precision=jax.lax.Precision.HIGHEST)  # [n, v]
        if pairs.shape[0]:
            idx = lvl[:, pairs[:, 0]] * 3 + lvl[:, pairs[:, 1]]  # [n, P]
            ptable = log_pair[:, :, :, y].reshape(pairs.shape[0], 9) - log_py_frame[frame_of_pair, y][:, None]
            per_pair = jnp.take_along_axis(ptable[None], idx[:, :, None], axis=2)[..., 0]
            s = s + jnp.dot(per_pair, jax.nn.one_hot(frame_of_pair, v), precision=jax.lax.Precision.HIGHEST)
        outs.append(s)
    return jnp.stack(outs, axis=-1)


# --- model ----------------------------------------------------------------------------------------------


class FlyingSquid(LabelModel):
    """FlyingSquid label model (see the module docstring for the estimator, its fallbacks and assumptions).

    Args:
      cardinality: number of classes k (> 2 uses one-vs-rest); the temporal model (``v > 1``) is binary.
      v: number of frames per row (temporal chain model); 1 for the usual single-task model.
      lambda_edges: known LF-LF dependencies ``[(i, j), ...]`` (column indices, same frame, disjoint).
      solve_method: ``"triplet"``, ``"triplet_mean"`` (FlyingSquid's default) or ``"triplet_median"``.
      posterior: ``"flyingsquid"`` (parity with the original: prior squared) or ``"bayes"`` (exact);
        only ``"bayes"`` exists for ``v > 1``.
      drop_zero_triplets: leave uninformative triplets (a zero moment: LFs that never co-vote) out of the
        mean/median, as FlyingSquid's GitHub code does (default), instead of counting them as 0 as its
        PyPI release does (``False``).
      flip_negative: flip negative clique entries (True) or clamp them to 1e-8 (False).
      multiclass_normalization: ``"sum"`` (normalise the k one-vs-rest posteriors) or ``"softmax"`` (WRENCH).
      triplet_seed: seed of the greedy triplet choice for ``solve_method="triplet"``.

    Fitted attributes: ``a_`` [c, m] (:math:`|E[\\lambda_i Y]|` per one-vs-rest model, c = 1 when binary),
    ``mu_`` [c, m, 3, 2] (clique marginals, vote level -1/+1/abstain by class), ``pair_mu_``
    [c, P, 3, 3, 2] (dependent pairs), ``accuracy_fallback_`` [c, m] (True where ``a_`` is a fallback),
    ``majority_vote_`` (True when no LF could be estimated and ``predict_proba`` is a majority vote),
    ``class_balance_``.
    """

    def __init__(
        self,
        cardinality: int = 2,
        v: int = 1,
        lambda_edges: list[tuple[int, int]] | tuple = (),
        solve_method: SolveMethod = "triplet_mean",
        posterior: Literal["flyingsquid", "bayes"] = "flyingsquid",
        drop_zero_triplets: bool = True,
        flip_negative: bool = True,
        multiclass_normalization: Literal["sum", "softmax"] = "sum",
        triplet_seed: int = 0,
    ):
        check_cardinality(cardinality)
        if v < 1:
            raise ValueError(f"v (frames per row) must be >= 1, got {v}")
        if v > 1 and cardinality != 2:
            raise ValueError("the temporal model (v > 1) is binary: use cardinality=2")
        if v > 12:
            raise ValueError(f"v={v}: the posterior enumerates 2^v label vectors; use v <= 12")
        if solve_method not in SOLVE_METHODS:
            raise ValueError(
                f"solve_method must be 'triplet', 'triplet_mean' or 'triplet_median', got {solve_method!r}"
            )
        if posterior not in ("flyingsquid", "bayes"):
            raise ValueError(f"posterior must be 'flyingsquid' or 'bayes', got {posterior!r}")
        if multiclass_normalization not in ("sum", "softmax"):
            raise ValueError("multiclass_normalization must be 'sum' or 'softmax'")
        self.cardinality = cardinality
        self.v = v
        self.lambda_edges = [tuple(int(x) for x in e) for e in lambda_edges]
        self.solve_method = solve_method
        self.posterior = posterior
        self.drop_zero_triplets = drop_zero_triplets
        self.flip_negative = flip_negative
        self.multiclass_normalization = multiclass_normalization
        self.triplet_seed = triplet_seed
        self.fitted_ = False

    # --- structure ------------------------------------------------------------------------------------
    def _structure(self, m: int) -> None:
        """Frames, dependency pairs and the valid-triplet mask for ``m`` LF columns."""
        if m % self.v:
            raise ValueError(f"L has {m} columns, not a multiple of v={self.v} frames")
        m_frame = m // self.v
        if m_frame < 3:
            raise ValueError(
                f"the triplet method needs at least 3 LFs per frame, got {m_frame} ({m} columns, v={self.v})"
            )
        frame = np.arange(m) // m_frame
        seen: set[int] = set()
        for i, j in self.lambda_edges:
            if not (0 <= i < m and 0 <= j < m) or i == j:
                raise ValueError(
                    f"lambda_edges entry {(i, j)} is not a pair of distinct LF columns 0..{m - 1}"
                )
            if frame[i] != frame[j]:
                raise ValueError(f"lambda_edges entry {(i, j)} links LFs of different frames")
            if i in seen or j in seen:
                raise NotImplementedError(
                    f"LF {i if i in seen else j} is in more than one dependency edge; only disjoint pairs "
                    "of dependent LFs are supported"
                )
            seen.update((i, j))
        mask = triplet_mask(m, self.lambda_edges, group=frame)
        no_triplet = np.flatnonzero(~mask.any(axis=(1, 2)))
        if no_triplet.size:
            raise ValueError(
                f"LF(s) {no_triplet.tolist()} have no pair of other LFs independent of them and of "
                "each other given Y; the triplet method needs one (fewer lambda_edges or more LFs)"
            )
        self._mask = mask
        self._partners = single_triplets(mask, self.triplet_seed) if self.solve_method == "triplet" else None
        pairs = np.array(sorted(tuple(sorted(e)) for e in self.lambda_edges), np.int32).reshape(-1, 2)
        singles = np.ones(m, np.float32)
        singles[pairs.ravel()] = 0.0
        self.m_ = m
        self._frame = frame.astype(np.int32)
        self._pairs = pairs
        self._singles = singles

    # --- class balance -----------------------------------------------------------------------------
    def _class_balance(self, class_balance: Any, Y_dev: Any) -> np.ndarray:
        n_cfg = 2**self.v if self.v > 1 else self.cardinality
        if class_balance is not None:
            cb = check_class_balance(class_balance, n_cfg)
        elif Y_dev is not None:
            Yd = np.asarray(Y_dev)
            if self.v > 1:
                if Yd.ndim != 2 or Yd.shape[1] != self.v:
                    raise ValueError(f"Y_dev for v={self.v} frames must be [n_dev, {self.v}], got {Yd.shape}")
                Yd = check_labels(Yd.reshape(-1), cardinality=2, name="Y_dev").reshape(-1, self.v)
                codes = Yd @ (1 << np.arange(self.v - 1, -1, -1))  # row index in label_vectors(v)
            else:
                codes = check_labels(Yd, cardinality=self.cardinality, name="Y_dev")
            if codes.size == 0:
                raise ValueError("Y_dev is empty")
            cb = np.bincount(codes, minlength=n_cfg).astype(np.float64) / codes.size
        else:
            cb = np.full(n_cfg, 1.0 / n_cfg)
        if self.v == 1 and np.any(cb <= 0):
            raise ValueError(
                f"class balance {cb.tolist()} gives a class zero prior; every class needs a "
                "positive prior (pass class_balance explicitly)"
            )
        return cb

    def _frame_marginals(self, cb: np.ndarray) -> np.ndarray:
        """P(Y_t = 1) for each frame from the 2^v joint class balance."""
        if self.v == 1:
            return np.array([cb[1]]) if self.cardinality == 2 else cb
        return cb @ label_vectors(self.v)

    # --- API ---------------------------------------------------------------------------------------
    def fit(
        self,
        L: Any,
        class_balance: Any | None = None,
        Y_dev: Any | None = None,
        *,
        allow_silent_lfs: bool = False,
    ) -> FlyingSquid:
        """Estimates the clique marginals from ``L`` [n, m] (snorkel convention).

        Class balance, in order of precedence: ``class_balance`` (k entries; ``2^v`` for the temporal
        model, lexicographic), counts of ``Y_dev`` ([n_dev], or [n_dev, v]), uniform. An LF that never
        votes in ``L`` raises ``ValueError`` unless ``allow_silent_lfs`` (a rolling buffer or a part of
        the data, where a sparse LF may be silent): then it has accuracy 0 and no effect on the posterior.
        Fallbacks for LFs whose accuracy the triplets cannot estimate warn (see the module docstring).
        """
        L = check_label_matrix(L, cardinality=self.cardinality, min_lfs=3)
        n, m = L.shape
        if not self.fitted_ or self.m_ != m:
            self._structure(m)
        cb = self._class_balance(class_balance, Y_dev)
        py_frame = self._frame_marginals(cb)
        Lj = pad_rows_int8(L)
        pairs = jnp.asarray(self._pairs)
        if self.cardinality == 2:
            py_lf = (py_frame[self._frame] if self.v > 1 else np.full(m, py_frame[0]))[None]
            moments = [np.asarray(x)[None] for x in _moments(Lj, jnp.float32(n), jnp.int32(1), pairs)]
        else:
            py_lf = np.broadcast_to(cb[:, None], (self.cardinality, m))
            moments = _moments_ovr(Lj, jnp.float32(n), jnp.arange(self.cardinality, dtype=jnp.int32), pairs)
        M, p_abstain, p_pos, joint = (np.asarray(x, np.float64) for x in moments)  # leading axis: class
        p_vote = 1.0 - p_abstain
        silent = np.flatnonzero(p_vote[0] < 0.5 / n)  # the vote pattern is the same in every class
        if silent.size and not allow_silent_lfs:
            raise ValueError(
                f"labelling function(s) {silent.tolist()} never vote in L; drop those columns, "
                "their accuracy cannot be estimated"
            )
        a = aggregate_triplets(
            triplet_values(M),
            self._mask,
            self.solve_method,
            drop_uninformative=self.drop_zero_triplets,
            partners=self._partners,
        )
        a, fallback, majority_vote = _fill_inestimable(a, p_vote, n)
        mu = _clique_marginals(a, p_abstain, p_pos, py_lf, self.flip_negative)
        if len(self._pairs):
            pair_mu = _pair_marginals(joint, self._pairs, mu)
        else:
            pair_mu = np.zeros((mu.shape[0], 0, 3, 3, 2))
        self.class_balance_ = cb
        self.mu_ = mu  # [c, m, 3, 2]
        self.pair_mu_ = pair_mu  # [c, P, 3, 3, 2]
        self.a_ = a  # [c, m]
        self.accuracy_fallback_ = fallback  # [c, m]
        self.majority_vote_ = majority_vote
        self.fitted_ = True
        return self

    def estimated_accuracies(self) -> np.ndarray:
        """Per-LF **joint** accuracy :math:`P(\\lambda_i = Y)`, with an abstain counting as not equal.

        Binary: :math:`\\mu_i(+,+) + \\mu_i(-,-)`; multi-class: :math:`\\sum_c P_c(\\lambda_i = c, Y = c)`
        from the one-vs-rest models. Dividing by the LF's coverage estimates its accuracy when it votes
        only while the model's assumption holds that abstaining is independent of the class: for a
        one-sided LF (one that votes only for one class) it does not, and that ratio can exceed 1.
        """
        self._check_fitted()
        if self.cardinality == 2:
            return self.mu_[0, :, 1, 1] + self.mu_[0, :, 0, 0]
        return self.mu_[:, :, 1, 1].sum(axis=0)

    def _log_scores(self, L: np.ndarray) -> np.ndarray:
        """Unnormalised log posterior: [1, n, 2^v] (binary) or [c, n, 2] (one-vs-rest)."""
        log_mu = np.log(np.maximum(self.mu_, _LOG_FLOOR))
        log_pair = np.log(np.maximum(self.pair_mu_, _LOG_FLOOR))
        py_frame = self._frame_marginals(self.class_balance_)
        Lj = pad_rows_int8(L)
        frame_of_pair = self._frame[self._pairs[:, 0]] if len(self._pairs) else np.zeros(0, np.int32)
        n_cliques = int(self._singles.sum()) + len(self._pairs)
        outs = []
        for c in range(self.mu_.shape[0]):
            p1 = py_frame if self.cardinality == 2 else np.array([py_frame[c]])
            log_py = np.log(np.stack([1.0 - p1, p1], axis=-1))  # [v, 2]
            S = _frame_scores(
                Lj,
                jnp.int32(1 if self.cardinality == 2 else c),
                jnp.asarray(log_mu[c], jnp.float32),
                jnp.asarray(log_pair[c], jnp.float32),
                jnp.asarray(self._singles),
                jnp.asarray(self._pairs),
                jnp.asarray(self._frame),
                jnp.asarray(frame_of_pair),
                jnp.asarray(log_py, jnp.float32),
                v=self.v,
            )
            S = np.asarray(S, np.float64)[: L.shape[0]]  # [n, v, 2], padding rows dropped
            if self.v == 1:
                prior_power = 2.0 if (self.posterior == "flyingsquid" and n_cliques >= 2) else 1.0
                outs.append(S[:, 0, :] + prior_power * log_py[0][None, :])
            else:
                bits = label_vectors(self.v)  # [2^v, v]
                with np.errstate(divide="ignore"):
                    log_cb = np.log(self.class_balance_)
                outs.append(S[:, :, 0] @ (1 - bits).T + S[:, :, 1] @ bits.T + log_cb[None, :])
        return np.stack(outs)

    def _check_L(self, L: Any) -> np.ndarray:
        self._check_fitted()
        L = check_label_matrix(L, cardinality=self.cardinality)
        if L.shape[1] != self.m_:
            raise ValueError(f"L has {L.shape[1]} columns but the model was fitted on {self.m_}")
        return L

    def predict_proba(self, L: Any) -> np.ndarray:
        """``[n, k]`` class probabilities; for ``v > 1``, ``[n, 2^v]`` over label vectors (lexicographic)."""
        L = self._check_L(L)
        if self.majority_vote_:
            return self._majority_vote(L)
        scores = self._log_scores(L)
        if self.cardinality == 2:
            s = scores[0]
            if s.shape[1] == 2:  # v == 1: the softmax of two scores is a logistic of their difference
                d = s[:, 1] - s[:, 0]
                # sigmoid(+-d) from e = exp(-|d|): no overflow, and accurate when a probability is tiny.
                e = np.exp(-np.abs(d))
                big = 1.0 / (1.0 + e)  # the larger of the two probabilities
                small = e * big
                p = np.empty_like(s)
                p[:, 1] = np.where(d >= 0, big, small)
                p[:, 0] = np.where(d >= 0, small, big)
                return p
            s = s - s.max(axis=1, keepdims=True)
            p = np.exp(s)
            return p / p.sum(axis=1, keepdims=True)
        s = scores - scores.max(axis=2, keepdims=True)
        pos = np.exp(s[:, :, 1]) / np.exp(s).sum(axis=2)  # [k, n]: P_c(Y = c | lambda)
        pos = pos.T
        if self.multiclass_normalization == "softmax":
            e = np.exp(pos)
            return e / e.sum(axis=1, keepdims=True)
        total = pos.sum(axis=1, keepdims=True)
        return np.where(total > 0, pos / np.where(total > 0, total, 1.0), 1.0 / self.cardinality)

    def _majority_vote(self, L: np.ndarray) -> np.ndarray:
        """The fallback when no LF could be estimated: majority vote, per frame (joint = product)."""
        mv = MajorityVote(self.cardinality)
        if self.v == 1:
            return mv.predict_proba(L)
        m_frame = self.m_ // self.v
        p1 = np.stack(
            [mv.predict_proba(L[:, t * m_frame : (t + 1) * m_frame])[:, 1] for t in range(self.v)], 1
        )
        joint = np.ones((L.shape[0], 2**self.v))
        for t, bit in enumerate(label_vectors(self.v).T):  # P(Y_t = bit) of each label vector
            joint *= np.where(bit[None, :] == 1, p1[:, t : t + 1], 1.0 - p1[:, t : t + 1])
        return joint

    def predict_proba_marginalized(self, L: Any) -> np.ndarray:
        """Per-frame marginals ``[n, v, 2]``: ``P(Y_t = class | lambda)``."""
        p = self.predict_proba(L)
        if self.v == 1:
            return p[:, None, :]
        p1 = p @ label_vectors(self.v)  # [n, v]
        return np.stack([1.0 - p1, p1], axis=-1)

    def _labels_from_probs(
        self, probs: np.ndarray, tie_policy: TiePolicy | None, key: jax.Array | None
    ) -> np.ndarray:
        """``[n]`` classes, or for ``v > 1`` ``[n, v]``: the frames of the most likely label vector."""
        best = super()._labels_from_probs(probs, tie_policy, key)
        if self.v == 1:
            return best
        frames = label_vectors(self.v)[np.maximum(best, 0)]
        return np.where(best[:, None] == ABSTAIN, ABSTAIN, frames).astype(np.int32)

    # --- persistence -----------------------------------------------------------------------------------
    def _config(self) -> dict[str, Any]:
        return dict(
            cardinality=self.cardinality,
            v=self.v,
            lambda_edges=[list(e) for e in self.lambda_edges],
            solve_method=self.solve_method,
            posterior=self.posterior,
            drop_zero_triplets=self.drop_zero_triplets,
            flip_negative=self.flip_negative,
            multiclass_normalization=self.multiclass_normalization,
            triplet_seed=self.triplet_seed,
        )

    def _params(self) -> dict[str, np.ndarray]:
        return {
            "mu": self.mu_,
            "pair_mu": self.pair_mu_,
            "a": self.a_,
            "accuracy_fallback": self.accuracy_fallback_,
            "majority_vote": np.array(self.majority_vote_),
            "class_balance": self.class_balance_,
        }

    def _set_params(self, params: dict[str, np.ndarray]) -> None:
        self.mu_, self.pair_mu_, self.a_ = params["mu"], params["pair_mu"], params["a"]
        self.accuracy_fallback_ = params.get("accuracy_fallback", np.zeros(self.a_.shape, bool))
        self.majority_vote_ = bool(params.get("majority_vote", False))
        self.class_balance_ = params["class_balance"]
        self._structure(self.mu_.shape[1])


class OnlineFlyingSquid:
    """FlyingSquid refitted on a rolling buffer (the paper's online learning; ``FSLoss`` in its code).

    :meth:`partial_fit` appends rows to a ring buffer of the last ``buffer_capacity`` rows; every
    ``update_frequency`` appended rows the model is refitted on the buffer with
    ``FlyingSquid.fit(buffer, class_balance, allow_silent_lfs=True)`` (an LF silent in the buffer gets
    accuracy 0 and does not move the posterior). :meth:`predict_proba` uses the latest fit; it raises
    until the first refit.
    """

    def __init__(
        self,
        buffer_capacity: int = 100,
        update_frequency: int = 10,
        class_balance: Any = None,
        **model_kwargs: Any,
    ):
        if buffer_capacity < 1 or update_frequency < 1:
            raise ValueError("buffer_capacity and update_frequency must be >= 1")
        self.buffer_capacity = buffer_capacity
        self.update_frequency = update_frequency
        self.class_balance = class_balance
        self.model = FlyingSquid(**model_kwargs)
        self._buffer: np.ndarray | None = None
        self._count = 0  # rows ever appended
        self._since_fit = 0
        self.n_refits = 0

    @property
    def buffer(self) -> np.ndarray:
        """The buffered rows, oldest first."""
        if self._buffer is None:
            return np.zeros((0, 0), np.int32)
        filled = min(self._count, self.buffer_capacity)
        start = self._count % self.buffer_capacity if self._count > self.buffer_capacity else 0
        return np.roll(self._buffer, -start, axis=0)[:filled]

    def partial_fit(self, L_batch: Any) -> OnlineFlyingSquid:
        """Appends the rows of ``L_batch`` and refits every ``update_frequency`` rows."""
        L_batch = check_label_matrix(L_batch, cardinality=self.model.cardinality, name="L_batch")
        if self._buffer is None:
            self._buffer = np.full((self.buffer_capacity, L_batch.shape[1]), ABSTAIN, np.int32)
        elif L_batch.shape[1] != self._buffer.shape[1]:
            raise ValueError(f"L_batch has {L_batch.shape[1]} columns, the buffer {self._buffer.shape[1]}")
        for row in L_batch:
            self._buffer[self._count % self.buffer_capacity] = row
            self._count += 1
            self._since_fit += 1
            if self._since_fit >= self.update_frequency:
                self.model.fit(self.buffer, self.class_balance, allow_silent_lfs=True)
                self._since_fit = 0
                self.n_refits += 1
        return self

    def predict_proba(self, L: Any) -> np.ndarray:
        return self.model.predict_proba(L)

    def predict(self, L: Any, **kwargs: Any) -> np.ndarray:
        return self.model.predict(L, **kwargs)
