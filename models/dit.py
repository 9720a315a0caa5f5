"""DiT: the class-conditional Diffusion Transformer (Peebles & Xie 2023, arXiv:2212.09748), as
``facebookresearch/DiT/models.py`` builds it.

Images are channels-last, ``x [b, H, W, C]`` with ``H = W = input_size`` (DiT's tensors are NCHW; the
axes are transposed, the arithmetic is the same)::

    tokens = Linear(patchify(x)) + pos                  [b, T, D], T = (H / p)^2, raster order
    c      = MLP(sinusoid_256(t)) + E[y]                [b, D]   timestep + label embedding
    for each block (adaLN-Zero):
        shift1, scale1, gate1, shift2, scale2, gate2 = Linear(SiLU(c))          6 x [b, D]
        x = x + gate1 * attn(LN(x) (1 + scale1) + shift1)
        x = x + gate2 * mlp(LN(x) (1 + scale2) + shift2)
    shift, scale = Linear(SiLU(c));  out = Linear(LN(x) (1 + scale) + shift)    [b, T, p^2 C_out]
    unpatchify(out)                                     [b, H, W, C_out], C_out = 2C with learn_sigma

- **patchify** is DiT's ``Conv2d(C, D, kernel=stride=p)`` written as a Linear on flattened patches; a
  patch's features are ordered ``(row in patch, column in patch, channel)``, so a PyTorch conv weight
  ``w [D, C, p, p]`` is the kernel ``w.transpose(2, 3, 1, 0).reshape(p * p * C, D)``. The final Linear's
  outputs use the same order, as DiT's ``unpatchify`` (``einsum('nhwpqc->nchpwq')``) reads them.
- **pos** is the fixed 2-D sin-cos table of MAE/DiT (:func:`sincos_pos_embed_2d`), not a parameter.
- **timestep**: ``freqs_i = exp(-ln(10000) i / (F/2))``, ``[cos(t freqs), sin(t freqs)]`` (F = 256), then
  ``Linear(F, D) -> SiLU -> Linear(D, D)``.
- **labels**: a table of ``num_classes + 1`` rows when ``class_dropout_prob > 0`` (the extra row is the
  null class of classifier-free guidance; DiT has none without label dropout). In training mode
  (``model.train()``, the default as for ``nnx.Dropout``) each label is replaced by the null class with
  probability ``class_dropout_prob``; ``model.eval()`` turns that off; ``force_drop_ids`` (1 = drop)
  overrides both, as in DiT.
- **attn** is timm's ``Attention(D, heads, qkv_bias=True)`` (fused qkv, bidirectional), computed by
  ``jaxflash.attention``; **mlp** is timm's ``Mlp(D, int(4 D), GELU-tanh)``. A block calls
  ``self.attn(u)`` and ``self.mlp(u)`` on the modulated input ``u [b, T, D]``, so grafting can put any
  module with that call there (``model.blocks[i].attn = replacement``); the gates stay the block's.
- **init** (DiT ``initialize_weights``): xavier-uniform Linears with zero bias (the patch embedding as a
  matrix too), label table and timestep-MLP weights N(0, 0.02), and **zero** for the last Linear of every
  adaLN modulation and for the final layer's modulation and output Linear. So at init every block is
  the identity and the model outputs zeros.

The LayerNorms are affine-free, ``eps = 1e-6``. The output is float32 whatever the compute dtype.
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax.nnx import rnglib
from jaxflash.models.config import DiTConfig
from jaxflash.models.transformer import MLP
from jaxflash.models.validation import check_parameters_fit, require_config
from jaxtyping import Array, Float, Int

import jaxflash
from jaxflash.utils import check_real, check_values

xavier = nnx.initializers.xavier_uniform()
zeros = nnx.initializers.zeros_init()


# --- fixed embeddings ---------------------------------------------------------------------------------


def sincos_pos_embed_1d(dim: int, positions: np.ndarray) -> np.ndarray:
    """``[sin(pos w), cos(pos w)]`` with ``w_i = 10000^(-i / (dim/2))``, ``i < dim/2``: ``[len, dim]``."""
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    angle = np.asarray(positions, np.float64).reshape(-1)[:, None] * omega
    return np.concatenate([np.sin(angle), np.cos(angle)], axis=1)


@functools.lru_cache(maxsize=16)
def sincos_pos_embed_2d(dim: int, grid_size: int) -> np.ndarray:
    """DiT's ``get_2d_sincos_pos_embed``: ``[grid_size^2, dim]`` float32, tokens in raster order.

    Token ``(row r, column c)`` (index ``r * grid_size + c``) gets ``[sincos_1d(c), sincos_1d(r)]``,
    each of width ``dim / 2``: DiT builds its grid with ``np.meshgrid(grid_w, grid_h)``, so its "h"
    half holds the column coordinate; that order is kept so that released weights line up.
    """
    if dim % 4:
        raise ValueError(f"dim={dim} must be a multiple of 4 (two axes, each in sin/cos pairs)")
    rows, cols = np.meshgrid(np.arange(grid_size), np.arange(grid_size), indexing="ij")
    emb = np.concatenate([sincos_pos_embed_1d(dim // 2, cols), sincos_pos_embed_1d(dim // 2, rows)], axis=1)
    emb = emb.astype(np.float32)
    emb.flags.writeable = False  # cached and shared
    return emb


def timestep_embedding(t: Float[Array, " b"], dim: int, max_period: float = 10000.0) -> Float[Array, "b dim"]:
    """DiT's sinusoidal timestep features ``[cos(t f), sin(t f)]``, ``f_i = max_period^(-i / (dim // 2))``
    (a zero column appended when ``dim`` is odd); float32."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = jnp.asarray(t, jnp.float32)[:, None] * freqs[None]
    emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
    if dim % 2:
        emb = jnp.concatenate([emb, jnp.zeros_like(emb[:, :1])], axis=-1)
    return emb


# --- patches ------------------------------------------------------------------------------------------


def patchify(x: Float[Array, "b h w c"], p: int) -> Float[Array, "b t pc"]:
    """``[b, H, W, C] -> [b, (H/p)(W/p), p p C]``: non-overlapping patches in raster order, each
    flattened as ``(row in patch, column in patch, channel)``."""
    b, h, w, c = x.shape
    if h % p or w % p:
        raise ValueError(f"image {h} x {w} is not a whole number of {p} x {p} patches")
    x = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(x: Float[Array, "b t pc"], p: int, channels: int) -> Float[Array, "b h w c"]:
    """The inverse of :func:`patchify` on a square grid, ``[b, T, p p C] -> [b, sqrt(T) p, sqrt(T) p, C]``."""
    b, t, f = x.shape
    g = math.isqrt(t)
    if g * g != t or f != p * p * channels:
        raise ValueError(f"cannot unpatchify {x.shape=} into a square image of {p=}, {channels=}")
    x = x.reshape(b, g, g, p, p, channels).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, g * p, g * p, channels)


def modulate(x: Float[Array, "b t d"], shift: Float[Array, "b d"], scale: Float[Array, "b d"]):
    """adaLN: ``x (1 + scale) + shift``, per sample, broadcast over tokens."""
    return x * (1 + scale[:, None]) + shift[:, None]


def _layer_norm(d: int, eps: float, dtype: Any, rngs: nnx.Rngs) -> nnx.LayerNorm:
    return nnx.LayerNorm(d, epsilon=eps, use_bias=False, use_scale=False, dtype=dtype, rngs=rngs)


def _linear(d_in: int, d_out: int, dtype: Any, rngs: nnx.Rngs, *, init=xavier, **kw) -> nnx.Linear:
    return nnx.Linear(
        d_in, d_out, kernel_init=init, bias_init=zeros, dtype=dtype, param_dtype=jnp.float32, rngs=rngs, **kw
    )


# --- layers -------------------------------------------------------------------------------------------


class TimestepEmbedder(nnx.Module):
    """``t [b] -> Linear(SiLU(Linear(sinusoid(t)))) [b, D]``; weights N(0, 0.02), biases zero."""

    def __init__(self, d_model: int, freq_dim: int = 256, *, dtype: Any = jnp.float32, rngs: nnx.Rngs):
        self.freq_dim = freq_dim
        init = nnx.initializers.normal(0.02)
        self.fc1 = _linear(freq_dim, d_model, dtype, rngs, init=init)
        self.fc2 = _linear(d_model, d_model, dtype, rngs, init=init)

    def __call__(self, t: Float[Array, " b"]) -> Float[Array, "b d"]:
        return self.fc2(jax.nn.silu(self.fc1(timestep_embedding(t, self.freq_dim))))


class LabelEmbedder(nnx.Module):
    """Class labels to vectors, with DiT's label dropout to the null class ``num_classes``.

    The table has ``num_classes + 1`` rows when ``dropout_prob > 0``, else ``num_classes``. Labels are
    dropped (each with probability ``dropout_prob``, keys from the ``"dropout"`` stream) when not
    ``deterministic``; ``force_drop_ids`` (``[b]``, 1 = drop) drops exactly those, in any mode.
    """

    def __init__(
        self,
        num_classes: int,
        d_model: int,
        dropout_prob: float,
        *,
        deterministic: bool = False,
        dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob
        self.deterministic = deterministic
        rows = num_classes + (dropout_prob > 0)
        init = nnx.initializers.normal(0.02)
        self.embedding = nnx.Embed(rows, d_model, embedding_init=init, dtype=dtype, rngs=rngs)
        self.rngs = rngs["dropout"].fork() if dropout_prob > 0 else nnx.data(None)

    def drop(
        self,
        labels: Int[Array, " b"],
        *,
        deterministic: bool | None = None,
        force_drop_ids: Int[Array, " b"] | None = None,
        rngs: rnglib.Rngs | rnglib.RngStream | jax.Array | None = None,
    ) -> Int[Array, " b"]:
        """The labels after dropout: dropped ones become ``num_classes`` (the null class)."""
        if force_drop_ids is None:
            deterministic = self.deterministic if deterministic is None else deterministic
            if deterministic or self.dropout_prob == 0:
                return labels
            stream = self.rngs if rngs is None else rngs
            key = stream["dropout"]() if isinstance(stream, rnglib.Rngs) else stream
            key = key() if isinstance(key, rnglib.RngStream) else key
            dropped = jax.random.uniform(key, labels.shape) < self.dropout_prob
        else:
            if self.dropout_prob == 0:
                raise ValueError(
                    "force_drop_ids needs the null class, which DiT adds only when class_dropout_prob > 0"
                )
            dropped = jnp.asarray(force_drop_ids) == 1
        return jnp.where(dropped, self.num_classes, labels)

    def __call__(self, labels: Int[Array, " b"], **drop_kw) -> Float[Array, "b d"]:
        return self.embedding(self.drop(labels, **drop_kw))


class SelfAttention(nnx.Module):
    """timm's ``Attention``: fused ``qkv`` Linear (outputs ordered ``(3, heads, head_dim)``), softmax
    attention over all tokens through ``jaxflash.attention``, output Linear ``proj``."""

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        *,
        dtype: Any = jnp.float32,
        implementation: str | None = None,
        rngs: nnx.Rngs,
    ):
        if d_model % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide d_model={d_model}")
        self.num_heads = num_heads
        self.implementation = implementation
        self.qkv = _linear(d_model, 3 * d_model, dtype, rngs)
        self.proj = _linear(d_model, d_model, dtype, rngs)

    def __call__(self, x: Float[Array, "b t d"]) -> Float[Array, "b t d"]:
        b, t, d = x.shape
        qkv = self.qkv(x).reshape(b, t, 3, self.num_heads, d // self.num_heads)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        y = jaxflash.attention(q, k, v, causal=False, implementation=self.implementation)
        return self.proj(y.reshape(b, t, d))


class DiTBlock(nnx.Module):
    """adaLN-Zero block: attention and MLP branches, each modulated by and gated from ``c``."""

    def __init__(self, config: DiTConfig, *, rngs: nnx.Rngs):
        d, dtype = config.d_model, config.compute_dtype
        self.norm1 = _layer_norm(d, config.norm_eps, dtype, rngs)
        self.attn = SelfAttention(
            d, config.num_heads, dtype=dtype, implementation=config.implementation, rngs=rngs
        )
        self.norm2 = _layer_norm(d, config.norm_eps, dtype, rngs)
        self.mlp = MLP(d, config.ffn_dim, kind="gelu", dtype=dtype, rngs=rngs)
        for fc in (self.mlp.fc1, self.mlp.fc2):
            fc.kernel.set_value(xavier(rngs.params(), fc.kernel.shape, jnp.float32))
        self.adaLN_modulation = _linear(d, 6 * d, dtype, rngs, init=zeros)

    def modulation(self, c: Float[Array, "b d"]) -> tuple[Float[Array, "b d"], ...]:
        """``(shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp)`` from ``Linear(SiLU(c))``."""
        return tuple(jnp.split(self.adaLN_modulation(jax.nn.silu(c)), 6, axis=-1))

    def __call__(self, x: Float[Array, "b t d"], c: Float[Array, "b d"]) -> Float[Array, "b t d"]:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.modulation(c)
        x = x + gate_msa[:, None] * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        return x + gate_mlp[:, None] * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class FinalLayer(nnx.Module):
    """``Linear(modulate(LN(x), shift, scale))`` to ``p^2 C_out`` features per token; all zero at init."""

    def __init__(self, config: DiTConfig, *, rngs: nnx.Rngs):
        d, dtype = config.d_model, config.compute_dtype
        p = config.patch_size
        self.norm_final = _layer_norm(d, config.norm_eps, dtype, rngs)
        self.linear = _linear(d, p * p * config.out_channels, dtype, rngs, init=zeros)
        self.adaLN_modulation = _linear(d, 2 * d, dtype, rngs, init=zeros)

    def __call__(self, x: Float[Array, "b t d"], c: Float[Array, "b d"]) -> Float[Array, "b t f"]:
        shift, scale = jnp.split(self.adaLN_modulation(jax.nn.silu(c)), 2, axis=-1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class DiT(nnx.Module):
    """``(x [b, H, W, C], t [b], y [b]) -> [b, H, W, C_out]`` float32 (module docstring).

    ``t`` holds the diffusion timesteps (ints or floats; a scalar is broadcast), ``y`` the class
    labels in ``[0, num_classes]`` (``num_classes`` is the null class when the config has one).
    """

    def __init__(self, config: DiTConfig, *, rngs: nnx.Rngs):
        require_config(config, DiTConfig, "DiT")
        check_parameters_fit(type(self), config, rngs)
        self.config = config
        d, dtype, p = config.d_model, config.compute_dtype, config.patch_size
        self.x_embedder = _linear(p * p * config.in_channels, d, dtype, rngs)
        self.t_embedder = TimestepEmbedder(d, config.freq_dim, dtype=dtype, rngs=rngs)
        self.y_embedder = LabelEmbedder(
            config.num_classes, d, config.class_dropout_prob, dtype=dtype, rngs=rngs
        )
        self.blocks = nnx.List([DiTBlock(config, rngs=rngs) for _ in range(config.n_layers)])
        self.final_layer = FinalLayer(config, rngs=rngs)

    @property
    def pos_embed(self) -> Float[Array, "t d"]:
        """The fixed 2-D sin-cos table ``[num_patches, d_model]`` (not a parameter)."""
        return jnp.asarray(sincos_pos_embed_2d(self.config.d_model, self.config.grid_size))

    def _check_inputs(self, x: jax.Array, t: Any, y: Any) -> tuple[jax.Array, jax.Array]:
        cfg = self.config
        want = (cfg.input_size, cfg.input_size, cfg.in_channels)
        if x.ndim != 4 or x.shape[1:] != want:
            raise ValueError(
                f"x must have shape [batch, {', '.join(map(str, want))}] (channels last); got {x.shape}"
            )
        b = x.shape[0]
        t = jnp.asarray(t)
        if t.ndim == 0:
            t = jnp.broadcast_to(t, (b,))
        y = jnp.asarray(y)
        if t.shape != (b,) or y.shape != (b,):
            raise ValueError(f"t and y must have shape [batch]=({b},); got t {t.shape} and y {y.shape}")
        if not jnp.issubdtype(y.dtype, jnp.integer):
            raise TypeError(f"y must be integer class labels; got dtype {y.dtype}")
        top = cfg.num_classes + cfg.has_null_class
        check_values(
            (y >= 0) & (y < top),
            f"labels y must lie in [0, {top}); got min {{}} and max {{}}",
            y.min(),
            y.max(),
        )
        return t, y

    def __call__(
        self,
        x: Float[Array, "b h w c"],
        t: Float[Array, " b"],
        y: Int[Array, " b"],
        *,
        force_drop_ids: Int[Array, " b"] | None = None,
    ) -> Float[Array, "b h w co"]:
        h, c = self.embed(x, t, y, force_drop_ids=force_drop_ids)
        for block in self.blocks:
            h = block(h, c)
        return self.head(h, c)

    def embed(
        self,
        x: Float[Array, "b h w c"],
        t: Float[Array, " b"],
        y: Int[Array, " b"],
        *,
        force_drop_ids: Int[Array, " b"] | None = None,
        **drop_kw: Any,
    ) -> tuple[Float[Array, "b t d"], Float[Array, "b d"]]:
        """What the blocks read: the tokens ``h = Linear(patchify(x)) + pos [b, T, D]`` and the
        conditioning ``c = t_embedder(t) + y_embedder(y) [b, D]`` (labels dropped as in ``__call__``;
        ``drop_kw`` goes to :meth:`LabelEmbedder.drop`, e.g. ``deterministic=True``)."""
        cfg = self.config
        t, y = self._check_inputs(x, t, y)
        h = self.x_embedder(patchify(x.astype(cfg.compute_dtype), cfg.patch_size))
        h = h + self.pos_embed.astype(h.dtype)
        return h, self.t_embedder(t) + self.y_embedder(y, force_drop_ids=force_drop_ids, **drop_kw)

    def head(self, h: Float[Array, "b t d"], c: Float[Array, "b d"]) -> Float[Array, "b h w co"]:
        """The final layer and unpatchify on the blocks' output: ``[b, H, W, C_out]`` float32."""
        cfg = self.config
        return unpatchify(self.final_layer(h, c), cfg.patch_size, cfg.out_channels).astype(jnp.float32)

    def forward_with_cfg(
        self,
        x: Float[Array, "b h w c"],
        t: Float[Array, " b"],
        y: Int[Array, " b"],
        cfg_scale: float | Float[Array, ""],
        *,
        guidance_channels: int | None = 3,
    ) -> Float[Array, "b h w co"]:
        """Classifier-free guidance: ``eps = eps(x, y_null) + s (eps(x, y) - eps(x, y_null))``.

        One forward over the doubled batch ``[x, x]`` with labels ``[y, null]`` (labels are never
        dropped at random here). Guidance is applied to output channels ``[0, guidance_channels)``;
        the other channels (the learned-variance channels and any unguided epsilon channel) are the
        conditional output's. ``guidance_channels=3`` is DiT's code (``model_out[:, :3]``), which
        guides only 3 of the 4 latent channels: the setting of its published FIDs, kept so they can be
        matched (DiT issue #41; 1.5 on 3 channels is about 1.375 on all 4). ``None`` guides every
        epsilon channel (``in_channels``), the guidance of the paper's equation. With fewer than 3
        latent channels, 3 also reaches the variance channels, as DiT's slice does.

        Unlike DiT's method, ``x`` and ``y`` are the batch to sample (not already doubled) and the
        result has that batch: DiT's doubled output is this result twice in the guided channels, and
        the sampler keeps only its first (conditional) half.
        """
        cfg = self.config
        if not cfg.has_null_class:
            raise ValueError("classifier-free guidance needs the null class: set class_dropout_prob > 0")
        if isinstance(cfg_scale, numbers.Real):
            check_real("cfg_scale", cfg_scale, at_least=0.0)
        else:
            check_values(
                jnp.asarray(cfg_scale) >= 0, "cfg_scale must be >= 0 (1 = no guidance); got {}", cfg_scale
            )
        g = cfg.in_channels if guidance_channels is None else guidance_channels
        if not (isinstance(g, int) and g >= 1):
            raise ValueError(f"guidance_channels must be a positive int or None; got {guidance_channels!r}")
        b = x.shape[0]
        t, y = self._check_inputs(x, t, y)
        drop = jnp.concatenate([jnp.zeros((b,), jnp.int32), jnp.ones((b,), jnp.int32)])
        out = self(
            jnp.concatenate([x, x]), jnp.concatenate([t, t]), jnp.concatenate([y, y]), force_drop_ids=drop
        )
        cond, uncond = out[:b], out[b:]
        guided = uncond[..., :g] + cfg_scale * (cond[..., :g] - uncond[..., :g])
        return jnp.concatenate([guided, cond[..., g:]], axis=-1)
