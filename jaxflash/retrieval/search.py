"""Exact dense retrieval: the ``k`` best documents of every query by cosine similarity or dot product.

The search BEIR's ``DenseRetrievalExactSearch`` runs for the M2-BERT LoCoV1 evaluation
(``m2/bert/loco_eval.py``, ``score_function="cos_sim"``): score every (query, document) pair and keep the
top ``k``. The corpus is processed in chunks of ``chunk_size`` documents, so at most a
``[num_queries, chunk_size]`` block of scores exists at a time; each chunk's scores are merged into the
running top ``k`` on the device.

Conventions:

* ``score="cos_sim"``: ``<q, d> / (|q| |d|)``, with a zero vector scoring exactly 0 against everything
  (BEIR's ``torch.nn.functional.normalize`` maps a zero vector to zero). ``score="dot"``: ``<q, d>``.
* Scores are float32 (inputs of other float dtypes are cast), the matmul at full f32 precision.
* Results are sorted best first; equal scores are broken by the lower document index, so the output is
  deterministic. Every chunk has the same shape (the last one is padded), so equal documents score
  bitwise alike wherever they sit; a different ``chunk_size`` may move a score by an ulp (the matmul's
  blocking changes), which reorders only documents whose scores differ by that much.
"""

from __future__ import annotations

import functools
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Float, Int

from jaxflash.utils import check_int

SCORES = ("cos_sim", "dot")

# Documents scored per step: with 1,000 queries a chunk is a 64 MiB float32 block of scores.
DEFAULT_CHUNK_SIZE = 16384


def exact_search(
    query_embs: Float[Any, "nq d"],
    doc_embs: Float[Any, "nd d"],
    k: int,
    *,
    score: Literal["cos_sim", "dot"] = "cos_sim",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> tuple[Float[np.ndarray, "nq k"], Int[np.ndarray, "nq k"]]:
    """The ``k`` highest-scoring documents of each query, best first.

    Args:
      query_embs: ``[num_queries, dim]`` query embeddings.
      doc_embs: ``[num_documents, dim]`` document embeddings.
      k: how many documents to return per query; a ``k`` larger than the corpus is clamped to
        ``num_documents`` (every document, ranked).
      score: ``"cos_sim"`` (cosine similarity; zero vectors score 0) or ``"dot"`` (inner product).
      chunk_size: documents scored per step; bounds the score block to ``[num_queries, chunk_size]``.
        The result depends on it only through float32 rounding (see the module docstring).

    Returns:
      ``(scores, indices)``, NumPy arrays of shape ``[num_queries, min(k, num_documents)]``: float32
      scores in descending order and the int64 row indices into ``doc_embs``; equal scores are ordered by
      the lower document index.

    Runs eagerly, a Python loop over the chunks around one compiled step; call it outside ``jit``.

    Raises:
      ValueError: for arrays that are not 2-D, mismatched embedding sizes, an empty query set or corpus,
        non-finite embeddings, ``k`` or ``chunk_size`` not a positive integer, or an unknown ``score``.
    """
    k = check_int("k", k)
    chunk_size = check_int("chunk_size", chunk_size)
    if score not in SCORES:
        raise ValueError(f"score must be one of {SCORES}; got {score!r}")
    queries = _as_matrix("query_embs", query_embs)
    docs = _as_matrix("doc_embs", doc_embs)
    if queries.shape[1] != docs.shape[1]:
        raise ValueError(
            f"query and document embeddings must have the same size; got {queries.shape=} and {docs.shape=}"
        )
    if queries.shape[0] == 0:
        raise ValueError(f"the query set is empty ({queries.shape=}); pass at least one query")
    if docs.shape[0] == 0:
        raise ValueError(f"the corpus is empty ({docs.shape=}); pass at least one document")
    for name, x in (("query_embs", queries), ("doc_embs", docs)):
        if not bool(jnp.isfinite(x).all()):
            raise ValueError(f"{name} holds NaN or infinite values")

    num_queries, num_docs = queries.shape[0], docs.shape[0]
    k = min(k, num_docs)
    chunk = min(chunk_size, num_docs)
    cosine = score == "cos_sim"
    if cosine:
        queries = _unit_rows(queries)

    best_scores = jnp.full((num_queries, k), -jnp.inf, jnp.float32)
    best_indices = jnp.full((num_queries, k), -1, jnp.int32)
    for start in range(0, num_docs, chunk):
        block = docs[start : start + chunk]
        if block.shape[0] < chunk:
            # Every step has the same shape, so the step compiles once; the padding rows are masked out.
            block = jnp.pad(block, ((0, chunk - block.shape[0]), (0, 0)))
        best_scores, best_indices = _merge_chunk(
            best_scores, best_indices, queries, block, jnp.int32(start), jnp.int32(num_docs), cosine=cosine
        )
    scores = np.asarray(best_scores)
    if not np.isfinite(scores).all():
        raise ValueError("the dot products overflowed float32; scale the embeddings down")
    return scores, np.asarray(best_indices).astype(np.int64)


def _as_matrix(name: str, x: Any) -> jax.Array:
    x = jnp.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D [count, dim] array; got shape {x.shape}")
    if not (jnp.issubdtype(x.dtype, jnp.floating) or jnp.issubdtype(x.dtype, jnp.integer)):
        raise ValueError(f"{name} must hold real numbers; got dtype {x.dtype}")
    if x.shape[1] == 0:
        raise ValueError(f"{name} has embeddings of size 0 ({x.shape=})")
    return x.astype(jnp.float32)


def _unit_rows(x: jax.Array) -> jax.Array:
    """Rows scaled to unit norm; zero rows stay zero. Dividing by the largest entry first keeps the squares
    of tiny or huge entries from underflowing or overflowing."""
    peak = jnp.max(jnp.abs(x), axis=-1, keepdims=True)
    x = x / jnp.where(peak > 0, peak, 1.0)
    norm = jnp.linalg.norm(x, axis=-1, keepdims=True)
    return x / jnp.where(norm > 0, norm, 1.0)


def _top_k_rows(scores: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """Top ``k`` of each row, best first, equal scores in column order (the stable top_k).

    ``-0.0`` is folded into ``0.0`` first, because top_k orders floats totally and would otherwise rank a
    document scoring ``+0.0`` above an earlier one scoring ``-0.0``.
    """
    scores = jnp.where(scores == 0, jnp.zeros_like(scores), scores)
    return jax.lax.top_k(scores, k, is_stable=True)


@functools.partial(jax.jit, static_argnames=("cosine",))
def _merge_chunk(
    best_scores: Float[jax.Array, "nq k"],
    best_indices: Int[jax.Array, "nq k"],
    queries: Float[jax.Array, "nq d"],
    block: Float[jax.Array, "c d"],
    start: Int[jax.Array, ""],
    num_docs: Int[jax.Array, ""],
    *,
    cosine: bool,
) -> tuple[Float[jax.Array, "nq k"], Int[jax.Array, "nq k"]]:
    """The running top ``k`` merged with one chunk of documents ``start .. start + c``."""
    if cosine:
        block = _unit_rows(block)
    scores = jax.lax.dot_general(
        queries,
        block,
        (((1,), (1,)), ((), ())),
        precision=jax.lax.Precision.HIGHEST,
        preferred_element_type=jnp.float32,
    )
    doc_ids = start + jnp.arange(block.shape[0], dtype=jnp.int32)
    scores = jnp.where(doc_ids[None, :] < num_docs, scores, -jnp.inf)
    # The running best comes first and holds only lower indices, each part ordered (score desc, index
    # asc); the stable top_k therefore keeps the lower index among equal scores across chunks.
    cand_scores = jnp.concatenate([best_scores, scores], axis=1)
    cand_indices = jnp.concatenate([best_indices, jnp.broadcast_to(doc_ids, scores.shape)], axis=1)
    top_scores, pos = _top_k_rows(cand_scores, best_scores.shape[1])
    return top_scores, jnp.take_along_axis(cand_indices, pos, axis=1)
