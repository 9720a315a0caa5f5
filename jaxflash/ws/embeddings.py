"""A dependency-free text embedding for Epoxy/Liger when no pre-trained encoder is available.

``hashed_ngram_embeddings``: TF-IDF over hashed word unigrams/bigrams and character trigrams, L2
normalised; deterministic (crc32 hashing), no download. It is the documented fallback for the papers'
pre-trained embeddings (BERT for YouTube spam in Epoxy), which no package here ships with weights.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence

import numpy as np

_WORD = re.compile(r"[a-z0-9]+")


def _features(text: str) -> list[str]:
    words = _WORD.findall(text.lower())
    feats = [f"w:{w}" for w in words] + [f"b:{a}_{b}" for a, b in zip(words, words[1:], strict=False)]
    squashed = " ".join(words)
    feats += [f"c:{squashed[i : i + 3]}" for i in range(max(len(squashed) - 2, 0))]
    return feats


def hashed_ngram_embeddings(
    texts: Sequence[str], dim: int = 512, *, idf_from: Sequence[str] | None = None
) -> np.ndarray:
    """``[len(texts), dim]`` float32 TF-IDF embeddings of hashed n-grams (see module docstring).

    ``idf_from``: corpus for the document frequencies (pass the training texts so every split uses the
    same weights); defaults to ``texts``.
    """
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")

    def counts(corpus: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(corpus), dim), np.float32)
        for r, text in enumerate(corpus):
            for f in _features(text):
                out[r, zlib.crc32(f.encode()) % dim] += 1.0
        return out

    tf = counts(texts)
    ref = tf if idf_from is None else counts(idf_from)
    df = (ref > 0).sum(axis=0)
    idf = np.log((1 + ref.shape[0]) / (1 + df)) + 1.0
    x = np.log1p(tf) * idf[None, :].astype(np.float32)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.where(norm > 0, norm, 1.0)).astype(np.float32)
