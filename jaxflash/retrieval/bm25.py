r"""BM25 lexical retrieval over the ``bm25s`` package, with :func:`~jaxflash.retrieval.exact_search`'s output.

BM25 is LoCoV1's strongest classical baseline (79.9 average nDCG@10 in the M2-BERT retrieval paper). For
the ``"lucene"`` variant (the default, as in ``bm25s``) the score of document :math:`d` for query
:math:`q` is

.. math::  \sum_{t \in q} \ln\Big(1 + \frac{N - n_t + 0.5}{n_t + 0.5}\Big)
           \frac{f_{t,d}}{f_{t,d} + k_1 (1 - b + b\,|d| / \mathrm{avgdl})},

with :math:`N` documents, :math:`n_t` of them containing :math:`t`, :math:`f_{t,d}` the count of
:math:`t` in :math:`d`, and lengths counted in tokens after tokenisation; a term repeated in the query
counts once per occurrence. Lucene drops BM25's constant :math:`(k_1 + 1)` factor, which changes no ranking.

Tokenisation is ``bm25s.tokenize``: lower-cased, words of two or more word characters (scikit-learn's
``CountVectorizer`` pattern), English stopwords removed unless ``stopwords=False``, no stemming.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np
from jaxtyping import Float, Int

from jaxflash.retrieval.search import _top_k_rows
from jaxflash.utils import check_int, check_real

METHODS = ("lucene", "robertson", "atire", "bm25l", "bm25+")

# Scores held at once while searching: queries are scored in blocks of about this many (query, document)
# pairs (64 MiB of float32).
_SCORE_BLOCK = 1 << 24


def _import_bm25s() -> Any:
    try:
        import bm25s
    except ImportError as err:
        raise ImportError('BM25 needs the bm25s package: pip install "jaxflash[retrieval]"') from err
    return bm25s


class BM25:
    """BM25 index over a list of documents: ``BM25().fit(documents).search(queries, k)``.

    Args:
      k1: term-frequency saturation, ``>= 0``.
      b: length normalisation, in ``[0, 1]``.
      method: the BM25 variant of ``bm25s``: ``"lucene"`` (default), ``"robertson"``, ``"atire"``,
        ``"bm25l"`` or ``"bm25+"``.
      stopwords: remove English stopwords (``bm25s``'s list) from documents and queries.
    """

    def __init__(self, k1: float = 1.5, b: float = 0.75, method: str = "lucene", *, stopwords: bool = True):
        self.k1 = check_real("k1", k1, at_least=0.0)
        self.b = check_real("b", b, at_least=0.0, at_most=1.0)
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}; got {method!r}")
        if not isinstance(stopwords, bool):
            raise ValueError(f"stopwords must be True or False; got {stopwords!r}")
        self.method = method
        self.stopwords = stopwords
        self._bm25s = _import_bm25s()
        self._index: Any = None
        self.num_documents = 0

    def fit(self, documents: Sequence[str]) -> BM25:
        """Index ``documents`` (replacing any earlier index); returns ``self``."""
        tokens = self._tokenize("documents", documents)
        if not any(tokens):
            raise ValueError(
                "no document has a token left after tokenisation (lower-casing, words of 2+ characters"
                f"{', stopword removal' if self.stopwords else ''}); nothing to index"
            )
        index = self._bm25s.BM25(k1=self.k1, b=self.b, method=self.method, backend="numpy")
        index.index(tokens, show_progress=False)
        self._index = index
        self.num_documents = len(tokens)
        return self

    def search(
        self, queries: Sequence[str], k: int
    ) -> tuple[Float[np.ndarray, "nq k"], Int[np.ndarray, "nq k"]]:
        """The ``k`` best documents of each query, best first, as :func:`~jaxflash.retrieval.exact_search`
        returns them: ``(scores, indices)`` of shape ``[num_queries, min(k, num_documents)]``, float32 scores
        and int64 indices into the fitted documents, equal scores ordered by the lower index. A query with no
        indexed term scores 0 everywhere (and so ranks documents ``0, 1, ...``)."""
        if self._index is None:
            raise RuntimeError("BM25.search before fit: call fit(documents) first")
        k = min(check_int("k", k), self.num_documents)
        tokens = self._tokenize("queries", queries)
        rows = max(1, _SCORE_BLOCK // self.num_documents)
        top_scores, top_indices = [], []
        for start in range(0, len(tokens), rows):
            block = tokens[start : start + rows]
            scores = np.zeros((len(block), self.num_documents), np.float32)
            for q, query in enumerate(block):
                if query:
                    scores[q] = self._index.get_scores(query)
            s, i = _top_k_rows(jnp.asarray(scores), k)
            top_scores.append(np.asarray(s))
            top_indices.append(np.asarray(i, np.int64))
        return np.concatenate(top_scores), np.concatenate(top_indices)

    def _tokenize(self, name: str, texts: Sequence[str]) -> list[list[str]]:
        if isinstance(texts, str) or not isinstance(texts, Sequence):
            raise ValueError(f"{name} must be a list of strings; got {type(texts).__name__}")
        if len(texts) == 0:
            kind = "corpus" if name == "documents" else "query set"
            raise ValueError(f"the {kind} is empty; pass at least one string in {name}")
        bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
        if bad is not None:
            raise ValueError(
                f"{name} must be a list of strings; {name}[{bad}] is {type(texts[bad]).__name__}"
            )
        return self._bm25s.tokenize(
            list(texts),
            lower=True,
            stopwords="en" if self.stopwords else None,
            return_ids=False,
            show_progress=False,
        )
