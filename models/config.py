"""Configurations of the sequence models, with the papers' presets and tiny CPU presets.

Every config is a frozen dataclass validated at construction: a bad value (heads not dividing the
width, an odd FFT size, a loop count below one, a NaN or negative scale, ...) raises ``ValueError``
saying what to change, before any parameter is allocated. Presets are small functions returning
configs; ``PRESETS`` maps their names to them (``PRESETS["hyena_153m"]()``).

The three model families share their top-level names: ``vocab_size``, ``d_model``, ``d_inner`` (the
MLP's hidden width, safari's name; m2 and parcae call it ``intermediate_size``), ``max_seq_len``,
``norm_eps``, ``init_std``, ``dtype``, ``implementation``; and they hold their mixers' settings as the
mixers' own configs (``LMConfig.hyena``, ``M2Config.hyena``, ``ParcaeConfig.attention``).

Sources of the preset sizes (``shared/reference/models.md``): safari ``configs/experiment/pile/*.yaml``
(H3 125M, Hyena 153M), m2 ``bert/yamls/pretrain`` (M2-BERT 80M), parcae ``parcae_lm/configs`` (140M),
GPT-2 small for the Transformer; DiT's ``DiT_models`` (``facebookresearch/DiT/models.py``) for
``DiTConfig``, whose presets live in ``DIT_PRESETS`` under DiT's names.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp

from jaxflash.utils import check_int

MIXERS = ("attention", "h3", "hyena", "long_conv", "s4d")
MLPS = ("gelu", "swiglu", "relu2")
NORMS = ("layer", "rms")
INJECTIONS = ("diagonal", "linear", "additive")
DISCRETIZATIONS = ("bilinear", "zoh")
HYENA_FILTERS = ("implicit", "conv1d")
S4D_INITS = ("lin", "inv")  # diagonal-SSM init of Im A: S4D-Lin (H3) or S4D-Inv (safari's S4D layer)


def _positive(name: str, value: Any) -> None:
    check_int(name, value)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


# The float checks are written `not (... value > 0)` rather than `value <= 0`: every comparison with
# NaN is False, so only the positive form refuses it.
def _positive_float(name: str, value: Any) -> None:
    if not (_is_real(value) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0; got {value!r}")


def _non_negative_float(name: str, value: Any) -> None:
    if not (_is_real(value) and math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0; got {value!r}")


def _finite(name: str, value: Any) -> None:
    if not (_is_real(value) and math.isfinite(value)):
        raise ValueError(f"{name} must be a finite number; got {value!r}")


def _rate(name: str, value: Any) -> None:
    """A dropout rate."""
    if not (_is_real(value) and 0 <= value < 1):
        raise ValueError(f"{name} must lie in [0, 1); got {value!r}")


def _divides(what: str, divisor: int, total_name: str, total: int) -> None:
    if total % divisor:
        raise ValueError(
            f"{what}={divisor} must divide {total_name}={total}; pick {what} among the divisors of {total}"
        )


def _check_dtype(name: str, value: str) -> None:
    try:
        dt = jnp.dtype(value)
    except TypeError as e:
        raise ValueError(
            f"{name}={value!r} is not a dtype name; use 'float32', 'bfloat16' or 'float16'"
        ) from e
    if not jnp.issubdtype(dt, jnp.floating):
        raise ValueError(f"{name}={value!r} must be a floating dtype ('float32', 'bfloat16', 'float16')")


def _check_fft_size(fft_size: int | None, seq_len: int) -> None:
    if fft_size is None:
        return
    if not isinstance(fft_size, int) or fft_size < 2 or fft_size % 2:
        raise ValueError(
            f"fft_size={fft_size!r} must be an even int (the convolution is zero-padded to an even length "
            f"for the real FFT); use None for the default 2 * seq_len"
        )
    if fft_size < 2 * seq_len:
        raise ValueError(
            f"fft_size={fft_size} must be at least 2 * max_seq_len = {2 * seq_len}, else the circular "
            f"FFT convolution wraps around; raise it or leave it None"
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class AttentionConfig:
    """Multi-head attention with rotary embeddings and grouped-query heads."""

    num_heads: int = 1  # query heads; must divide d_model (head_dim = d_model // num_heads)
    num_kv_heads: int | None = None  # key/value heads (GQA); None = num_heads; must divide num_heads
    rope: bool = True  # rotary position embeddings on q and k (Su et al. 2021)
    rope_theta: float = 10000.0  # RoPE base frequency
    qk_norm: bool = False  # RMSNorm on q and k per head before RoPE (Parcae, nanochat)
    use_bias: bool = True  # bias on the q/k/v/out projections (GPT-2 style; Parcae has none)

    def __post_init__(self):
        _positive("num_heads", self.num_heads)
        if self.num_kv_heads is not None:
            _positive("num_kv_heads", self.num_kv_heads)
            _divides("num_kv_heads", self.num_kv_heads, "num_heads", self.num_heads)
        _positive_float("rope_theta", self.rope_theta)

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads

    def validate_width(self, d_model: int) -> None:
        _divides("num_heads", self.num_heads, "d_model", d_model)
        if self.rope and (d_model // self.num_heads) % 2:
            raise ValueError(
                f"RoPE rotates pairs of features, so head_dim = d_model / num_heads = "
                f"{d_model // self.num_heads} must be even; change num_heads or set rope=False"
            )


@dataclasses.dataclass(frozen=True, kw_only=True)
class H3Config:
    """H3 (Fu et al. 2023): shift SSM on k, diagonal (S4D-Lin) SSM on k*v. safari ``h3.yaml``."""

    d_state: int = 64  # N: shift-SSM FIR length and diagonal-SSM state size (N/2 complex modes)
    head_dim: int = 1  # d_h: per-head outer product k v^T of size d_h x d_h (1 = elementwise)
    dt_min: float = 1e-3  # log_dt ~ U[log dt_min, log dt_max] per head
    dt_max: float = 1e-1
    discretization: str = "bilinear"  # safari's SSKernelDiag default; "zoh" is the option
    diag_B: bool = True  # diagonal SSM: B trained on its own (safari); False: folded into C

    def __post_init__(self):
        _positive("d_state", self.d_state)
        if self.d_state % 2:
            raise ValueError(
                f"d_state={self.d_state} must be even: the diagonal SSM keeps d_state/2 conjugate pairs"
            )
        _positive("head_dim", self.head_dim)
        _positive_float("dt_min", self.dt_min)
        _positive_float("dt_max", self.dt_max)
        if self.dt_min > self.dt_max:
            raise ValueError(f"need dt_min <= dt_max; got dt_min={self.dt_min}, dt_max={self.dt_max}")
        if self.discretization not in DISCRETIZATIONS:
            raise ValueError(f"discretization={self.discretization!r}; choose one of {DISCRETIZATIONS}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class S4DConfig:
    """The S4D layer (Gu et al. 2022) as safari's ``s4d.yaml`` builds it: the H3 paper's SSM baseline."""

    d_state: int = 64  # N: N/2 complex modes per channel
    dt_min: float = 1e-3
    dt_max: float = 1e-1
    init: str = "inv"  # imaginary parts of A: "inv" (S4D-Inv, safari's S4D default) or "lin" (S4D-Lin)
    discretization: str = "zoh"  # safari's S4D layer discretises by ZOH

    def __post_init__(self):
        _positive("d_state", self.d_state)
        if self.d_state % 2:
            raise ValueError(
                f"d_state={self.d_state} must be even: the diagonal SSM keeps d_state/2 conjugate pairs"
            )
        _positive_float("dt_min", self.dt_min)
        _positive_float("dt_max", self.dt_max)
        if self.dt_min > self.dt_max:
            raise ValueError(f"need dt_min <= dt_max; got dt_min={self.dt_min}, dt_max={self.dt_max}")
        if self.init not in S4D_INITS:
            raise ValueError(f"init={self.init!r}; choose one of {S4D_INITS}")
        if self.discretization not in DISCRETIZATIONS:
            raise ValueError(f"discretization={self.discretization!r}; choose one of {DISCRETIZATIONS}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class HyenaConfig:
    """Hyena operator and implicit filter (Poli et al. 2023). safari ``hyena.yaml``/``hyena-filter.yaml``."""

    order: int = 2  # N: N+1 projections, N-1 long convolutions (safari's convention; see models/hyena.py)
    filter_order: int = 64  # width of the filter FFN
    emb_dim: int = 3  # positional-encoding width: [t, cos, -sin] bands; odd, >= 3
    sine_freq: float = 1.0  # w: initial value of the shared Sin frequency vector (Pile config: 14)
    num_inner_mlps: int = 2  # hidden Linear+Sin pairs after the first (4 linears in total)
    short_filter_order: int = 3  # taps of the causal depthwise featurizer convolution
    modulate: bool = True  # exponential decay window on the filter
    fast_decay_pct: float = 0.3  # fastest channel decays to `decay_target` at this fraction of l_max
    slow_decay_pct: float = 1.5  # slowest channel decays to `decay_target` at this fraction of l_max
    decay_target: float = 1e-2
    filter: str = "implicit"  # "implicit" (the FFN above) or "conv1d" (explicit taps; the paper's baseline)
    explicit_taps: int = 64  # taps of the "conv1d" filter (Hyena paper Table A.2: 64)
    filter_heads: int | None = None  # filters tied within this many heads (MultiHyena); None: one per channel

    def __post_init__(self):
        _positive("order", self.order)
        if self.filter not in HYENA_FILTERS:
            raise ValueError(f"filter={self.filter!r}; choose one of {HYENA_FILTERS}")
        _positive("explicit_taps", self.explicit_taps)
        if self.filter_heads is not None:
            _positive("filter_heads", self.filter_heads)
        if self.order < 2:
            raise ValueError(f"order={self.order} must be >= 2: order N has N-1 long convolutions")
        _positive("filter_order", self.filter_order)
        _positive("emb_dim", self.emb_dim)
        if self.emb_dim < 3 or self.emb_dim % 2 == 0:
            raise ValueError(f"emb_dim={self.emb_dim} must be odd and >= 3 ([t] plus cos/sin pairs)")
        _finite("sine_freq", self.sine_freq)
        if not isinstance(self.num_inner_mlps, int) or self.num_inner_mlps < 0:
            raise ValueError(f"num_inner_mlps must be an int >= 0; got {self.num_inner_mlps!r}")
        _positive("short_filter_order", self.short_filter_order)
        _positive_float("fast_decay_pct", self.fast_decay_pct)
        _positive_float("slow_decay_pct", self.slow_decay_pct)
        if self.fast_decay_pct > self.slow_decay_pct:
            raise ValueError(
                f"need fast_decay_pct <= slow_decay_pct; got {self.fast_decay_pct} > {self.slow_decay_pct}"
            )
        if not (_is_real(self.decay_target) and 0 < self.decay_target < 1):
            raise ValueError(f"decay_target must lie in (0, 1); got {self.decay_target!r}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class LongConvConfig:
    """Simple long convolutions (Fu et al. 2023, arXiv:2302.06646). safari ``long-conv.yaml``."""

    channels: int = 1  # C: independent kernels per feature; outputs concatenated to C * d_model
    lam: float = 0.003  # squash threshold: K <- sign(K) relu(|K| - lam)
    kernel_dropout: float = 0.0  # dropout on the kernel weights (0.2 in safari's config)
    smoothing: bool = False  # moving-average smoothing of the kernel (window 7) before the squash
    bidirectional: bool = False  # causal + anti-causal kernel (2L circular); no recurrent step

    def __post_init__(self):
        _positive("channels", self.channels)
        _non_negative_float("lam", self.lam)
        _rate("kernel_dropout", self.kernel_dropout)


class _ModelFields:
    """The fields every model config has, checked alike: vocab_size, d_model, d_inner, max_seq_len,
    norm_eps, init_std, dtype."""

    def _check_model_fields(self) -> None:
        for name in ("vocab_size", "d_model", "max_seq_len"):
            _positive(name, getattr(self, name))
        if self.d_inner is not None:
            _positive("d_inner", self.d_inner)
        _positive_float("norm_eps", self.norm_eps)
        _positive_float("init_std", self.init_std)
        _check_dtype("dtype", self.dtype)

    @property
    def ffn_dim(self) -> int:
        """The MLP's hidden width: ``d_inner``, or ``4 * d_model`` when it is None."""
        return self.d_inner or 4 * self.d_model

    @property
    def compute_dtype(self) -> jnp.dtype:
        """``dtype`` as a numpy dtype; parameters stay float32."""
        return jnp.dtype(self.dtype)


@dataclasses.dataclass(frozen=True, kw_only=True)
class LMConfig(_ModelFields):
    """A decoder-only LM: embedding, n_layers pre-norm blocks (mixer + MLP), final norm, tied head."""

    vocab_size: int  # token vocabulary (GPT-2: 50257, padded to 50264 as safari does)
    d_model: int  # residual width
    n_layers: int  # number of blocks
    d_inner: int | None = None  # MLP hidden width; None = 4 * d_model
    max_seq_len: int = 1024  # l_max: longest sequence (filter length, positional table, KV cache)
    mixer: str = "attention"  # sequence mixer of every block not in attn_layer_idx (one of MIXERS)
    attn_layer_idx: tuple[int, ...] = ()  # blocks that use attention instead (hybrid H3/Hyena LMs)
    attention: AttentionConfig = dataclasses.field(default_factory=AttentionConfig)
    h3: H3Config = dataclasses.field(default_factory=H3Config)
    hyena: HyenaConfig = dataclasses.field(default_factory=HyenaConfig)
    long_conv: LongConvConfig = dataclasses.field(default_factory=LongConvConfig)
    s4d: S4DConfig = dataclasses.field(default_factory=S4DConfig)
    mlp: str = "gelu"  # "gelu" (fc1, tanh-GELU, fc2), "swiglu" (gated), "relu2" (squared ReLU)
    norm: str = "layer"  # "layer" (LayerNorm) or "rms" (RMSNorm)
    norm_eps: float = 1e-5
    learned_pos_emb: bool = False  # absolute learned position embeddings (safari's Transformer baselines)
    embed_dropout: float = 0.0  # dropout on the embeddings (0.1 in safari's synthetics)
    resid_dropout: float = 0.0  # dropout on each residual branch
    init_std: float = 0.02  # N(0, init_std) for every Linear and the embedding (GPT-2 / safari)
    fft_size: int | None = None  # FFT length of the long convolutions; None = 2 * seq; must be even
    dtype: str = "float32"  # compute dtype; parameters are always float32
    implementation: str | None = None  # passed to jaxflash.attention / fftconv ("xla", "pallas", ...)

    def __post_init__(self):
        self._check_model_fields()
        _positive("n_layers", self.n_layers)
        if self.mixer not in MIXERS:
            raise ValueError(f"mixer={self.mixer!r}; choose one of {MIXERS}")
        for i in self.attn_layer_idx:
            if not 0 <= i < self.n_layers:
                raise ValueError(f"attn_layer_idx contains {i}, outside [0, n_layers={self.n_layers})")
        if self.mlp not in MLPS:
            raise ValueError(f"mlp={self.mlp!r}; choose one of {MLPS}")
        if self.norm not in NORMS:
            raise ValueError(f"norm={self.norm!r}; choose one of {NORMS}")
        if self.uses("attention"):
            self.attention.validate_width(self.d_model)
        if self.uses("h3"):
            _divides("h3.head_dim", self.h3.head_dim, "d_model", self.d_model)
        if self.uses("hyena") and self.hyena.filter_heads is not None:
            _divides("hyena.filter_heads", self.hyena.filter_heads, "d_model", self.d_model)
        _rate("embed_dropout", self.embed_dropout)
        _rate("resid_dropout", self.resid_dropout)
        if self.long_conv.bidirectional and self.uses("long_conv"):
            raise ValueError(
                "a causal LM cannot use a bidirectional long convolution; set long_conv.bidirectional=False"
            )
        _check_fft_size(self.fft_size, self.max_seq_len)

    def mixer_of(self, layer: int) -> str:
        return "attention" if layer in self.attn_layer_idx else self.mixer

    def uses(self, mixer: str) -> bool:
        return any(self.mixer_of(i) == mixer for i in range(self.n_layers))


# m2 hyena_utils defaults for M2-BERT's filters: 2 positional bands, a 128-wide FFN, hyena_w 10.
M2_FILTER = HyenaConfig(order=2, filter_order=128, emb_dim=5, sine_freq=10.0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class M2Config(_ModelFields):
    """Monarch Mixer BERT (Fu et al. 2023, arXiv:2310.12109), m2 ``bert/src/configuration_bert.py``;
    with ``causal=True`` the M2-GPT variant (causal gated long convolution, block-diagonal MLP)."""

    vocab_size: int = 30528  # bert-base-uncased 30522, padded to a multiple of 8 as MosaicBERT does
    d_model: int = 768
    n_layers: int = 12
    # GLU hidden width (the gate and value projections each have d_inner outputs); None = 4 * d_model,
    # 3072 at d_model 768 (m2's intermediate_size).
    d_inner: int | None = None
    max_seq_len: int = 128  # learned absolute positions and filter length
    type_vocab_size: int = 2  # BERT token types
    hyena: HyenaConfig = M2_FILTER  # the implicit filters; the mixer has one gated convolution (order 2)
    residual_long_conv: bool = True  # a second long convolution on the mixer's input, added to y
    training_additions: bool = False  # m2's hyena_training_additions: a LayerNorm on the mixer's input
    mlp_nblocks: int = 4  # blocks of the block-diagonal GLU MLP weights
    norm_eps: float = 1e-12  # BERT's LayerNorm eps (m2 layer_norm_eps); m2_gpt_tiny sets GPT-2's 1e-5
    dropout: float = 0.1  # hidden dropout (embeddings and MLP output; M2-GPT: each residual branch)
    causal: bool = False  # False: M2-BERT (bidirectional); True: M2-GPT
    # m2's flag: False swaps every M2 mixer for MosaicBERT's self-attention block (the attention BERT
    # of M2-BERT's comparisons, all else equal); num_attention_heads is used only then.
    monarch_mixer_sequence_mixing: bool = True
    num_attention_heads: int = 12
    init_std: float = 0.02
    fft_size: int | None = None  # FFT length of the causal form; None = 2 * seq; must be even
    dtype: str = "float32"
    implementation: str | None = None

    def __post_init__(self):
        self._check_model_fields()
        for name in ("n_layers", "type_vocab_size", "mlp_nblocks"):
            _positive(name, getattr(self, name))
        if self.hyena.order != 2:
            raise ValueError(
                f"hyena.order={self.hyena.order}: the Monarch Mixer has one gated long convolution, order 2"
            )
        if self.hyena.filter_heads is not None:
            raise ValueError(
                "hyena.filter_heads ties Hyena operator filters; the Monarch Mixer has none to tie"
            )
        if self.hyena.filter != "implicit":
            raise ValueError(
                f"hyena.filter={self.hyena.filter!r}: the Monarch Mixer's filters are implicit; "
                "set hyena.filter='implicit'"
            )
        _divides("mlp_nblocks", self.mlp_nblocks, "d_model", self.d_model)
        _divides("mlp_nblocks", self.mlp_nblocks, "d_inner", self.ffn_dim)
        if not self.monarch_mixer_sequence_mixing:
            if self.causal:
                raise ValueError(
                    "monarch_mixer_sequence_mixing=False (self-attention) is the bidirectional BERT only; "
                    "set causal=False"
                )
            _positive("num_attention_heads", self.num_attention_heads)
            _divides("num_attention_heads", self.num_attention_heads, "d_model", self.d_model)
        _rate("dropout", self.dropout)
        _check_fft_size(self.fft_size, self.max_seq_len)


# Parcae's attention: QK-norm, RoPE, no biases (AttentionConfig's own defaults are GPT-2's).
PARCAE_ATTENTION = AttentionConfig(num_heads=6, rope=True, qk_norm=True, use_bias=False)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ParcaeConfig(_ModelFields):
    """Parcae looped LM (Prairie et al. 2026, arXiv:2604.12946), ``parcae_lm/models/parcae/config.py``."""

    vocab_size: int = 32768
    d_model: int = 768
    attention: AttentionConfig = PARCAE_ATTENTION  # e.g. dataclasses.replace(PARCAE_ATTENTION, num_heads=4)
    d_inner: int | None = None  # squared-ReLU MLP width; None = 4 * d_model (parcae intermediate_size)
    n_prelude: int = 2  # blocks run once before the loop
    n_core: int = 2  # blocks of the looped core, run T times
    n_coda: int = 2  # blocks run once after the loop
    max_seq_len: int = 2048
    injection: str = "diagonal"  # "diagonal" (Parcae), "linear" (concat adapter), "additive" (h + e)
    ssm_decay: float = 0.2**0.5  # initial injection decay exp(-softplus(dt_bias) exp(A_log))
    mean_recurrence: int = 8  # mean of the Poisson loop count in training; the loop count at eval
    backprop_depth: int = 4  # gradients flow through the last min(T, backprop_depth) iterations
    max_recurrence: int = 32  # the Poisson draw is clipped to [1, max_recurrence] (static bound)
    norm_eps: float = 1e-5  # the released config's RMSNorm eps
    init_std: float = 0.02
    dtype: str = "float32"
    implementation: str | None = None

    def __post_init__(self):
        self._check_model_fields()
        _positive("n_core", self.n_core)
        for name in ("n_prelude", "n_coda"):
            check_int(name, getattr(self, name), minimum=0)
        for name in ("mean_recurrence", "backprop_depth", "max_recurrence"):
            check_int(f"{name} (a loop count)", getattr(self, name))
        if self.max_recurrence < self.mean_recurrence:
            raise ValueError(
                f"max_recurrence={self.max_recurrence} must be >= mean_recurrence={self.mean_recurrence}"
            )
        if self.injection not in INJECTIONS:
            raise ValueError(f"injection={self.injection!r}; choose one of {INJECTIONS}")
        if not (_is_real(self.ssm_decay) and 0 < self.ssm_decay < 1):
            raise ValueError(f"ssm_decay={self.ssm_decay} must lie in (0, 1) (a contraction)")
        self.attention.validate_width(self.d_model)

    @property
    def n_layers(self) -> int:
        """Blocks in one unrolled pass, prelude + core + coda (the depth of the residual init)."""
        return self.n_prelude + self.n_core + self.n_coda


@dataclasses.dataclass(frozen=True, kw_only=True)
class DiTConfig:
    """Diffusion Transformer (Peebles & Xie 2023, arXiv:2212.09748), ``facebookresearch/DiT/models.py``.

    The defaults are DiT-XL/2 on the 32 x 32 x 4 latents of 256 x 256 images; the family shares
    ``d_model``, ``n_layers``, ``norm_eps``, ``dtype`` and ``implementation`` with the LM configs.
    """

    input_size: int = 32  # height = width of the (latent) image; 256 px / 8 for the SD VAE
    patch_size: int = 2  # p: non-overlapping p x p patches, (input_size / p)^2 tokens
    in_channels: int = 4  # C: latent channels (SD VAE: 4)
    d_model: int = 1152  # DiT's hidden_size
    n_layers: int = 28  # DiT's depth
    num_heads: int = 16  # must divide d_model
    mlp_ratio: float = 4.0  # MLP hidden width int(d_model * mlp_ratio) (timm Mlp)
    num_classes: int = 1000  # class labels; a null class row is added when class_dropout_prob > 0
    class_dropout_prob: float = 0.1  # labels dropped to the null class in training (for CFG)
    learn_sigma: bool = True  # 2C output channels: epsilon and the variance interpolation v
    freq_dim: int = 256  # width of the sinusoidal timestep features (frequency_embedding_size)
    norm_eps: float = 1e-6  # affine-free LayerNorms of the blocks and the final layer
    dtype: str = "float32"  # compute dtype; parameters are always float32
    implementation: str | None = None  # passed to jaxflash.attention ("xla", "pallas", ...)

    def __post_init__(self):
        for name in ("input_size", "patch_size", "in_channels", "d_model", "n_layers", "num_heads"):
            _positive(name, getattr(self, name))
        _positive("num_classes", self.num_classes)
        _positive("freq_dim", self.freq_dim)
        _divides("patch_size", self.patch_size, "input_size", self.input_size)
        _divides("num_heads", self.num_heads, "d_model", self.d_model)
        if self.d_model % 4:
            raise ValueError(
                f"d_model={self.d_model} must be a multiple of 4: the 2-D sin-cos position table gives "
                "each of the two axes d_model/2 features in sin/cos pairs"
            )
        _positive_float("mlp_ratio", self.mlp_ratio)
        _rate("class_dropout_prob", self.class_dropout_prob)
        _positive_float("norm_eps", self.norm_eps)
        _check_dtype("dtype", self.dtype)

    @property
    def out_channels(self) -> int:
        """``2 C`` with a learned variance, else ``C``."""
        return 2 * self.in_channels if self.learn_sigma else self.in_channels

    @property
    def grid_size(self) -> int:
        """Patches along each side, ``input_size / patch_size``."""
        return self.input_size // self.patch_size

    @property
    def num_patches(self) -> int:
        """Tokens per image, ``grid_size^2``."""
        return self.grid_size**2

    @property
    def ffn_dim(self) -> int:
        """The MLP's hidden width, ``int(d_model * mlp_ratio)`` as DiT computes it."""
        return int(self.d_model * self.mlp_ratio)

    @property
    def has_null_class(self) -> bool:
        """DiT adds the null (unconditional) label row only when labels are dropped in training."""
        return self.class_dropout_prob > 0

    @property
    def compute_dtype(self) -> jnp.dtype:
        """``dtype`` as a numpy dtype; parameters stay float32."""
        return jnp.dtype(self.dtype)


# --- presets -------------------------------------------------------------------------------------------

GPT2_VOCAB = 50264  # 50257 padded to a multiple of 8 (safari pad_vocab_size_multiple: 8)


def gpt2_125m(**overrides: Any) -> LMConfig:
    """GPT-2 small: 12 x 768, 12 heads, learned positions, 1024 tokens (124M with tied embeddings)."""
    return dataclasses.replace(
        LMConfig(
            vocab_size=GPT2_VOCAB,
            d_model=768,
            n_layers=12,
            max_seq_len=1024,
            mixer="attention",
            attention=AttentionConfig(num_heads=12, rope=False),
            learned_pos_emb=True,
        ),
        **overrides,
    )


def h3_125m(**overrides: Any) -> LMConfig:
    """safari ``pile/h3.yaml``: GPT-2 small's size (12 x 768, d_inner 3072) with H3 mixers, attention
    (12 heads, no positions) at layers 1 and 8, 2048 tokens."""
    h3 = dict(max_seq_len=2048, mixer="h3", attn_layer_idx=(1, 8), learned_pos_emb=False)
    return gpt2_125m(**{**h3, **overrides})


def hyena_153m(**overrides: Any) -> LMConfig:
    """safari ``pile/hyena.yaml`` (Hyena small, 153M): 18 x 864, d_inner 1728, emb_dim 33, w 14."""
    return dataclasses.replace(
        LMConfig(
            vocab_size=GPT2_VOCAB,
            d_model=864,
            n_layers=18,
            d_inner=2 * 864,
            max_seq_len=2048,
            mixer="hyena",
            hyena=HyenaConfig(order=2, filter_order=64, emb_dim=33, sine_freq=14.0),
        ),
        **overrides,
    )


def m2_bert_80m(**overrides: Any) -> M2Config:
    """m2 ``monarch-mixer-pretrain-786dim-80m-parameters.yaml``: 12 x 768, d_inner 3072, seq 128."""
    return dataclasses.replace(M2Config(), **overrides)


def parcae_140m(**overrides: Any) -> ParcaeConfig:
    """parcae ``parcae-small-140m``: 2/2/2 blocks of 768, 6 heads, mean recurrence 8, backprop 4.

    The config file itself (seen in a public copy of ``parcae_lm/configs``) sets vocab 32768, n_embd 768,
    6 heads, intermediate 3072, tied embeddings, no bias, ReLU^2, QK-norm, RMSNorm eps 1e-5 and no value
    embeddings, and its own comment calls it "~100M params". Those settings give 68.8M parameters, which
    is what this preset builds: "140M" is the release's name, not that config's count.
    """
    return dataclasses.replace(ParcaeConfig(), **overrides)


def tiny_lm(mixer: str = "attention", **overrides: Any) -> LMConfig:
    """A 2-layer, width-32 LM (safari's synthetics size) for CPU tests, with any mixer."""
    base = LMConfig(
        vocab_size=16,
        d_model=32,
        n_layers=2,
        d_inner=64,
        max_seq_len=32,
        mixer=mixer,
        attention=AttentionConfig(num_heads=4, num_kv_heads=2),
        h3=H3Config(d_state=8),
        hyena=HyenaConfig(filter_order=16, emb_dim=5),
        long_conv=LongConvConfig(channels=2, lam=0.001),
        s4d=S4DConfig(d_state=8),
        implementation="xla",
    )
    return dataclasses.replace(base, **overrides)


def m2_bert_tiny(**overrides: Any) -> M2Config:
    """A 2-layer, width-32 M2-BERT for CPU tests."""
    return dataclasses.replace(
        M2Config(
            vocab_size=16,
            d_model=32,
            n_layers=2,
            d_inner=64,
            max_seq_len=32,
            hyena=dataclasses.replace(M2_FILTER, filter_order=16),
            dropout=0.0,
            implementation="xla",
        ),
        **overrides,
    )


def m2_gpt_tiny(**overrides: Any) -> M2Config:
    """The causal M2-GPT at the tiny size, pre-norm LayerNorms with GPT-2's eps."""
    return m2_bert_tiny(**{"causal": True, "residual_long_conv": False, "norm_eps": 1e-5, **overrides})


def parcae_tiny(**overrides: Any) -> ParcaeConfig:
    """A 1/1/1-block, width-32 Parcae with a short loop for CPU tests."""
    return dataclasses.replace(
        ParcaeConfig(
            vocab_size=16,
            d_model=32,
            attention=dataclasses.replace(PARCAE_ATTENTION, num_heads=4, num_kv_heads=2),
            d_inner=64,
            n_prelude=1,
            n_core=1,
            n_coda=1,
            max_seq_len=32,
            mean_recurrence=3,
            backprop_depth=2,
            max_recurrence=6,
            implementation="xla",
        ),
        **overrides,
    )


# DiT's ``DiT_models`` sizes (depth, hidden size, heads), each with patch 2, 4 or 8.
DIT_SIZES: dict[str, tuple[int, int, int]] = {
    "XL": (28, 1152, 16),
    "L": (24, 1024, 16),
    "B": (12, 768, 12),
    "S": (12, 384, 6),
}


def dit(size: str, patch_size: int = 2, **overrides: Any) -> DiTConfig:
    """DiT-{size}/{patch_size} of ``facebookresearch/DiT`` (``DiT_models``) on 32 x 32 x 4 latents."""
    if size not in DIT_SIZES:
        raise ValueError(f"DiT size={size!r}; choose one of {tuple(DIT_SIZES)}")
    depth, width, heads = DIT_SIZES[size]
    base = DiTConfig(n_layers=depth, d_model=width, num_heads=heads, patch_size=patch_size)
    return dataclasses.replace(base, **overrides)


def dit_d14(**overrides: Any) -> DiTConfig:
    """Grafting's ``DiT-D14/2``: DiT-XL/2's width and heads at half its depth (14 blocks), the target of
    the depth-to-width restructuring case study (Chandrasegaran et al. 2025)."""
    return dataclasses.replace(DiTConfig(n_layers=14, d_model=1152, num_heads=16, patch_size=2), **overrides)


def dit_tiny(**overrides: Any) -> DiTConfig:
    """A 4-block, width-64, 4-head DiT on 8 x 8 single-channel images with 10 classes (scikit-learn's
    digits) and patch 2 (16 tokens), for CPU tests and demos; ``input_size=16`` gives 64 tokens."""
    return dataclasses.replace(
        DiTConfig(
            input_size=8,
            patch_size=2,
            in_channels=1,
            d_model=64,
            n_layers=4,
            num_heads=4,
            num_classes=10,
            implementation="xla",
        ),
        **overrides,
    )


PRESETS: dict[str, Callable[..., Any]] = {
    "gpt2_125m": gpt2_125m,
    "h3_125m": h3_125m,
    "hyena_153m": hyena_153m,
    "m2_bert_80m": m2_bert_80m,
    "parcae_140m": parcae_140m,
    "transformer_tiny": functools.partial(tiny_lm, "attention"),
    "h3_tiny": functools.partial(tiny_lm, "h3"),
    "hyena_tiny": functools.partial(tiny_lm, "hyena"),
    "long_conv_tiny": functools.partial(tiny_lm, "long_conv"),
    "m2_bert_tiny": m2_bert_tiny,
    "m2_gpt_tiny": m2_gpt_tiny,
    "parcae_tiny": parcae_tiny,
}

# DiT presets by the names of DiT's ``DiT_models`` ("DiT-XL/2", ..., "DiT-S/8"), grafting's "DiT-D14/2"
# and the CPU "DiT-tiny". Kept apart from PRESETS, whose LM configs the training CLI accepts as model=.
DIT_PRESETS: dict[str, Callable[..., DiTConfig]] = {
    **{
        f"DiT-{size}/{patch}": functools.partial(dit, size, patch)
        for size in DIT_SIZES
        for patch in (2, 4, 8)
    },
    "DiT-D14/2": dit_d14,
    "DiT-tiny": dit_tiny,
}
