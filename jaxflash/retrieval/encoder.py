"""Byte-level retrieval encoders: texts to ids, ids to embeddings, and contrastive fine-tuning.

Tokens. A text becomes ``[CLS]`` followed by its UTF-8 bytes, cut to ``max_len`` tokens and right-padded
(:func:`tokenize`): ids 0-255 are bytes, :data:`CLS_ID` = 256, and the mask token of masked-LM
pretraining is the model's last id (``jaxflash.train.MaskedLMConfig``; the ``m2_bert_pydoc`` preset's
vocabulary is :data:`VOCAB_SIZE` = 259). Padding is id 0 (byte 0 is not in text) with mask 0.

Encoding. :func:`encode_texts` embeds a list of texts with any encoder that has
``embed(input_ids, attention_mask, pooling=...)`` (:class:`jaxflash.models.M2Bert`, with the M2 mixer or
self-attention): the texts are sorted by length and batched in length buckets (powers of two up to
``max_len``), which changes nothing because a padded sequence embeds as the unpadded one does.

Fine-tuning. :func:`finetune_retrieval` trains the encoder on (query, relevant document) pairs with
in-batch negatives and ``negatives`` further random documents per batch, under M2-BERT's orthogonal
projection loss (``"opl"``, :func:`jaxflash.losses.orthogonal_projection_loss`, the paper's final
recipe) or sentence-transformers' multiple-negatives ranking loss (``"mnrl"``); AdamW, linear warmup
and decay, gradient norm clipped to 1 (the paper's settings, ``shared/reference/models.md`` 5.2, with a
learning rate for a model this small).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxflash.utils import check_int, check_real

CLS_ID = 256
VOCAB_SIZE = 259  # bytes, [CLS], [SEP], [MASK]
LOSSES = ("opl", "mnrl")
MIN_BUCKET = 64


def tokenize(texts: Sequence[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, mask)``, int32 ``[n, max_len]``: ``[CLS]`` + the text's UTF-8 bytes, cut to ``max_len``."""
    check_int("max_len", max_len, minimum=2)
    if isinstance(texts, str):
        raise ValueError("texts must be a sequence of strings, not one string")
    ids = np.zeros((len(texts), max_len), np.int32)
    mask = np.zeros((len(texts), max_len), np.int32)
    for i, text in enumerate(texts):
        data = np.frombuffer(text.encode("utf-8")[: max_len - 1], np.uint8)
        ids[i, 0] = CLS_ID
        ids[i, 1 : 1 + len(data)] = data
        mask[i, : 1 + len(data)] = 1
    return ids, mask


def _bucket(length: int, max_len: int) -> int:
    size = MIN_BUCKET
    while size < length:
        size *= 2
    return min(size, max_len)


def encode_texts(
    model: Any, texts: Sequence[str], max_len: int, *, batch_size: int = 16, pooling: str = "cls"
) -> np.ndarray:
    """float32 ``[n, d]`` embeddings of ``texts``, each cut to ``max_len`` tokens (module docstring)."""
    import jax
    from flax import nnx

    check_int("batch_size", batch_size)
    if len(texts) == 0:
        raise ValueError("texts is empty: nothing to encode")
    ids, mask = tokenize(texts, max_len)
    lengths = mask.sum(1)
    order = np.argsort(lengths, kind="stable")
    graphdef, state = nnx.split(model)

    @jax.jit
    def embed(state, ids, mask):
        return nnx.merge(graphdef, state).embed(ids, mask, pooling=pooling)

    out = None
    for start in range(0, len(texts), batch_size):
        rows = order[start : start + batch_size]
        width = _bucket(int(lengths[rows].max()), max_len)
        pad = batch_size - len(rows)  # a fixed batch: one compile per bucket
        batch_ids = np.pad(ids[rows, :width], ((0, pad), (0, 0)))
        batch_mask = np.pad(mask[rows, :width], ((0, pad), (0, 0)))
        batch_mask[len(rows) :, 0] = 1  # padding rows: a lone [CLS] (ignored)
        emb = np.asarray(embed(state, batch_ids, batch_mask))[: len(rows)]
        if out is None:
            out = np.zeros((len(texts), emb.shape[1]), np.float32)
        out[rows] = emb
    return out


@dataclasses.dataclass(frozen=True, kw_only=True)
class FinetuneConfig:
    """Contrastive fine-tuning of a retrieval encoder (module docstring)."""

    loss: str = "opl"  # "opl" (orthogonal projection loss) or "mnrl" (multiple negatives ranking)
    steps: int = 200
    batch_size: int = 8  # queries per step, each with its relevant document (in-batch negatives)
    negatives: int = 8  # further random documents per step
    max_len: int = 2048  # document tokens the encoder sees
    query_len: int = 128
    lr: float = 1e-4
    warmup_fraction: float = 0.06
    weight_decay: float = 0.01
    mnrl_scale: float = 20.0
    pooling: str = "cls"
    seed: int = 0

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise ValueError(f"loss={self.loss!r}; choose one of {LOSSES}")
        for name in ("steps", "batch_size", "max_len", "query_len"):
            check_int(name, getattr(self, name))
        check_int("negatives", self.negatives, minimum=0)
        check_real("lr", self.lr, above=0)
        check_real("warmup_fraction", self.warmup_fraction, at_least=0, below=1)
        check_real("weight_decay", self.weight_decay, at_least=0)
        check_real("mnrl_scale", self.mnrl_scale, above=0)


def finetune_optimizer(lr: float, steps: int, warmup_fraction: float, weight_decay: float):
    """AdamW under linear warmup over ``warmup_fraction`` of ``steps`` then linear decay to 0, gradient
    norm clipped to 1 (M2-BERT's fine-tuning recipe)."""
    import optax

    warmup = int(warmup_fraction * steps)
    schedule = optax.join_schedules(
        [optax.linear_schedule(0.0, lr, max(warmup, 1)), optax.linear_schedule(lr, 0.0, steps - warmup)],
        [warmup],
    )
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=weight_decay))


def finetune_retrieval(
    model: Any,
    queries: Sequence[str],
    documents: Sequence[str],
    positives: Sequence[int],
    config: FinetuneConfig = FinetuneConfig(),
    *,
    log_every: int = 0,
) -> list[float]:
    """Fine-tunes ``model`` in place on ``queries[i]`` -> ``documents[positives[i]]`` and returns the loss
    of every step. Each step draws ``batch_size`` queries (distinct documents) and ``negatives`` random
    other documents from ``config.seed``."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from jaxflash.losses import multiple_negatives_ranking_loss, orthogonal_projection_loss
    from jaxflash.train.step import Sums, init_state, make_train_step, split_model

    positives = np.asarray(positives, np.int64)
    if len(queries) == 0 or len(documents) == 0:
        raise ValueError(f"need queries and documents; got {len(queries)} and {len(documents)}")
    if positives.shape != (len(queries),):
        raise ValueError(f"positives must hold one document index per query; got shape {positives.shape}")
    if positives.min() < 0 or positives.max() >= len(documents):
        raise ValueError(f"positives must index documents [0, {len(documents)}); got {positives.min()}..")
    c = config
    if len(set(positives.tolist())) < c.batch_size:
        raise ValueError(
            f"batch_size={c.batch_size} exceeds the {len(set(positives.tolist()))} distinct positives"
        )
    q_ids, q_mask = tokenize(queries, c.query_len)
    d_ids, d_mask = tokenize(documents, c.max_len)
    tx = finetune_optimizer(c.lr, c.steps, c.warmup_fraction, c.weight_decay)
    model.train()
    graphdef, _, _ = split_model(model)
    state = init_state(model, tx, jax.random.key(c.seed))

    def loss_fn(m, batch, key, *, train=True):
        q = m.embed(batch["query_ids"], batch["query_mask"], pooling=c.pooling)
        d = m.embed(batch["doc_ids"], batch["doc_mask"], pooling=c.pooling)
        if c.loss == "opl":
            loss = orthogonal_projection_loss(q, d, jnp.eye(q.shape[0], d.shape[0]))
        else:
            loss = multiple_negatives_ranking_loss(q, d, scale=c.mnrl_scale)
        one = jnp.ones((), jnp.float32)
        return Sums(loss=loss, weight=one, correct=jnp.zeros((), jnp.float32))

    step = jax.jit(make_train_step(graphdef, tx, loss_fn))
    rng = np.random.default_rng(c.seed)
    losses = []
    for s in range(c.steps):
        rows, seen = [], set()
        for i in rng.permutation(len(queries)):
            if positives[i] not in seen:
                rows.append(i)
                seen.add(int(positives[i]))
            if len(rows) == c.batch_size:
                break
        others = np.setdiff1d(np.arange(len(documents)), list(seen))
        extra = rng.choice(others, size=min(c.negatives, len(others)), replace=False)
        docs = np.concatenate([positives[rows], extra])
        batch = dict(
            query_ids=q_ids[rows], query_mask=q_mask[rows], doc_ids=d_ids[docs], doc_mask=d_mask[docs]
        )
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
        if log_every and (s + 1) % log_every == 0:
            print(f"finetune step {s + 1}/{c.steps}: {c.loss} loss {np.mean(losses[-log_every:]):.4f}")
    if int(state.bad_step) >= 0:
        raise FloatingPointError(
            f"the {c.loss} loss became non-finite at step {int(state.bad_step)}; lower lr"
        )
    nnx.update(model, state.params, state.rest)
    model.eval()
    return losses
