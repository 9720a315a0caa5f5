"""What a run trains its model to do: the loss, the data it accepts, its metrics and what it makes.

The loop (:mod:`jaxflash.train.loop`) is the same for every model; a :class:`Task` supplies the parts
that differ, chosen by the model config's type (:func:`task_for`):

- :class:`LanguageModelTask` (LMConfig, causal M2Config, ParcaeConfig): next-token cross-entropy on a
  token dataset; evaluation loss, perplexity and accuracy; a generated text sample at the end.
- :class:`MaskedLMTask` (bidirectional M2Config, M2-BERT): BERT's masked-LM cross-entropy on a token
  dataset (:func:`masked_lm_loss`, ``TrainConfig.mlm``); evaluation loss, perplexity and accuracy over
  the masked positions, always the same positions (a fixed key).
- :class:`DiffusionTask` (DiTConfig): DiT's diffusion loss (epsilon MSE plus the variational bound of
  the learned variance, :func:`jaxflash.diffusion.training_losses`) on a class-labelled image dataset;
  an EMA of the weights in the optimizer state (:func:`jaxflash.diffusion.ema_params`); at every
  evaluation, samples drawn from the EMA weights, scored by digits-FD, label accuracy and
  nearest-neighbour distance beside the real held-out floor
  (:class:`jaxflash.diffusion.DigitsEvaluator`), and saved as a PNG grid.
"""

from __future__ import annotations

import json
import math
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jaxflash.models import DiTConfig, M2Config
from jaxflash.train.config import TrainConfig
from jaxflash.train.step import Batch, Sums, eval_graphdef, next_token_loss

from jaxflash.data import Dataset, ImageDataset, TokenDataset, decode_bytes


class Task:
    """The task-specific parts of a run (module docstring). ``unit``: what a row of the batch is made
    of, for throughput (``"tokens"``, ``"images"``); ``second_metric``: the name of the mean of
    ``Sums.correct`` in the train metrics."""

    unit = "items"
    second_metric = "accuracy"

    def __init__(self, config: TrainConfig):
        self.config = config

    def loss_fn(self, model: nnx.Module, batch: Batch, key: jax.Array | None, *, train: bool = True) -> Sums:
        raise NotImplementedError

    def check_data(self, data: Dataset) -> None:
        """Raises ``ValueError`` (naming the keys to set) when the model cannot read ``data``."""

    def items_per_step(self, data: Dataset) -> int:
        return self.config.batch_size

    def optimizer(self, tx: optax.GradientTransformation) -> optax.GradientTransformation:
        """The run's optimizer from the loop's (clipping and AdamW groups)."""
        return tx

    def eval_metrics(self, total: Sums) -> dict[str, float]:
        raise NotImplementedError

    def on_start(self, workdir: pathlib.Path, say: Any) -> None:
        """Called once before the first step (after a resume too); nothing by default."""

    def on_evaluate(
        self, state: Any, graphdef: nnx.GraphDef, step: int, workdir: pathlib.Path
    ) -> dict[str, float]:
        """Further metrics of an evaluation at ``step`` (and files it writes); none by default."""
        return {}

    def finish(self, state: Any, graphdef: nnx.GraphDef, data: Dataset, workdir: pathlib.Path) -> str | None:
        """What the finished run makes (a sample); None when nothing."""
        return None

    def summary(self, train: dict[str, float], evaluation: dict[str, float]) -> str:
        """The run's last line of numbers."""
        rate = train.get(f"{self.unit}_per_s", 0.0)
        return f"train loss {train['loss']:.4f}, {rate:,.0f} {self.unit}/s"


# --- language models ---------------------------------------------------------------------------------


class LanguageModelTask(Task):
    """Next-token prediction on a token dataset."""

    unit = "tokens"

    def loss_fn(self, model, batch, key, *, train=True):
        return next_token_loss(model, batch, key, train=train)

    def check_data(self, data: Dataset) -> None:
        m = self.config.model
        if not isinstance(data, TokenDataset):
            raise ValueError(
                f"a language model trains on token datasets; data.name={data.name!r} holds images "
                "(train a DiT on it: model=DiT-tiny)"
            )
        if data.vocab_size > m.vocab_size:
            raise ValueError(
                f"the data has {data.vocab_size} token ids but model.vocab_size={m.vocab_size}; set "
                f"model.vocab_size={data.vocab_size}"
            )
        if data.seq_len > m.max_seq_len:
            raise ValueError(
                f"data.seq_len={data.seq_len} exceeds model.max_seq_len={m.max_seq_len}; set "
                f"model.max_seq_len={data.seq_len} or lower data.seq_len"
            )

    def items_per_step(self, data: Dataset) -> int:
        return self.config.batch_size * data.seq_len

    def eval_metrics(self, total: Sums) -> dict[str, float]:
        weight = max(float(total.weight), 1.0)
        loss = float(total.loss) / weight
        return {
            "eval_loss": loss,
            "eval_perplexity": math.exp(min(loss, 80.0)),
            "eval_accuracy": float(total.correct) / weight,
            "eval_tokens": float(total.weight),
        }

    def finish(self, state, graphdef, data, workdir):
        from jaxflash.inference import generate

        config = self.config
        model = nnx.merge(eval_graphdef(graphdef, state.params, state.rest), state.params, state.rest)
        if config.sample_tokens == 0 or not hasattr(model, "step"):
            return None
        byte_level = data.vocab_size == 256
        if byte_level and config.sample_prompt:
            prompt = np.frombuffer(config.sample_prompt.encode("utf-8"), np.uint8).astype(np.int32)
        else:
            prompt = np.asarray(data.example(0)["inputs"][: max(1, data.seq_len // 4)], np.int32)
        room = config.model.max_seq_len - len(prompt)
        if room <= 0:
            prompt = prompt[: config.model.max_seq_len // 2]
            room = config.model.max_seq_len - len(prompt)
        new = min(config.sample_tokens, room)
        tokens = generate(
            model,
            prompt[None],
            new,
            temperature=config.sample_temperature,
            key=jax.random.key(config.seed + 1),
        ).tokens
        tokens = np.asarray(jax.device_get(tokens))[0]
        if byte_level:
            sample = decode_bytes(tokens[: len(prompt)]) + " ‖ " + decode_bytes(tokens[len(prompt) :])
        else:
            sample = (
                " ".join(map(str, tokens[: len(prompt)])) + " | " + " ".join(map(str, tokens[len(prompt) :]))
            )
        if jax.process_index() == 0:
            (workdir / "sample.txt").write_text(sample + "\n")
        return sample

    def summary(self, train, evaluation):
        line = super().summary(train, evaluation)
        if evaluation:
            line += (
                f"; eval loss {evaluation['eval_loss']:.4f}, perplexity {evaluation['eval_perplexity']:.2f}, "
                f"accuracy {evaluation['eval_accuracy']:.3f}"
            )
        return line


# --- masked language models --------------------------------------------------------------------------------

# The evaluation's masks come from this key, so every evaluation scores the same positions.
_EVAL_MASK_KEY = 0


def mask_tokens(
    tokens: jax.Array, key: jax.Array, *, rate: float, mask_id: int, vocab_size: int
) -> tuple[jax.Array, jax.Array]:
    """BERT's corruption: ``(inputs, chosen)``, each position chosen with probability ``rate``; a chosen
    token becomes ``mask_id`` with probability 0.8, a uniform random id in ``[0, vocab_size)`` with 0.1,
    or stays itself with 0.1."""
    k_choose, k_kind, k_random = jax.random.split(key, 3)
    chosen = jax.random.bernoulli(k_choose, rate, tokens.shape)
    u = jax.random.uniform(k_kind, tokens.shape)
    random_ids = jax.random.randint(k_random, tokens.shape, 0, vocab_size, dtype=tokens.dtype)
    inputs = jnp.where(chosen & (u < 0.8), mask_id, jnp.where(chosen & (u < 0.9), random_ids, tokens))
    return inputs, chosen


def masked_lm_loss(
    model: nnx.Module,
    batch: Batch,
    key: jax.Array | None,
    *,
    rate: float,
    mask_id: int,
    vocab_size: int,
    train: bool = True,
) -> Sums:
    """Cross-entropy of the original tokens at the positions :func:`mask_tokens` chose (``key``; a fixed
    key when None, as evaluation passes), weighted by ``batch["weights"]``; ``model(inputs)`` gives the
    MLM logits (``M2Bert``)."""
    del train  # dropout follows the model's own train / eval mode
    tokens = batch["inputs"]
    key = jax.random.key(_EVAL_MASK_KEY) if key is None else key
    inputs, chosen = mask_tokens(tokens, key, rate=rate, mask_id=mask_id, vocab_size=vocab_size)
    logits = model(inputs).astype(jnp.float32)
    weights = batch["weights"].astype(jnp.float32) * chosen
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, tokens)
    correct = (jnp.argmax(logits, axis=-1) == tokens).astype(jnp.float32)
    return Sums(loss=(nll * weights).sum(), weight=weights.sum(), correct=(correct * weights).sum())


class MaskedLMTask(LanguageModelTask):
    """M2-BERT's masked-LM pretraining on a token dataset (``TrainConfig.mlm``)."""

    def loss_fn(self, model, batch, key, *, train=True):
        mlm, mask_id = self.config.mlm, self.config.model.vocab_size - 1
        rate = mlm.mask_rate if train else mlm.eval_mask_rate
        return masked_lm_loss(model, batch, key, rate=rate, mask_id=mask_id, vocab_size=mask_id, train=train)

    def check_data(self, data: Dataset) -> None:
        super().check_data(data)
        m = self.config.model
        if data.vocab_size >= m.vocab_size:
            raise ValueError(
                f"the data uses token ids 0..{data.vocab_size - 1} and [MASK] is model.vocab_size - 1 = "
                f"{m.vocab_size - 1}; set model.vocab_size={data.vocab_size + 1} (or more)"
            )

    def finish(self, state, graphdef, data, workdir):
        return None  # an encoder generates nothing

    def summary(self, train, evaluation):
        return super().summary(train, evaluation).replace("accuracy", "masked-token accuracy")


# --- diffusion ----------------------------------------------------------------------------------------------


# The evaluation's timesteps and noise come from this key, so every evaluation scores the same draws.
_EVAL_KEY = 0


def diffusion_loss(
    diffusion: Any, model: nnx.Module, batch: Batch, key: jax.Array | None, *, train: bool = True
) -> Sums:
    """DiT's loss on ``batch = dict(images, labels, weights)``: ``t`` uniform over the chain and the noise
    drawn from ``key`` (a fixed key when None, as evaluation passes), :func:`jaxflash.diffusion.
    training_losses` per image; ``Sums.loss`` sums the loss, ``Sums.correct`` the epsilon MSE."""
    from jaxflash.diffusion import training_losses

    del train  # label dropout follows the model's own train / eval mode
    x0, labels, weights = batch["images"], batch["labels"], batch["weights"].astype(jnp.float32)
    key = jax.random.key(_EVAL_KEY) if key is None else key
    t_key, noise_key = jax.random.split(key)
    t = jax.random.randint(t_key, labels.shape, 0, diffusion.num_timesteps)
    noise = jax.random.normal(noise_key, x0.shape, jnp.float32)
    terms = training_losses(diffusion, lambda x, ts: model(x, ts, labels), x0, t, noise)
    return Sums(
        loss=(terms["loss"] * weights).sum(), weight=weights.sum(), correct=(terms["mse"] * weights).sum()
    )


class DiffusionTask(Task):
    """DiT's diffusion training on class-labelled images (module docstring)."""

    unit = "images"
    second_metric = "mse"

    def __init__(self, config: TrainConfig):
        super().__init__(config)
        from jaxflash.diffusion import create_diffusion

        d = config.diffusion
        common = dict(
            noise_schedule=d.noise_schedule,
            learn_sigma=config.model.learn_sigma,
            diffusion_steps=d.diffusion_steps,
        )
        self.diffusion = create_diffusion("", **common)
        self.sampling = create_diffusion(
            f"ddim{d.sample_steps}" if d.sampler == "ddim" else str(d.sample_steps), **common
        )
        self._evaluator = None

    def loss_fn(self, model, batch, key, *, train=True):
        return diffusion_loss(self.diffusion, model, batch, key, train=train)

    def check_data(self, data: Dataset) -> None:
        m = self.config.model
        if not isinstance(data, ImageDataset):
            raise ValueError(
                f"a DiT trains on image datasets (data.name=digits); data.name={data.name!r} is tokens"
            )
        if (data.image_size, data.channels) != (m.input_size, m.in_channels):
            raise ValueError(
                f"the data's images are {data.image_size}x{data.image_size}x{data.channels} but the model "
                f"takes {m.input_size}x{m.input_size}x{m.in_channels}; set model.input_size="
                f"{data.image_size} (or data.image_size={m.input_size}) and model.in_channels={data.channels}"
            )
        if data.num_classes > m.num_classes:
            raise ValueError(
                f"the data has {data.num_classes} classes but model.num_classes={m.num_classes}; set "
                f"model.num_classes={data.num_classes}"
            )

    def optimizer(self, tx):
        from jaxflash.diffusion import ema_params

        return optax.chain(tx, ema_params(self.config.diffusion.ema_decay))

    def eval_metrics(self, total: Sums) -> dict[str, float]:
        weight = max(float(total.weight), 1.0)
        return {
            "eval_loss": float(total.loss) / weight,
            "eval_mse": float(total.correct) / weight,
            "eval_images": float(total.weight),
        }

    def evaluator(self):
        """The digits evaluator of this run's data (built once: it trains its feature classifier)."""
        if self._evaluator is None:
            from jaxflash.data import make_dataset
            from jaxflash.diffusion import DigitsEvaluator

            train = make_dataset(self.config.data, "train")
            held_out = make_dataset(self.config.data, "validation")
            self._evaluator = DigitsEvaluator(
                train.images, held_out.images, held_out.labels, held_out.num_classes, seed=self.config.seed
            )
        return self._evaluator

    def ema_model(self, state: Any, graphdef: nnx.GraphDef) -> nnx.Module:
        """The model with the EMA weights, in evaluation mode."""
        from jaxflash.diffusion import find_ema_params

        params = find_ema_params(state.opt_state)
        return nnx.merge(eval_graphdef(graphdef, params, state.rest), params, state.rest)

    def on_evaluate(self, state, graphdef, step, workdir):
        from jaxflash.diffusion import sample_dit
        from jaxflash.diffusion.evaluate import image_grid, write_png

        d = self.config.diffusion
        if d.eval_samples == 0:
            return {}
        evaluator = self.evaluator()
        n = evaluator.num_samples if d.eval_samples == -1 else d.eval_samples
        labels = np.arange(n) % self.config.model.num_classes
        images = sample_dit(
            self.ema_model(state, graphdef),
            labels,
            jax.random.key(self.config.seed + 1),
            diffusion=self.sampling,
            cfg_scale=d.cfg_scale,
            sampler=d.sampler,
            clip_denoised=True,
        )
        images = np.asarray(jax.device_get(images))
        metrics = evaluator.evaluate(images, labels)
        if d.grid_samples and jax.process_index() == 0:
            write_png(workdir / "samples" / f"step_{step}.png", image_grid(images[: d.grid_samples], scale=2))
        return metrics

    def bounds(self) -> dict[str, dict[str, float]]:
        """The evaluator's floor (real held-out images) and ceiling (noise)."""
        return self.evaluator().bounds()

    def on_start(self, workdir, say):
        if self.config.diffusion.eval_samples == 0:
            return
        bounds = self.bounds()
        if jax.process_index() == 0:
            path = workdir / "samples" / "eval_bounds.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(bounds, indent=2) + "\n")
        for name, values in bounds.items():
            say(f"digits evaluation {name}: " + ", ".join(f"{k} {v:.4g}" for k, v in values.items()))

    def summary(self, train, evaluation):
        line = super().summary(train, evaluation)
        if evaluation:
            line += f"; eval loss {evaluation['eval_loss']:.4f}, mse {evaluation['eval_mse']:.4f}"
            if "digits_fd" in evaluation:
                line += (
                    f", digits-FD {evaluation['digits_fd']:.2f}, label accuracy "
                    f"{evaluation.get('label_accuracy', float('nan')):.3f}"
                )
        return line


def task_for(config: TrainConfig) -> Task:
    """The task of a run, by its model config's type."""
    if isinstance(config.model, DiTConfig):
        return DiffusionTask(config)
    if isinstance(config.model, M2Config) and not config.model.causal:
        return MaskedLMTask(config)
    return LanguageModelTask(config)
