"""``python -m jaxflash.inference generate --checkpoint DIR --prompt TEXT``: continue a prompt with a model
trained by ``python -m jaxflash.train``.

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
    return parser


def _ids(text: str, what: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"error: {what} must be comma-separated integers; got {text!r}") from None


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
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
