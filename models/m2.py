"""Monarch Mixer (Fu et al. 2023, arXiv:2310.12109): the M2-BERT encoder, following m2
``bert/src/mm/monarch_mixer_sequence_mixer.py`` and ``bert/src/bert_layers.py``, and the causal
mixer M2-GPT uses.

Sequence mixer (M2-BERT, bidirectional)::

    x1, x2, v = split(ShortConv_3(W_in u))             W_in: d -> 3d; the short conv stays causal
    k = pad(k_f, (0, L)) + pad(flip(k_r), (L, 0))      forward / reverse implicit (Hyena) filters
    y = x2 . (k (*) (x1 . v) + b . (x1 . v))           (*): circular convolution of period 2L
    y = y + k' (*) u + b' . u                          optional residual long conv on the raw input
    out = W_out y

``M2Config.training_additions`` (m2's ``hyena_training_additions``, set by its GLUE fine-tuning
yaml for the 80M model) first applies a LayerNorm to u (the residual convolution then sees the
normalised u too); its two dropouts get no rate from ``BertLayer`` in m2, so they are identities.

so ``y_t = sum_{s <= t} k_f[t - s] g_s + sum_{s > t} k_r[s - t - 1] g_s`` with ``g = x1 . v``.
The causal mixer (``causal=True``) keeps only ``k_f`` and convolves causally: this is the form the
M2-GPT description reduces to when the Monarch multiplies are the FFT (no public M2-GPT code exists;
models.md section 1.4), and it has a recurrent ``step``.

Layer: ``h <- MLP(Mixer(h))``: NO residual and no norm around the mixer. MLP (post-LN GLU, block-
diagonal weights with 4 blocks, ``models.monarch.BlockDiagLinear``)::

    [a, g] = BlockDiag(W_1) h                          W_1: d -> 2 d_inner, no bias
    h <- LayerNorm(BlockDiag(W_o)(GELU(a) . g) + b_o + h)

The BERT model adds learned absolute positions and token types, then an MLM head (dense, GELU,
LayerNorm, tied decoder) and a CLS pooler (dense, tanh).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jaxflash.models.config import M2Config
from jaxflash.models.hyena import HyenaFilter, ShortConv, history_conv_step, last_window, prefix_history
from jaxflash.models.monarch import BlockDiagLinear
from jaxflash.models.transformer import reinit_linears
from jaxflash.models.validation import check_length, check_parameters_fit, check_token_ids, require_config
from jaxtyping import Array, Float, Int

import jaxflash

State = dict[str, Any]
POOLINGS = ("cls", "mean")


class M2Mixer(nnx.Module):
    """The Monarch Mixer sequence mixer (module docstring), ``[b, l, d] -> [b, l, d]``."""

    def __init__(self, d_model: int, max_len: int, *, config: M2Config, rngs: nnx.Rngs):
        self.d_model = d_model
        self.causal = config.causal
        self.residual_long_conv = config.residual_long_conv
        self.dtype = config.compute_dtype
        self.implementation = config.implementation
        self.fft_size = config.fft_size
        hyena = config.hyena
        self.in_linear = nnx.Linear(d_model, 3 * d_model, dtype=self.dtype, rngs=rngs)
        self.short_conv = ShortConv(3 * d_model, hyena.short_filter_order, rngs=rngs)
        self.filter = HyenaFilter(d_model, max_len, hyena, bidirectional=not config.causal, rngs=rngs)
        if config.residual_long_conv:
            self.filter2 = HyenaFilter(d_model, max_len, hyena, bidirectional=not config.causal, rngs=rngs)
        self.out_proj = nnx.Linear(d_model, d_model, dtype=self.dtype, rngs=rngs)
        if config.training_additions:
            # torch LayerNorm's eps; m2 passes no dropout to the mixer, so its two dropouts are identity.
            self.layernorm = nnx.LayerNorm(d_model, epsilon=1e-5, dtype=self.dtype, rngs=rngs)
        self.training_additions = config.training_additions

    def _input(self, u: jax.Array) -> jax.Array:
        return self.layernorm(u) if self.training_additions else u

    def conv_kernel(self, filt: HyenaFilter, length: int) -> jax.Array:
        """``[L, d]`` causal kernel, or the ``[2L, d]`` circular bidirectional kernel."""
        if self.causal:
            return filt.kernel(length)
        return jaxflash.bidirectional_kernel(filt.kernel(length), filt.kernel_rev(length))

    def _conv(self, u, filt: HyenaFilter, **gates):
        k = self.conv_kernel(filt, u.shape[1]).astype(u.dtype)
        # A circular kernel fixes the FFT size (2L); fft_size applies to the causal form only.
        return jaxflash.fftconv(
            u,
            k,
            skip=filt.bias[...].astype(u.dtype),
            causal=self.causal,
            fft_size=self.fft_size if self.causal else None,
            implementation=self.implementation,
            **gates,
        )

    def __call__(
        self, u: Float[Array, "b l d"], mask: Float[Array, "b l"] | None = None
    ) -> Float[Array, "b l d"]:
        """``mask`` (1 at tokens, 0 at padding, the padding after the tokens) zeroes the padded
        positions of what the long convolutions read, so that a token's output does not depend on how
        much padding follows it: the short convolution is causal, the filters are truncations of one
        ``max_len`` filter, and the rest is position-wise. Outputs at padded positions are unspecified."""
        u = self._input(u)
        x1, x2, v = jnp.split(self.short_conv(self.in_linear(u)), 3, axis=-1)
        if mask is not None:
            x1 = x1 * mask[..., None].astype(x1.dtype)
        y = self._conv(v, self.filter, pre_gate=x1, post_gate=x2)
        if self.residual_long_conv:
            y = y + self._conv(u if mask is None else u * mask[..., None].astype(u.dtype), self.filter2)
        return self.out_proj(y)

    def prefill(self, u: Float[Array, "b l d"], max_len: int) -> tuple[Float[Array, "b l d"], State]:
        """The parallel forward over a prompt and the state ``step`` continues from (causal only)."""
        if not self.causal:
            raise NotImplementedError(
                "the bidirectional M2-BERT mixer sees the future; only causal=True has a decode state"
            )
        y = self(u)
        u = self._input(u)
        zin = self.in_linear(u)
        x1, _, v = jnp.split(self.short_conv(zin).astype(jnp.float32), 3, axis=-1)
        histories = [prefix_history(x1 * v, max_len)]
        if self.residual_long_conv:
            histories.append(prefix_history(u.astype(jnp.float32), max_len))
        state = dict(
            window=last_window(zin, self.short_conv.taps, self.dtype),
            history=jnp.stack(histories),
            pos=jnp.asarray(u.shape[1], jnp.int32),
        )
        return y, state

    def init_state(self, batch: int, max_len: int) -> State:
        if not self.causal:
            raise NotImplementedError(
                "the bidirectional M2-BERT mixer sees the future; only causal=True has a step"
            )
        n_convs = 2 if self.residual_long_conv else 1
        return dict(
            window=jnp.zeros((batch, self.short_conv.taps, 3 * self.d_model), self.dtype),
            history=jnp.zeros((n_convs, batch, max_len, self.d_model), jnp.float32),
            pos=jnp.zeros((), jnp.int32),
        )

    def step(self, u: Float[Array, "b d"], state: State) -> tuple[Float[Array, "b d"], State]:
        pos, max_len = state["pos"], state["history"].shape[2]
        u = self._input(u)
        z, window = self.short_conv.step(state["window"], self.in_linear(u))
        x1, x2, v = jnp.split(z.astype(jnp.float32), 3, axis=-1)
        g = x1 * v
        y, hist = history_conv_step(state["history"][0], g, self.filter.kernel(max_len), pos)
        y = x2 * (y + self.filter.bias[...] * g)
        histories = [hist]
        if self.residual_long_conv:
            u32 = u.astype(jnp.float32)
            yu, hist2 = history_conv_step(state["history"][1], u32, self.filter2.kernel(max_len), pos)
            y = y + yu + self.filter2.bias[...] * u32
            histories.append(hist2)
        out = self.out_proj(y.astype(self.dtype))
        return out, dict(window=window, history=jnp.stack(histories), pos=pos + 1)


class BlockDiagGLU(nnx.Module):
    """M2-BERT's GLU MLP with block-diagonal weights (m2 ``BertGatedLinearUnitMLP`` with
    ``use_monarch_mlp``). ``post_norm=True``: ``LayerNorm(mlp(h) + h)`` as in BERT; False: the bare
    ``mlp(h)`` for a pre-norm block (M2-GPT)."""

    def __init__(
        self,
        d_model: int,
        d_inner: int,
        nblocks: int,
        *,
        post_norm: bool = True,
        eps: float = 1e-12,
        dropout: float = 0.0,
        dtype: Any = jnp.float32,
        implementation: str | None = None,
        rngs: nnx.Rngs,
    ):
        self.d_inner = d_inner
        self.post_norm = post_norm
        kw = dict(nblocks=nblocks, dtype=dtype, implementation=implementation, rngs=rngs)
        # BlockDiagLinear keeps m2's init (blocks cut from a kaiming-uniform dense init).
        self.gated = BlockDiagLinear(d_model, 2 * d_inner, use_bias=False, **kw)  # [GELU input; value]
        self.out = BlockDiagLinear(d_inner, d_model, use_bias=True, **kw)
        self.dropout = nnx.Dropout(dropout, rngs=rngs)
        if post_norm:
            self.norm = nnx.LayerNorm(d_model, epsilon=eps, dtype=dtype, rngs=rngs)

    def __call__(self, h: Float[Array, "... d"]) -> Float[Array, "... d"]:
        x = self.gated(h)
        x = jax.nn.gelu(x[..., : self.d_inner], approximate=False) * x[..., self.d_inner :]
        x = self.dropout(self.out(x)).astype(h.dtype)
        return self.norm(x + h) if self.post_norm else x


class BertSelfAttention(nnx.Module):
    """MosaicBERT's attention block, what m2's layer holds when ``monarch_mixer_sequence_mixing`` is off:
    ``LayerNorm(h + dropout(W_o attention(W_q h, W_k h, W_v h)))``, bidirectional, ``num_attention_heads``
    heads. ``mask`` (1 at tokens, right padding 0) keeps padded keys out (``kv_lengths``)."""

    def __init__(self, config: M2Config, *, rngs: nnx.Rngs):
        d, dtype = config.d_model, config.compute_dtype
        self.num_heads = config.num_attention_heads
        self.implementation = config.implementation
        self.qkv = nnx.Linear(d, 3 * d, dtype=dtype, rngs=rngs)
        self.out = nnx.Linear(d, d, dtype=dtype, rngs=rngs)
        self.dropout = nnx.Dropout(config.dropout, rngs=rngs)
        self.norm = nnx.LayerNorm(d, epsilon=config.norm_eps, dtype=dtype, rngs=rngs)

    def __call__(
        self, h: Float[Array, "b l d"], mask: Float[Array, "b l"] | None = None
    ) -> Float[Array, "b l d"]:
        b, length, d = h.shape
        q, k, v = jnp.split(self.qkv(h).reshape(b, length, 3 * self.num_heads, d // self.num_heads), 3, 2)
        lengths = None if mask is None else jnp.sum(mask, axis=1).astype(jnp.int32)
        y = jaxflash.attention(q, k, v, kv_lengths=lengths, implementation=self.implementation)
        return self.norm(h + self.dropout(self.out(y.reshape(b, length, d))))


class M2BertLayer(nnx.Module):
    """``h <- MLP(Mixer(h))`` (no residual around the mixer; :class:`BertSelfAttention` has its own)."""

    def __init__(self, config: M2Config, *, rngs: nnx.Rngs):
        if config.monarch_mixer_sequence_mixing:
            self.mixer = M2Mixer(config.d_model, config.max_seq_len, config=config, rngs=rngs)
        else:
            self.mixer = BertSelfAttention(config, rngs=rngs)
        self.mlp = BlockDiagGLU(
            config.d_model,
            config.ffn_dim,
            config.mlp_nblocks,
            eps=config.norm_eps,
            dropout=config.dropout,
            dtype=config.compute_dtype,
            implementation=config.implementation,
            rngs=rngs,
        )

    def __call__(
        self, h: Float[Array, "b l d"], mask: Float[Array, "b l"] | None = None
    ) -> Float[Array, "b l d"]:
        return self.mlp(self.mixer(h, mask))


class M2Bert(nnx.Module):
    """M2-BERT: embeddings, ``n_layers`` M2 layers, MLM head (tied decoder) and CLS pooler.

    ``__call__`` returns the MLM logits; ``encode`` the hidden states; ``pool`` the CLS embedding
    (the retrieval embedding of M2-BERT-32k). Linear and embedding weights follow BERT's N(0, 0.02)
    init; block-diagonal weights keep m2's own init.
    """

    def __init__(self, config: M2Config, *, rngs: nnx.Rngs):
        require_config(config, M2Config, "M2Bert")
        if config.causal:
            raise ValueError(
                "M2Bert is the bidirectional encoder (causal=False); build the causal M2-GPT with "
                "jaxflash.models.M2GPT"
            )
        check_parameters_fit(type(self), config, rngs)
        self.config = config
        d, dtype = config.d_model, config.compute_dtype
        init = nnx.initializers.normal(config.init_std)
        self.word_emb = nnx.Embed(config.vocab_size, d, embedding_init=init, dtype=dtype, rngs=rngs)
        self.pos_emb = nnx.Embed(config.max_seq_len, d, embedding_init=init, dtype=dtype, rngs=rngs)
        self.type_emb = nnx.Embed(config.type_vocab_size, d, embedding_init=init, dtype=dtype, rngs=rngs)
        self.emb_norm = nnx.LayerNorm(d, epsilon=config.norm_eps, dtype=dtype, rngs=rngs)
        self.emb_dropout = nnx.Dropout(config.dropout, rngs=rngs)
        self.layers = nnx.List([M2BertLayer(config, rngs=rngs) for _ in range(config.n_layers)])
        lin = dict(kernel_init=init, dtype=dtype, rngs=rngs)
        self.mlm_dense = nnx.Linear(d, d, **lin)
        self.mlm_norm = nnx.LayerNorm(d, epsilon=config.norm_eps, dtype=dtype, rngs=rngs)
        self.mlm_bias = nnx.Param(jnp.zeros((config.vocab_size,), jnp.float32))
        self.pooler = nnx.Linear(d, d, **lin)
        # BERT's _init_weights: every Linear (filter FFNs included) N(0, init_std) with zero bias.
        reinit_linears(self, rngs, std=config.init_std)

    def encode(
        self,
        input_ids: Int[Array, "b l"],
        token_type_ids: Int[Array, "b l"] | None = None,
        attention_mask: Int[Array, "b l"] | None = None,
    ) -> Float[Array, "b l d"]:
        """Hidden states after the last layer. ``attention_mask`` (1 at tokens, 0 at right padding) keeps
        the padding out of every token's state (:meth:`M2Mixer.__call__`); m2 itself has no mask and
        pads every input to one length instead. Ids out of range raise eagerly; under ``jit`` they are a
        value check (``jaxflash.models.validation``)."""
        cfg = self.config
        input_ids = check_token_ids(input_ids, cfg.vocab_size, name="input_ids")
        length = input_ids.shape[1]
        check_length("sequence length", length, cfg.max_seq_len)
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        token_type_ids = check_token_ids(
            token_type_ids, cfg.type_vocab_size, name="token_type_ids", size_name="type_vocab_size"
        )
        if token_type_ids.shape != input_ids.shape:
            raise ValueError(
                f"token_type_ids must have input_ids' shape {input_ids.shape}; got {token_type_ids.shape}"
            )
        h = self.word_emb(input_ids) + self.pos_emb(jnp.arange(length))[None] + self.type_emb(token_type_ids)
        h = self.emb_dropout(self.emb_norm(h))
        mask = None
        if attention_mask is not None:
            if attention_mask.shape != input_ids.shape:
                raise ValueError(
                    f"attention_mask must have input_ids' shape {input_ids.shape}; got {attention_mask.shape}"
                )
            mask = attention_mask.astype(h.dtype)
        for layer in self.layers:
            h = layer(h, mask)
        return h

    def mlm_logits(self, h: Float[Array, "b l d"]) -> Float[Array, "b l v"]:
        x = self.mlm_norm(jax.nn.gelu(self.mlm_dense(h), approximate=False))
        return self.word_emb.attend(x) + self.mlm_bias[...].astype(x.dtype)

    def pool(self, h: Float[Array, "b l d"]) -> Float[Array, "b d"]:
        return jnp.tanh(self.pooler(h[:, 0]))

    def embed(
        self,
        input_ids: Int[Array, "b l"],
        attention_mask: Int[Array, "b l"] | None = None,
        *,
        pooling: str = "cls",
    ) -> Float[Array, "b d"]:
        """One retrieval embedding per sequence (not normalised; cosine search normalises):
        ``"cls"`` is M2-BERT-32k's (:meth:`pool`: CLS state, dense, tanh), ``"mean"`` the mean of the
        last hidden states over ``attention_mask`` (sentence-transformers' mean pooling). A padded
        sequence embeds as the unpadded one does (to float rounding)."""
        if pooling not in POOLINGS:
            raise ValueError(f"pooling={pooling!r}; choose one of {POOLINGS}")
        h = self.encode(input_ids, attention_mask=attention_mask)
        if pooling == "cls":
            return self.pool(h).astype(jnp.float32)
        mask = jnp.ones(h.shape[:2], h.dtype) if attention_mask is None else attention_mask.astype(h.dtype)
        total = jnp.sum(h * mask[..., None], axis=1)
        return (total / jnp.maximum(jnp.sum(mask, axis=1, keepdims=True), 1)).astype(jnp.float32)

    def __call__(
        self, input_ids: Int[Array, "b l"], token_type_ids: Int[Array, "b l"] | None = None
    ) -> Float[Array, "b l v"]:
        return self.mlm_logits(self.encode(input_ids, token_type_ids))


class M2BertClassifier(nnx.Module):
    """m2's ``BertForSequenceClassification`` on :class:`M2Bert`: ``logits = classifier(pooled)`` with
    ``pooled = tanh(dense(h_CLS))`` (``M2Bert.pool``), or with ``pool_all=True`` (m2's GLUE fine-tuning
    yamls) ``tanh(dense(mean of h over the attention mask))``. The dropout before the classifier is the
    identity at inference and is left out."""

    def __init__(self, config: M2Config, num_labels: int, *, pool_all: bool = False, rngs: nnx.Rngs):
        self.bert = M2Bert(config, rngs=rngs)
        self.pool_all = pool_all
        init = nnx.initializers.normal(config.init_std)
        self.classifier = nnx.Linear(
            config.d_model, num_labels, kernel_init=init, bias_init=nnx.initializers.zeros, rngs=rngs
        )

    def __call__(
        self,
        input_ids: Int[Array, "b l"],
        token_type_ids: Int[Array, "b l"] | None = None,
        attention_mask: Int[Array, "b l"] | None = None,
    ) -> Float[Array, "b n"]:
        h = self.bert.encode(input_ids, token_type_ids)
        if self.pool_all:
            mask = (
                jnp.ones(h.shape[:2], h.dtype) if attention_mask is None else attention_mask.astype(h.dtype)
            )
            mean = jnp.sum(h * mask[..., None], axis=1) / jnp.sum(mask, axis=1, keepdims=True)
            pooled = jnp.tanh(self.bert.pooler(mean))
        else:
            pooled = self.bert.pool(h)
        return self.classifier(pooled).astype(jnp.float32)
