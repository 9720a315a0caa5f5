"""``python -m jaxflash.inference generate --checkpoint DIR --prompt TEXT``: continue a prompt with a model
trained by ``python -m jaxflash.train``; ``python -m jaxflash.inference distill --checkpoint DIR --orders 4 8
16 32``: distil its Hyena filters (Laughing Hyena) and print the validation loss of each order against the
convolutional model, with the filters' relative errors, as a markdown table.

A byte-level model (vocabulary 256, the default corpora's) takes ``--prompt`` as UTF-8 text and prints
text; any model takes ``--tokens 1,2,3`` and prints token ids. ``--stream`` prints the first prompt's
continuation as it is generated. Exit status 2 on a bad argument, with the reason.
"""

from __future__ import annotations

import argparse
import codecs
import sys
from collections.abc import Sequence

import numpy as np

BYTES = 256


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m jaxflash.inference", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="continue a prompt with a trained checkpoint")
    gen.add_argument("--checkpoint", required=True, help="a jaxflash.train workdir (holds config.json)")
    gen.add_argument("--step", type=int, default=None, help="a saved step (default: the newest)")
    what = gen.add_mutually_exclusive_group(required=True)
    what.add_argument("--prompt", action="append", help="UTF-8 text (byte-level models); repeat for a batch")
    what.add_argument("--tokens", action="append", help="comma-separated token ids; repeat for a batch")
    gen.add_argument("--max-new-tokens", type=int, default=64)
    gen.add_argument("--temperature", type=float, default=1.0, help="0 is greedy decoding")
    gen.add_argument("--top-k", type=int, default=None)
    gen.add_argument("--top-p", type=float, default=None)
    gen.add_argument("--stop", default="", help="comma-separated stop token ids")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--stream", action="store_true", help="print the first prompt's tokens as they come")
    dis = sub.add_parser("distill", help="distil a trained Hyena LM's filters; validation loss per order")
    dis.add_argument("--checkpoint", required=True, help="a jaxflash.train workdir (holds config.json)")
    dis.add_argument("--step", type=int, default=None)
    dis.add_argument("--orders", type=int, nargs="+", default=[4, 8, 16, 32])
    dis.add_argument("--steps", type=int, default=300, help="Adam steps of each fit (0: Prony only)")
    dis.add_argument("--eval-batches", type=int, default=None, help="default: the run's eval_batches")
    return parser


def validation_loss(model, config, eval_batches: int | None = None) -> float:
    """Mean next-token cross-entropy (nats) of ``model`` over the run's validation batches."""
    import jax
    from flax import nnx

    from jaxflash.data import make_dataset
    from jaxflash.train.step import next_token_loss

    data = make_dataset(config.data, "validation")
    fn = nnx.jit(lambda m, b: next_token_loss(m, b, jax.random.key(0), train=False))
    loss = weight = 0.0
    for batch in data.eval_batches(config.batch_size, max_batches=eval_batches or config.eval_batches):
        sums = fn(model, batch)
        loss, weight = loss + float(sums.loss), weight + float(sums.weight)
    return loss / max(weight, 1.0)


def distill_table(workdir, orders, *, step=None, steps: int = 300, eval_batches: int | None = None) -> str:
    """The markdown table ``distill`` prints (module docstring)."""
    import math
    import pathlib

    from jaxflash.inference.distill import distill_hyena
    from jaxflash.train import config as config_lib
    from jaxflash.train.checkpoint import load_model

    model = load_model(workdir, step=step)
    model.eval()
    config = config_lib.loads((pathlib.Path(workdir) / "config.json").read_text())
    base = validation_loss(model, config, eval_batches)
    rows = [
        "| model | filter rel. l2 error (median / max) | val loss (nats/token) | val perplexity "
        "| loss - conv |",
        "|---|---|---|---|---|",
        f"| Hyena (convolution) | - | {base:.4f} | {math.exp(base):.3f} | 0 |",
    ]
    for order in orders:
        distilled, report = distill_hyena(model, order, steps=steps)
        errors = np.concatenate([fit.rel_error for fit in report.layers.values()])
        loss = validation_loss(distilled, config, eval_batches)
        rows.append(
            f"| distilled, order {order} | {np.median(errors):.2e} / {errors.max():.2e} | {loss:.4f} | "
            f"{math.exp(loss):.3f} | {loss - base:+.4f} |"
        )
    return "\n".join(rows)


def _ids(text: str, what: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"error: {what} must be comma-separated integers; got {text!r}") from None


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "distill":
        try:
            print(
                distill_table(
                    args.checkpoint,
                    args.orders,
                    step=args.step,
                    steps=args.steps,
                    eval_batches=args.eval_batches,
                )
            )
        except (FileNotFoundError, ValueError, NotImplementedError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        return 0
    import jax

    from jaxflash.data import decode_bytes, encode_bytes
    from jaxflash.inference.generate import generate
    from jaxflash.train.checkpoint import load_model

    try:
        model = load_model(args.checkpoint, step=args.step)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    byte_level = model.config.vocab_size == BYTES
    if args.prompt is not None:
        if not byte_level:
            print(
                f"error: --prompt is text for byte-level models; this one has vocab_size="
                f"{model.config.vocab_size}: pass --tokens",
                file=sys.stderr,
            )
            return 2
        prompts = [encode_bytes(p).tolist() for p in args.prompt]
    else:
        prompts = [_ids(t, "--tokens") for t in args.tokens]
    callback = None
    if args.stream:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

        def callback(t, tokens, generated):
            if bool(generated[0]):
                token = int(tokens[0])
                sys.stdout.write(decoder.decode(bytes([token])) if byte_level else f"{token} ")
                sys.stdout.flush()

    try:
        out = generate(
            model,
            prompts,
            args.max_new_tokens,
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            stop_tokens=_ids(args.stop, "--stop"),
            key=jax.random.key(args.seed),
            callback=callback,
        )
    except (ValueError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    jax.effects_barrier()
    if args.stream:
        print()
    tokens, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
    for row, n in zip(tokens, lengths, strict=True):  # each prompt and its continuation
        print(decode_bytes(row[:n]) if byte_level else " ".join(map(str, row[:n])))
    return 0
