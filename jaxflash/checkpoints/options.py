"""The originals' options: which ones we refuse (``NotImplementedError``), which ones only affect
training or speed, and which ones set a field of our configs that the weights cannot reveal.

``options`` is the original's own configuration: for safari a ConvLMHeadModel / lm_simple config
(``d_model, n_layer, ..., layer: {_name_: hyena, ...}, attn_cfg: {...}``, as in the experiment YAMLs),
or one layer's kwargs; for m2 the HF ``config.json`` / the YAML ``model_config`` (BertConfig fields).

None of the refused options is set by a released config: safari ``configs/model/layer/hyena.yaml``
(num_heads 1, inner_factor 1, num_blocks 1, outer_mixing false, post_order_ffn false, activation id,
filter ``hyena-filter``), ``hyena-filter.yaml`` (bias true, normalized false) and the Pile
``experiment/pile/hyena.yaml`` / ``h3.yaml``; m2's ``yamls`` (no ``hyena_w_mod``, i.e. 1;
``use_flash_mm``, ``attention_pooling``, ``use_cls_token``, ``sequence_token_planting`` false). One
released checkpoint is refused for another reason: H3-2.7B's rotary model (HazyResearch/H3
``examples/README.md``: ``--rotary_emb_dim 64`` with 128-wide heads) rotates part of each head, ours
rotate the whole head.
Two m2 options that are set do convert: ``hyena_training_additions: True`` (the 80M GLUE yaml) and
``pool_all: True`` (the GLUE yamls' mean pooling, :class:`~jaxflash.checkpoints.M2BertClassifier`);
``expand_positional_embeddings`` (the 341M 2k pretraining yaml) tiles a starting checkpoint's tables
at load time, so the weights it saves are in the plain layout. safari's eval config for the released
Hyena-small (``configs/evals/hyena_small_150b.yaml``) sets ``modulate: False``, which we implement.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

_IDENTITY = (None, "id", "identity", "linear")


def _is(default: Any) -> Callable[[Any], bool]:
    return lambda v: v == default


def _falsy(v: Any) -> bool:
    return not v


# family -> option -> (accepted(value), what it does). An option not accepted raises NotImplementedError.
REFUSED: dict[str, dict[str, tuple[Callable[[Any], bool], str]]] = {
    "hyena": {
        "num_heads": (_is(1), "multi-head Hyena (the filter shared across head_dim channels)"),
        "inner_factor": (_is(1), "a wider inner width than d_model"),
        "num_blocks": (_is(1), "splitting the sequence into blocks"),
        "outer_mixing": (_falsy, "outer-product mixing of the gates"),
        "post_order_ffn": (_falsy, "the per-order head-mixing ord_proj_w"),
        "activation": (lambda v: v in _IDENTITY, "an activation before out_proj"),
        "filter_cls": (_is("hyena-filter"), "a filter class other than hyena-filter"),
        "normalized": (_falsy, "L1-normalised filters"),
        "bias": (lambda v: v is True, "a filter without its bias (D) term"),
        "shift": (_is(0.0), "a shifted decay window exp(-t|delta|) + shift"),
        "modulation_lr": (_is(0.0), "trainable decay rates (the deltas become parameters)"),
        "linear_mixer": (_falsy, "a single linear filter map"),
    },
    "h3": {
        "mode": (_is("diag"), "a diagonal-SSM kernel other than S4D ('diag')"),
        "real_type": (_is("exp"), "a parameterisation of Re(A) other than exp"),
        "bandlimit": (lambda v: v is None, "band-limited SSM kernels"),
        "force_real": (_falsy, "a real-valued diagonal A"),
        "n_ssm": (lambda v: v is None, "A and B shared across channels (n_ssm < H)"),
        "channels": (_is(1), "several output channels per SSM"),
        "disc": (lambda v: v in ("bilinear", "zoh"), "a discretisation other than bilinear / zoh"),
    },
    "long_conv": {
        "activation": (_is("gelu"), "an activation other than GELU after the convolution"),
        "postact": (_is("glu"), "an output map other than Linear + GLU"),
        "weight_norm": (_falsy, "weight normalisation of the output linear"),
        "block_fft_conv": (_falsy, "the Monarch block-FFT convolution"),
        "smooth_freq": (_falsy, "frequency-domain kernel smoothing"),
        "ma_window_len": (_is(7), "a smoothing window other than 7"),
        "causal": (lambda v: v is True, "a kernel of length 2 l_max without the bidirectional split"),
    },
    "attention": {
        "cross_attn": (_falsy, "cross-attention"),
        "causal": (lambda v: v is True, "bidirectional attention in an LM"),
        "dwconv": (_falsy, "the depthwise convolution on q, k, v"),
        "rotary_emb_interleaved": (_falsy, "GPT-J (interleaved) rotary embeddings"),
        "rotary_emb_scale_base": (lambda v: v is None, "XPos-scaled rotary embeddings"),
        "softmax_scale": (lambda v: v is None, "a softmax scale other than 1/sqrt(head_dim)"),
    },
    "safari_lm": {
        "process_group": (lambda v: v is None, "tensor-parallel shards (gather them first)"),
    },
    "m2_bert": {
        "hyena_w_mod": (_is(1), "a non-learnable multiplier w_mod on the Sin frequency"),
        "normalized": (_falsy, "L1-normalised filters"),
        "bias": (lambda v: v is True, "filters without their bias (D) term"),
        "monarch_mixer_sequence_mixing": (lambda v: v is True, "an attention BERT (no Monarch Mixer)"),
        "use_flash_mm": (_falsy, "the FlashMM mixer, whose parameters have another layout"),
        "bidirectional": (lambda v: v is True, "a causal mixer in the BERT encoder"),
        "use_glu_mlp": (lambda v: v is True, "the non-gated MLP"),
        "use_positional_encodings": (lambda v: v is True, "a BERT without learned positions"),
        "attention_pooling": (_falsy, "the attention pooler"),
        "use_cls_token": (_falsy, "a classifier on the raw CLS state instead of the pooler"),
        "sequence_token_planting": (_falsy, "planted CLS tokens every 128 positions"),
        "hidden_act": (lambda v: v in ("gelu", None), "an MLM-head activation other than exact GELU"),
    },
}

# Options that do not change what the weights compute (speed, numerics, training, init).
_TRAINING_ONLY = {
    "safari_lm": (
        "fused_mlp fused_dropout_add_ln residual_in_fp32 sequence_parallel initializer_cfg dtype device "
        "pad_vocab_size_multiple checkpoint_mlp checkpoint_mixer"
    ),
    "hyena": (
        "fused_bias_fc fused_fft_conv jit_filter return_state dropout filter_dropout lr lr_pos_emb wd "
        "local_order"
    ),
    "h3": "use_fast_fftconv dropout lr measure rank deterministic measure_args verbose",
    "long_conv": (
        "dropout tie_dropout transposed verbose initializer learning_rate weight_init kernel_dropout"
    ),
    "attention": "use_flash_attn fused_bias_fc dropout checkpointing return_residual",
    "m2_bert": (
        "use_flash_fft hyena_filter_dropout hyena_lr_pos_emb hyena_wd long_conv_kernel_learning_rate "
        "attention_probs_dropout_prob alibi_starting_size hidden_dropout_prob classifier_dropout "
        "gradient_checkpointing precision expand_positional_embeddings use_normalized_embeddings "
        "gather_sentence_embeddings"
    ),
}


def check_original_options(options: Mapping[str, Any], family: str) -> list[str]:
    """Raise ``NotImplementedError`` naming the first option of ``options`` we do not implement;
    return notes on the options accepted that only affect training, speed or init.

    ``family``: ``"safari_lm"`` (a whole LM config; its ``layer`` and ``attn_cfg`` are checked as their
    layer families), ``"hyena"``, ``"h3"``, ``"long_conv"``, ``"attention"`` (one layer's kwargs), or
    ``"m2_bert"`` (a BertConfig / ``config.json``).
    """
    if family not in REFUSED:
        raise ValueError(f"family={family!r}; choose one of {sorted(REFUSED)}")
    notes: list[str] = []
    for name, value in options.items():
        rule = REFUSED[family].get(name)
        if rule is not None and not rule[0](value):
            raise NotImplementedError(
                f"{family} option {name}={value!r} ({rule[1]}) is not implemented by jaxflash's models"
            )
        if name in _TRAINING_ONLY.get(family, "").split():
            notes.append(f"{family} option {name}={value!r} affects only training, speed or init")
    if family == "safari_lm":
        layer = options.get("layer") or {}
        if layer and "_name_" not in layer:
            notes.append("safari_lm option layer has no _name_: its options were not checked")
        elif layer:
            kind = safari_layer_kind(layer["_name_"])
            notes += check_original_options({k: v for k, v in layer.items() if k != "_name_"}, kind)
        if options.get("attn_cfg"):
            notes += check_original_options(options["attn_cfg"], "attention")
    return notes


def safari_layer_kind(name: str) -> str:
    """safari's registry name of a layer -> our mixer family."""
    kinds = {"h3": "h3", "hyena": "hyena", "long-conv": "long_conv", "mha": "attention"}
    if name not in kinds:
        raise NotImplementedError(
            f"safari layer {name!r} has no jaxflash counterpart; the LM converter covers {sorted(kinds)}"
        )
    return kinds[name]


def safari_fields(options: Mapping[str, Any]) -> dict[str, Any]:
    """Fields of our ``LMConfig`` (dotted for the mixer configs) that a safari LM config sets and the
    weights do not reveal."""
    layer = dict(options.get("layer") or {})
    attn = dict(options.get("attn_cfg") or {})
    out: dict[str, Any] = {}

    def put(field: str, source: Mapping[str, Any], name: str, convert: Callable[[Any], Any] = lambda v: v):
        if name in source and source[name] is not None:
            out[field] = convert(source[name])

    put("norm_eps", options, "layer_norm_epsilon", float)
    put("embed_dropout", options, "embed_dropout", float)
    put("resid_dropout", options, "resid_dropout", float)
    put("attention.num_heads", attn, "num_heads", int)
    put("attention.num_kv_heads", attn, "num_heads_kv", int)
    put("attention.rope_theta", attn, "rotary_emb_base", float)
    if "rotary_emb_dim" in attn:
        out["attention.rope"] = bool(attn["rotary_emb_dim"])
    kind = safari_layer_kind(layer["_name_"]) if "_name_" in layer else None
    if kind in (None, "hyena"):
        put("hyena.sine_freq", layer, "w", float)
        put("hyena.modulate", layer, "modulate", bool)
        put("hyena.fast_decay_pct", layer, "fast_decay_pct", float)
        put("hyena.slow_decay_pct", layer, "slow_decay_pct", float)
        put("hyena.decay_target", layer, "target", float)
    if kind in (None, "h3"):
        put("h3.dt_min", layer, "dt_min", float)
        put("h3.dt_max", layer, "dt_max", float)
        put("h3.discretization", layer, "disc", str)
    if kind in (None, "long_conv"):
        put("long_conv.lam", layer, "lam", float)
        put("long_conv.kernel_dropout", layer, "kernel_dropout", float)
        put("long_conv.smoothing", layer, "use_ma_smoothing", bool)
    put("max_seq_len", layer, "l_max", int)
    if (options.get("max_position_embeddings") or 0) > 0:
        out["max_seq_len"] = int(options["max_position_embeddings"])
    return out


def m2_fields(options: Mapping[str, Any]) -> dict[str, Any]:
    """Fields of our ``M2Config`` that an m2 BertConfig sets and the weights do not reveal."""
    out: dict[str, Any] = {}
    for field, name, convert in (
        ("norm_eps", "layer_norm_eps", float),
        ("dropout", "hidden_dropout_prob", float),
        ("hyena.sine_freq", "hyena_w", float),
        ("hyena.modulate", "modulate", bool),
    ):
        if options.get(name) is not None:
            out[field] = convert(options[name])
    return out
