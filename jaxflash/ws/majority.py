"""Majority vote, with snorkel's ``MajorityLabelVoter`` semantics and an explicit tie policy."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxflash.ws.base import LabelModel, TiePolicy, check_tie_policy
from jaxflash.ws.label_matrix import (
    check_cardinality,
    check_class_balance,
    check_label_matrix,
    check_labels,
    pad_rows_int8,
    row_blocks,
)


@functools.partial(jax.jit, static_argnames="cardinality")
def _tied_maxima(L: jax.Array, cardinality: int) -> jax.Array:
    """Uniform mass on each row's most-voted classes, ``[n, k]``; abstain (-1) counts for no class.

    Row block by row block, each block transposed in cache so that the class counts are sums over the
    leading (LF) axis, which XLA CPU vectorizes better than a reduction over the short trailing axis, and
    only a block's intermediates are alive at a time.
    """

    def block(b: jax.Array) -> jax.Array:
        bt = b.T  # [m, rows]
        counts = [(bt == c).sum(axis=0, dtype=jnp.int32) for c in range(cardinality)]
        best = functools.reduce(jnp.maximum, counts)
        top = [(c == best).astype(jnp.float32) for c in counts]
        total = functools.reduce(jnp.add, top)
        return jnp.stack([t / total for t in top], axis=1)

    return jax.lax.map(block, row_blocks(L)).reshape(L.shape[0], cardinality)


class MajorityVote(LabelModel):
    """Unweighted majority vote over the non-abstain votes of each row.

    ``predict_proba`` puts uniform mass on the classes with the most votes (as snorkel's
    ``MajorityLabelVoter``): a row with a unique winner is one-hot, a tie between c classes gives 1/c to
    each, and an **all-abstain row is uniform** (every class is tied at zero votes). ``predict`` resolves
    ties with ``tie_policy`` (checked here, overridable per call): ``"abstain"`` -> -1 (snorkel's
    default), ``"random"`` -> a tied class drawn with a PRNG ``key``, ``"prior"`` -> the tied class with
    the largest class balance (given to the constructor, or counted from ``Y_dev`` in :meth:`fit`).
    """

    def __init__(
        self,
        cardinality: int = 2,
        tie_policy: TiePolicy = "abstain",
        class_balance: list[float] | None = None,
    ):
        check_cardinality(cardinality)
        self.cardinality = cardinality
        self.tie_policy = check_tie_policy(tie_policy)
        self.class_balance_ = (
            None if class_balance is None else check_class_balance(class_balance, cardinality)
        )
        self.fitted_ = True  # nothing to learn; fit only sets the prior used by tie_policy="prior"

    def fit(
        self, L: Any | None = None, Y_dev: Any | None = None, class_balance: Any | None = None
    ) -> MajorityVote:
        """Sets the class prior for ``tie_policy="prior"`` from ``class_balance`` or ``Y_dev`` counts."""
        if L is not None:
            check_label_matrix(L, cardinality=self.cardinality)
        if class_balance is not None:
            self.class_balance_ = check_class_balance(class_balance, self.cardinality)
        elif Y_dev is not None:
            Y_dev = check_labels(Y_dev, cardinality=self.cardinality, name="Y_dev")
            self.class_balance_ = check_class_balance(
                np.bincount(Y_dev, minlength=self.cardinality).astype(float),
                self.cardinality,
                name="class counts of Y_dev",
            )
        return self

    def predict_proba(self, L: Any) -> np.ndarray:
        L = check_label_matrix(L, cardinality=self.cardinality)
        probs = _tied_maxima(pad_rows_int8(L), self.cardinality)
        return np.asarray(probs[: L.shape[0]], np.float64)

    def _config(self) -> dict[str, Any]:
        return {"cardinality": self.cardinality, "tie_policy": self.tie_policy}

    def _params(self) -> dict[str, np.ndarray]:
        return {} if self.class_balance_ is None else {"class_balance": self.class_balance_}

    def _set_params(self, params: dict[str, np.ndarray]) -> None:
        self.class_balance_ = params.get("class_balance")
