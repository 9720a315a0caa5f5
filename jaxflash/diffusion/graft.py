"""Stage 1 of grafting (Chandrasegaran et al. 2025, arXiv 2506.05340): activation distillation.

Each new operator ``g_theta`` of block ``l`` learns to reproduce the operator ``f_phi`` it replaces, on
the inputs the frozen teacher DiT gives that operator at noised images::

    x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps,   t ~ Uniform{0 .. T-1},  eps ~ N(0, I)
    u   = modulate(LN(h_l), shift, scale)            the block's operator input (its own adaLN)
    L(theta) = E[ L_reg(g_theta(u), f_phi(u)) ],     L_reg in {L1, L2, Huber(delta)}

Every block trains on its own cached activations (the blocks are independent). The held-out loss is
the MSE whatever ``L_reg``, as the paper reports it. Defaults follow the paper's stage-1 script: AdamW,
lr 5e-4, no weight decay, gradient-norm clip 10; its step-wise lr decay and plateau schedule are not
reproduced (a constant lr here), and the operator returned is the last one, not the best on the
training loss.

    acts = collect_activations(teacher, diffusion, x0, y, [1, 3], "attn", key=key, batch_size=64)
    op, history = distill_operator(HyenaY(d, rngs=rngs), *acts[1][:2], key=key, steps=2000,
                                   validation=held_out[1][:2])
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxflash.diffusion.gaussian import q_sample
from jaxflash.diffusion.schedule import Diffusion
from jaxflash.models.dit import DiT
from jaxflash.models.graft import check_block_indices, check_kind, trace_block
from jaxflash.utils import check_int, check_real

LOSSES = ("l1", "l2", "huber")


class Activations(NamedTuple):
    """One block's stage-1 data: what its operator saw and returned on noised images, and the step."""

    inputs: np.ndarray  # u [n, T, D]
    targets: np.ndarray  # f(u) [n, T, D]
    t: np.ndarray  # int32 [n]: the diffusion step of each sample's x_t


def _traced_batch(model, diffusion, x0, y, key, indices, kind):
    kt, kn = jax.random.split(key)
    t = jax.random.randint(kt, (x0.shape[0],), 0, diffusion.num_timesteps)
    x_t = q_sample(diffusion, x0, t, jax.random.normal(kn, x0.shape, x0.dtype))
    h, c = model.embed(x_t, diffusion.timestep_map[t], y, deterministic=True)
    recorded = {}
    for i in range(max(indices) + 1):  # the blocks after the last target do not matter
        trace = trace_block(model.blocks[i], h, c)
        if i in indices:
            recorded[i] = (trace.attn_in, trace.attn_out) if kind == "attn" else (trace.mlp_in, trace.mlp_out)
        h = trace.out
    return recorded, t


_traced_batch_jit = nnx.jit(_traced_batch, static_argnames=("indices", "kind"))


def collect_activations(
    model: DiT,
    diffusion: Diffusion,
    images: Any,
    labels: Any,
    block_indices: int | Iterable[int],
    kind: str,
    *,
    key: jax.Array,
    batch_size: int = 64,
) -> dict[int, Activations]:
    """Run the frozen teacher on ``x_t = q_sample(images, t, noise)``, ``t ~ Uniform{0..T-1}``, and record
    each target block's operator input ``u`` and output ``f(u)``.

    Args:
      model: the teacher :class:`~jaxflash.models.DiT` (not changed; labels are never dropped here).
      diffusion: the forward process (``jaxflash.diffusion.create_diffusion``); the model sees
        ``timestep_map[t]``, as in ``training_losses``.
      images: clean images ``x_0 [n, H, W, C]`` (channels last); labels: int ``[n]``.
      block_indices: the blocks whose operator is recorded (an int or ints in ``[0, n_layers)``).
      kind: ``"attn"`` (the attention's input and output) or ``"mlp"``.
      key: draws ``t`` and the noise; batch ``j`` uses ``fold_in(key, j)``.
      batch_size: images per teacher forward.

    Returns:
      ``{block index: Activations(inputs [n, T, D], targets [n, T, D], t [n])}`` as float32 NumPy.
    """
    kind = check_kind(kind)
    indices = check_block_indices(block_indices, len(model.blocks))
    batch_size = check_int("batch_size", batch_size)
    images = jnp.asarray(images, jnp.float32)
    labels = jnp.asarray(labels)
    if images.ndim != 4 or labels.shape != images.shape[:1]:
        raise ValueError(f"images must be [n, H, W, C] and labels [n]; got {images.shape} and {labels.shape}")
    chunks: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {i: [] for i in indices}
    steps = []
    for j, start in enumerate(range(0, images.shape[0], batch_size)):
        rows = slice(start, start + batch_size)
        recorded, t = _traced_batch_jit(
            model, diffusion, images[rows], labels[rows], jax.random.fold_in(key, j), indices, kind
        )
        for i, pair in jax.device_get(recorded).items():
            chunks[i].append(pair)
        steps.append(np.asarray(t))
    t = np.concatenate(steps).astype(np.int32)
    return {
        i: Activations(*(np.concatenate([p[n] for p in chunks[i]]).astype(np.float32) for n in (0, 1)), t)
        for i in indices
    }


def regression_loss(pred: jax.Array, target: jax.Array, loss: str, huber_delta: float = 1.0) -> jax.Array:
    """Elementwise ``L_reg(pred, target)`` in f32: ``|e|`` (l1), ``e^2`` (l2) or Huber
    (``e^2 / 2`` within ``huber_delta``, ``delta (|e| - delta / 2)`` beyond, torch's ``HuberLoss``)."""
    pred, target = pred.astype(jnp.float32), target.astype(jnp.float32)
    if loss == "l1":
        return jnp.abs(pred - target)
    if loss == "l2":
        return jnp.square(pred - target)
    if loss == "huber":
        return optax.huber_loss(pred, target, delta=huber_delta)
    raise ValueError(f"loss={loss!r}; choose one of {LOSSES}")


def _check_pairs(name: str, inputs: Any, targets: Any) -> tuple[np.ndarray, np.ndarray]:
    inputs, targets = np.asarray(inputs, np.float32), np.asarray(targets, np.float32)
    if inputs.shape != targets.shape or inputs.ndim < 2 or inputs.shape[0] == 0:
        raise ValueError(
            f"{name}: inputs and targets must be non-empty arrays of one shape [n, ...]; "
            f"got {inputs.shape} and {targets.shape}"
        )
    return inputs, targets


def distill_operator(
    operator: nnx.Module,
    inputs: Any,
    targets: Any,
    *,
    key: jax.Array,
    loss: str = "l1",
    huber_delta: float = 1.0,
    steps: int = 1000,
    batch_size: int = 8,
    lr: float = 5e-4,
    weight_decay: float = 0.0,
    clip_norm: float = 10.0,
    validation: tuple[Any, Any] | None = None,
    eval_every: int | None = None,
) -> tuple[nnx.Module, dict[str, list[float]]]:
    """Train ``operator`` to regress ``targets`` from ``inputs`` (stage 1), AdamW with gradient clipping.

    Args:
      operator: the new operator, ``[b, T, D] -> [b, T, D]``; left as it is (a trained copy is returned).
      inputs, targets: the teacher operator's inputs ``u`` and outputs ``f(u)``, ``[n, T, D]``
        (:func:`collect_activations`).
      key: shuffles the rows; each pass over them is a fresh permutation.
      loss: ``"l1"`` (the paper's script), ``"l2"`` or ``"huber"`` (with ``huber_delta``), the mean over
        every element of the batch.
      steps, batch_size, lr, weight_decay, clip_norm: the optimisation (``clip_norm`` on the global
        gradient norm; ``None`` for none).
      validation: held-out ``(inputs, targets)``, scored by the MSE.
      eval_every: steps between MSE evaluations (default: 20 over the run); step 0 is evaluated too.

    Returns:
      The trained operator, and a history: ``train_loss`` (the loss of every step's batch), ``step``
      (the evaluated steps), ``train_mse`` (over all of ``inputs``) and, with ``validation``, ``val_mse``
      at those steps.
    """
    from jaxflash.train.step import Sums, init_state, make_train_step, split_model

    if loss not in LOSSES:
        raise ValueError(f"loss={loss!r}; choose one of {LOSSES}")
    huber_delta = check_real("huber_delta", huber_delta, above=0.0)
    steps = check_int("steps", steps)
    batch_size = check_int("batch_size", batch_size)
    lr = check_real("lr", lr, above=0.0)
    weight_decay = check_real("weight_decay", weight_decay, at_least=0.0)
    eval_every = max(1, steps // 20) if eval_every is None else check_int("eval_every", eval_every)
    inputs, targets = _check_pairs("inputs/targets", inputs, targets)
    held_out = None if validation is None else _check_pairs("validation", *validation)

    def loss_fn(model, batch, key, *, train: bool = True):
        del key, train
        per_element = regression_loss(model(batch["inputs"]), batch["targets"], loss, huber_delta)
        zero = jnp.zeros((), jnp.float32)
        return Sums(loss=per_element.sum(), weight=jnp.asarray(per_element.size, jnp.float32), correct=zero)

    adamw = optax.adamw(lr, weight_decay=weight_decay)
    tx = adamw if clip_norm is None else optax.chain(optax.clip_by_global_norm(clip_norm), adamw)
    graphdef, _, _ = split_model(operator)
    state = init_state(operator, tx, key)
    # Not donated: the state's first parameters are the caller's operator's arrays.
    step = jax.jit(make_train_step(graphdef, tx, loss_fn))

    @jax.jit
    def squared_error(params, rest, x, y):
        return jnp.square(nnx.merge(graphdef, params, rest)(x).astype(jnp.float32) - y).sum()

    def mse(x, y):
        total = sum(
            squared_error(state.params, state.rest, x[a : a + batch_size], y[a : a + batch_size])
            for a in range(0, x.shape[0], batch_size)
        )
        return float(total) / y.size

    history: dict[str, list[float]] = {"train_loss": [], "step": [], "train_mse": []}
    if held_out is not None:
        history["val_mse"] = []

    def evaluate(s: int) -> None:
        history["step"].append(s)
        history["train_mse"].append(mse(inputs, targets))
        if held_out is not None:
            history["val_mse"].append(mse(*held_out))

    n = inputs.shape[0]
    batch_size = min(batch_size, n)
    per_epoch = n // batch_size
    order = None
    losses = []
    evaluate(0)
    for s in range(steps):
        epoch, position = divmod(s, per_epoch)
        if position == 0:
            order = np.asarray(jax.random.permutation(jax.random.fold_in(key, epoch), n))
        rows = order[position * batch_size : (position + 1) * batch_size]
        state, metrics = step(state, {"inputs": inputs[rows], "targets": targets[rows]})
        losses.append(metrics["loss"])
        if (s + 1) % eval_every == 0 or s + 1 == steps:
            evaluate(s + 1)
    history["train_loss"] = [float(v) for v in jax.device_get(losses)]
    if int(state.bad_step) >= 0:
        raise FloatingPointError(
            f"the {loss} loss or its gradient became non-finite at step {int(state.bad_step)}; lower lr"
        )
    return nnx.merge(graphdef, state.params, state.rest), history


# --- stage 2 --------------------------------------------------------------------------------------------


def finetune(
    model: DiT,
    diffusion: Diffusion,
    images: Any,
    labels: Any,
    *,
    key: jax.Array,
    steps: int,
    batch_size: int = 64,
    lr: float = 1e-4,
    warmup_steps: int = 0,
    weight_decay: float = 0.0,
    clip_norm: float | None = 10.0,
    ema_decay: float = 0.999,
) -> tuple[DiT, DiT, list[float]]:
    """Stage 2 of grafting: every parameter of ``model`` trained with DiT's diffusion loss (epsilon MSE
    plus the variational bound) on ``images [n, H, W, C]`` and ``labels [n]``, AdamW at ``lr`` after a
    linear warmup, gradient-norm clip, label dropout as the model's config says.

    The paper's stage 2 is the same loss and optimiser (lr 1e-4, clip 10, EMA 0.9999) for 50k steps on
    10% of ImageNet; choose ``steps`` and the subset of images to match a budget. Also the control of
    a grafted model without stage 1 (pass the freshly grafted model) and, from a fresh model, training
    from scratch for the same budget. In memory only: no checkpoints (``python -m jaxflash.train``
    checkpoints the base model's run).

    Returns ``(trained, ema, losses)``: the model after the last step and the EMA of its weights
    (``ema_decay``, started at the initial weights), both in evaluation mode, and each step's loss.
    ``model`` is left as it was.
    """
    from jaxflash.diffusion.ema import ema_params, find_ema_params
    from jaxflash.train.step import init_state, make_train_step, split_model
    from jaxflash.train.tasks import diffusion_loss

    steps = check_int("steps", steps)
    batch_size = check_int("batch_size", batch_size)
    lr = check_real("lr", lr, above=0.0)
    warmup_steps = check_int("warmup_steps", warmup_steps, minimum=0)
    images = np.asarray(images, np.float32)
    labels = np.asarray(labels, np.int32)
    if images.ndim != 4 or labels.shape != images.shape[:1] or images.shape[0] == 0:
        raise ValueError(f"images must be [n, H, W, C] and labels [n]; got {images.shape} and {labels.shape}")
    schedule = optax.linear_schedule(0.0, lr, warmup_steps) if warmup_steps else lr
    adamw = optax.adamw(schedule, weight_decay=weight_decay)
    tx = adamw if clip_norm is None else optax.chain(optax.clip_by_global_norm(clip_norm), adamw)
    tx = optax.chain(tx, ema_params(ema_decay))
    student = nnx.clone(model)
    student.train()
    graphdef, _, _ = split_model(student)
    data_key, train_key = jax.random.split(key)
    state = init_state(student, tx, train_key)

    def loss_fn(m, batch, k, *, train=True):
        return diffusion_loss(diffusion, m, batch, k, train=train)

    step = jax.jit(make_train_step(graphdef, tx, loss_fn))
    n = images.shape[0]
    batch_size = min(batch_size, n)
    per_epoch = n // batch_size
    ones = np.ones(batch_size, np.float32)
    order, losses = None, []
    for s in range(steps):
        epoch, position = divmod(s, per_epoch)
        if position == 0:
            order = np.asarray(jax.random.permutation(jax.random.fold_in(data_key, epoch), n))
        rows = order[position * batch_size : (position + 1) * batch_size]
        state, metrics = step(state, {"images": images[rows], "labels": labels[rows], "weights": ones})
        losses.append(metrics["loss"])
    if int(state.bad_step) >= 0:
        raise FloatingPointError(
            f"the diffusion loss became non-finite at step {int(state.bad_step)}; lower lr"
        )

    def merged(params):
        out = nnx.merge(graphdef, params, state.rest)
        out.eval()
        return out

    return (
        merged(state.params),
        merged(find_ema_params(state.opt_state)),
        [float(v) for v in jax.device_get(losses)],
    )
