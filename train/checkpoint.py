"""Orbax checkpoints of a run, and loading one into a model.

``workdir/checkpoints/<step>/`` holds the whole :class:`~jaxflash.train.step.TrainState` (parameters,
the model's RNG streams, optimizer state, step, the run's key); the data position is the step itself
(the pipeline is stateless by step). Orbax writes each checkpoint into a temporary directory and renames
it when complete, so a process killed during a save leaves only earlier, complete checkpoints, and the
next run with the same workdir resumes from the newest of those. Saves are asynchronous where safe: the
arrays are copied off the device before ``save`` returns, the files are written in the background.

``load_model(workdir)`` is the one call that turns a run's directory back into a model.
"""

from __future__ import annotations

import os
import pathlib
import signal
from typing import Any

import jax
import orbax.checkpoint as ocp

CHECKPOINTS = "checkpoints"


def _is_key(x: Any) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def to_saveable(tree: Any) -> Any:
    """Typed PRNG keys -> their uint32 data (orbax stores plain arrays)."""
    return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def from_saveable(tree: Any, like: Any) -> Any:
    """The inverse of :func:`to_saveable`, with ``like`` (abstract or concrete) naming the typed leaves."""

    def back(x, ref):
        if _is_key(ref):
            # The key type names its implementation (threefry, rbg, ...); an abstract key has no other way.
            return jax.random.wrap_key_data(x, impl=ref.dtype._impl)
        return x

    return jax.tree.map(back, tree, like)


def abstract_saveable(abstract: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs (with shardings) of the saveable form of an abstract state."""

    def one(x, sharding):
        if _is_key(x):
            data = jax.eval_shape(jax.random.key_data, x)
            return jax.ShapeDtypeStruct(data.shape, data.dtype, sharding=sharding)
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

    return jax.tree.map(one, abstract, shardings)


def manager(
    workdir: str | pathlib.Path, *, keep: int = 3, asynchronous: bool = True
) -> ocp.CheckpointManager:
    """The run's CheckpointManager (keep the newest ``keep``; unfinished saves are cleaned up)."""
    return ocp.CheckpointManager(
        pathlib.Path(workdir).absolute() / CHECKPOINTS,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            create=True,
            cleanup_tmp_directories=True,
            enable_async_checkpointing=asynchronous,
        ),
    )


# Fault injection for the tests of what a kill during a save loses: with this variable set to a step,
# the process SIGKILLs itself while that step's checkpoint is being written.
KILL_DURING_SAVE = "JAXFLASH_KILL_DURING_SAVE"


def save(mngr: ocp.CheckpointManager, step: int, state: Any) -> None:
    """Start writing the checkpoint of ``step`` (in the background when the manager is asynchronous)."""
    mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(to_saveable(state))), force=True)
    if os.environ.get(KILL_DURING_SAVE) == str(step):
        os.kill(os.getpid(), signal.SIGKILL)


def restore(mngr: ocp.CheckpointManager, step: int, abstract: Any, shardings: Any) -> Any:
    """The state saved at ``step``, placed by ``shardings``."""
    target = abstract_saveable(abstract, shardings)
    restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
    return from_saveable(restored["state"], abstract)


def load_model(workdir: str | pathlib.Path, step: int | None = None, *, ema: bool = False):
    """The model of a run's checkpoint (the newest, or ``step``), in evaluation mode, ready for
    evaluation, generation or sampling.

    ``workdir`` is a directory written by ``python -m jaxflash.train`` (it holds ``config.json`` and
    ``checkpoints/``). Parameters are restored on the default device, unsharded. ``ema=True`` gives the
    exponential moving average of the weights the run kept (a DiT run's, what DiT samples with) instead
    of the weights themselves; a ``ValueError`` when the run kept none."""
    from flax import nnx
    from jaxflash.train import config as config_lib
    from jaxflash.train.loop import build_model, build_optimizer
    from jaxflash.train.step import init_state, split_model

    workdir = pathlib.Path(workdir)
    config_path = workdir / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{config_path} not found: {workdir} is not a jaxflash.train workdir")
    config = config_lib.loads(config_path.read_text())
    mngr = manager(workdir, asynchronous=False)
    steps = mngr.all_steps()
    if not steps:
        raise FileNotFoundError(f"no complete checkpoint in {workdir / CHECKPOINTS}")
    if step is None:
        step = max(steps)
    elif step not in steps:
        raise ValueError(f"no checkpoint at step {step} in {workdir}; saved steps: {sorted(steps)}")

    def fresh():
        model = build_model(config.model, seed=config.seed)
        return init_state(model, build_optimizer(model, config), jax.random.key(config.seed))

    abstract = jax.eval_shape(fresh)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    state = restore(mngr, step, abstract, jax.tree.map(lambda _: device, abstract))
    mngr.close()
    graphdef, _, _ = split_model(nnx.eval_shape(lambda: build_model(config.model, seed=config.seed)))
    params = state.params
    if ema:
        from jaxflash.diffusion import find_ema_params

        params = find_ema_params(state.opt_state)
        if params is None:
            raise ValueError(
                f"the run in {workdir} kept no average of its weights (ema=True is for DiT runs)"
            )
    model = nnx.merge(graphdef, params, state.rest)
    model.eval()
    return model
