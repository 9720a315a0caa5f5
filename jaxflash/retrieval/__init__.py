"""Retrieval and its evaluation, as BEIR runs it for M2-BERT on LoCoV1.

* :func:`exact_search`: exact dense search by cosine similarity or dot product, chunked over the corpus.
* :class:`BM25`: lexical BM25 over the ``bm25s`` package (``pip install "jaxflash[retrieval]"``), with the
  same ``(scores, indices)`` output.
* :func:`evaluate`, :func:`ndcg_at_k`, :func:`recall_at_k`, :func:`precision_at_k`, :func:`mrr_at_k`:
  trec_eval's (pytrec_eval's) ranking metrics on an index ranking or a BEIR dict run.
* :mod:`jaxflash.retrieval.encoder`: byte-level texts to ids, embeddings of a text list with an encoder
  (``jaxflash.models.M2Bert.embed``), contrastive fine-tuning (:func:`finetune_retrieval`, OPL or MNRL).
* ``python -m jaxflash.retrieval.experiments``: the long-document retrieval table of REPRODUCTIONS.md.
* :mod:`jaxflash.retrieval.tabi`: TABi's type-aware bi-encoder on WordNet's ambiguous nouns
  (:mod:`jaxflash.data.wordnet`); ``python -m jaxflash.retrieval.tabi`` runs its table.
"""

from jaxflash.retrieval.bm25 import BM25
from jaxflash.retrieval.encoder import FinetuneConfig, encode_texts, finetune_retrieval, tokenize
from jaxflash.retrieval.metrics import evaluate, mrr_at_k, ndcg_at_k, precision_at_k, recall_at_k
from jaxflash.retrieval.search import exact_search

__all__ = [
    "BM25",
    "FinetuneConfig",
    "encode_texts",
    "evaluate",
    "exact_search",
    "finetune_retrieval",
    "mrr_at_k",
    "ndcg_at_k",
    "precision_at_k",
    "recall_at_k",
    "tokenize",
]
