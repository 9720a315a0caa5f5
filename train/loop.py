"""The training loop: config -> data -> model -> jitted step on a mesh -> metrics, checkpoints, eval, sample.

:func:`train` runs (or resumes) one :class:`~jaxflash.train.config.TrainConfig`. The workdir holds
everything the run used and made::

    config.json      the resolved config (a second run with the same workdir must match it)
    run.json         versions, devices, processes, the command line
    metrics.jsonl    one JSON object per logged step (and per evaluation)
    tensorboard/     the same scalars as TensorBoard events
    checkpoints/     orbax checkpoints (the newest ``keep_checkpoints``)
    sample.txt       the text generated at the end (language models)
    samples/         a PNG grid of samples per evaluation, and eval_bounds.json (DiT)

What the model is trained to do (its loss, the data it reads, its metrics, what it makes) is the run's
task (:mod:`jaxflash.train.tasks`), chosen by the model config's type.

Resuming: when ``workdir/checkpoints`` holds a complete checkpoint, the run restores the newest and goes
on from its step; the state holds the model, the optimizer, the RNG streams and the step (which is the
data position), so the resumed run computes exactly what the uninterrupted one would have.

The loop never waits for the device except at a log, evaluation or checkpoint step: batches for the
next step are built on the host while the device runs the current one.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import platform
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jaxflash.models import (
    M2GPT,
    DiT,
    DiTConfig,
    LanguageModel,
    LMConfig,
    M2Bert,
    M2Config,
    Parcae,
    ParcaeConfig,
)
from jaxflash.train import checkpoint as ckpt
from jaxflash.train import config as config_lib
from jaxflash.train import sharding as shard
from jaxflash.train.config import TrainConfig
from jaxflash.train.metrics import MetricWriter
from jaxflash.train.optim import make_optimizer
from jaxflash.train.step import eval_graphdef, init_state, make_eval_step, make_train_step, split_model
from jaxflash.train.tasks import task_for

from jaxflash.data import Dataset, make_dataset

# Keys that may change between a run and its resumption (they change how long or how loudly it runs,
# not what it computes up to the step it resumes from).
RESUMABLE_KEYS = (
    "steps",
    "checkpoint_every",
    "keep_checkpoints",
    "async_checkpoints",
    "eval_every",
    "eval_batches",
    "log_every",
    "sample_tokens",
    "sample_prompt",
    "sample_temperature",
    "progress",
    "tensorboard",
    "workdir",
)


class NonFiniteLossError(RuntimeError):
    """The loss or the gradient norm became NaN or infinite; the run stopped at that step."""


@dataclasses.dataclass
class RunResult:
    """What :func:`train` returns: the last step, the last logged train metrics, the final evaluation,
    the generated sample and where it all is."""

    workdir: pathlib.Path
    step: int
    resumed_from: int | None
    train: dict[str, float]
    eval: dict[str, float]
    sample: str | None
    state: Any = dataclasses.field(repr=False, default=None)


def build_model(model_config: Any, *, seed: int) -> nnx.Module:
    """The model a config describes (LMConfig -> LanguageModel, causal M2Config -> M2GPT, bidirectional
    M2Config -> M2Bert, ParcaeConfig -> Parcae, DiTConfig -> DiT), its parameters and dropout streams
    seeded by ``seed``."""
    rngs = nnx.Rngs(seed)
    if isinstance(model_config, LMConfig):
        return LanguageModel(model_config, rngs=rngs)
    if isinstance(model_config, M2Config):
        return M2GPT(model_config, rngs=rngs) if model_config.causal else M2Bert(model_config, rngs=rngs)
    if isinstance(model_config, ParcaeConfig):
        return Parcae(model_config, rngs=rngs)
    if isinstance(model_config, DiTConfig):
        return DiT(model_config, rngs=rngs)
    raise TypeError(f"no model for a {type(model_config).__name__}")


def lr_schedule(config: TrainConfig) -> Callable[[Any], Any]:
    """The multiplier of every group's peak lr at a step: linear warmup from 0 over ``warmup_steps``, then
    cosine (or linear) decay to ``min_lr_ratio`` at ``steps``, or constant."""
    o = config.optim
    warmup = min(o.warmup_steps, config.steps)
    decay_steps = max(config.steps - warmup, 1)
    if o.schedule == "cosine":
        decay = optax.cosine_decay_schedule(1.0, decay_steps, alpha=o.min_lr_ratio)
    elif o.schedule == "linear":
        decay = optax.linear_schedule(1.0, o.min_lr_ratio, decay_steps)
    else:
        decay = optax.constant_schedule(1.0)
    if warmup == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, 1.0, warmup), decay], [warmup])


def build_optimizer(model: nnx.Module, config: TrainConfig) -> optax.GradientTransformation:
    """Clipping, then AdamW over the papers' groups (``jaxflash.train.optim``) with the schedule, then
    what the task adds (a DiT's EMA of the weights)."""
    o = config.optim
    adamw = make_optimizer(
        model,
        lr=o.lr,
        weight_decay=o.weight_decay,
        schedule=lr_schedule(config),
        ssm_lr=o.ssm_lr,
        filter_lr=o.filter_lr,
        filter_weight_decay=o.filter_weight_decay,
        pos_emb_lr=o.pos_emb_lr,
        b1=o.b1,
        b2=o.b2,
        eps=o.eps,
    )
    tx = adamw if o.clip_norm is None else optax.chain(optax.clip_by_global_norm(o.clip_norm), adamw)
    return task_for(config).optimizer(tx)


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in ("jaxflash", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _check_workdir(workdir: pathlib.Path, config: TrainConfig) -> None:
    path = workdir / "config.json"
    if not path.exists():
        return
    old = config_lib.loads(path.read_text())
    changed = [k for k in config_lib.differences(old, config) if k.split(".")[0] not in RESUMABLE_KEYS]
    if changed:
        raise ValueError(
            f"{workdir} holds a run with a different config ({', '.join(changed)} differ); resume it with "
            f"the same settings or pass a new workdir=. Only {', '.join(RESUMABLE_KEYS)} may change."
        )


def evaluate(eval_step, params, rest, data: Dataset, config: TrainConfig, sharding) -> dict[str, float]:
    """The task's evaluation metrics (a language model's loss, perplexity and accuracy) over the scored
    positions of up to ``eval_batches`` batches."""
    process, processes = jax.process_index(), jax.process_count()
    total = None
    for local in data.eval_batches(
        config.batch_size, max_batches=config.eval_batches, process_index=process, process_count=processes
    ):
        sums = eval_step(params, rest, shard.global_batch(local, sharding))
        total = sums if total is None else jax.tree.map(jnp.add, total, sums)
    if total is None:
        return {}
    return task_for(config).eval_metrics(jax.device_get(total))


def _progress(config: TrainConfig, start: int, primary: bool):
    from tqdm.auto import tqdm

    return tqdm(
        total=config.steps,
        initial=start,
        desc="train",
        unit="step",
        dynamic_ncols=True,
        disable=not (primary and config.progress),
        file=sys.stderr,
    )


def train(
    config: TrainConfig,
    *,
    stop_after: int | None = None,
    echo: Callable[[str], None] | None = print,
) -> RunResult:
    """Run (or resume) ``config`` to ``config.steps``; see the module docstring.

    ``stop_after``: leave the loop after that step without saving (what a preempted run does; for tests
    and for splitting a run). ``echo`` receives the run's summary lines (None: silent)."""
    shard.initialize_distributed(config.distributed)
    primary = jax.process_index() == 0
    say = (echo if primary else None) or (lambda _line: None)
    workdir = pathlib.Path(config.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    _check_workdir(workdir, config)

    mesh = shard.make_mesh(config.mesh)
    shard.check_batch_size(config.batch_size, mesh, config.optim.grad_accum)
    train_data = make_dataset(config.data, "train")
    val_data = make_dataset(config.data, "validation")
    task = task_for(config)
    task.check_data(train_data)

    abstract_model = nnx.eval_shape(lambda: build_model(config.model, seed=config.seed))
    graphdef, _, _ = split_model(abstract_model)
    tx = build_optimizer(abstract_model, config)

    def fresh_state():
        return init_state(build_model(config.model, seed=config.seed), tx, jax.random.key(config.seed))

    abstract = jax.eval_shape(fresh_state)
    shardings = shard.state_shardings(abstract, mesh)
    batch_sharding = shard.batch_sharding(mesh)
    rows = shard.local_rows(batch_sharding, config.batch_size)
    expected = jax.process_index() * config.batch_size // jax.process_count()
    if rows[0] != expected:
        raise RuntimeError(
            f"this process's devices hold batch rows {rows}, not the block starting at {expected}"
        )

    mngr = ckpt.manager(workdir, keep=config.keep_checkpoints, asynchronous=config.async_checkpoints)
    resumed_from = mngr.latest_step()
    if resumed_from is not None:
        state = ckpt.restore(mngr, resumed_from, abstract, shardings)
        start = resumed_from
        say(f"resuming {workdir} from the checkpoint at step {start}")
    else:
        state = jax.jit(fresh_state, out_shardings=shardings)()
        start = 0

    if primary:
        (workdir / "config.json").write_text(config_lib.dumps(config) + "\n")
        run_info = {
            "versions": _versions(),
            "devices": [str(d) for d in jax.devices()],
            "process_count": jax.process_count(),
            "mesh": dict(mesh.shape),
            "argv": sys.argv,
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "resumed_from": resumed_from,
        }
        (workdir / "run.json").write_text(json.dumps(run_info, indent=2) + "\n")
    n_params = sum(x.size for x in jax.tree.leaves(abstract.params))
    say(
        f"{type(abstract_model).__name__} ({n_params:,} parameters) on {config.data.name} "
        f"({train_data.describe()}); {jax.device_count()} device(s), "
        f"mesh {dict(mesh.shape)}, {jax.process_count()} process(es)"
    )

    task.on_start(workdir, say)

    replicated = shard.replicated(mesh)
    step_fn = jax.jit(
        make_train_step(graphdef, tx, task.loss_fn, grad_accum=config.optim.grad_accum),
        in_shardings=(shardings, batch_sharding),
        out_shardings=(shardings, replicated),
        donate_argnums=0,
    )
    eval_fn = jax.jit(
        make_eval_step(eval_graphdef(graphdef, state.params, state.rest), task.loss_fn),
        in_shardings=(shardings.params, shardings.rest, batch_sharding),
        out_shardings=replicated,
    )
    schedule = lr_schedule(config)
    writer = MetricWriter(workdir, enabled=primary, tensorboard=config.tensorboard, resume_step=start)
    process, processes = jax.process_index(), jax.process_count()
    items_per_step = task.items_per_step(train_data)
    rate_key = f"{task.unit}_per_s"

    def check_finite() -> None:
        bad = int(jax.device_get(state.bad_step))
        if bad >= 0:
            mngr.wait_until_finished()
            last = mngr.latest_step()
            where = (
                f"the last good checkpoint is step {last}" if last is not None else "no checkpoint was saved"
            )
            raise NonFiniteLossError(
                f"the loss or gradient became non-finite at step {bad + 1} (no update was applied from then "
                f"on); {where} in {workdir / ckpt.CHECKPOINTS}. Lower optim.lr, set optim.clip_norm, or "
                f"check the data"
            )

    last_train: dict[str, float] = {}
    last_eval: dict[str, float] = {}
    window: list[dict[str, jax.Array]] = []
    window_start = time.perf_counter()
    bar = _progress(config, start, primary)
    step = start
    try:
        next_local = train_data.batch(step, config.batch_size, process_index=process, process_count=processes)
        while step < config.steps:
            batch = shard.global_batch(next_local, batch_sharding)
            state, metrics = step_fn(state, batch)
            step += 1
            window.append(metrics)
            if step < config.steps:  # the host builds the next batch while the device works
                next_local = train_data.batch(
                    step, config.batch_size, process_index=process, process_count=processes
                )
            bar.update(1)
            final = step == config.steps
            if step % config.log_every == 0 or final:
                # One transfer per metric for the whole window, not one per step and metric.
                fetched = jax.device_get({k: jnp.stack([m[k] for m in window]) for k in window[0]})
                elapsed = time.perf_counter() - window_start
                if not fetched["finite"].all():
                    check_finite()
                last_train = {
                    "loss": float(fetched["loss"].mean()),
                    task.second_metric: float(fetched["accuracy"].mean()),
                    "lr": float(config.optim.lr * schedule(step - 1)),
                    "grad_norm": float(fetched["grad_norm"][-1]),
                    "param_norm": float(fetched["param_norm"][-1]),
                    "update_norm": float(fetched["update_norm"][-1]),
                    rate_key: len(window) * items_per_step / max(elapsed, 1e-9),
                    "step_time_s": elapsed / len(window),
                }
                writer.write(step, last_train)
                bar.set_postfix(loss=f"{last_train['loss']:.4f}", rate=f"{last_train[rate_key]:,.0f}")
                window = []
                window_start = time.perf_counter()
            if (config.eval_every and step % config.eval_every == 0) or final:
                last_eval = evaluate(eval_fn, state.params, state.rest, val_data, config, batch_sharding)
                last_eval.update(task.on_evaluate(state, graphdef, step, workdir))
                writer.write(step, last_eval)
                if last_eval and primary and config.progress:
                    shown = ", ".join(
                        f"{k} {v:.4g}" for k, v in last_eval.items() if not k.endswith(("_tokens", "_images"))
                    )
                    bar.write(f"step {step}: {shown}", file=sys.stderr)
                window_start = time.perf_counter()
            if step % config.checkpoint_every == 0 or final:
                check_finite()
                ckpt.save(mngr, step, state)
            if stop_after is not None and step >= stop_after:
                break
        mngr.wait_until_finished()
    finally:
        bar.close()
        writer.close()
        mngr.close()

    sample = task.finish(state, graphdef, val_data, workdir) if step == config.steps else None
    if last_train:
        say(f"step {step}: {task.summary(last_train, last_eval)}")
    if step == config.steps:
        say(f"checkpoint: {workdir / ckpt.CHECKPOINTS / str(step)}")
    if sample is not None:
        say(f"sample: {sample}")
    return RunResult(
        workdir=workdir,
        step=step,
        resumed_from=resumed_from,
        train=last_train,
        eval=last_eval,
        sample=sample,
        state=state,
    )
