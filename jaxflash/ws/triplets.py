r"""The triplet method: accuracies of conditionally independent sources from their second moments.

If the latent label ``Y`` (in {-1,+1}) separates sources ``i`` and ``j``, then
:math:`E[\lambda_i \lambda_j] = a_i a_j` with :math:`a_i = E[\lambda_i Y]` (``Y^2 = 1``), so for any triplet
``i, j, k`` of pairwise separated sources

.. math::  |a_i| = \sqrt{|M_{ij} M_{ik} / M_{jk}|}.

FlyingSquid applies it to LF votes (``M = L^T L / n``), Dugong to moments pooled over windows. A triplet
is **informative** when its three moments are nonzero. A zero moment means that the two sources never
vote on the same points, or that their agreements and disagreements cancel exactly. Either way the
triplet says nothing about :math:`a_i`: it is 0 (``M_ij = 0``) or undefined (``M_jk = 0``, which
FlyingSquid's code also writes as 0).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Literal

import numpy as np

SolveMethod = Literal["triplet", "triplet_mean", "triplet_median"]
SOLVE_METHODS: tuple[str, ...] = ("triplet", "triplet_mean", "triplet_median")


def triplet_mask(
    m: int, dependent: Iterable[tuple[int, int]] = (), group: np.ndarray | None = None
) -> np.ndarray:
    """``valid[i, j, k]`` (``[m, m, m]`` bool): ``j < k``, all three distinct, in one ``group`` (e.g. the
    frame of a temporal model), and no two of them a ``dependent`` pair."""
    idx = np.arange(m)
    group = np.zeros(m, int) if group is None else np.asarray(group)
    dep = np.zeros((m, m), bool)
    for i, j in dependent:
        dep[i, j] = dep[j, i] = True
    distinct = (idx[:, None, None] != idx[None, :, None]) & (idx[:, None, None] != idx[None, None, :])
    ordered = idx[None, :, None] < idx[None, None, :]
    same_group = (group[:, None, None] == group[None, :, None]) & (
        group[:, None, None] == group[None, None, :]
    )
    independent = ~dep[:, :, None] & ~dep[:, None, :] & ~dep[None, :, :]
    return distinct & ordered & same_group & independent


def triplet_values(M: np.ndarray) -> np.ndarray:
    """``vals[..., i, j, k] = sqrt(|M_ij M_ik / M_jk|)``, 0 where ``M_jk = 0``; leading axes are batches."""
    num = M[..., :, :, None] * M[..., :, None, :]
    den = M[..., None, :, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den == 0, 0.0, np.sqrt(np.abs(num / np.where(den == 0, 1.0, den))))


def single_triplets(valid: np.ndarray, seed: int) -> np.ndarray:
    """A seeded greedy partition of the sources into triplets: ``partners[i] = (j, k)``, ``j < k``.

    Sources left over once no free pair remains borrow two sources that already have a triplet.
    """
    m = valid.shape[0]
    order = np.random.default_rng(seed).permutation(m)
    partners = -np.ones((m, 2), int)
    sym = valid | valid.transpose(0, 2, 1)
    for i in order:
        if partners[i, 0] >= 0:
            continue
        free = [j for j in order if j != i and partners[j, 0] < 0]
        cand = [(j, k) for a, j in enumerate(free) for k in free[a + 1 :] if sym[i, j, k]]
        if not cand:
            j, k = next((j, k) for j in order for k in order if j < k and sym[i, j, k])
            partners[i] = (j, k)
            continue
        j, k = cand[0]
        for x, (y, z) in ((i, (j, k)), (j, (i, k)), (k, (i, j))):
            partners[x] = sorted((y, z))
    return partners


def aggregate_triplets(
    vals: np.ndarray,
    valid: np.ndarray,
    method: str,
    *,
    drop_uninformative: bool,
    partners: np.ndarray | None = None,
) -> np.ndarray:
    """Per-source ``|a_i|`` ``[..., m]`` from :func:`triplet_values` over the ``valid`` triplets.

    ``"triplet_mean"`` / ``"triplet_median"``: the mean / median over source i's triplets; with
    ``drop_uninformative`` only over its informative ones (nonzero value), else counting the others as 0
    (FlyingSquid's PyPI release). ``"triplet"``: the value of the triplet in ``partners``
    (:func:`single_triplets`); with ``drop_uninformative``, an uninformative one is replaced by source i's
    first informative triplet in ``(j, k)`` order. A source with no usable triplet gets 0.
    """
    m = vals.shape[-1]
    informative = valid & (vals != 0)
    if method == "triplet":
        a = vals[..., np.arange(m), partners[:, 0], partners[:, 1]]
        if drop_uninformative:
            usable = informative.reshape(*informative.shape[:-2], -1)
            first = np.take_along_axis(
                vals.reshape(usable.shape), usable.argmax(axis=-1)[..., None], axis=-1
            )[..., 0]
            a = np.where(a == 0, np.where(usable.any(axis=-1), first, 0.0), a)
        return a
    use = informative if drop_uninformative else np.broadcast_to(valid, vals.shape)
    if method == "triplet_mean":
        return np.sum(np.where(use, vals, 0.0), axis=(-2, -1)) / np.maximum(use.sum(axis=(-2, -1)), 1)
    flat = np.where(use, vals, np.nan).reshape(*vals.shape[:-2], -1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a source without a usable triplet: all-NaN row
        return np.nan_to_num(np.nanmedian(flat, axis=-1))
