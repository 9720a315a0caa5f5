"""The dataset contract: a split of ``num_examples`` fixed-size examples, read by step.

A batch is a dict of arrays with one row per example and a ``weights`` array, 1 where a row (or a
position of it) is scored and 0 elsewhere. A token dataset (:class:`TokenDataset`) gives
``dict(inputs=int32 [B, T], targets=int32 [B, T], weights=float32 [B, T])``: ``targets[:, t]`` is the
label of position ``t`` (next-token prediction), and the papers' ``-100`` ignore index becomes weight 0.
An image dataset (:mod:`jaxflash.data.images`) gives ``dict(images=float32 [B, H, W, C], labels=int32
[B], weights=float32 [B])``.

Batches are stateless by step. Row ``r`` of the global batch of ``batch_size`` rows at ``step`` is global
example number ``g = step * batch_size + r``, in epoch ``e = g // num_examples``, and reads example
``permutation(e)[g % num_examples]``. So a run resumed at step ``s`` reads what the uninterrupted run read,
epochs are reshuffled deterministically, and a batch may straddle two epochs. Each process reads its own
contiguous slice of rows of the global batch.

Random streams. Every random draw comes from ``np.random.default_rng`` seeded with a tuple that names
its purpose, so no two purposes share a stream:

* the examples of a generated split: ``[seed, 0, split_index]`` (:func:`split_rng`);
* the order of epoch ``e`` of a split: ``[seed, 1, split_index, e]`` (:meth:`Dataset.permutation`);

where ``split_index`` is 0 for ``"train"`` and 1 for ``"validation"``.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from jaxflash.utils import cdiv, check_int

SPLITS = ("train", "validation")
_GENERATE, _SHUFFLE = 0, 1
Batch = dict[str, np.ndarray]


def check_split(split: str) -> int:
    """The index of ``split`` in :data:`SPLITS`, or a ``ValueError`` listing the accepted splits."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}; got {split!r}")
    return SPLITS.index(split)


def split_rng(seed: int, split: str) -> np.random.Generator:
    """The generator that draws the examples of ``split`` (module docstring)."""
    return np.random.default_rng([seed, _GENERATE, check_split(split)])


def compact_token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype that holds token ids below ``vocab_size``, for storing examples."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if vocab_size - 1 <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.int64)


def _process_rows(batch_size: int, process_index: int, process_count: int) -> np.ndarray:
    """The rows of the global batch that process ``process_index`` of ``process_count`` reads."""
    check_int("batch_size", batch_size)
    check_int("process_count", process_count)
    check_int("process_index", process_index, minimum=0)
    if process_index >= process_count:
        raise ValueError(f"process_index={process_index} must be < process_count={process_count}")
    if batch_size % process_count:
        raise ValueError(
            f"batch_size={batch_size} is not divisible by process_count={process_count}: each process "
            "reads batch_size / process_count rows of the global batch"
        )
    per_process = batch_size // process_count
    return np.arange(process_index * per_process, (process_index + 1) * per_process, dtype=np.int64)


class Dataset:
    """One split of a dataset: ``num_examples`` examples, read by step. Subclasses say how to build a
    batch from example indices (:meth:`_batch`), whose ``weights`` (0 = not scored) every batch has;
    reading by step, sharding over processes and evaluation order live here."""

    def __init__(self, *, name: str, split: str, num_examples: int, seed: int):
        check_split(split)
        self.name = name
        self.split = split
        self.num_examples = check_int("num_examples", num_examples)
        self.seed = check_int("seed", seed, minimum=0)
        self._permutations: dict[int, np.ndarray] = {}

    def __repr__(self) -> str:
        name = type(self).__name__
        return f"{name}(name={self.name!r}, split={self.split!r}, num_examples={self.num_examples})"

    def describe(self) -> str:
        """A few words on what one example is, for a run's summary line."""
        return f"{self.num_examples} examples"

    def _batch(self, indices: np.ndarray) -> Batch:
        """Examples ``indices`` (int64 ``[n]``) as a batch of arrays with ``n`` rows."""
        raise NotImplementedError

    def example(self, index: int) -> Batch:
        """Example ``index`` (in split order) as a batch of one row, that row's axis dropped."""
        check_int("index", index, minimum=0)
        if index >= self.num_examples:
            raise ValueError(f"index={index} is out of range for {self.num_examples} examples")
        return {k: v[0] for k, v in self._batch(np.array([index], np.int64)).items()}

    def permutation(self, epoch: int) -> np.ndarray:
        """The order in which epoch ``epoch`` reads the examples (module docstring). The last two epochs
        asked for are cached: a step's batch reads at most two unless it is longer than an epoch."""
        check_int("epoch", epoch, minimum=0)
        if epoch not in self._permutations:
            rng = np.random.default_rng([self.seed, _SHUFFLE, check_split(self.split), epoch])
            if len(self._permutations) >= 2:
                del self._permutations[min(self._permutations)]
            self._permutations[epoch] = rng.permutation(self.num_examples)
        return self._permutations[epoch]

    def batch(self, step: int, batch_size: int, *, process_index: int = 0, process_count: int = 1) -> Batch:
        """This process's rows ``[process_index * B / P, (process_index + 1) * B / P)`` of the global
        batch of ``B = batch_size`` rows at ``step``, shuffled per epoch (module docstring)."""
        rows = _process_rows(batch_size, process_index, process_count)
        number = check_int("step", step, minimum=0) * batch_size + rows
        epochs, positions = np.divmod(number, self.num_examples)
        indices = np.empty_like(number)
        for epoch in np.unique(epochs):
            here = epochs == epoch
            indices[here] = self.permutation(int(epoch))[positions[here]]
        return self._batch(indices)

    def eval_batches(
        self,
        batch_size: int,
        *,
        max_batches: int | None = None,
        process_index: int = 0,
        process_count: int = 1,
    ) -> Iterator[Batch]:
        """The split in order, ``batch_size`` rows at a time (this process's slice of each), at most
        ``max_batches`` batches. The last batch is padded with rows of weight 0 (every array 0 there), so
        over the whole split every example is scored exactly once."""
        rows = _process_rows(batch_size, process_index, process_count)
        num_batches = cdiv(self.num_examples, batch_size)
        if max_batches is not None:
            num_batches = min(num_batches, check_int("max_batches", max_batches))
        for b in range(num_batches):
            number = b * batch_size + rows
            real = number < self.num_examples
            batch = self._batch(np.where(real, number, 0))
            if not real.all():
                for value in batch.values():
                    value[~real] = 0
            yield batch


class TokenDataset(Dataset):
    """Examples of ``seq_len`` positions over ``vocab_size`` tokens, batched as ``dict(inputs, targets,
    weights)`` (module docstring). Subclasses say how to read rows (:meth:`_rows`)."""

    def __init__(self, *, name: str, split: str, vocab_size: int, seq_len: int, num_examples: int, seed: int):
        super().__init__(name=name, split=split, num_examples=num_examples, seed=seed)
        self.vocab_size = check_int("vocab_size", vocab_size)
        self.seq_len = check_int("seq_len", seq_len)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, split={self.split!r}, vocab_size={self.vocab_size}, "
            f"seq_len={self.seq_len}, num_examples={self.num_examples})"
        )

    def describe(self) -> str:
        return f"seq {self.seq_len}, vocab {self.vocab_size}"

    def _rows(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Examples ``indices`` (int64 ``[n]``) as ``(inputs, targets, weights)``, each ``[n, seq_len]``."""
        raise NotImplementedError

    def _batch(self, indices: np.ndarray) -> Batch:
        inputs, targets, weights = self._rows(indices)
        return dict(
            inputs=np.asarray(inputs, np.int32),
            targets=np.asarray(targets, np.int32),
            weights=np.asarray(weights, np.float32),
        )


class ExampleDataset(TokenDataset):
    """A split held as arrays ``inputs``, ``targets`` (token ids) and ``weights`` (scored positions), each
    ``[num_examples, seq_len]``: the generated synthetic tasks."""

    def __init__(
        self,
        *,
        name: str,
        split: str,
        vocab_size: int,
        seed: int,
        inputs: np.ndarray,
        targets: np.ndarray,
        weights: np.ndarray,
    ):
        if inputs.ndim != 2 or inputs.shape != targets.shape or inputs.shape != weights.shape:
            raise ValueError(
                f"inputs, targets and weights must share one [num_examples, seq_len] shape; got "
                f"{inputs.shape=}, {targets.shape=}, {weights.shape=}"
            )
        num_examples, seq_len = inputs.shape
        super().__init__(
            name=name,
            split=split,
            vocab_size=vocab_size,
            seq_len=seq_len,
            num_examples=num_examples,
            seed=seed,
        )
        if min(inputs.min(), targets.min()) < 0 or max(inputs.max(), targets.max()) >= vocab_size:
            raise ValueError(f"token ids must lie in [0, vocab_size={vocab_size})")
        dtype = compact_token_dtype(vocab_size)
        self._inputs = inputs.astype(dtype)
        self._targets = targets.astype(dtype)
        self._weights = weights.astype(bool)

    def _rows(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self._inputs[indices], self._targets[indices], self._weights[indices]
