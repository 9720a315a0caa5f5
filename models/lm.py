"""Decoder-only language models on one skeleton.

``DecoderLM`` (safari ``long_conv_lm.py``): token embedding (+ learned positions for the Transformer
baselines) -> ``n_layers`` pre-norm blocks -> final norm -> LM head tied to the embedding. A model
built on it says only what its blocks are and which norm it uses:

- ``LanguageModel``: each block's mixer is attention, H3, Hyena, a long convolution or S4D (hybrids put
  attention at ``attn_layer_idx``), with a GELU, SwiGLU or squared-ReLU MLP.
- ``M2GPT``: the causal Monarch Mixer and the block-diagonal GLU MLP, LayerNorm.

Initialisation (GPT-2, safari ``_init_weights``): every Linear, the filter FFNs included, and the
embedding N(0, 0.02) with zero biases; the residual output projections (``out_proj`` of each mixer,
``fc2`` of each MLP) N(0, 0.02 / sqrt(2 n_layers)). safari names H3's output ``output_linear`` and so
leaves it unscaled; we scale every mixer's output projection alike.

Generation: ``init_state(batch, max_len)`` then ``step(tokens [b], state) -> (logits [b, v], state)``,
one token per sequence through every block's recurrent state; equal to the parallel forward.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from flax import nnx
from jaxflash.models.config import LMConfig, M2Config
from jaxflash.models.h3 import H3, S4D
from jaxflash.models.hyena import HyenaOperator
from jaxflash.models.long_conv import LongConv
from jaxflash.models.m2 import BlockDiagGLU, M2Mixer
from jaxflash.models.transformer import (
    MLP,
    Attention,
    Block,
    make_norm,
    prefill_blocks,
    reinit_linears,
    step_blocks,
    tied_logits,
)
from jaxflash.models.validation import (
    check_length,
    check_parameters_fit,
    check_prefill_length,
    check_step_position,
    check_token_ids,
    require_config,
)
from jaxtyping import Array, Float, Int

State = dict[str, Any]


def build_mixer(config: LMConfig, layer: int, *, rngs: nnx.Rngs) -> nnx.Module:
    """The sequence mixer of block ``layer``."""
    kind = config.mixer_of(layer)
    kw = dict(dtype=config.compute_dtype, implementation=config.implementation, rngs=rngs)
    if kind == "attention":
        return Attention(config.d_model, config.attention, norm_eps=config.norm_eps, **kw)
    if kind == "h3":
        return H3(config.d_model, config.h3, fft_size=config.fft_size, **kw)
    if kind == "s4d":
        return S4D(config.d_model, config.s4d, fft_size=config.fft_size, **kw)
    if kind == "hyena":
        return HyenaOperator(config.d_model, config.max_seq_len, config.hyena, fft_size=config.fft_size, **kw)
    return LongConv(config.d_model, config.max_seq_len, config.long_conv, fft_size=config.fft_size, **kw)


class DecoderLM(nnx.Module):
    """The LM skeleton (module docstring): ``tokens [b, l] -> logits [b, l, vocab]`` in f32.

    A subclass checks its config, calls ``super().__init__`` and defines :meth:`build_block`. The
    config needs ``vocab_size``, ``d_model``, ``n_layers``, ``max_seq_len``, ``norm_eps``, ``init_std``
    and ``compute_dtype``. Token ids outside ``[0, vocab_size)`` raise ``ValueError`` eagerly; under
    ``jit`` that value check is skipped unless value checks are on (``jaxflash.models.validation``).
    """

    def __init__(
        self,
        config: Any,
        *,
        norm: str,
        learned_positions: bool = False,
        embed_dropout: float = 0.0,
        rngs: nnx.Rngs,
    ):
        check_parameters_fit(type(self), config, rngs)
        self.config = config
        dtype = config.compute_dtype
        d = config.d_model
        init = nnx.initializers.normal(config.init_std)
        self.embed = nnx.Embed(config.vocab_size, d, embedding_init=init, dtype=dtype, rngs=rngs)
        self.pos_emb = (
            nnx.Embed(config.max_seq_len, d, embedding_init=init, dtype=dtype, rngs=rngs)
            if learned_positions
            else None
        )
        self.embed_dropout = nnx.Dropout(embed_dropout, rngs=rngs) if embed_dropout else None
        self.blocks = nnx.List([self.build_block(i, rngs=rngs) for i in range(config.n_layers)])
        self.final_norm = make_norm(norm, d, eps=config.norm_eps, dtype=dtype, rngs=rngs)
        reinit_linears(self, rngs, std=config.init_std, n_layers=config.n_layers)

    def build_block(self, layer: int, *, rngs: nnx.Rngs) -> Block:
        """Block ``layer`` of the stack (``self.config`` is set)."""
        raise NotImplementedError(f"{type(self).__name__} must define build_block")

    def embed_tokens(self, tokens: Int[Array, "*b"], positions: Int[Array, "*b"]) -> Float[Array, "*b d"]:
        """Token embeddings (+ learned positions), with embedding dropout when configured."""
        x = self.embed(tokens)
        if self.pos_emb is not None:
            x = x + self.pos_emb(positions)
        return x if self.embed_dropout is None else self.embed_dropout(x)

    def head(self, x: Float[Array, "... d"]) -> Float[Array, "... v"]:
        """Final norm, then logits through the tied embedding (f32)."""
        return tied_logits(self.embed, self.final_norm(x))

    def __call__(self, tokens: Int[Array, "b l"]) -> Float[Array, "b l v"]:
        tokens = check_token_ids(tokens, self.config.vocab_size)
        length = tokens.shape[1]
        check_length("sequence length", length, self.config.max_seq_len)
        x = self.embed_tokens(tokens, jnp.arange(length)[None])
        for block in self.blocks:
            x = block(x)
        return self.head(x)

    def init_state(self, batch: int, max_len: int | None = None) -> State:
        """The recurrent state of every block for ``max_len`` steps (default ``max_seq_len``)."""
        max_len = max_len or self.config.max_seq_len
        check_length("max_len", max_len, self.config.max_seq_len)
        return dict(blocks=[b.init_state(batch, max_len) for b in self.blocks], pos=jnp.zeros((), jnp.int32))

    def prefill(
        self, tokens: Int[Array, "b l"], max_len: int | None = None
    ) -> tuple[Float[Array, "b l v"], State]:
        """The parallel forward over a prompt (the fast ops) and the decode state after it, as
        ``init_state(batch, max_len)`` lays it out: ``step`` then continues at position l."""
        max_len = max_len or self.config.max_seq_len
        check_length("max_len", max_len, self.config.max_seq_len)
        tokens = check_token_ids(tokens, self.config.vocab_size)
        length = tokens.shape[1]
        check_prefill_length(length, max_len)
        x = self.embed_tokens(tokens, jnp.arange(length)[None])
        x, blocks = prefill_blocks(self.blocks, x, max_len)
        return self.head(x), dict(blocks=blocks, pos=jnp.asarray(length, jnp.int32))

    def step(self, tokens: Int[Array, " b"], state: State) -> tuple[Float[Array, "b v"], State]:
        """Next-token logits after feeding one token per sequence; every mixer steps recurrently.
        Stepping past ``max_len`` of ``init_state`` raises (a value check under ``jit``)."""
        tokens = check_token_ids(tokens, self.config.vocab_size, step=True)
        pos = state["pos"]
        if self.pos_emb is not None:
            check_step_position(
                pos, self.config.max_seq_len, "learned position table", "the model has no later positions"
            )
        x = self.embed_tokens(tokens, pos[None])
        x, blocks = step_blocks(self.blocks, x, state["blocks"])
        return self.head(x), dict(blocks=blocks, pos=pos + 1)


class LanguageModel(DecoderLM):
    """Decoder-only LM with attention, H3, Hyena, long-convolution or S4D mixers (module docstring)."""

    def __init__(self, config: LMConfig, *, rngs: nnx.Rngs):
        require_config(config, LMConfig, "LanguageModel")
        super().__init__(
            config,
            norm=config.norm,
            learned_positions=config.learned_pos_emb,
            embed_dropout=config.embed_dropout,
            rngs=rngs,
        )

    def build_block(self, layer: int, *, rngs: nnx.Rngs) -> Block:
        cfg = self.config
        return Block(
            cfg.d_model,
            build_mixer(cfg, layer, rngs=rngs),
            MLP(cfg.d_model, cfg.ffn_dim, kind=cfg.mlp, dtype=cfg.compute_dtype, rngs=rngs),
            norm=cfg.norm,
            norm_eps=cfg.norm_eps,
            dropout=cfg.resid_dropout,
            dtype=cfg.compute_dtype,
            rngs=rngs,
        )


class M2GPT(DecoderLM):
    """Causal Monarch Mixer LM: pre-norm blocks of the causal M2 mixer and the block-diagonal GLU MLP,
    tied head. Our assembly: no public M2-GPT code exists (models.md section 1.4); the Monarch
    multiplies are realised as the FFT inside ``jaxflash.fftconv``: the DFT member of the causal Monarch
    family (``jaxflash.causal_monarch_conv``), not learned evaluation/interpolation factors. ``dropout``
    applies to each residual branch."""

    def __init__(self, config: M2Config, *, rngs: nnx.Rngs):
        require_config(config, M2Config, "M2GPT")
        if not config.causal:
            raise ValueError(
                "M2GPT needs a causal config (M2Config(causal=True), e.g. jaxflash.models.m2_gpt_tiny())"
            )
        super().__init__(config, norm="layer", rngs=rngs)

    def build_block(self, layer: int, *, rngs: nnx.Rngs) -> Block:
        cfg = self.config
        return Block(
            cfg.d_model,
            M2Mixer(cfg.d_model, cfg.max_seq_len, config=cfg, rngs=rngs),
            BlockDiagGLU(
                cfg.d_model,
                cfg.ffn_dim,
                cfg.mlp_nblocks,
                post_norm=False,
                dtype=cfg.compute_dtype,
                implementation=cfg.implementation,
                rngs=rngs,
            ),
            norm="layer",
            norm_eps=cfg.norm_eps,
            dropout=cfg.dropout,
            dtype=cfg.compute_dtype,
            rngs=rngs,
        )
