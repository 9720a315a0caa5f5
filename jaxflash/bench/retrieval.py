"""Retrieval: encoding throughput of M2-BERT against the attention BERT, and exact-search latency.

Encoding cases, one per sequence length (512 to 8K tokens by default): the ``m2_bert_pydoc`` preset's
encoder (4 layers, width 128, the M2 mixer) and ``bert_pydoc``'s (the same BERT with self-attention,
m2's ``monarch_mixer_sequence_mixing=False``) embed a batch of :data:`BATCH` real pydoc pages
(:func:`jaxflash.data.retrieval.python_docs_corpus`, the longest ones, cut to the length; every row is
full; ``--quick``: repeated text and a 1-layer width-32 encoder) with a jitted ``embed`` (inference,
CLS pooling). Weights are random: the speed does not depend on training. The baseline is the attention
BERT, so the ratio is M2-BERT's speed-up; the rate column is tokens/s (documents/s = tokens/s / length).

Search cases: :func:`jaxflash.retrieval.exact_search` of :data:`NUM_QUERIES` queries over ``n``
documents (unit random embeddings, width 128, k = 10), against NumPy's ``argpartition`` of the same
score matrix, same run.
"""

from __future__ import annotations

import functools

from jaxflash.bench.harness import Candidate, Case, Suite

BATCH = 4
DEFAULT_LENGTHS = (512, 1024, 2048, 4096, 8192)
QUICK_LENGTHS = (128,)
NUM_QUERIES = 256
SEARCH_SIZES = (325, 100_000)  # the pydoc corpus, and a larger collection
QUICK_SEARCH_SIZES = (325,)
K = 10
WIDTH = 128


@functools.lru_cache(maxsize=1)
def _longest_pages() -> list[str]:
    from jaxflash.data.retrieval import python_docs_corpus

    return sorted(python_docs_corpus().documents, key=len, reverse=True)[:BATCH]


def _documents(length: int, quick: bool):
    from jaxflash.retrieval.encoder import tokenize

    # --quick skips rendering the pydoc pages (a minute): any full rows time the same.
    docs = [f"document {i} " * length for i in range(BATCH)] if quick else _longest_pages()
    return tokenize(docs, length)


def encode_thunk(monarch: bool, length: int, *, quick: bool = False):
    import dataclasses

    import jax
    from flax import nnx

    from jaxflash.models import M2Bert
    from jaxflash.train import presets

    config = presets.get("m2_bert_pydoc" if monarch else "bert_pydoc").model
    config = dataclasses.replace(config, max_seq_len=max(length, 128))
    if quick:
        config = dataclasses.replace(config, n_layers=1, d_model=32, d_inner=64)
    model = M2Bert(config, rngs=nnx.Rngs(0))
    model.eval()
    ids, mask = _documents(length, quick)
    graphdef, state = nnx.split(model)

    @jax.jit
    def embed(state, ids, mask):
        return nnx.merge(graphdef, state).embed(ids, mask)

    return lambda: jax.block_until_ready(embed(state, ids, mask))


def _embeddings(n: int, seed: int):
    import numpy as np

    x = np.random.default_rng(seed).normal(size=(n, WIDTH)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def search_thunk(num_docs: int):
    from jaxflash.retrieval import exact_search

    q, d = _embeddings(NUM_QUERIES, 0), _embeddings(num_docs, 1)
    return lambda: exact_search(q, d, K)


def numpy_search_thunk(num_docs: int):
    import numpy as np

    q, d = _embeddings(NUM_QUERIES, 0), _embeddings(num_docs, 1)

    def search():
        scores = q @ d.T
        k = min(K, num_docs)
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
        return np.take_along_axis(top, order, axis=1)

    return search


def _cases(sizes, quick: bool) -> list[Case]:
    cases = []
    for length in sizes or (QUICK_LENGTHS if quick else DEFAULT_LENGTHS):
        candidates = (
            Candidate("attention BERT", functools.partial(encode_thunk, False, length, quick=quick)),
            Candidate("M2-BERT", functools.partial(encode_thunk, True, length, quick=quick)),
        )
        config = {"task": "encode", "length": length, "batch": BATCH}
        cases.append(
            Case(
                config=config,
                candidates=candidates,
                baseline="attention BERT",
                rate=("token", BATCH * length),
            )
        )
    for n in QUICK_SEARCH_SIZES if quick else SEARCH_SIZES:
        candidates = (
            Candidate("numpy argpartition", functools.partial(numpy_search_thunk, n), peer=True),
            Candidate("exact_search", functools.partial(search_thunk, n)),
        )
        config = {"task": "search", "length": n, "batch": NUM_QUERIES}
        cases.append(
            Case(
                config=config,
                candidates=candidates,
                baseline="numpy argpartition",
                rate=("query", NUM_QUERIES),
            )
        )
    return cases


SUITE = Suite(
    name="retrieval",
    description="encoding throughput (M2-BERT vs attention BERT, 512-8K tokens) and exact-search latency",
    cases=_cases,
)
