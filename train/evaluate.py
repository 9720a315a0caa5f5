"""``python -m jaxflash.train.evaluate WORKDIR [key=value ...]``: a run's last checkpoint, evaluated.

    python -m jaxflash.train.evaluate runs/lm_parcae
    python -m jaxflash.train.evaluate runs/lm_parcae model.max_recurrence=16 model.mean_recurrence=16
    python -m jaxflash.train.evaluate runs/demo --quantize nvfp4 --scale-search 8

The model comes from :func:`jaxflash.train.checkpoint.load_model`; overrides (the same dotted keys as
``python -m jaxflash.train``) change the run's saved config before the evaluation. A model override may
change how the model computes (Parcae's test-time loop count ``model.mean_recurrence``), never the shape
of a parameter: the checkpoint's parameters go into the overridden model as they are. Overrides apply in
order and each must leave a valid config (raise ``model.max_recurrence`` before
``model.mean_recurrence``). ``eval_batches``, ``batch_size`` and the ``data.*`` keys choose what is
evaluated. The metrics are those of the training
loop's evaluation (:func:`jaxflash.train.loop.evaluate`), printed as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from typing import Any

USAGE_ERROR = 2


def evaluate_run(
    workdir: str | pathlib.Path,
    overrides: list[str] = (),
    *,
    step: int | None = None,
    quantize: str | None = None,
    scale_search: int = 0,
) -> dict[str, Any]:
    """The validation metrics of ``workdir``'s newest checkpoint (or ``step``) under ``overrides``;
    with ``quantize`` (``"int4"``, ``"mxfp4"``, ``"nvfp4"``), of the model with its Linear kernels
    quantized (:func:`jaxflash.quant.ptq.quantize_kernels`, ScaleSearch window ``scale_search``).

    Raises ``ValueError`` when a model override changes the parameters' structure or shapes."""
    import jax
    from flax import nnx
    from jaxflash.train import checkpoint as ckpt
    from jaxflash.train import config as config_lib
    from jaxflash.train import sharding as shard
    from jaxflash.train.loop import build_model, evaluate
    from jaxflash.train.step import eval_graphdef, make_eval_step, split_model
    from jaxflash.train.tasks import task_for

    from jaxflash.data import make_dataset

    workdir = pathlib.Path(workdir)
    trained = ckpt.load_model(workdir, step)
    _, params, rest = split_model(trained)
    saved = config_lib.loads((workdir / "config.json").read_text())
    config = config_lib.apply_overrides(saved, list(overrides))

    abstract = nnx.eval_shape(lambda: build_model(config.model, seed=config.seed))
    graphdef, new_params, new_rest = split_model(abstract)
    if _layout(new_params) != _layout(params):
        changed = [k for k in config_lib.differences(saved, config) if k.startswith("model.")]
        raise ValueError(
            f"the overrides {', '.join(changed)} change the model's parameters; only overrides that keep "
            "every parameter's shape (e.g. model.mean_recurrence) can evaluate a trained checkpoint"
        )
    if jax.tree.structure(new_rest) != jax.tree.structure(rest):
        raise ValueError("the overrides change the model's non-parameter state; drop the model overrides")

    quantized = {}
    if quantize is not None:
        from jaxflash.quant.ptq import quantize_kernels

        params, report = quantize_kernels(params, quantize, scale_search=scale_search)
        quantized = dict(
            quantize=quantize,
            scale_search=scale_search,
            quantized_tensors=len(report.paths),
            bits_per_weight=report.bits_per_weight,
            weight_mse=report.squared_error / report.elements,
        )
    mesh = shard.make_mesh(config_lib.MeshConfig(data=1))
    batch_sharding = shard.batch_sharding(mesh)
    eval_fn = jax.jit(make_eval_step(eval_graphdef(graphdef, params, rest), task_for(config).loss_fn))
    data = make_dataset(config.data, "validation")
    metrics = evaluate(eval_fn, params, rest, data, config, batch_sharding)
    return {
        "workdir": str(workdir),
        "step": _checkpoint_step(workdir, step),
        "overrides": list(overrides),
        **quantized,
        **metrics,
    }


def _layout(tree: Any) -> tuple[Any, list[tuple[tuple[int, ...], Any]]]:
    """A parameter tree's structure and its leaves' shapes and dtypes."""
    import jax

    return jax.tree.structure(tree), [(x.shape, x.dtype) for x in jax.tree.leaves(tree)]


def _checkpoint_step(workdir: pathlib.Path, step: int | None) -> int:
    """The step of the checkpoint that ``load_model(workdir, step)`` reads."""
    from jaxflash.train import checkpoint as ckpt

    if step is not None:
        return step
    mngr = ckpt.manager(workdir, asynchronous=False)
    try:
        return max(mngr.all_steps())
    finally:
        mngr.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m jaxflash.train.evaluate",
        description="Evaluate a run's checkpoint on its validation split; key=value overrides the saved "
        "config (model overrides must keep every parameter's shape, e.g. model.mean_recurrence=16).",
    )
    p.add_argument("workdir", help="a directory written by python -m jaxflash.train")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.add_argument("--step", type=int, default=None, help="the checkpoint's step (default: the newest)")
    p.add_argument(
        "--quantize",
        choices=("int4", "mxfp4", "nvfp4"),
        default=None,
        help="evaluate with every Linear kernel quantized to this 4-bit format (weights only)",
    )
    p.add_argument(
        "--scale-search",
        type=int,
        default=0,
        help="ScaleSearch window in scale-code steps (8 = one binade for nvfp4, 1 for mxfp4; 0 = off)",
    )
    args = p.parse_intermixed_args(argv)  # options may come before or after the overrides
    try:
        result = evaluate_run(
            args.workdir,
            args.overrides,
            step=args.step,
            quantize=args.quantize,
            scale_search=args.scale_search,
        )
    except (KeyError, ValueError, FileNotFoundError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"error: {message}", file=sys.stderr)
        return USAGE_ERROR
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
