"""The long-document retrieval experiment of REPRODUCTIONS.md (M2-BERT's LoCo-style table), one command:

    python -m jaxflash.train m2_bert_pydoc      # masked-LM pretraining, runs/m2_bert_pydoc
    python -m jaxflash.train bert_pydoc         # the attention BERT of the same size, runs/bert_pydoc
    python -m jaxflash.retrieval.experiments --m2 runs/m2_bert_pydoc --bert runs/bert_pydoc --out runs/loco

The task is :func:`jaxflash.data.retrieval.python_docs_corpus` (a module's summary as the query, its
pydoc page as the document). For each document length L in ``--lengths`` (tokens the encoder reads:
``[CLS]`` and the page's first L - 1 bytes), each pretrained encoder is fine-tuned on the *train* queries
(:func:`jaxflash.retrieval.encoder.finetune_retrieval`, ``--loss``) and scored on the *test* queries
by exact cosine search over every page (nDCG@1/3/5/10, recall@10); BM25 reads the same L - 1 bytes.
Positions past the pretraining length start as copies of the pretrained ones
(:func:`extend_positions`, as M2-BERT warm-starts 32K from 8K). ``--ablation`` adds MNRL in place of the
orthogonal projection loss at the largest length (the paper's loss ablation). ``--seeds`` are
fine-tuning seeds (the spread). ``--split validation`` scores the validation queries instead, for
choosing settings such as ``--lr``; the test queries are for the table only.

Results go to ``--out``/results.json as they come (a rerun skips what is there); a markdown table is
printed at the end.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import numpy as np

FINETUNE_LR = 1e-4


def extend_positions(model, trained_len: int) -> None:
    """Fills ``model.pos_emb`` rows at and past ``trained_len`` with copies of rows ``[0, trained_len)``
    (tiled), so a longer input starts from pretrained positions rather than random ones."""
    import jax.numpy as jnp

    table = np.asarray(model.pos_emb.embedding[...])
    if trained_len >= table.shape[0]:
        return
    reps = -(-table.shape[0] // trained_len)
    model.pos_emb.embedding.set_value(jnp.asarray(np.tile(table[:trained_len], (reps, 1))[: table.shape[0]]))


def _cut(texts, length: int) -> list[str]:
    return [t.encode("utf-8")[:length].decode("utf-8", "ignore") for t in texts]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m jaxflash.retrieval.experiments", description=__doc__.split("\n")[0]
    )
    p.add_argument("--m2", required=True, help="workdir of python -m jaxflash.train m2_bert_pydoc")
    p.add_argument("--bert", help="workdir of python -m jaxflash.train bert_pydoc (the attention encoder)")
    p.add_argument("--out", required=True)
    p.add_argument("--lengths", type=int, nargs="+", default=[128, 512, 2048, 8192])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--loss", choices=("opl", "mnrl"), default="opl")
    p.add_argument("--lr", type=float, default=FINETUNE_LR)
    p.add_argument("--pooling", choices=("cls", "mean"), default="cls", help="the embedding (M2Bert.embed)")
    p.add_argument(
        "--split", choices=("validation", "test"), default="test", help="validation: for choosing settings"
    )
    p.add_argument("--ablation", action="store_true", help="also MNRL at the largest length")
    p.add_argument("--bert-max-length", type=int, default=8192, help="skip the attention encoder above this")
    args = p.parse_args(argv)

    from jaxflash.data.retrieval import python_docs_corpus
    from jaxflash.retrieval import BM25, evaluate, exact_search
    from jaxflash.retrieval.encoder import FinetuneConfig, encode_texts, finetune_retrieval
    from jaxflash.train import config as config_lib
    from jaxflash.train import load_model

    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    results = json.loads(path.read_text()) if path.exists() else {}

    def record(name, values):
        results[name] = values
        path.write_text(json.dumps(results, indent=2) + "\n")
        print(name, {k: round(v, 4) if isinstance(v, float) else v for k, v in values.items()}, flush=True)

    corpus = python_docs_corpus()
    train_q, train_rel = corpus.queries["train"], corpus.qrels["train"]
    test_q, test_rel = corpus.queries[args.split], list(corpus.qrels[args.split])
    positives = [next(iter(r)) for r in train_rel]
    encoders = {"M2-BERT": args.m2} | ({"attention BERT": args.bert} if args.bert else {})
    runs = [(args.loss, length) for length in args.lengths]
    if args.ablation:
        runs.append(("mnrl" if args.loss == "opl" else "opl", max(args.lengths)))
    for length in args.lengths:
        name = f"BM25 | L={length}"
        if name not in results:
            _, idx = BM25().fit(_cut(corpus.documents, length - 1)).search(list(test_q), 10)
            record(name, evaluate(idx, test_rel))
    for encoder, workdir in encoders.items():
        pretrain_len = config_lib.loads((pathlib.Path(workdir) / "config.json").read_text()).data.seq_len
        for loss, length in runs:
            if encoder == "attention BERT" and length > args.bert_max_length:
                continue
            name = f"{encoder} {loss.upper()} | L={length}"
            if name in results:
                continue
            per_seed, seconds = [], []
            for seed in args.seeds:
                model = load_model(workdir)
                extend_positions(model, pretrain_len)
                config = FinetuneConfig(
                    loss=loss, steps=args.steps, max_len=length, seed=seed, lr=args.lr, pooling=args.pooling
                )
                start = time.perf_counter()
                finetune_retrieval(model, train_q, corpus.documents, positives, config, log_every=50)
                seconds.append(time.perf_counter() - start)
                q = encode_texts(model, test_q, config.query_len, pooling=args.pooling)
                d = encode_texts(model, corpus.documents, length, pooling=args.pooling)
                _, idx = exact_search(q, d, 10)
                per_seed.append(evaluate(idx, test_rel))
            values = {}
            for k in per_seed[0]:
                v = np.array([r[k] for r in per_seed], np.float64)
                values[k] = float(v.mean())
                if k.startswith(("ndcg", "recall")):
                    values[f"{k}_std"] = float(v.std(ddof=1)) if len(v) > 1 else 0.0
            values["finetune_s"] = float(np.mean(seconds))
            record(name, values)
    print(markdown(results))
    return 0


def markdown(results: dict) -> str:
    lines = ["| model | loss | L (bytes) | nDCG@1 | nDCG@10 | recall@10 |", "|---|---|---|---|---|---|"]
    for name, r in results.items():
        model, length = name.split(" | L=")
        loss = ""
        if model != "BM25":
            model, loss = model.rsplit(" ", 1)

        def cell(k, r=r):
            return f"{r[k]:.3f}" + (f" ± {r[k + '_std']:.3f}" if f"{k}_std" in r else "")

        lines.append(
            f"| {model} | {loss} | {length} | {cell('ndcg@1')} | {cell('ndcg@10')} | {cell('recall@10')} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
