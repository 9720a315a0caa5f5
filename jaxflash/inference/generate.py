"""Autoregressive sampling through a model's recurrent step.

The prompt is fed one token at a time through ``model.step`` (the recurrent form of every causal mixer,
equal to the parallel forward), then each new token is drawn from the last logits: greedy at
``temperature=0``, else from ``softmax(logits / temperature)``. The whole loop is one ``lax.scan``
under ``jax.jit``, so it compiles once per (batch, prompt length, total length).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Int


@functools.partial(jax.jit, static_argnames=("graphdef", "total", "greedy"))
def _sample(graphdef, variables, prompt, key, temperature, *, total: int, greedy: bool):
    model = nnx.merge(graphdef, variables)
    batch, prompt_len = prompt.shape
    tokens = jnp.zeros((batch, total), jnp.int32).at[:, :prompt_len].set(prompt)
    state = model.init_state(batch, total)

    def body(carry, t):
        tokens, state = carry
        logits, state = model.step(tokens[:, t], state)
        logits = logits.astype(jnp.float32)
        if greedy:
            new = jnp.argmax(logits, axis=-1)
        else:
            new = jax.random.categorical(jax.random.fold_in(key, t), logits / temperature, axis=-1)
        keep_prompt = t + 1 < prompt_len
        tokens = tokens.at[:, t + 1].set(jnp.where(keep_prompt, tokens[:, t + 1], new.astype(jnp.int32)))
        return (tokens, state), None

    (tokens, _), _ = jax.lax.scan(body, (tokens, state), jnp.arange(total - 1))
    return tokens


def generate(
    model: nnx.Module,
    prompt: Int[Array, "b p"],
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    key: jax.Array | None = None,
) -> Int[Array, "b p+n"]:
    """``prompt`` followed by ``max_new_tokens`` sampled tokens, for a model with ``init_state``/``step``.

    ``temperature=0`` is greedy decoding (no key needed); otherwise ``key`` is required. The total
    length must fit the model's ``max_seq_len``."""
    prompt = jnp.asarray(prompt)
    if prompt.ndim != 2 or prompt.shape[1] < 1:
        raise ValueError(f"prompt must be int tokens of shape [batch, length >= 1]; got {prompt.shape}")
    if not jnp.issubdtype(prompt.dtype, jnp.integer):
        raise TypeError(f"prompt must hold integer token ids; got dtype {prompt.dtype}")
    if not (isinstance(max_new_tokens, int) and max_new_tokens >= 0):
        raise ValueError(f"max_new_tokens must be an int >= 0; got {max_new_tokens!r}")
    if not hasattr(model, "step") or not hasattr(model, "init_state"):
        raise TypeError(f"{type(model).__name__} has no recurrent init_state/step: it cannot generate")
    if not temperature >= 0:
        raise ValueError(f"temperature must be >= 0; got {temperature!r}")
    greedy = temperature == 0
    if not greedy and key is None:
        raise ValueError("sampling at temperature > 0 needs key= (or temperature=0 for greedy decoding)")
    total = prompt.shape[1] + max_new_tokens
    max_len = model.config.max_seq_len
    if total > max_len:
        raise ValueError(
            f"prompt ({prompt.shape[1]}) + max_new_tokens ({max_new_tokens}) = {total} exceeds the model's "
            f"max_seq_len={max_len}"
        )
    if max_new_tokens == 0:
        return prompt.astype(jnp.int32)
    graphdef, variables = nnx.split(model)
    key = jax.random.key(0) if key is None else key
    return _sample(
        graphdef,
        variables,
        prompt.astype(jnp.int32),
        key,
        jnp.float32(max(temperature, 1e-6)),
        total=total,
        greedy=greedy,
    )
