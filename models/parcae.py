"""Parcae, a stable looped language model (Prairie, Novack, Berg-Kirkpatrick, Fu 2026,
arXiv:2604.12946), following ``parcae_lm/models/parcae/parcae.py`` and ``modules/injection.py``.

Forward::

    e   = RMSNorm(Prelude(Embed(tokens)))                  prelude blocks run once
    h_0 = 0, or ~ TruncNormal(0, init_std) when a key is given ("like-init")
    for t in 1..T:                                         T loop iterations of the core blocks
        h_t = Core(Inject(h_{t-1}, e))
    logits = Head(RMSNorm(Coda(C h_T)))                    C: Linear(d, d, no bias); tied head

Diagonal injection (a negative-diagonal SSM step, ZOH for A, Euler for B)::

    Inject(h, e) = exp(-softplus(dt_bias) . exp(A_log)) . h + softplus(dt_bias) . (B e)

whose decay is in (0, 1) for every parameter value, so the loop is a contraction in h. We also floor
the rate ``softplus(dt_bias) exp(A_log)`` at 1e-6 so the bound survives float32 underflow (our
addition; at any trained value it is inactive). Baselines: ``linear`` injection ``W [h; e]``
(Huginn-style, can have spectral radius > 1) and ``additive`` ``h + e`` (radius 1).

Training (``train=True``): per sequence ``T ~ clip(Poisson(mean_recurrence), 1, max_recurrence)``;
the first ``T - k`` iterations run without gradient and the last ``k = min(T, backprop_depth)`` with
it (truncated backpropagation through the loop), sequences masked where their count is done. At
evaluation T is fixed (``mean_recurrence`` unless ``num_loops`` is given).

Blocks: pre-norm RMSNorm, attention with QK-norm and RoPE, squared-ReLU MLP, no biases.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jaxflash.models.config import ParcaeConfig
from jaxflash.models.transformer import (
    MLP,
    Attention,
    Block,
    prefill_blocks,
    reinit_linears,
    step_blocks,
    tied_logits,
)
from jaxflash.models.validation import check_length, check_parameters_fit, check_token_ids, require_config
from jaxtyping import Array, Float, Int

State = dict[str, Any]

# Smallest decay rate: exp(-1e-6) rounds below 1 in float32, while a rate of 0 would give decay 1.
MIN_DECAY_RATE = 1e-6


class NoDecayParam(nnx.Param):
    """A parameter kind trained without weight decay (Parcae's ``_no_weight_decay``: A_log, dt_bias, B,
    C; ``jaxflash.train.optim`` groups it)."""


class DiagonalInjection(nnx.Module):
    """``h <- exp(-softplus(dt_bias) exp(A_log)) . h + softplus(dt_bias) . (B e)``."""

    def __init__(self, d_model: int, *, ssm_decay: float = math.sqrt(0.2), rngs: nnx.Rngs):
        del rngs  # deterministic init: A = 1, B = I, dt_bias from the target decay
        if not 0 < ssm_decay < 1:
            raise ValueError(f"ssm_decay={ssm_decay} must lie in (0, 1)")
        # softplus(dt_bias) = -ln(ssm_decay), so the initial decay exp(-softplus(dt_bias)) is ssm_decay.
        rate = -math.log(ssm_decay)
        self.A_log = NoDecayParam(jnp.zeros((d_model,), jnp.float32))
        self.dt_bias = NoDecayParam(jnp.full((d_model,), math.log(math.expm1(rate)), jnp.float32))
        self.B = NoDecayParam(jnp.eye(d_model, dtype=jnp.float32))

    def decay(self) -> Float[Array, " d"]:
        # rate = softplus(dt_bias) exp(A_log), formed in log space so that an underflowing softplus
        # times an overflowing exp(A_log) cannot make 0 * inf = nan.
        dt_bias = self.dt_bias[...]
        log_dt = jnp.where(dt_bias < -20.0, dt_bias, jnp.log(jax.nn.softplus(jnp.maximum(dt_bias, -20.0))))
        log_rate = jnp.maximum(log_dt + self.A_log[...], math.log(MIN_DECAY_RATE))
        return jnp.exp(-jnp.exp(log_rate))

    def __call__(self, h: Float[Array, "... d"], e: Float[Array, "... d"]) -> Float[Array, "... d"]:
        dt = jax.nn.softplus(self.dt_bias[...])
        return (self.decay() * h + dt * (e @ self.B[...].T.astype(e.dtype))).astype(h.dtype)


class LinearInjection(nnx.Module):
    """Baseline ``W [h; e]`` (concat adapter, Huginn-style); its spectral radius in h is unconstrained."""

    def __init__(self, d_model: int, *, rngs: nnx.Rngs):
        self.proj = nnx.Linear(2 * d_model, d_model, use_bias=False, rngs=rngs)

    def __call__(self, h: Float[Array, "... d"], e: Float[Array, "... d"]) -> Float[Array, "... d"]:
        return self.proj(jnp.concatenate([h, e.astype(h.dtype)], axis=-1))


class AdditiveInjection(nnx.Module):
    """Baseline ``h + e`` (spectral radius exactly 1)."""

    def __init__(self, d_model: int, *, rngs: nnx.Rngs):
        del d_model, rngs

    def __call__(self, h: Float[Array, "... d"], e: Float[Array, "... d"]) -> Float[Array, "... d"]:
        return h + e.astype(h.dtype)


def make_injection(config: ParcaeConfig, *, rngs: nnx.Rngs) -> nnx.Module:
    if config.injection == "diagonal":
        return DiagonalInjection(config.d_model, ssm_decay=config.ssm_decay, rngs=rngs)
    if config.injection == "linear":
        return LinearInjection(config.d_model, rngs=rngs)
    return AdditiveInjection(config.d_model, rngs=rngs)


def parcae_block(config: ParcaeConfig, *, rngs: nnx.Rngs) -> Block:
    """Pre-norm RMSNorm block: attention (QK-norm, RoPE, no bias by default) and a squared-ReLU MLP."""
    dtype = config.compute_dtype
    attn = Attention(
        config.d_model,
        config.attention,
        dtype=dtype,
        implementation=config.implementation,
        norm_eps=config.norm_eps,
        rngs=rngs,
    )
    mlp = MLP(config.d_model, config.ffn_dim, kind="relu2", use_bias=False, dtype=dtype, rngs=rngs)
    return Block(config.d_model, attn, mlp, norm="rms", norm_eps=config.norm_eps, dtype=dtype, rngs=rngs)


class LoopedCore(nnx.Module):
    """One loop iteration: ``h <- Core(Inject(h, e))``."""

    def __init__(self, config: ParcaeConfig, *, rngs: nnx.Rngs):
        self.injection = make_injection(config, rngs=rngs)
        self.blocks = nnx.List([parcae_block(config, rngs=rngs) for _ in range(config.n_core)])

    def __call__(self, h: Float[Array, "b l d"], e: Float[Array, "b l d"]) -> Float[Array, "b l d"]:
        x = self.injection(h, e)
        for block in self.blocks:
            x = block(x)
        return x

    def step(
        self, h: Float[Array, "b d"], e: Float[Array, "b d"], states: list[State]
    ) -> tuple[Float[Array, "b d"], list[State]]:
        """The same iteration for one token, through the core blocks' KV caches of this iteration."""
        return step_blocks(self.blocks, self.injection(h, e), states)


class Parcae(nnx.Module):
    """The Parcae LM (module docstring): ``tokens [b, l] -> logits [b, l, vocab]`` (f32).

    ``embed_tokens`` and ``head`` are the parts before and after the loop, so that
    ``head(core(...core(h_0, e)..., e))`` with ``e = embed_tokens(tokens)`` is the forward. Token ids
    outside ``[0, vocab_size)`` raise eagerly (a value check under ``jit``).
    """

    def __init__(self, config: ParcaeConfig, *, rngs: nnx.Rngs):
        require_config(config, ParcaeConfig, "Parcae")
        check_parameters_fit(type(self), config, rngs)
        self.config = config
        dtype = config.compute_dtype
        d = config.d_model
        self.embed = nnx.Embed(
            config.vocab_size,
            d,
            embedding_init=nnx.initializers.normal(config.init_std),
            dtype=dtype,
            rngs=rngs,
        )
        self.prelude = nnx.List([parcae_block(config, rngs=rngs) for _ in range(config.n_prelude)])
        self.prelude_norm = nnx.RMSNorm(d, epsilon=config.norm_eps, dtype=dtype, rngs=rngs)
        self.core = LoopedCore(config, rngs=rngs)
        self.C = nnx.Linear(d, d, use_bias=False, dtype=dtype, rngs=rngs)
        self.coda = nnx.List([parcae_block(config, rngs=rngs) for _ in range(config.n_coda)])
        self.final_norm = nnx.RMSNorm(d, epsilon=config.norm_eps, dtype=dtype, rngs=rngs)
        reinit_linears(self, rngs, std=config.init_std, n_layers=config.n_layers)
        self.C.kernel = NoDecayParam(self.C.kernel[...])

    def embed_tokens(self, tokens: Int[Array, "b l"]) -> Float[Array, "b l d"]:
        """``e = RMSNorm(Prelude(Embed(tokens)))``, the input injected at every loop iteration."""
        x = self.embed(tokens)
        for block in self.prelude:
            x = block(x)
        return self.prelude_norm(x)

    def head(self, h: Float[Array, "b l d"]) -> Float[Array, "b l v"]:
        """``logits = Head(RMSNorm(Coda(C h)))`` from the loop's last state (f32)."""
        x = self.C(h)
        for block in self.coda:
            x = block(x)
        return tied_logits(self.embed, self.final_norm(x))

    def _initial_state(self, e: jax.Array, key: jax.Array | None) -> jax.Array:
        if key is None:
            return jnp.zeros_like(e)
        std = self.config.init_std
        return (std * jax.random.truncated_normal(key, -2.0, 2.0, e.shape, jnp.float32)).astype(e.dtype)

    def sample_loops(self, key: jax.Array, batch: int) -> tuple[jax.Array, jax.Array]:
        """Per-sequence ``(n, k)``: iterations without and with gradient, ``n + k = T``."""
        cfg = self.config
        total = jnp.clip(jax.random.poisson(key, cfg.mean_recurrence, (batch,)), 1, cfg.max_recurrence)
        k = jnp.minimum(total, cfg.backprop_depth)
        return (total - k).astype(jnp.int32), k.astype(jnp.int32)

    def __call__(
        self,
        tokens: Int[Array, "b l"],
        *,
        num_loops: int | None = None,
        train: bool = False,
        key: jax.Array | None = None,
    ) -> Float[Array, "b l v"]:
        """Logits. ``train=True`` draws the loop counts (needs ``key``); otherwise ``num_loops`` (default
        ``mean_recurrence``) iterations run for every sequence. ``key`` also draws h_0 (zeros without)."""
        if num_loops is not None and num_loops < 1:
            raise ValueError(f"num_loops={num_loops} must be >= 1")
        if train and key is None:
            raise ValueError("train=True samples per-sequence loop counts: pass key=")
        tokens = check_token_ids(tokens, self.config.vocab_size)
        check_length("sequence length", tokens.shape[1], self.config.max_seq_len)
        e = self.embed_tokens(tokens)
        if not train:
            h = self._initial_state(e, key)
            for _ in range(num_loops or self.config.mean_recurrence):
                h = self.core(h, e)
            return self.head(h)
        key_loops, key_init = jax.random.split(key)
        n, k = self.sample_loops(key_loops, tokens.shape[0])
        h = self.truncated_loop(self._initial_state(e, key_init), e, n, k)
        return self.head(h)

    def truncated_loop(
        self, h: jax.Array, e: jax.Array, n: Int[Array, " b"], k: Int[Array, " b"]
    ) -> jax.Array:
        """``n[i]`` iterations without gradient, then ``k[i]`` with it, for each sequence i."""
        graphdef, params, rest = nnx.split(self.core, nnx.Param, ...)
        frozen = jax.lax.stop_gradient(params)
        e_frozen = jax.lax.stop_gradient(e)

        def body(carry):
            step, h = carry
            h_new = nnx.merge(graphdef, frozen, rest)(h, e_frozen)
            return step + 1, jnp.where((step < n)[:, None, None], h_new, h)

        _, h = jax.lax.while_loop(lambda c: c[0] < jnp.max(n), body, (jnp.zeros((), jnp.int32), h))
        h = jax.lax.stop_gradient(h)
        for step in range(self.config.backprop_depth):
            h = jnp.where((step < k)[:, None, None], self.core(h, e), h)
        return h

    # --- generation: one KV cache per (loop iteration, core block) --------------------------------------

    def init_state(self, batch: int, max_len: int | None = None, num_loops: int | None = None) -> State:
        """KV caches of ``max_len`` (default ``max_seq_len``) for every block, the core's once per loop
        iteration (``num_loops``, default ``mean_recurrence``)."""
        max_len = max_len or self.config.max_seq_len
        check_length("max_len", max_len, self.config.max_seq_len)
        loops = num_loops or self.config.mean_recurrence
        return dict(
            prelude=[b.init_state(batch, max_len) for b in self.prelude],
            core=[[b.init_state(batch, max_len) for b in self.core.blocks] for _ in range(loops)],
            coda=[b.init_state(batch, max_len) for b in self.coda],
        )

    def prefill(
        self, tokens: Int[Array, "b l"], max_len: int | None = None, num_loops: int | None = None
    ) -> tuple[Float[Array, "b l v"], State]:
        """The parallel forward over a prompt (h_0 = 0, ``num_loops`` iterations, default
        ``mean_recurrence``) and the KV caches ``step`` continues from: every block's, the core's once
        per loop iteration, as ``init_state`` lays them out."""
        max_len = max_len or self.config.max_seq_len
        check_length("max_len", max_len, self.config.max_seq_len)
        tokens = check_token_ids(tokens, self.config.vocab_size)
        x, prelude = prefill_blocks(self.prelude, self.embed(tokens), max_len)
        e = self.prelude_norm(x)
        h = jnp.zeros_like(e)
        core = []
        for _ in range(num_loops or self.config.mean_recurrence):
            h, loop_states = prefill_blocks(self.core.blocks, self.core.injection(h, e), max_len)
            core.append(loop_states)
        x, coda = prefill_blocks(self.coda, self.C(h), max_len)
        return tied_logits(self.embed, self.final_norm(x)), dict(prelude=prelude, core=core, coda=coda)

    def step(self, tokens: Int[Array, " b"], state: State) -> tuple[Float[Array, "b v"], State]:
        """Next-token logits for one token per sequence (h_0 = 0, the loop count of ``init_state``)."""
        tokens = check_token_ids(tokens, self.config.vocab_size, step=True)
        x, prelude = step_blocks(self.prelude, self.embed(tokens), state["prelude"])
        e = self.prelude_norm(x)
        h = jnp.zeros_like(e)
        core = []
        for loop_states in state["core"]:
            h, loop_states = self.core.step(h, e, loop_states)
            core.append(loop_states)
        x, coda = step_blocks(self.coda, self.C(h), state["coda"])
        return tied_logits(self.embed, self.final_norm(x)), dict(prelude=prelude, core=core, coda=coda)
