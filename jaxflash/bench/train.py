"""Training throughput: the train step of every model family ``jaxflash.train`` builds, and what the
training loop adds over that step.

**Train step** (``measure = train step``): for each ``lm_*`` preset (``jaxflash.train.presets``: the
2-layer, width-64 byte LMs with the attention, H3, Hyena and long-convolution mixers, the causal M2-GPT,
and the 1/1/1-block width-64 Parcae) with ``model.max_seq_len=N data.seq_len=N batch_size=1 mesh.data=1``
applied, one call of the train step as :func:`jaxflash.train.train` builds it
(``make_train_step(graphdef, build_optimizer(model, config), next_token_loss)`` under ``jax.jit`` with the
state donated and the loop's shardings) on a device-resident batch of the preset's data. The ``tokens``
column over the median is the tokens/s; the speed-up column is each model's throughput over the
Transformer's (``attention``). Parcae draws its loop count per step, so its times vary with the draws.

**Loop overhead** (``measure = loop overhead``): ``train(config)`` against a bare Python loop over the same
jitted step, in this process, as interleaved pairs (bare windows, then a ``train`` run) so that slow drifts
of the host's load hit both alike. In each of :data:`OVERHEAD_REPEATS` pairs:

* bare: :data:`OVERHEAD_WINDOWS` windows of ``W`` calls of the step on device-resident batches, each ended
  by ``block_until_ready`` of the last metrics; a window's time over ``W``.
* loop: one ``train`` of ``(OVERHEAD_WINDOWS + 1) * W`` steps in a fresh workdir with ``log_every=W``, no
  progress bar, TensorBoard off, ``eval_every=0``, ``sample_tokens=0`` and a checkpoint only at the end.
  The loop syncs only at its log steps; its first window holds the compilation, so the numbers taken are
  the ``step_time_s`` that ``metrics.jsonl`` records for the later windows: the loop's own clock, started
  after a log and stopped after fetching the window's metrics (before the final evaluation and checkpoint).

``W`` is chosen so that a bare window lasts about :data:`WINDOW_SECONDS`. The columns: each side's fastest
window (``bare ms/step``, ``loop ms/step``; other processes' load only ever adds time, so the fastest window
is the least disturbed), the loop's tokens/s in that window, ``overhead`` = loop / bare - 1 of the fastest
windows (target: under 5%), and ``overhead (median pair)``, the median over pairs of their median windows'
ratio, which shows how much the host's load moved the numbers. The case's candidates time, on the harness's
clock, the host work the loop does per step besides the step (the next batch built in NumPy; the batch made
global arrays with ``jax.make_array_from_process_local_data``) against one bare step.

The overhead is measured once per run, when the cases are built (not with ``--quick``); the memory
subprocesses the harness starts inherit the numbers through the environment (:data:`OVERHEAD_ENV`) instead
of measuring again.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

from jaxflash.bench.harness import Candidate, Case, Suite

DEFAULT_SIZES = (1024, 2048, 4096, 8192)
QUICK_SIZES = (256,)
# make gpu-check runs the quick cases (its budget is minutes for every suite); on a GPU the full suite is
# python -m jaxflash.bench train.
GPU_SIZES = None
GPU_CHECKS = ()  # no kernels of its own

BATCH = 1
FAMILIES = {
    "attention": "lm_attention",
    "h3": "lm_h3",
    "hyena": "lm_hyena",
    "long_conv": "lm_long_conv",
    "m2_gpt": "lm_m2_gpt",
    "parcae": "lm_parcae",
}
BASELINE = "attention"

# (preset, seq, batch) of the loop-overhead cases: a step long enough that host work could hide behind
# it, and a short one where every per-step host cost shows.
OVERHEAD_SIZES = (("lm_hyena", 1024, 8), ("lm_hyena", 128, 1))
QUICK_OVERHEAD_SIZES = (("lm_hyena", 64, 2),)
OVERHEAD_REPEATS = 3
OVERHEAD_WINDOWS = 5
WINDOW_SECONDS = 1.5
OVERHEAD_ENV = "JAXFLASH_BENCH_TRAIN_OVERHEAD"


def bench_config(preset: str, seq: int, batch: int, overrides: Sequence[str] = ()) -> Any:
    """The ``jaxflash.train`` preset at sequence length ``seq`` and batch ``batch`` on one device."""
    from jaxflash.train import apply_overrides
    from jaxflash.train.presets import get

    base = [f"model.max_seq_len={seq}", f"data.seq_len={seq}", f"batch_size={batch}", "mesh.data=1"]
    return apply_overrides(get(preset), [*base, *overrides])


@dataclasses.dataclass
class JittedStep:
    """The jitted, donated train step of a config and its initial state, built as
    :func:`jaxflash.train.train` builds them."""

    step_fn: Callable[..., Any]
    state: Any


def jitted_train_step(config: Any) -> JittedStep:
    """:class:`JittedStep` of ``config`` (nothing compiled yet but the initial state)."""
    import jax
    from flax import nnx

    from jaxflash.train import sharding as shard
    from jaxflash.train.loop import build_model, build_optimizer
    from jaxflash.train.step import init_state, make_train_step, next_token_loss, split_model

    mesh = shard.make_mesh(config.mesh)
    abstract_model = nnx.eval_shape(lambda: build_model(config.model, seed=config.seed))
    graphdef, _, _ = split_model(abstract_model)
    tx = build_optimizer(abstract_model, config)

    def fresh_state():
        return init_state(build_model(config.model, seed=config.seed), tx, jax.random.key(config.seed))

    shardings = shard.state_shardings(jax.eval_shape(fresh_state), mesh)
    step_fn = jax.jit(
        make_train_step(graphdef, tx, next_token_loss, grad_accum=config.optim.grad_accum),
        in_shardings=(shardings, shard.batch_sharding(mesh)),
        out_shardings=(shardings, shard.replicated(mesh)),
        donate_argnums=0,
    )
    state = jax.jit(fresh_state, out_shardings=shardings)()
    return JittedStep(step_fn, state)


def _device_batches(config: Any, count: int) -> list[Any]:
    """The loop's first ``count`` batches of ``config``, as global arrays on its mesh."""
    from jaxflash.data import make_dataset
    from jaxflash.train import sharding as shard

    data = make_dataset(config.data, "train")
    sharding = shard.batch_sharding(shard.make_mesh(config.mesh))
    return [shard.global_batch(data.batch(i, config.batch_size), sharding) for i in range(count)]


def train_step_thunk(
    preset: str, seq: int, batch: int = BATCH, overrides: Sequence[str] = ()
) -> Callable[[], Any]:
    """Builds the state and a device-resident batch; returns one donated train step (returns its metrics).
    A size the data or the model refuses raises NotImplementedError (a skipped row) with their reason."""
    try:
        config = bench_config(preset, seq, batch, overrides)
        (device_batch,) = _device_batches(config, 1)
        jitted = jitted_train_step(config)
    except ValueError as e:
        raise NotImplementedError(f"{preset} refuses seq {seq}, batch {batch}: {e}") from None
    state = [jitted.state]

    def thunk():
        state[0], metrics = jitted.step_fn(state[0], device_batch)
        return metrics

    return thunk


# --- loop overhead --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LoopOverhead:
    """The bare loop's and ``train``'s seconds per step (each its fastest window: load from other processes
    only adds time), ``overhead`` = loop / bare - 1 of those, and ``pair_overhead``, the median over the
    interleaved pairs of their median windows' loop / bare - 1."""

    steps: int  # W: steps per timed window
    bare_s: float
    loop_s: float
    overhead: float
    pair_overhead: float
    loop_tokens_per_s: float  # what metrics.jsonl records for the loop's fastest window
    pairs: tuple[tuple[float, float], ...]  # (bare, loop) median seconds per step of each pair


def _bare_window(jitted: JittedStep, batches: list[Any], steps: int) -> float:
    import jax

    start = time.perf_counter()
    metrics = None
    for i in range(steps):
        jitted.state, metrics = jitted.step_fn(jitted.state, batches[i % len(batches)])
    jax.block_until_ready(metrics)
    return (time.perf_counter() - start) / steps


def _loop_windows(config: Any, steps: int, windows: int) -> list[tuple[float, float]]:
    """``train`` of ``(windows + 1) * steps`` steps, logging every ``steps``; (step_time_s, tokens_per_s)
    of each logged window after the first (which holds the compilation)."""
    from jaxflash.train import train
    from jaxflash.train.metrics import read_metrics

    total = (windows + 1) * steps
    with tempfile.TemporaryDirectory(prefix="jaxflash-bench-train-") as workdir:
        run = dataclasses.replace(
            config,
            workdir=workdir,
            steps=total,
            log_every=steps,
            checkpoint_every=total,
            eval_every=0,
            eval_batches=1,
            sample_tokens=0,
            progress=False,
            tensorboard=False,
        )
        train(run, echo=None)
        records = [r for r in read_metrics(workdir) if "step_time_s" in r and r["step"] > steps]
    if len(records) != windows:
        raise RuntimeError(f"train() logged {len(records)} windows after step {steps}, expected {windows}")
    return [(r["step_time_s"], r["tokens_per_s"]) for r in records]


def loop_overhead(
    config: Any,
    *,
    steps: int | None = None,
    windows: int = OVERHEAD_WINDOWS,
    repeats: int = OVERHEAD_REPEATS,
    window_s: float = WINDOW_SECONDS,
) -> LoopOverhead:
    """``train(config)`` against the bare jitted step (module docstring). ``steps``: the window ``W``;
    None chooses it so that a bare window lasts about ``window_s``. Each of ``repeats`` pairs times
    ``windows`` bare windows, then one ``train`` run of ``windows`` steady-state windows."""
    import jax

    jitted = jitted_train_step(config)
    batches = _device_batches(config, 8)
    jitted.state, metrics = jitted.step_fn(jitted.state, batches[0])  # compile
    jax.block_until_ready(metrics)
    if steps is None:
        steps = min(max(math.ceil(window_s / _bare_window(jitted, batches, 4)), 4), 2000)
    bare, loop = [], []
    for _ in range(repeats):
        bare.append([_bare_window(jitted, batches, steps) for _ in range(windows)])
        loop.append(_loop_windows(config, steps, windows))
    best_loop = min((w for pair in loop for w in pair), key=lambda w: w[0])
    pairs = tuple(
        (statistics.median(b), statistics.median(t for t, _ in w)) for b, w in zip(bare, loop, strict=True)
    )
    bare_s = min(w for pair in bare for w in pair)
    return LoopOverhead(
        steps=steps,
        bare_s=bare_s,
        loop_s=best_loop[0],
        overhead=best_loop[0] / bare_s - 1,
        pair_overhead=statistics.median(b_loop / b_bare - 1 for b_bare, b_loop in pairs),
        loop_tokens_per_s=best_loop[1],
        pairs=pairs,
    )


def _overhead_columns(quick: bool) -> list[dict[str, Any]]:
    """The overhead cases' measured columns: measured here once per run (not in --quick runs, whose cases
    must be cheap to build) and inherited by the memory subprocesses."""
    if quick:
        return [{"overhead": "not measured with --quick"} for _ in QUICK_OVERHEAD_SIZES]
    cached = os.environ.get(OVERHEAD_ENV)
    if cached:
        return json.loads(cached)
    rows = []
    for preset, seq, batch in OVERHEAD_SIZES:
        print(f"train: measuring the loop overhead of {preset} at seq {seq}, batch {batch}", file=sys.stderr)
        result = loop_overhead(bench_config(preset, seq, batch))
        rows.append(
            {
                "steps": result.steps,
                "bare ms/step": round(result.bare_s * 1e3, 3),
                "loop ms/step": round(result.loop_s * 1e3, 3),
                "loop tokens/s": round(result.loop_tokens_per_s),
                "overhead": f"{result.overhead:+.1%}",
                "overhead (median pair)": f"{result.pair_overhead:+.1%}",
            }
        )
        print(f"train: {rows[-1]}; (bare, loop) s/step per pair: {result.pairs}", file=sys.stderr)
    os.environ[OVERHEAD_ENV] = json.dumps(rows)
    return rows


def _host_batch_thunk(preset: str, seq: int, batch: int) -> Callable[[], Any]:
    """The next batch as the loop builds it on the host each step."""
    from jaxflash.data import make_dataset

    config = bench_config(preset, seq, batch)
    data = make_dataset(config.data, "train")
    steps = iter(range(10**9))
    return lambda: data.batch(next(steps), config.batch_size)


def _global_batch_thunk(preset: str, seq: int, batch: int) -> Callable[[], Any]:
    """The host batch made a global array, as the loop does before each step."""
    from jaxflash.data import make_dataset
    from jaxflash.train import sharding as shard

    config = bench_config(preset, seq, batch)
    local = make_dataset(config.data, "train").batch(0, config.batch_size)
    sharding = shard.batch_sharding(shard.make_mesh(config.mesh))
    return lambda: shard.global_batch(local, sharding)


# --- cases ----------------------------------------------------------------------------------------------


def _cases(sizes: Sequence[int] | None, quick: bool) -> list[Case]:
    cases = []
    for seq in sizes or (QUICK_SIZES if quick else DEFAULT_SIZES):
        candidates = tuple(
            Candidate(name, lambda preset=preset, seq=seq: train_step_thunk(preset, seq))
            for name, preset in FAMILIES.items()
        )
        config = {"measure": "train step", "seq": seq, "batch": BATCH, "tokens": BATCH * seq}
        cases.append(Case(config=config, candidates=candidates, baseline=BASELINE))
    overhead_sizes = QUICK_OVERHEAD_SIZES if quick else OVERHEAD_SIZES
    for (preset, seq, batch), measured in zip(overhead_sizes, _overhead_columns(quick), strict=True):
        name = preset.removeprefix("lm_")
        sized = dict(preset=preset, seq=seq, batch=batch)
        candidates = (
            Candidate(f"{name} step", lambda sized=sized: train_step_thunk(**sized)),
            Candidate("data.batch (numpy)", lambda sized=sized: _host_batch_thunk(**sized)),
            Candidate("global_batch (to device)", lambda sized=sized: _global_batch_thunk(**sized)),
        )
        config = {"measure": "loop overhead", "seq": seq, "batch": batch, "tokens": batch * seq, **measured}
        cases.append(Case(config=config, candidates=candidates, baseline=f"{name} step"))
    return cases


SUITE = Suite(
    name="train",
    description=(
        f"the jitted train step of each jaxflash.train lm_* preset, batch {BATCH} (tokens/s = tokens / "
        "median, speed-up over attention), and train()'s per-step overhead over that bare step"
    ),
    cases=_cases,
)
