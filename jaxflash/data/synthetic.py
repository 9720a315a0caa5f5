"""The papers' synthetic recall tasks, generated with a seeded NumPy generator.

* ``induction_head`` and ``associative_recall``: the H3 paper's in-context-learning synthetics (safari
  ``src/dataloaders/synthetics.py``: ``generate_induction_head``, ``generate_assoc_recall``).
* ``mqar``: multi-query associative recall (zoology ``zoology/data/multiquery_ar.py``).
* ``selective_copying``: the MAD benchmark's selective copying (mad-lab ``mad/data/instances.py``).

Each generator maps ``(rng, n)`` and the task's parameters (named as :class:`jaxflash.data.DataConfig`'s
fields) to ``n`` examples; :func:`synthetic_split` turns them into a split. The examples of a split come
from :func:`jaxflash.data.base.split_rng` (``default_rng([seed, 0, split_index])``), so train and
validation use distinct streams of one ``seed``. The safari tasks deduplicate, as safari does, and
additionally drop from the validation (safari's test) set every example that is also in the train set;
zoology and MAD do neither.

The safari tasks are specified by ``input_seq_len`` (``seq_len`` here), the number of regular tokens
before the query; the model reads the example without its last token: ``input_seq_len + 1`` positions
for the induction head, ``2 * (input_seq_len // 2) + 2`` for associative recall. MQAR and selective
copying are specified by the model's length itself.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from jaxflash.data.base import ExampleDataset, split_rng
from jaxflash.utils import check_int

if TYPE_CHECKING:
    from jaxflash.data.config import DataConfig

COPY_PREFIX = "=>"
NOOP = "."
SYNTHETIC_TASKS = ("induction_head", "associative_recall", "mqar", "selective_copying")
# Rows of the [rows, choices] score matrices drawn at once for sampling without replacement.
_SAMPLE_ELEMENTS = 1 << 22


# --- safari: induction head and associative recall ----------------------------------------------------


def safari_vocab(vocab_size: int) -> list[str]:
    """safari's vocabulary of ``vocab_size`` tokens: the regular tokens ``"0" .. str(vocab_size - 3)`` and
    the specials ``"=>"`` (copy prefix) and ``"."`` (noop), **sorted as strings**; a token's id is its index.
    With ``vocab_size=20``: ``[".", "0", "1", "10", ..., "17", "2", ..., "9", "=>"]``."""
    check_int("vocab_size", vocab_size, minimum=3)
    return sorted([str(i) for i in range(vocab_size - 2)] + [COPY_PREFIX, NOOP])


def _safari_ids(vocab_size: int) -> tuple[int, np.ndarray]:
    """The copy prefix's id and the ids of the regular tokens, in sorted-string order (safari's
    ``non_special_vocab``)."""
    vocab = safari_vocab(vocab_size)
    regular = [i for i, token in enumerate(vocab) if token not in (COPY_PREFIX, NOOP)]
    return vocab.index(COPY_PREFIX), np.array(regular, np.int64)


def check_induction_head(*, vocab_size: int, seq_len: int) -> None:
    check_int("vocab_size", vocab_size, minimum=3)  # at least one regular token
    check_int("seq_len", seq_len, minimum=3)  # the trigger is drawn from [0, seq_len - 2)


def induction_head_examples(rng: np.random.Generator, n: int, *, vocab_size: int, seq_len: int) -> np.ndarray:
    """``n`` induction-head sequences, ``[n, seq_len + 2]`` token ids: ``seq_len`` uniform regular tokens
    with ``"=>"`` written at one trigger position ``p`` in ``[0, seq_len - 2)``, then ``"=>"`` and the token
    that followed the trigger (safari ``generate_induction_head`` with one trigger, induction_len 1)."""
    check_induction_head(vocab_size=vocab_size, seq_len=seq_len)
    copy_prefix, regular = _safari_ids(vocab_size)
    tokens = regular[rng.integers(len(regular), size=(n, seq_len))]
    trigger = rng.integers(seq_len - 2, size=n)
    rows = np.arange(n)
    tokens[rows, trigger] = copy_prefix
    copied = tokens[rows, trigger + 1]
    return np.concatenate([tokens, np.full((n, 1), copy_prefix), copied[:, None]], axis=1)


def check_associative_recall(*, vocab_size: int, seq_len: int) -> None:
    check_int("vocab_size", vocab_size, minimum=4)  # at least one key and one value
    check_int("seq_len", seq_len, minimum=2)  # at least one key-value pair


def associative_recall_examples(
    rng: np.random.Generator, n: int, *, vocab_size: int, seq_len: int
) -> np.ndarray:
    """``n`` associative-recall sequences, ``[n, 2 * (seq_len // 2) + 3]`` token ids (safari
    ``generate_assoc_recall`` with ``num_keys=1, allow_dot=False``).

    Keys are the first half of the sorted regular vocabulary, values the second half. Each example draws
    its own map key -> value (uniform, values may repeat), then ``seq_len // 2`` pairs ``k v`` with keys
    uniform with replacement, then ``"=>" k_q v_q``. ``k_q`` is uniform over all keys and, when it did
    not occur, redrawn uniformly among the keys that did."""
    check_associative_recall(vocab_size=vocab_size, seq_len=seq_len)
    copy_prefix, regular = _safari_ids(vocab_size)
    keys, values = regular[: len(regular) // 2], regular[len(regular) // 2 :]
    num_pairs = seq_len // 2
    rows = np.arange(n)
    value_of = rng.integers(len(values), size=(n, len(keys)))
    pair_keys = rng.integers(len(keys), size=(n, num_pairs))
    present = np.zeros((n, len(keys)), bool)
    present[rows[:, None], pair_keys] = True
    query = rng.integers(len(keys), size=n)
    among_present = np.where(present, rng.random((n, len(keys))), -1.0).argmax(axis=1)
    query = np.where(present[rows, query], query, among_present)
    out = np.empty((n, 2 * num_pairs + 3), np.int64)
    out[:, 0 : 2 * num_pairs : 2] = keys[pair_keys]
    out[:, 1 : 2 * num_pairs : 2] = values[value_of[rows[:, None], pair_keys]]
    out[:, -3] = copy_prefix
    out[:, -2] = keys[query]
    out[:, -1] = values[value_of[rows, query]]
    return out


def _distinct_rows(
    generate: Callable[[np.random.Generator, int], np.ndarray],
    rng: np.random.Generator,
    n: int,
    *,
    exclude: set[bytes],
    what: str,
) -> np.ndarray:
    """``n`` distinct rows from ``generate``, none in ``exclude``, in the order first drawn: safari draws
    the examples, drops duplicates and draws again until it has enough."""
    seen = set(exclude)
    kept: list[np.ndarray] = []
    for _ in range(64):
        missing = n - len(kept)
        if missing == 0:
            return np.stack(kept)
        for row in generate(rng, max(missing, 64)):
            key = row.tobytes()
            if key not in seen and len(kept) < n:
                seen.add(key)
                kept.append(row)
    if len(kept) == n:
        return np.stack(kept)
    raise ValueError(
        f"could draw only {len(kept)} distinct {what} examples of the {n} asked for (the validation set also "
        "excludes the train set); raise vocab_size or seq_len, or lower num_examples / num_test_examples"
    )


# --- zoology: multi-query associative recall ----------------------------------------------------------


def check_mqar(*, vocab_size: int, seq_len: int, num_kv_pairs: int, power_a: float = 0.01) -> None:
    check_int("seq_len", seq_len)
    check_int("vocab_size", vocab_size)
    check_int("num_kv_pairs", num_kv_pairs)
    if seq_len % 2:
        raise ValueError(f"mqar needs an even seq_len (query slots are token pairs); got seq_len={seq_len}")
    if vocab_size <= seq_len:
        raise ValueError(f"mqar needs vocab_size > seq_len; got vocab_size={vocab_size}, seq_len={seq_len}")
    if 4 * num_kv_pairs > seq_len:
        raise ValueError(
            f"mqar needs 4 * num_kv_pairs <= seq_len (2D context tokens and D query slots among the "
            f"(seq_len - 2D) / 2 pairs after it); got num_kv_pairs={num_kv_pairs}, seq_len={seq_len}"
        )
    if not (isinstance(power_a, numbers.Real) and not isinstance(power_a, bool) and 0 < power_a < math.inf):
        raise ValueError(f"power_a must be a finite number > 0 (1 = uniform gaps); got {power_a!r}")


def _distinct_integers(rng: np.random.Generator, n: int, k: int, low: int, high: int) -> np.ndarray:
    """``[n, k]``: per row, ``k`` distinct integers uniform in ``[low, high)``, in random order."""
    out = rng.integers(low, high, size=(n, k))
    for _ in range(8):  # redraw rows with a repeat; few when k is small against high - low
        ordered = np.sort(out, axis=1)
        repeated = (ordered[:, 1:] == ordered[:, :-1]).any(axis=1)
        if not repeated.any():
            return out
        out[repeated] = rng.integers(low, high, size=(int(repeated.sum()), k))
    ordered = np.sort(out, axis=1)
    for row in np.flatnonzero((ordered[:, 1:] == ordered[:, :-1]).any(axis=1)):
        out[row] = low + rng.choice(high - low, size=k, replace=False)
    return out


def _weighted_choice_without_replacement(
    rng: np.random.Generator, n: int, k: int, log_p: np.ndarray
) -> np.ndarray:
    """``[n, k]``: per row, ``k`` distinct indices into ``log_p`` drawn one after another with probabilities
    proportional to ``exp(log_p)`` among those left, as ``np.random.choice(replace=False, p=p)`` does; by
    the Gumbel top-k trick, the ``k`` largest of ``log_p`` plus Gumbel noise."""
    out = np.empty((n, k), np.int64)
    chunk = max(1, _SAMPLE_ELEMENTS // len(log_p))
    for start in range(0, n, chunk):
        scores = log_p + rng.gumbel(size=(min(chunk, n - start), len(log_p)))
        out[start : start + chunk] = np.argsort(-scores, axis=1)[:, :k]
    return out


def mqar_examples(
    rng: np.random.Generator,
    n: int,
    *,
    vocab_size: int,
    seq_len: int,
    num_kv_pairs: int,
    power_a: float,
    random_non_queries: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` MQAR examples as ``(inputs, targets, weights)``, each ``[n, seq_len]`` (zoology
    ``multiquery_ar`` with ``num_passes=1``).

    ``D = num_kv_pairs`` keys from ``[1, V/2)`` and values from ``[V/2, V)``, distinct within an example,
    form the context ``k1 v1 .. kD vD``. Each key is queried once, at offset ``2g`` after the context, the
    ``g`` distinct and drawn from ``0 .. (seq_len - 2D)/2 - 1`` with ``p(g) ∝ (g + 1)^(power_a - 1)``
    (short gaps are likelier). The target at a query is its value; only queries are scored. Every other
    position is 0, or a uniform token from ``[0, V)`` when ``random_non_queries``."""
    check_mqar(vocab_size=vocab_size, seq_len=seq_len, num_kv_pairs=num_kv_pairs, power_a=power_a)
    context = 2 * num_kv_pairs
    keys = _distinct_integers(rng, n, num_kv_pairs, 1, vocab_size // 2)
    values = _distinct_integers(rng, n, num_kv_pairs, vocab_size // 2, vocab_size)
    num_gaps = (seq_len - context) // 2
    log_p = (power_a - 1.0) * np.log(np.arange(1, num_gaps + 1))
    query_at = context + 2 * _weighted_choice_without_replacement(rng, n, num_kv_pairs, log_p)
    rows = np.arange(n)[:, None]
    inputs = np.zeros((n, seq_len), np.int64)
    inputs[:, 0:context:2] = keys
    inputs[:, 1:context:2] = values
    inputs[rows, query_at] = keys
    targets = np.zeros((n, seq_len), np.int64)
    targets[rows, query_at] = values
    weights = np.zeros((n, seq_len), bool)
    weights[rows, query_at] = True
    if random_non_queries:
        noise = rng.integers(vocab_size, size=(n, seq_len))
        inputs = np.where(inputs == 0, noise, inputs)
    return inputs, targets, weights


# --- MAD: selective copying ---------------------------------------------------------------------------


def check_selective_copying(*, vocab_size: int, seq_len: int, num_tokens_to_copy: int) -> None:
    check_int("vocab_size", vocab_size, minimum=3)  # copy, blank and at least one token to copy
    check_int("seq_len", seq_len)
    check_int("num_tokens_to_copy", num_tokens_to_copy)
    if seq_len <= 2 * num_tokens_to_copy + 1:
        raise ValueError(
            f"selective_copying needs seq_len > 2 * num_tokens_to_copy + 1; got seq_len={seq_len}, "
            f"num_tokens_to_copy={num_tokens_to_copy}"
        )


def selective_copying_examples(
    rng: np.random.Generator, n: int, *, vocab_size: int, seq_len: int, num_tokens_to_copy: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` selective-copying examples as ``(inputs, targets, weights)``, each ``[n, seq_len]`` (MAD
    ``generate_selective_copying_instance``).

    With ``copy = V - 1`` and ``blank = V - 2``: ``m = num_tokens_to_copy`` tokens uniform in ``[0, V - 2)``
    with ``seq_len - 2m - 1`` blanks inserted among them, then ``copy`` and ``m`` blanks. The targets are
    the ``m`` tokens, in order, at the final ``m`` positions; only those are scored."""
    check_selective_copying(vocab_size=vocab_size, seq_len=seq_len, num_tokens_to_copy=num_tokens_to_copy)
    m = num_tokens_to_copy
    blank, copy = vocab_size - 2, vocab_size - 1
    num_blanks = seq_len - 2 * m - 1
    to_copy = rng.integers(vocab_size - 2, size=(n, m))
    # MAD's np.insert(tokens, before, blank): each blank goes before one of the m tokens, uniformly (never
    # after the last). MAD draws `before` from the global np.random, not its seeded rng, so its data do
    # not follow from the seed (a bug); here they come from the seeded rng like everything else.
    before = rng.integers(m, size=(n, num_blanks))
    rows = np.arange(n)[:, None]
    blanks_before = np.bincount((rows * m + before).ravel(), minlength=n * m).reshape(n, m)
    position = np.arange(m) + np.cumsum(blanks_before, axis=1)
    inputs = np.full((n, seq_len), blank, np.int64)
    inputs[rows, position] = to_copy
    inputs[:, seq_len - m - 1] = copy
    targets = np.zeros((n, seq_len), np.int64)
    targets[:, seq_len - m :] = to_copy
    weights = np.zeros((n, seq_len), bool)
    weights[:, seq_len - m :] = True
    return inputs, targets, weights


# --- splits -------------------------------------------------------------------------------------------


def check_synthetic(config: DataConfig) -> None:
    """The task's own constraints on ``config`` (task defaults applied)."""
    c = config
    if c.name == "induction_head":
        check_induction_head(vocab_size=c.vocab_size, seq_len=c.seq_len)
    elif c.name == "associative_recall":
        check_associative_recall(vocab_size=c.vocab_size, seq_len=c.seq_len)
    elif c.name == "mqar":
        check_mqar(vocab_size=c.vocab_size, seq_len=c.seq_len, num_kv_pairs=c.num_kv_pairs, power_a=c.power_a)
    elif c.name == "selective_copying":
        check_selective_copying(
            vocab_size=c.vocab_size, seq_len=c.seq_len, num_tokens_to_copy=c.num_tokens_to_copy
        )
    else:
        raise ValueError(f"{c.name!r} is not a synthetic task; accepted: {SYNTHETIC_TASKS}")


def synthetic_split(config: DataConfig, split: str) -> ExampleDataset:
    """Split ``split`` of the synthetic task ``config.name`` (task defaults applied)."""
    c = config
    check_synthetic(c)
    common = dict(name=c.name, split=split, vocab_size=c.vocab_size, seed=c.seed)
    count = c.num_examples if split == "train" else c.num_test_examples
    if c.name == "mqar":
        inputs, targets, weights = mqar_examples(
            split_rng(c.seed, split),
            count,
            vocab_size=c.vocab_size,
            seq_len=c.seq_len,
            num_kv_pairs=c.num_kv_pairs,
            power_a=c.power_a,
            random_non_queries=c.random_non_queries,
        )
        return ExampleDataset(**common, inputs=inputs, targets=targets, weights=weights)
    if c.name == "selective_copying":
        inputs, targets, weights = selective_copying_examples(
            split_rng(c.seed, split),
            count,
            vocab_size=c.vocab_size,
            seq_len=c.seq_len,
            num_tokens_to_copy=c.num_tokens_to_copy,
        )
        return ExampleDataset(**common, inputs=inputs, targets=targets, weights=weights)

    generator = induction_head_examples if c.name == "induction_head" else associative_recall_examples

    def generate(rng: np.random.Generator, n: int) -> np.ndarray:
        return generator(rng, n, vocab_size=c.vocab_size, seq_len=c.seq_len)

    examples = _distinct_rows(
        generate, split_rng(c.seed, "train"), c.num_examples, exclude=set(), what=c.name
    )
    if split == "validation":
        train = {row.tobytes() for row in examples}
        examples = _distinct_rows(generate, split_rng(c.seed, split), count, exclude=train, what=c.name)
    # safari: train scores every position; test only the last (the copied token or the value).
    weights = np.ones(examples[:, 1:].shape, bool)
    if split == "validation":
        weights[:, :-1] = False
    return ExampleDataset(**common, inputs=examples[:, :-1], targets=examples[:, 1:], weights=weights)
