"""Byte-level retrieval encoders (jaxflash.retrieval.encoder): tokens, bucketed encoding that matches
one-by-one encoding, contrastive fine-tuning that separates a toy corpus, positions extended by tiling."""

import numpy as np
import pytest
from flax import nnx
from jaxflash.models import M2Bert, m2_bert_tiny

from jaxflash.retrieval import evaluate, exact_search
from jaxflash.retrieval.encoder import (
    CLS_ID,
    VOCAB_SIZE,
    FinetuneConfig,
    encode_texts,
    finetune_retrieval,
    tokenize,
)
from jaxflash.retrieval.experiments import extend_positions


def _model(max_len=128, dropout=0.0):
    cfg = m2_bert_tiny(vocab_size=VOCAB_SIZE, max_seq_len=max_len, dropout=dropout)
    return M2Bert(cfg, rngs=nnx.Rngs(0))


def test_tokenize_prepends_cls_cuts_and_pads():
    ids, mask = tokenize(["ab", "é" * 10, ""], 6)
    assert ids[0].tolist() == [CLS_ID, 97, 98, 0, 0, 0] and mask[0].tolist() == [1, 1, 1, 0, 0, 0]
    assert mask[1].sum() == 6 and ids[1, 1:3].tolist() == list("é".encode())
    assert mask[2].tolist() == [1, 0, 0, 0, 0, 0]
    with pytest.raises(ValueError, match="not one string"):
        tokenize("abc", 6)


def test_bucketed_batches_encode_as_one_by_one(pooling="cls"):  # "mean": tests/models/test_model_m2.py
    model = _model()
    texts = ["short", "a longer text that crosses the first bucket " * 3, "x", "mid-sized text " * 2]
    together = encode_texts(model, texts, 128, batch_size=3, pooling=pooling)
    alone = np.concatenate([encode_texts(model, [t], 128, batch_size=1, pooling=pooling) for t in texts])
    np.testing.assert_allclose(together, alone, atol=1e-5)
    with pytest.raises(ValueError, match="texts is empty"):
        encode_texts(model, [], 128)


def test_finetuning_separates_a_toy_corpus():
    model = _model(dropout=0.1)  # the dropout streams advance inside the jitted step
    words = ["json", "socket", "random", "zipfile", "math", "queue", "time", "uuid", "heapq", "array"]
    docs = [f"module {w}: {w} functions, {w} classes and {w} data. " * 2 for w in words]
    queries = [f"the {w} module" for w in words]
    qrels = [{i: 1} for i in range(len(docs))]

    def ndcg():
        _, idx = exact_search(encode_texts(model, queries, 32), encode_texts(model, docs, 128), 10)
        return evaluate(idx, qrels)["ndcg@10"]

    before = ndcg()
    # MNRL: from random weights (every cosine near 1) the orthogonal projection loss settles on one
    # embedding for all inputs (every cosine at the batch's fraction of positives), its trivial optimum.
    config = FinetuneConfig(
        loss="mnrl", steps=60, batch_size=4, negatives=2, max_len=128, query_len=32, lr=2e-3
    )
    losses = finetune_retrieval(model, queries, docs, list(range(len(docs))), config)
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
    assert ndcg() > max(before + 0.2, 0.9)


def test_finetune_bad_input():
    model = _model()
    with pytest.raises(ValueError, match="one document index per query"):
        finetune_retrieval(model, ["q"], ["d"], [0, 1])
    with pytest.raises(ValueError, match="batch_size=8 exceeds"):
        finetune_retrieval(model, ["q"], ["d"], [0])
    with pytest.raises(ValueError, match="loss='triplet'"):
        FinetuneConfig(loss="triplet")


def test_extend_positions_tiles_the_pretrained_rows():
    model = _model(max_len=32)
    table = np.asarray(model.pos_emb.embedding[...]).copy()
    extend_positions(model, 10)
    new = np.asarray(model.pos_emb.embedding[...])
    np.testing.assert_array_equal(new[:10], table[:10])
    np.testing.assert_array_equal(new[10:20], table[:10])
    np.testing.assert_array_equal(new[30:], table[:2])
