"""The train step: a pure function ``(TrainState, batch) -> (TrainState, metrics)``, jitted once.

The model lives in the state as two trees, its parameters and the rest of its variables (dropout RNG
streams and their counters), beside the optimizer state, the step number, the run's key and
``bad_step``. Nothing else carries between steps, so a state restored from a checkpoint continues the
run bitwise.

One step: split the batch into ``grad_accum`` microbatches (rows ``i::grad_accum``, which keeps each
device's rows on that device), sum each microbatch's token losses and their gradients over a
``lax.scan``, divide by the number of scored tokens of the whole batch (so the gradient is the batch's
mean whatever the split), then the optax update (clipping inside the optimizer chain). A loss or
gradient norm that is not finite leaves the parameters as they were and records the step in
``bad_step``; from then on no update is applied, and the loop stops at its next look with that step's
number (the last checkpoint, saved before it, stays the last good one).

A task is a ``loss_fn(model, batch, key) -> Sums``: sums over the batch's scored positions, so that
microbatches and devices add up exactly. :func:`next_token_loss` is the language-model one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

Batch = dict[str, jax.Array]


@dataclasses.dataclass
class Sums:
    """Sums over scored positions: the loss, the positions' weight and the correct predictions."""

    loss: jax.Array
    weight: jax.Array
    correct: jax.Array


jax.tree_util.register_dataclass(Sums, data_fields=["loss", "weight", "correct"], meta_fields=[])


@dataclasses.dataclass
class TrainState:
    """Everything a run carries from one step to the next (module docstring)."""

    step: jax.Array  # int32: optimizer steps taken
    params: Any  # nnx.State of the model's nnx.Param variables
    rest: Any  # nnx.State of its other variables (RNG streams and counts)
    opt_state: Any
    key: jax.Array  # the run's key; step s uses fold_in(key, s)
    bad_step: jax.Array  # int32: the first step whose loss or gradient was not finite, -1 if none


jax.tree_util.register_dataclass(
    TrainState, data_fields=["step", "params", "rest", "opt_state", "key", "bad_step"], meta_fields=[]
)

LossFn = Callable[[nnx.Module, Batch, jax.Array], Sums]


def model_forward(model: nnx.Module, tokens: jax.Array, key: jax.Array | None, *, train: bool) -> jax.Array:
    """Logits of any of our causal LMs; Parcae draws its loop counts from ``key`` in training."""
    from jaxflash.models import Parcae

    if isinstance(model, Parcae):
        return model(tokens, train=train, key=key) if train else model(tokens)
    return model(tokens)


def next_token_loss(model: nnx.Module, batch: Batch, key: jax.Array, *, train: bool = True) -> Sums:
    """Cross-entropy of ``targets`` under ``model(inputs)``, weighted by ``weights`` (f32 logits)."""
    logits = model_forward(model, batch["inputs"], key, train=train).astype(jnp.float32)
    targets, weights = batch["targets"], batch["weights"].astype(jnp.float32)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    return Sums(loss=(nll * weights).sum(), weight=weights.sum(), correct=(correct * weights).sum())


def split_model(model: nnx.Module) -> tuple[nnx.GraphDef, Any, Any]:
    """``graphdef, params, rest`` of a model (rest: every variable that is not an ``nnx.Param``)."""
    return nnx.split(model, nnx.Param, ...)


def init_state(model: nnx.Module, tx: optax.GradientTransformation, key: jax.Array) -> TrainState:
    """The state at step 0 (call under ``jax.jit`` with out_shardings to place it on a mesh)."""
    _, params, rest = split_model(model)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        rest=rest,
        opt_state=tx.init(params),
        key=key,
        bad_step=jnp.full((), -1, jnp.int32),
    )


def _microbatches(batch: Batch, n: int) -> Batch:
    # Rows i::n form microbatch i: [B, ...] -> [n, B // n, ...] without moving rows across devices.
    def split(x):
        return jnp.swapaxes(x.reshape(x.shape[0] // n, n, *x.shape[1:]), 0, 1)

    return jax.tree.map(split, batch)


def make_train_step(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    loss_fn: LossFn = next_token_loss,
    *,
    grad_accum: int = 1,
) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
    """The pure step (module docstring). Metrics: loss (mean over scored positions), accuracy, tokens
    (scored positions), grad_norm (before clipping), param_norm, update_norm, finite."""

    def microbatch_grads(params, rest, batch, key):
        def loss_of(p):
            model = nnx.merge(graphdef, p, rest, copy=True)  # fresh Variables at this trace level
            sums = loss_fn(model, batch, key)
            _, _, new_rest = split_model(model)
            return sums.loss, (sums, new_rest)

        (_, (sums, new_rest)), grads = jax.value_and_grad(loss_of, has_aux=True)(params)
        return grads, sums, new_rest

    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
        step_key = jax.random.fold_in(state.key, state.step)
        if grad_accum == 1:
            grads, sums, rest = microbatch_grads(state.params, state.rest, batch, step_key)
        else:

            def body(carry, xs):
                grad_sum, sum_acc, rest = carry
                micro, i = xs
                g, s, rest = microbatch_grads(state.params, rest, micro, jax.random.fold_in(step_key, i))
                return (jax.tree.map(jnp.add, grad_sum, g), jax.tree.map(jnp.add, sum_acc, s), rest), None

            zeros = jax.tree.map(jnp.zeros_like, state.params)
            zero_sums = Sums(*(jnp.zeros((), jnp.float32) for _ in range(3)))
            (grads, sums, rest), _ = jax.lax.scan(
                body,
                (zeros, zero_sums, state.rest),
                (_microbatches(batch, grad_accum), jnp.arange(grad_accum)),
            )
        weight = jnp.maximum(sums.weight, 1.0)
        grads = jax.tree.map(lambda g: g / weight, grads)
        loss = sums.loss / weight
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)

        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        apply = finite & (state.bad_step < 0)

        def choose(new, old):
            return jax.tree.map(lambda n, o: jnp.where(apply, n, o), new, old)

        new_state = TrainState(
            step=state.step + 1,
            params=choose(params, state.params),
            rest=choose(rest, state.rest),
            opt_state=choose(opt_state, state.opt_state),
            key=state.key,
            bad_step=jnp.where((state.bad_step < 0) & ~finite, state.step, state.bad_step),
        )
        metrics = dict(
            loss=loss,
            accuracy=sums.correct / weight,
            tokens=sums.weight,
            grad_norm=grad_norm,
            param_norm=optax.tree.norm(new_state.params),
            update_norm=optax.tree.norm(updates),
            finite=finite,
        )
        return new_state, metrics

    return train_step


def make_eval_step(graphdef: nnx.GraphDef, loss_fn: LossFn = next_token_loss) -> Callable[..., Sums]:
    """``(params, rest, batch) -> Sums`` of the model in evaluation mode (no dropout; Parcae's mean loop
    count). ``graphdef`` must be an evaluation graph (see :func:`eval_graphdef`)."""

    def eval_step(params, rest, batch):
        model = nnx.merge(graphdef, params, rest)
        return loss_fn(model, batch, None, train=False)

    return eval_step


def eval_graphdef(graphdef: nnx.GraphDef, params: Any, rest: Any) -> nnx.GraphDef:
    """The graph of the same model with dropout off (``Module.eval()``)."""
    model = nnx.merge(graphdef, params, rest)
    model.eval()
    return nnx.split(model, nnx.Param, ...)[0]
