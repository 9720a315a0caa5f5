"""Language-model wrappers and the optimizer parameter groups of the papers.

``LanguageModel`` (safari ``long_conv_lm.py``): token embedding (+ learned positions for the
Transformer baselines) -> ``n_layers`` pre-norm blocks whose mixer is attention, H3, Hyena or a long
convolution (hybrids put attention at ``attn_layer_idx``) -> final norm -> LM head tied to the
embedding. Initialisation (GPT-2, safari ``_init_weights``): every Linear, the filter FFNs included,
and the embedding N(0, 0.02) with zero biases; the residual output projections (``out_proj`` of each
mixer, ``fc2`` of each MLP) N(0, 0.02 / sqrt(2 n_layers)). safari names H3's output ``output_linear``
and so leaves it unscaled; we scale every mixer's output projection alike.

``M2GPT``: the same LM skeleton around the causal Monarch Mixer and the block-diagonal GLU MLP.

``param_labels`` / ``make_optimizer``: the papers' groups (models.md section 6.3, trap 5)::

    "ssm"      H3 A, B, dt and long-conv kernels       lr = min(ssm_lr, lr), no weight decay
    "filter"   Hyena/M2 implicit-filter FFN and freq   lr = filter_lr, weight decay filter_wd
    "pos_emb"  the filter's positional encoding z      lr = pos_emb_lr, no weight decay
    "no_decay" biases, norm scales, Parcae A_log/dt/B/C lr, no weight decay
    "default"  everything else (weights, embeddings)   lr, weight_decay
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jaxflash.models.config import LMConfig, M2Config
from jaxflash.models.h3 import H3, SSMParam
from jaxflash.models.hyena import HyenaFilter, HyenaOperator
from jaxflash.models.long_conv import LongConv
from jaxflash.models.m2 import BlockDiagGLU, M2Mixer
from jaxflash.models.parcae import NoDecayParam
from jaxflash.models.transformer import MLP, Attention, Block, make_norm, reinit_linears
from jaxtyping import Array, Float, Int

State = dict[str, Any]
GROUPS = ("default", "no_decay", "ssm", "filter", "pos_emb")
RESIDUAL_OUTPUTS = ("out_proj", "fc2")


def build_mixer(config: LMConfig, layer: int, *, rngs: nnx.Rngs) -> nnx.Module:
    """The sequence mixer of block ``layer``."""
    kind = config.mixer_of(layer)
    dtype = jnp.dtype(config.dtype)
    kw = dict(dtype=dtype, implementation=config.implementation, rngs=rngs)
    if kind == "attention":
        return Attention(config.d_model, config.attention, norm_eps=config.norm_eps, **kw)
    if kind == "h3":
        return H3(config.d_model, config.h3, fft_size=config.fft_size, **kw)
    if kind == "hyena":
        return HyenaOperator(config.d_model, config.max_seq_len, config.hyena, fft_size=config.fft_size, **kw)
    return LongConv(config.d_model, config.max_seq_len, config.long_conv, fft_size=config.fft_size, **kw)


class LanguageModel(nnx.Module):
    """Decoder-only LM (module docstring): ``tokens [b, l] -> logits [b, l, vocab]`` in f32."""

    def __init__(self, config: LMConfig, *, rngs: nnx.Rngs):
        self.config = config
        dtype = jnp.dtype(config.dtype)
        d = config.d_model
        init = nnx.initializers.normal(config.init_std)
        self.embed = nnx.Embed(config.vocab_size, d, embedding_init=init, dtype=dtype, rngs=rngs)
        self.pos_emb = (
            nnx.Embed(config.max_seq_len, d, embedding_init=init, dtype=dtype, rngs=rngs)
            if config.learned_pos_emb
            else None
        )
        self.embed_dropout = nnx.Dropout(config.embed_dropout, rngs=rngs) if config.embed_dropout else None
        self.blocks = nnx.List(
            [
                Block(
                    d,
                    build_mixer(config, i, rngs=rngs),
                    MLP(d, config.ffn_dim, kind=config.mlp, dtype=dtype, rngs=rngs),
                    norm=config.norm,
                    norm_eps=config.norm_eps,
                    dropout=config.resid_dropout,
                    dtype=dtype,
                    rngs=rngs,
                )
                for i in range(config.n_layers)
            ]
        )
        self.final_norm = make_norm(config.norm, d, eps=config.norm_eps, dtype=dtype, rngs=rngs)
        reinit_linears(
            self,
            rngs,
            std=config.init_std,
            scaled=RESIDUAL_OUTPUTS,
            scaled_std=config.init_std / math.sqrt(2 * config.n_layers),
        )

    def _embed(self, tokens: jax.Array, positions: jax.Array) -> jax.Array:
        x = self.embed(tokens)
        if self.pos_emb is not None:
            x = x + self.pos_emb(positions)
        return x if self.embed_dropout is None else self.embed_dropout(x)

    def __call__(self, tokens: Int[Array, "b l"]) -> Float[Array, "b l v"]:
        length = tokens.shape[1]
        if length > self.config.max_seq_len:
            raise ValueError(f"sequence length {length} exceeds max_seq_len={self.config.max_seq_len}")
        x = self._embed(tokens, jnp.arange(length)[None])
        for block in self.blocks:
            x = block(x)
        return self.embed.attend(self.final_norm(x)).astype(jnp.float32)

    def init_state(self, batch: int, max_len: int | None = None) -> State:
        max_len = max_len or self.config.max_seq_len
        return dict(blocks=[b.init_state(batch, max_len) for b in self.blocks], pos=jnp.zeros((), jnp.int32))

    def step(self, tokens: Int[Array, " b"], state: State) -> tuple[Float[Array, "b v"], State]:
        """Next-token logits after feeding one token per sequence; every mixer steps recurrently."""
        x = self._embed(tokens, state["pos"][None])
        new = []
        for block, s in zip(self.blocks, state["blocks"], strict=True):
            x, s = block.step(x, s)
            new.append(s)
        logits = self.embed.attend(self.final_norm(x)).astype(jnp.float32)
        return logits, dict(blocks=new, pos=state["pos"] + 1)


class M2GPT(nnx.Module):
    """Causal Monarch Mixer LM: pre-norm blocks of the causal M2 mixer and the block-diagonal GLU MLP,
    tied head. Our assembly: no public M2-GPT code exists (models.md section 1.4); the Monarch
    multiplies are realised as the FFT inside ``jaxflash.fftconv``: the DFT member of the causal Monarch
    family (``jaxflash.monarch.causal_monarch_conv``), not learned evaluation/interpolation factors."""

    def __init__(self, config: M2Config, *, rngs: nnx.Rngs):
        if not config.causal:
            raise ValueError("M2GPT needs a causal config (M2Config(causal=True), e.g. presets.m2_gpt_tiny)")
        self.config = config
        dtype = jnp.dtype(config.dtype)
        d = config.d_model
        self.embed = nnx.Embed(
            config.vocab_size,
            d,
            embedding_init=nnx.initializers.normal(config.init_std),
            dtype=dtype,
            rngs=rngs,
        )
        self.blocks = nnx.List(
            [
                Block(
                    d,
                    M2Mixer(d, config.max_seq_len, config=config, rngs=rngs),
                    BlockDiagGLU(
                        d,
                        config.d_ff,
                        config.mlp_nblocks,
                        post_norm=False,
                        dtype=dtype,
                        implementation=config.implementation,
                        rngs=rngs,
                    ),
                    norm="layer",
                    norm_eps=1e-5,
                    dropout=config.dropout,
                    dtype=dtype,
                    rngs=rngs,
                )
                for _ in range(config.n_layers)
            ]
        )
        self.final_norm = nnx.LayerNorm(d, epsilon=1e-5, dtype=dtype, rngs=rngs)
        reinit_linears(
            self,
            rngs,
            std=config.init_std,
            scaled=RESIDUAL_OUTPUTS,
            scaled_std=config.init_std / math.sqrt(2 * config.n_layers),
        )

    def __call__(self, tokens: Int[Array, "b l"]) -> Float[Array, "b l v"]:
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x)
        return self.embed.attend(self.final_norm(x)).astype(jnp.float32)

    def init_state(self, batch: int, max_len: int | None = None) -> State:
        max_len = max_len or self.config.max_seq_len
        return dict(blocks=[b.init_state(batch, max_len) for b in self.blocks])

    def step(self, tokens: Int[Array, " b"], state: State) -> tuple[Float[Array, "b v"], State]:
        x = self.embed(tokens)
        new = []
        for block, s in zip(self.blocks, state["blocks"], strict=True):
            x, s = block.step(x, s)
            new.append(s)
        return self.embed.attend(self.final_norm(x)).astype(jnp.float32), dict(blocks=new)


# --- optimizer parameter groups -------------------------------------------------------------------------


def _label(param: nnx.Variable, path: tuple, filter_paths: list[tuple]) -> str:
    name = path[-1]
    if isinstance(param, SSMParam):
        return "ssm"
    if isinstance(param, NoDecayParam):
        return "no_decay"
    under_filter = next((p for p in filter_paths if path[: len(p)] == p), None)
    if under_filter is not None:
        rest = path[len(under_filter) :]
        if rest == ("z",):
            return "pos_emb"
        if rest == ("bias",):
            return "no_decay"
        return "filter"  # the FFN weights and the shared Sin frequency
    if name in ("bias", "scale", "mlm_bias"):
        return "no_decay"
    return "default"


def param_labels(model: nnx.Module) -> dict[tuple, str]:
    """Path of every ``nnx.Param`` (as in ``nnx.state(model, nnx.Param)``) -> its group in :data:`GROUPS`."""
    nodes = list(nnx.iter_graph(model))
    filter_paths = [tuple(p) for p, node in nodes if isinstance(node, HyenaFilter)]
    return {
        tuple(p): _label(node, tuple(p), filter_paths) for p, node in nodes if isinstance(node, nnx.Param)
    }


def _path_key(path: tuple) -> tuple:
    keys = []
    for entry in path:
        if isinstance(entry, jax.tree_util.DictKey):
            keys.append(entry.key)
        elif isinstance(entry, jax.tree_util.SequenceKey):
            keys.append(entry.idx)
        elif isinstance(entry, jax.tree_util.GetAttrKey):
            keys.append(entry.name)
        else:
            keys.append(getattr(entry, "key", entry))
    if keys and keys[-1] == "value":  # a Variable's own leaf
        keys.pop()
    return tuple(keys)


def labels_fn(model: nnx.Module) -> Callable[[Any], Any]:
    """For ``optax.multi_transform``: maps a parameter pytree of ``model`` (an ``nnx.State`` or its pure
    dict) to the same tree of group names."""
    table = param_labels(model)

    def fn(params: Any) -> Any:
        def one(path, _):
            key = _path_key(path)
            if key not in table:
                raise KeyError(f"parameter {key} is not a parameter of the model the labels were built for")
            return table[key]

        return jax.tree_util.tree_map_with_path(one, params)

    return fn


def make_optimizer(
    model: nnx.Module,
    *,
    lr: float,
    weight_decay: float = 0.1,
    schedule: Callable[[jax.Array], jax.Array] | None = None,
    ssm_lr: float = 1e-3,
    filter_lr: float | None = None,
    filter_weight_decay: float = 0.0,
    pos_emb_lr: float | None = None,
    b1: float = 0.9,
    b2: float = 0.98,
    eps: float = 1e-8,
) -> optax.GradientTransformation:
    """AdamW with the papers' groups (module docstring).

    ``schedule(step)`` multiplies every group's learning rate (warm-up/decay shape, peak 1), as
    safari's scheduler scales all groups alike. ``ssm_lr`` is capped at ``lr`` (safari:
    ``min(0.001, lr)``); ``filter_lr`` defaults to ``lr`` and ``pos_emb_lr`` to ``filter_lr``.
    """
    filter_lr = lr if filter_lr is None else filter_lr
    pos_emb_lr = filter_lr if pos_emb_lr is None else pos_emb_lr

    def adamw(group_lr: float, wd: float) -> optax.GradientTransformation:
        rate = group_lr if schedule is None else (lambda step: group_lr * schedule(step))
        return optax.adamw(rate, b1=b1, b2=b2, eps=eps, weight_decay=wd)

    transforms = {
        "default": adamw(lr, weight_decay),
        "no_decay": adamw(lr, 0.0),
        "ssm": adamw(min(ssm_lr, lr), 0.0),
        "filter": adamw(filter_lr, filter_weight_decay),
        "pos_emb": adamw(pos_emb_lr, 0.0),
    }
    return optax.multi_transform(transforms, labels_fn(model))
