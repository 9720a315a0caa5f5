"""Label matrices: one convention, converters, validation, LF summaries and labelling functions.

Convention (snorkel's, used everywhere in :mod:`jaxflash.ws`): a label matrix ``L`` has shape
``[n_points, n_lfs]`` and integer entries ``-1`` (the LF abstains) or a class ``0 .. k-1``. Gold labels
``Y`` have shape ``[n_points]`` with entries in ``0 .. k-1``.

FlyingSquid, the original Epoxy and Liger use another convention for binary tasks: ``0`` abstains,
``-1``/``+1`` are the two classes. :func:`from_flyingsquid` / :func:`to_flyingsquid` convert explicitly
(class 0 <-> -1, class 1 <-> +1, abstain -1 <-> 0); nothing in this package guesses a convention.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import numpy as np

ABSTAIN = -1


def _as_numeric(x: Any, name: str, *, votes: bool = False) -> np.ndarray:
    """``x`` as a NumPy array of a numeric dtype. ``votes``: a label matrix, where booleans are refused
    (False would silently become class 0, not an abstain)."""
    arr = np.asarray(x)
    if arr.dtype == object:
        raise ValueError(f"{name} must be a numeric array, got dtype=object")
    if votes and arr.dtype.kind == "b":
        raise ValueError(
            f"{name} is a boolean array; encode votes as ints: -1 = abstain, 0..k-1 = classes "
            f"(e.g. np.where({name}, 1, -1) for 'votes class 1 or abstains')"
        )
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be a numeric array, got dtype={arr.dtype}")
    return arr


def _integer_valued(arr: np.ndarray, name: str) -> np.ndarray:
    if arr.dtype.kind == "f":
        if np.isnan(arr).any():
            raise ValueError(
                f"{name} contains NaN at {np.argwhere(np.isnan(arr))[0].tolist()}; "
                "encode a missing vote as -1 (abstain)"
            )
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            bad = arr[~np.isfinite(arr) | (arr != np.round(arr))][0]
            raise ValueError(f"{name} must hold integer labels, found {bad!r}")
    return arr.astype(np.int32, copy=False)


def check_label_matrix(
    L: Any,
    *,
    cardinality: int | None = None,
    name: str = "L",
    min_lfs: int = 1,
    require_votes: bool = False,
) -> np.ndarray:
    """Validates ``L`` against the convention and returns it as an ``int32`` NumPy array.

    Raises ``ValueError`` naming what is wrong: booleans, not 2-D, no rows, fewer than ``min_lfs`` columns,
    NaN or non-integer entries, values outside ``{-1, 0, .., cardinality-1}``, or (``require_votes``) an LF
    that never votes.
    """
    arr = _as_numeric(L, name, votes=True)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D [n_points, n_lfs], got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError(f"{name} has no rows ({name}.shape={arr.shape})")
    if arr.shape[1] < min_lfs:
        raise ValueError(
            f"{name} has {arr.shape[1]} labelling functions; this method needs at least {min_lfs}"
        )
    arr = _integer_valued(arr, name)
    lo = int(arr.min())
    if lo < ABSTAIN:
        raise ValueError(
            f"{name} has value {lo}; the convention is -1 = abstain, classes 0..k-1 "
            "(use from_flyingsquid() for 0-abstain / +-1 matrices)"
        )
    if cardinality is not None:
        hi = int(arr.max())
        if hi >= cardinality:
            raise ValueError(
                f"{name} has value {hi} but cardinality={cardinality} allows classes 0..{cardinality - 1}"
            )
    if require_votes:
        silent = np.flatnonzero((arr == ABSTAIN).all(axis=0))
        if silent.size:
            raise ValueError(
                f"labelling function(s) {silent.tolist()} never vote in {name}; drop those "
                "columns, their accuracy cannot be estimated"
            )
    return arr


def check_labels(
    Y: Any, *, n: int | None = None, cardinality: int | None = None, name: str = "Y"
) -> np.ndarray:
    """Validates gold labels ``Y`` (1-D, classes ``0..k-1``, length ``n``) and returns an int32 array."""
    arr = _as_numeric(Y, name)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D [n_points], got shape {arr.shape}")
    arr = _integer_valued(arr, name)
    if n is not None and arr.shape[0] != n:
        raise ValueError(f"{name} has {arr.shape[0]} labels but the label matrix has {n} rows")
    if arr.size and arr.min() < 0:
        raise ValueError(
            f"{name} has value {int(arr.min())}; gold labels are classes 0..k-1 "
            "(use labels_from_pm1() for +-1 labels)"
        )
    if cardinality is not None and arr.size and arr.max() >= cardinality:
        raise ValueError(f"{name} has value {int(arr.max())} but cardinality={cardinality}")
    return arr


def check_class_balance(class_balance: Any, cardinality: int, name: str = "class_balance") -> np.ndarray:
    """Validates a class prior (``cardinality`` non-negative finite entries, positive sum); normalised."""
    cb = np.asarray(class_balance, np.float64)
    if cb.shape != (cardinality,):
        raise ValueError(f"{name} must have shape ({cardinality},), got {cb.shape}")
    if not np.all(np.isfinite(cb)) or np.any(cb < 0) or cb.sum() <= 0:
        raise ValueError(f"{name} must be finite, non-negative with a positive sum, got {cb.tolist()}")
    return cb / cb.sum()


MAX_CARDINALITY = 127  # votes are stored as int8 (pad_rows_int8)


def check_cardinality(cardinality: int) -> int:
    """Validates a label model's number of classes: 2..MAX_CARDINALITY."""
    if not 2 <= cardinality <= MAX_CARDINALITY:
        raise ValueError(
            f"cardinality must be in 2..{MAX_CARDINALITY} (votes are stored as int8), got {cardinality}"
        )
    return cardinality


def pad_rows_int8(L: np.ndarray) -> jax.Array:
    """A checked label matrix ``L`` as a JAX int8 array with all-abstain rows appended up to a bucketed
    row count (the label models' jitted passes ignore such rows).

    Buckets are multiples of 2^(floor(log2 n) - 3) (at most 12.5% padding, 8 buckets per octave), so
    fits and predictions on matrices of nearby sizes reuse one compiled program instead of recompiling.
    The copy into the padded int8 buffer is the one host pass; JAX then aliases that buffer on CPU.
    """
    n = L.shape[0]
    step = 1 << max(int(np.floor(np.log2(max(n, 1)))) - 3, 6)
    n_pad = -(-n // step) * step
    # Callers pass a checked matrix of a model whose cardinality is at most 127: int8 holds its values.
    out = _aligned_empty((n_pad, L.shape[1]), np.int8)
    out[:n] = L
    out[n:] = ABSTAIN
    return jax.device_put(out, may_alias=True)


# Rows per step of the label models' jitted passes over L: a chunk's f32 intermediates (8192 x m) stay in
# cache, where one [n, m] f32 matrix would be written to memory and read back.
ROW_CHUNK = 8192


def row_blocks(L: jax.Array) -> jax.Array:
    """``[rows, m]`` as ``[rows / C, C, m]`` with ``C = gcd(rows, ROW_CHUNK)``: padded row counts are
    multiples of 64 (:func:`pad_rows_int8`), so chunks have at least 64 rows."""
    rows, m = L.shape
    chunk = math.gcd(rows, ROW_CHUNK)
    return L.reshape(rows // chunk, chunk, m)


def _aligned_empty(shape: tuple[int, ...], dtype: Any, align: int = 64) -> np.ndarray:
    """An uninitialised array whose data starts on an ``align``-byte boundary: JAX's CPU client adopts such
    a buffer without copying (``may_alias``), while NumPy's own allocations are only 16-byte aligned."""
    nbytes = math.prod(shape) * np.dtype(dtype).itemsize
    raw = np.empty(nbytes + align, np.uint8)
    offset = -raw.ctypes.data % align
    return raw[offset : offset + nbytes].view(dtype).reshape(shape)


def label_vectors(v: int) -> np.ndarray:
    """``[2^v, v]`` int: every vector of ``v`` binary labels (0/1), in lexicographic order.

    Row ``r`` is the binary expansion of ``r`` with element 0 most significant, so class 0 comes before
    class 1 (FlyingSquid's order: -1 < +1). This is the column order of the temporal
    :meth:`FlyingSquid.predict_proba <jaxflash.ws.FlyingSquid.predict_proba>` and of a ``2^v`` class balance.
    """
    if v < 1:
        raise ValueError(f"v must be >= 1, got {v}")
    return (np.arange(2**v)[:, None] >> np.arange(v - 1, -1, -1)) & 1


# --- conversions -------------------------------------------------------------------------------------


def _ternary(x: Any, name: str, allowed: str) -> np.ndarray:
    """``x`` as int32 after checking that every entry is -1, 0 or 1 (``allowed`` names their meaning)."""
    arr = _integer_valued(_as_numeric(x, name, votes=True), name)
    bad = ~np.isin(arr, (-1, 0, 1))
    if bad.any():
        raise ValueError(f"{name} must hold {allowed}, found {int(arr[bad][0])}")
    return arr


def from_flyingsquid(L_fs: Any) -> np.ndarray:
    """FlyingSquid's binary convention (0 abstain, -1/+1) -> snorkel's (-1 abstain, 0/1)."""
    arr = _ternary(L_fs, "L_fs", "-1, 0 (abstain) or +1")
    return np.where(arr == 0, ABSTAIN, (arr + 1) // 2).astype(np.int32)


def to_flyingsquid(L: Any) -> np.ndarray:
    """Snorkel's convention (-1 abstain, 0/1) -> FlyingSquid's (0 abstain, -1/+1); binary only."""
    arr = _ternary(L, "L", "-1 (abstain), 0 or 1: to_flyingsquid needs a binary matrix")
    return np.where(arr == ABSTAIN, 0, 2 * arr - 1).astype(np.int32)


def labels_from_pm1(Y: Any) -> np.ndarray:
    """Gold labels in -1/+1 -> 0/1."""
    arr = _integer_valued(_as_numeric(Y, "Y"), "Y")
    if not np.isin(arr, (-1, 1)).all():
        raise ValueError("labels_from_pm1 expects only -1 and +1")
    return ((arr + 1) // 2).astype(np.int32)


def labels_to_pm1(Y: Any) -> np.ndarray:
    """Gold labels in 0/1 -> -1/+1."""
    arr = check_labels(Y, cardinality=2)
    return (2 * arr - 1).astype(np.int32)


# --- summaries ---------------------------------------------------------------------------------------


def lf_summary(L: Any, Y: Any | None = None, *, cardinality: int | None = None) -> dict[str, np.ndarray]:
    """Per-LF statistics, as snorkel's ``LFAnalysis`` defines them.

    Returns a dict of ``[n_lfs]`` arrays:
      ``coverage``: fraction of points the LF votes on;
      ``overlaps``: fraction of points where it votes and at least one other LF votes too;
      ``conflicts``: fraction of points where it votes and another LF votes a different class;
      ``polarity``: number of distinct classes it emits;
      with ``Y``: ``correct``, ``incorrect`` (counts over its votes) and ``empirical_accuracy`` =
      correct / votes (NaN for an LF that never votes).
    """
    L = check_label_matrix(L, cardinality=cardinality)
    n, m = L.shape
    k = cardinality or int(L.max()) + 1
    votes = L != ABSTAIN
    n_votes = votes.sum(axis=1, keepdims=True)
    counts = np.stack([(L == c).sum(axis=1) for c in range(max(k, 1))], axis=1)  # [n, k]
    own = np.where(votes, L, 0)
    same_class = np.take_along_axis(counts, own, axis=1)  # votes (incl. own) equal to own vote
    out = {
        "coverage": votes.mean(axis=0),
        "overlaps": (votes & (n_votes > 1)).mean(axis=0),
        "conflicts": (votes & (n_votes - same_class > 0)).mean(axis=0),
        "polarity": np.array([np.unique(L[votes[:, j], j]).size for j in range(m)]),
    }
    if Y is not None:
        Y = check_labels(Y, n=n, cardinality=cardinality)
        correct = (votes & (L == Y[:, None])).sum(axis=0)
        n_lf_votes = votes.sum(axis=0)
        out["correct"] = correct
        out["incorrect"] = n_lf_votes - correct
        with np.errstate(invalid="ignore", divide="ignore"):
            out["empirical_accuracy"] = np.where(n_lf_votes > 0, correct / np.maximum(n_lf_votes, 1), np.nan)
    return out


def label_coverage(L: Any) -> float:
    """Fraction of points with at least one non-abstain vote."""
    L = check_label_matrix(L)
    return float((L != ABSTAIN).any(axis=1).mean())


# --- labelling functions ------------------------------------------------------------------------------


def _lf_error(name: str, value: Any, where: str, cardinality: int | None) -> ValueError:
    classes = "0..k-1" if cardinality is None else f"0..{cardinality - 1} (cardinality={cardinality})"
    return ValueError(
        f"labelling function {name!r} returned {value!r}{where}; an LF returns an int class {classes}, "
        "or ABSTAIN (-1) / None to abstain"
    )


def _check_lf_column(name: str, values: Any, cardinality: int | None) -> np.ndarray:
    """One LF's outputs as int32: ints (not bools or floats) in ``-1..cardinality-1``, ``None`` = abstain."""
    if isinstance(values, np.ndarray):
        col = values
        if col.dtype.kind not in "iu":
            first = col.flat[0].item() if col.size else None
            raise _lf_error(name, first, f" (an array of dtype {col.dtype})", cardinality)
    else:
        for r, v in enumerate(values):
            if isinstance(v, bool | np.bool_) or not isinstance(v, int | np.integer):
                raise _lf_error(name, v, f" for record {r}", cardinality)
        col = np.array(values, np.int64).reshape(-1)
    hi = np.inf if cardinality is None else cardinality - 1
    bad = (col < ABSTAIN) | (col > hi)
    if bad.any():
        r = int(np.flatnonzero(bad)[0])
        raise _lf_error(name, int(col[r]), f" for record {r}", cardinality)
    return col.astype(np.int32)


@dataclasses.dataclass(frozen=True)
class LabelingFunction:
    """A named labelling function.

    ``fn(record) -> int`` returns a class ``0..k-1`` or ``ABSTAIN`` (-1); ``None`` counts as abstain. With
    ``vectorized=True``, ``fn(records) -> array [len(records)]`` of ints labels a whole batch at once (e.g.
    a regular expression over a NumPy array of strings, a threshold over a feature column). Any other
    output (a bool, a float, a string, a value below -1) raises ``ValueError`` naming the LF and the value.
    """

    name: str
    fn: Callable[[Any], Any]
    vectorized: bool = False

    def __call__(self, record: Any) -> int:
        if self.vectorized:
            return int(_check_lf_column(self.name, np.asarray(self.fn([record])), None)[0])
        out = self.fn(record)
        return int(_check_lf_column(self.name, [ABSTAIN if out is None else out], None)[0])


def labeling_function(
    name: str | None = None, *, vectorized: bool = False
) -> Callable[[Callable[[Any], Any]], LabelingFunction]:
    """Decorator: ``@labeling_function()`` turns ``def lf(record) -> int`` into a LabelingFunction."""

    def wrap(fn: Callable[[Any], Any]) -> LabelingFunction:
        return LabelingFunction(name or fn.__name__, fn, vectorized)

    return wrap


def apply_lfs(
    lfs: Sequence[LabelingFunction],
    records: Iterable[Any] | Sequence[Any],
    *,
    cardinality: int | None = None,
) -> np.ndarray:
    """Applies the LFs to the records; returns ``L`` of shape ``[n_records, len(lfs)]`` (int32).

    Vectorized LFs see the whole batch in one call; the others are called once per record. Every output
    must be an int in ``-1..cardinality-1`` (only ``>= -1`` without ``cardinality``) or ``None``; anything
    else raises ``ValueError`` naming the LF, the value and the record.
    """
    if len(lfs) == 0:
        raise ValueError("apply_lfs needs at least one labelling function")
    if cardinality is not None:
        check_cardinality(cardinality)
    names = [lf.name for lf in lfs]
    if len(set(names)) != len(names):
        raise ValueError(f"labelling function names must be unique, got {names}")
    records = list(records)
    L = np.full((len(records), len(lfs)), ABSTAIN, np.int32)
    for j, lf in enumerate(lfs):
        if lf.vectorized:
            col = np.asarray(lf.fn(records))
            if col.shape != (len(records),):
                raise ValueError(
                    f"vectorized LF {lf.name!r} returned shape {col.shape}, expected ({len(records)},)"
                )
        else:
            col = [ABSTAIN if (v := lf.fn(r)) is None else v for r in records]
        L[:, j] = _check_lf_column(lf.name, col, cardinality)
    return check_label_matrix(L, cardinality=cardinality)
