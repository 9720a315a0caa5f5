"""Jitted optax training, orbax checkpoints, sharding and metrics. Installed as ``jaxflash.train``.

    from jaxflash.train import TrainConfig, apply_overrides, presets, train, load_model

    config = apply_overrides(presets.get("demo"), ["steps=50", "workdir=/tmp/run"])
    result = train(config)            # or: python -m jaxflash.train demo steps=50 workdir=/tmp/run
    model = load_model("/tmp/run")    # the newest checkpoint, as a model ready to evaluate or generate

Modules: ``config`` (TrainConfig and overrides), ``presets``, ``step`` (the pure train step),
``loop`` (:func:`train`), ``checkpoint`` (orbax, :func:`load_model`), ``sharding`` (mesh, shardings,
``jax.distributed``), ``metrics`` (JSONL and TensorBoard), ``optim`` (the papers' parameter groups),
``cli``.
"""

from jaxflash.train.checkpoint import load_model
from jaxflash.train.config import (
    DiffusionConfig,
    DistributedConfig,
    MaskedLMConfig,
    MeshConfig,
    OptimConfig,
    TrainConfig,
    apply_overrides,
)
from jaxflash.train.loop import NonFiniteLossError, RunResult, build_model, train
from jaxflash.train.optim import GROUPS, labels_fn, make_optimizer, param_labels
from jaxflash.train.step import Sums, TrainState, make_train_step, next_token_loss

__all__ = [
    "GROUPS",
    "DiffusionConfig",
    "DistributedConfig",
    "MaskedLMConfig",
    "MeshConfig",
    "NonFiniteLossError",
    "OptimConfig",
    "RunResult",
    "Sums",
    "TrainConfig",
    "TrainState",
    "apply_overrides",
    "build_model",
    "labels_fn",
    "load_model",
    "make_optimizer",
    "make_train_step",
    "next_token_loss",
    "param_labels",
    "train",
]
