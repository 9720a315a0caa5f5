"""``python -m jaxflash.train CONFIG [key=value ...]`` (also installed as ``jaxflash-train``).

    python -m jaxflash.train --list                          the presets, one line each
    python -m jaxflash.train demo                            the main job (what ``make demo`` runs)
    python -m jaxflash.train lm_h3 steps=500 optim.lr=3e-4   any field by its dotted path
    python -m jaxflash.train demo --print-config             the resolved config, without running

Running the same command again with the same ``workdir=`` resumes from its newest checkpoint.
"""

from __future__ import annotations

import argparse
import sys

USAGE_ERROR = 2


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m jaxflash.train",
        description="Train a jaxflash model. CONFIG names a preset; key=value overrides any config field "
        "(dotted for nested ones: model.d_model=64, optim.lr=3e-4, data.seq_len=512, mesh.fsdp=2).",
    )
    p.add_argument("config", nargs="?", help="a preset name (see --list)")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.add_argument("--list", action="store_true", help="print the presets and exit")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    # Imports after argument parsing, so --help answers without starting JAX.
    from jaxflash.train import config as config_lib
    from jaxflash.train import presets

    if args.list:
        print("\n".join(presets.describe()))
        return 0
    if args.config is None:
        print("error: name a preset (python -m jaxflash.train --list shows them)", file=sys.stderr)
        return USAGE_ERROR
    try:
        config = config_lib.apply_overrides(presets.get(args.config), args.overrides)
    except (KeyError, ValueError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"error: {message}", file=sys.stderr)
        return USAGE_ERROR
    if args.print_config:
        print(config_lib.dumps(config))
        return 0
    from jaxflash.train.loop import NonFiniteLossError, train

    try:
        train(config)
    except NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
