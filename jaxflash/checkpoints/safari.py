"""safari's language models <-> ``jaxflash.models.LanguageModel``.

Covers safari ``src/models/sequence/long_conv_lm.py`` ``ConvLMHeadModel`` (the Pile / WT103 LMs: the
released H3 and Hyena checkpoints, HF ``danfu09/H3-{125M,355M,1.3B,2.7B}`` and
``Zymrael/hyena-small-150b-tok``), ``simple_lm.py`` ``SimpleLMHeadModel`` (``lm_simple``, the
synthetics; same keys) and HazyResearch/H3's ``src/models/ssm_seq.py`` ``SSMLMHeadModel`` (same keys),
with H3, Hyena and long-convolution mixers and attention layers (hybrids via ``attn_layer_idx``).

Key layout (``L.i`` = ``backbone.layers.{i}``; torch Linear weights are [out, in], ours [in, out])::

    backbone.embeddings.word_embeddings.weight [V, d]   -> embed.embedding (lm_head.weight: tied copy)
    backbone.embeddings.position_embeddings.weight      -> pos_emb.embedding (max_position_embeddings > 0)
    L.i.norm1 / L.i.norm2 (LayerNorm weight, bias)      -> blocks.i.norm1 / norm2 (scale, bias)
    L.i.mlp.fc1 / fc2                                   -> blocks.i.mlp.fc1 / fc2 (tanh GELU)
    backbone.ln_f                                       -> final_norm
  attention (flash_attn MHA):
    L.i.mixer.Wqkv [(H + 2 H_kv) d_h, d]: q | k | v     -> mixer.q_proj / k_proj / v_proj
    L.i.mixer.out_proj                                  -> mixer.out_proj
    L.i.mixer.rotary_emb.inv_freq (rotary only)         buffer, recomputed from rope_theta
  H3 (h3.py; N = d_state, H = d / head_dim):
    L.i.mixer.{q,k,v}_proj, output_linear               -> mixer.{q,k,v}_proj, out_proj
    L.i.mixer.ssm_k_kernel.kernel.B [d, N], .C [1, d, N]-> mixer.shift_kernel.B, C
    L.i.mixer.ssm_k_D [d]                               -> mixer.D_k
    L.i.mixer.kernel.kernel.{log_dt [H], inv_A_real, A_imag [H, N/2], B [H, N/2, 2], C [1, H, N/2, 2]}
                                                        -> mixer.diag_kernel.* (B folded into C when
                                                           H3Config.diag_B is False)
    L.i.mixer.D [H]                                     -> mixer.D
  Hyena (hyena.py):
    L.i.mixer.in_proj [(N+1) d, d], out_proj            -> mixer.in_proj, out_proj
    L.i.mixer.short_filter (Conv1d [(N+1) d, 1, 3])     -> mixer.short_conv ([3, (N+1) d])
    L.i.mixer.filter_fn.*                               -> mixer.filter.* (checkpoints/hyena_filter.py)
  long convolution (long_conv.py, C channels):
    L.i.mixer.kernel.kernel [C, d, l_max]               -> mixer.kernel.kernel [1, C, l_max, d]
    L.i.mixer.D [C, d]                                  -> mixer.D [C d]
    L.i.mixer.output_linear.0 (Linear C d -> 2 d, GLU)  -> mixer.out_proj

``vocab_size`` is the embedding table's row count: safari pads the vocabulary to
``pad_vocab_size_multiple`` (GPT-2's 50257 -> 50264 at 8), and so does the converted model.

Older checkpoints that ``ConvLMHeadModel.load_state_dict`` / ``SSMLMHeadModel.load_state_dict`` remap
(``s4seq.encoder.``, ``embedding.``, ``backbone.norm`` and the post-norm order of the norms, separate
``q_proj`` / ``k_proj`` / ``v_proj`` and ``output_linear`` in attention layers) are remapped the same way
first; the report says so. Export always writes the current layout.

Where our LM differs from ConvLMHeadModel (none changes the function of a converted checkpoint):

- The block is the same pre-norm residual block written the usual way: flash_attn's ``Block(prenorm=
  True)`` computes ``Dropout -> Add -> LN -> mixer`` and carries the residual stream separately
  (``residual_in_fp32`` is numerics only); embedding dropout sits in block 0's first dropout there.
- ``AttentionConfig.rope`` defaults to True in our configs; flash_attn's MHA has no rotary embedding
  unless ``rotary_emb_dim > 0``. The converter sets ``rope`` from the checkpoint (a persisted
  ``rotary_emb.inv_freq``) or the options, default False. Only rotary over the whole head, rotate-half
  (GPT-NeoX) form, converts: H3-2.7B's ``--rotary_emb_dim 64`` with 128-wide heads is refused.
- safari's H3 output projection is ``output_linear`` and is left out of GPT-2's residual init scaling
  (init only).
- safari's ``LongConv`` returns ``(y, None)`` and defaults to ``transposed=True`` (``[B, H, L]``), so
  flash_attn's Block cannot run it as a ConvLMHeadModel mixer as written; the layout above is the one
  that model would have with ``transposed=False``. Its ``LongConvKernel.forward`` also ignores the
  sequence length and convolves with the whole ``l_max`` kernel at FFT size ``2 L``, so for inputs
  shorter than ``l_max - 1`` its kernel tail wraps around; ours truncates the kernel to the input. The
  two agree at ``L = l_max``.
- safari's filters are computed for ``min(L, l_max)``; ours refuse ``L > max_seq_len``.

safari's LRA / CIFAR backbone (``src/models/sequence/model.py`` ``SequenceModel`` with a linear or
embedding encoder, residual blocks of one layer each, batch or layer norm before or after, pooling
decoder, no MLP) has no counterpart among our models: such checkpoints (``layers.{i}.layer.*``,
``encoder.*``, ``decoder.*``) are refused with ``NotImplementedError``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import nnx

from jaxflash.checkpoints.hyena_filter import ffn_keys, filter_rules
from jaxflash.checkpoints.io import unwrap
from jaxflash.checkpoints.layout import (
    Buffer,
    ConversionReport,
    Entry,
    Rule,
    Tied,
    build_config,
    depthwise_conv,
    export,
    layer_norm,
    linear,
    load_into,
    same,
    settle_fields,
)
from jaxflash.checkpoints.options import check_original_options, safari_fields
from jaxflash.models import HyenaFilter, LanguageModel, LMConfig

FAMILY = "safari_lm"
EMBED = "backbone.embeddings.word_embeddings.weight"
POS_EMBED = "backbone.embeddings.position_embeddings.weight"
_LAYER = re.compile(r"^backbone\.layers\.(\d+)\.")

# Fields the weights cannot reveal, with the default taken when neither a config nor options give them.
# Dropouts default to 0 (inference); the mixers' defaults are safari's class defaults, except lam, which
# is the long-conv layer config's 0.003 (LongConvKernel's own default is 0.1).
_COMMON_DEFAULTS = {"norm_eps": 1e-5, "embed_dropout": 0.0, "resid_dropout": 0.0}
_MIXER_DEFAULTS = {
    "h3": {"h3.discretization": "bilinear", "h3.dt_min": 1e-3, "h3.dt_max": 1e-1},
    "hyena": {
        "hyena.sine_freq": 1.0,
        "hyena.modulate": True,
        "hyena.fast_decay_pct": 0.3,
        "hyena.slow_decay_pct": 1.5,
        "hyena.decay_target": 1e-2,
    },
    "long_conv": {"long_conv.lam": 0.003, "long_conv.smoothing": False, "long_conv.kernel_dropout": 0.0},
}


# --- reading the checkpoint ------------------------------------------------------------------------


def _remap_legacy(sd: dict[str, np.ndarray], notes: list[str]) -> dict[str, np.ndarray]:
    """The renames of safari's ``ConvLMHeadModel.load_state_dict`` (and H3's ``SSMLMHeadModel``)."""
    renamed = {}
    for k, v in sd.items():
        new = re.sub(r"^s4seq\.encoder\.", "backbone.", k)
        new = re.sub(r"^embedding\.", "backbone.embeddings.word_embeddings.", new)
        new = re.sub(r"^backbone\.norm\.", "backbone.ln_0.", new)
        renamed[new] = v
    if renamed.keys() != sd.keys():
        notes.append("legacy key names (s4seq.encoder. / embedding. / backbone.norm) remapped")
    sd = renamed
    if "backbone.ln_0.weight" in sd:
        # Previously Mixer / MLP -> Dropout -> Add -> LN; now Dropout -> Add -> LN -> Mixer / MLP.
        n = _n_layers(sd)
        old = dict(sd)
        for part in ("weight", "bias"):
            sd[f"backbone.ln_f.{part}"] = old[f"backbone.layers.{n - 1}.norm2.{part}"]
            for i in range(n):
                sd[f"backbone.layers.{i}.norm2.{part}"] = old[f"backbone.layers.{i}.norm1.{part}"]
                prev = old[f"backbone.layers.{i - 1}.norm2.{part}"] if i else old[f"backbone.ln_0.{part}"]
                sd[f"backbone.layers.{i}.norm1.{part}"] = prev
            del sd[f"backbone.ln_0.{part}"]
        notes.append("legacy post-norm order (backbone.ln_0, norms after each sublayer) remapped to pre-norm")
    for i in range(_n_layers(sd)):
        p = f"backbone.layers.{i}.mixer."
        if f"{p}q_proj.weight" in sd and f"{p}ssm_k_kernel.kernel.B" not in sd:
            for part in ("weight", "bias"):
                qkv = [sd.pop(f"{p}{n}_proj.{part}") for n in "qkv" if f"{p}{n}_proj.{part}" in sd]
                if qkv:
                    sd[f"{p}Wqkv.{part}"] = np.concatenate(qkv, axis=0)
                if f"{p}output_linear.{part}" in sd:
                    sd[f"{p}out_proj.{part}"] = sd.pop(f"{p}output_linear.{part}")
            notes.append(f"layer {i}: legacy attention q_proj / k_proj / v_proj / output_linear remapped")
    return sd


def _n_layers(sd: Mapping[str, Any]) -> int:
    idx = {int(m.group(1)) for k in sd if (m := _LAYER.match(k))}
    if not idx:
        raise ValueError("no backbone.layers.{i}.* keys: not a safari ConvLMHeadModel / lm_simple state dict")
    if idx != set(range(max(idx) + 1)):
        raise ValueError(f"layer indices {sorted(idx)} are not contiguous from 0")
    return max(idx) + 1


def _refuse_layouts(sd: Mapping[str, np.ndarray]) -> None:
    keys = list(sd)
    if not any(k.startswith("backbone.") for k in keys) and any(
        re.match(r"^(layers\.\d+\.layer\.|encoder\.|decoder\.)", k) for k in keys
    ):
        raise NotImplementedError(
            "this is safari's SequenceModel backbone (LRA / CIFAR: encoder, layers.{i}.layer, norm, pooling "
            "decoder); no jaxflash model has that architecture, so it cannot be converted. The LM form "
            "(ConvLMHeadModel with long-conv layers) converts."
        )
    revealed = {
        r"\.mixer\.ord_proj_w$": "hyena option post_order_ffn=True",
        r"\.mixer\.dwconv_": "attention option dwconv=True",
        r"\.mixer\.Wq\.": "attention option cross_attn=True",
        r"\.mixer\.rotary_emb\.scale$": "attention option rotary_emb_scale_base (XPos)",
        r"\.output_linear\.0\.weight_[gv]$": "long-conv option weight_norm=True",
        r"\.embeddings\.project_in\.": "GPT2Embeddings word_embed_proj_dim",
        r"\.mixer\.kernel\.kernel\.(P|w|delta|alpha|beta|gamma)$": "h3 option mode other than 'diag'",
    }
    for pattern, what in revealed.items():
        hits = [k for k in keys if re.search(pattern, k)]
        if hits:
            raise NotImplementedError(f"{what} (key {hits[0]}) is not implemented by jaxflash's models")


def _layer_kind(sd: Mapping[str, np.ndarray], i: int) -> str:
    p = f"backbone.layers.{i}.mixer."
    if f"{p}Wqkv.weight" in sd:
        return "attention"
    if f"{p}ssm_k_kernel.kernel.B" in sd:
        return "h3"
    if f"{p}filter_fn.bias" in sd:
        return "hyena"
    if f"{p}kernel.kernel" in sd:
        return "long_conv"
    found = sorted(k for k in sd if k.startswith(p))
    raise ValueError(
        f"layer {i}: mixer keys {found[:8]} match no supported safari layer (mha, h3, hyena, long-conv)"
    )


def _shape(sd: Mapping[str, np.ndarray], key: str) -> tuple[int, ...]:
    if key not in sd:
        raise ValueError(f"the checkpoint lacks {key}")
    return tuple(sd[key].shape)


def _set_length(inferred: dict[str, Any], source: str, length: int) -> None:
    if inferred.setdefault("max_seq_len", length) != length:
        raise ValueError(
            f"{source} gives max_seq_len={length}, but an earlier key gave {inferred['max_seq_len']}"
        )


def _infer(sd: Mapping[str, np.ndarray], from_options: Mapping[str, Any]) -> dict[str, Any]:
    """The LMConfig fields the shapes determine."""
    vocab, d = _shape(sd, EMBED)
    n = _n_layers(sd)
    kinds = [_layer_kind(sd, i) for i in range(n)]
    others = sorted(set(kinds) - {"attention"})
    if len(others) > 1:
        raise NotImplementedError(
            f"layers of several mixer kinds besides attention ({others}): LMConfig has one mixer plus "
            f"attention at attn_layer_idx"
        )
    mixer = others[0] if others else "attention"
    attn = tuple(i for i, k in enumerate(kinds) if k == "attention" and mixer != "attention")
    f: dict[str, Any] = dict(
        vocab_size=vocab,
        d_model=d,
        n_layers=n,
        d_inner=_shape(sd, "backbone.layers.0.mlp.fc1.weight")[0],
        mixer=mixer,
        attn_layer_idx=attn,
        learned_pos_emb=POS_EMBED in sd,
        norm="layer",
        mlp="gelu",
    )
    if POS_EMBED in sd:
        _set_length(f, POS_EMBED, _shape(sd, POS_EMBED)[0])
    first = {k: kinds.index(k) for k in set(kinds)}
    if "attention" in first:
        p = f"backbone.layers.{first['attention']}.mixer."
        f["attention.use_bias"] = f"{p}Wqkv.bias" in sd
        if (f"{p}out_proj.bias" in sd) != f["attention.use_bias"]:
            raise NotImplementedError("qkv_proj_bias != out_proj_bias: AttentionConfig.use_bias covers both")
        f["attention.qk_norm"] = False
        if f"{p}rotary_emb.inv_freq" in sd:
            inv = np.asarray(sd[f"{p}rotary_emb.inv_freq"], np.float64)
            f["attention.rope"] = True
            rotary = 2 * inv.shape[0]
            if inv.shape[0] > 1:
                f["attention.rope_theta"] = _rope_base(inv)
            heads = from_options.get("attention.num_heads")
            if heads is None:
                f["attention.num_heads"] = d // rotary  # full-head rotary, the only form we implement
            elif d // heads != rotary:
                raise NotImplementedError(
                    f"rotary_emb_dim={rotary} < head_dim={d // heads} (partial rotary) is not implemented"
                )
    if "h3" in first:
        p = f"backbone.layers.{first['h3']}.mixer."
        f["h3.d_state"] = _shape(sd, f"{p}ssm_k_kernel.kernel.B")[1]
        heads = _shape(sd, f"{p}D")[0]
        if d % heads:
            raise ValueError(f"{p}D has {heads} entries, which does not divide d_model={d}")
        f["h3.head_dim"] = d // heads
        ssm = _shape(sd, f"{p}kernel.kernel.inv_A_real")[0]
        if ssm != heads:
            raise NotImplementedError(f"h3 option n_ssm={ssm} < H={heads} (A, B shared across heads)")
    if "hyena" in first:
        p = f"backbone.layers.{first['hyena']}.mixer."
        width = _shape(sd, f"{p}in_proj.weight")[0]
        if width % d:
            raise ValueError(f"{p}in_proj.weight rows {width} are not a multiple of d_model={d}")
        order = width // d - 1
        channels = _shape(sd, f"{p}filter_fn.bias")[0]
        if channels != (order - 1) * d:
            raise NotImplementedError(
                f"{p}filter_fn.bias has {channels} channels, not (order - 1) d_model = {(order - 1) * d}: "
                f"hyena options num_heads > 1 / inner_factor > 1 are not implemented"
            )
        if _shape(sd, f"{p}out_proj.weight")[1] != d:
            raise NotImplementedError("hyena option inner_factor > 1 is not implemented")
        n_lin = sum(
            1 for k in sd if re.match(re.escape(f"{p}filter_fn.implicit_filter.") + r"\d+\.weight$", k)
        )
        if n_lin < 2:
            raise NotImplementedError(
                "hyena filter with a single linear map (linear_mixer) is not implemented"
            )
        linears, _ = ffn_keys(n_lin - 2)
        if any(f"{p}filter_fn.implicit_filter.{i}.weight" not in sd for i in linears):
            raise ValueError(f"{p}filter_fn.implicit_filter: Linear layers are not at indices {linears}")
        f["hyena.order"] = order
        f["hyena.filter_order"], f["hyena.emb_dim"] = _shape(sd, f"{p}filter_fn.implicit_filter.0.weight")
        f["hyena.num_inner_mlps"] = n_lin - 2
        f["hyena.short_filter_order"] = _shape(sd, f"{p}short_filter.weight")[2]
        _set_length(f, f"{p}filter_fn.pos_emb.z", _shape(sd, f"{p}filter_fn.pos_emb.z")[1])
    if "long_conv" in first:
        p = f"backbone.layers.{first['long_conv']}.mixer."
        channels = _shape(sd, f"{p}D")[0]
        stored, _, length = _shape(sd, f"{p}kernel.kernel")
        if stored == 2 * channels:
            raise NotImplementedError(
                "a bidirectional long convolution (kernel channels 2C) in a causal LM is not implemented"
            )
        f["long_conv.channels"] = channels
        f["long_conv.bidirectional"] = False
        _set_length(f, f"{p}kernel.kernel", length)
    return f


def _rope_base(inv: np.ndarray) -> float:
    """The base of ``inv_freq[i] = base^(-2 i / d)``, rounded to an integer when that reproduces it."""
    d = 2 * inv.shape[0]
    base = float(inv[1] ** (-d / 2))
    rounded = float(round(base))
    if np.allclose(rounded ** (-np.arange(0, d, 2) / d), inv, rtol=1e-5):
        return rounded
    return base


def _defaults(inferred: Mapping[str, Any]) -> dict[str, Any]:
    kinds = {inferred["mixer"]} | ({"attention"} if inferred["attn_layer_idx"] else set())
    out = dict(_COMMON_DEFAULTS)
    if "max_seq_len" not in inferred:
        out["max_seq_len"] = 1024
    if "attention" in kinds:
        if "attention.num_heads" not in inferred:
            out["attention.num_heads"] = max(1, inferred["d_model"] // 64)  # flash_attn Block's default
        if "attention.rope" not in inferred:
            out["attention.rope"] = False
        if "attention.rope_theta" not in inferred:
            out["attention.rope_theta"] = 10000.0
    for kind in kinds:
        out.update(_MIXER_DEFAULTS.get(kind, {}))
    return out


def _kv_heads(sd: Mapping[str, np.ndarray], fields: dict[str, Any]) -> None:
    """GQA: the kv heads follow from the Wqkv rows once the query heads are known."""
    i = fields["attn_layer_idx"][0] if fields["attn_layer_idx"] else 0
    rows = _shape(sd, f"backbone.layers.{i}.mixer.Wqkv.weight")[0]
    d, heads = fields["d_model"], fields["attention.num_heads"]
    if d % heads:
        raise ValueError(f"attention num_heads={heads} does not divide d_model={d}")
    dh = d // heads
    kv2 = rows // dh - heads
    if rows % dh or kv2 <= 0 or kv2 % 2:
        raise ValueError(
            f"Wqkv has {rows} rows, not (num_heads + 2 num_kv_heads) * head_dim for num_heads={heads}"
        )
    fields["attention.num_kv_heads"] = None if kv2 // 2 == heads else kv2 // 2


# --- the layout --------------------------------------------------------------------------------------


def _attention_rules(mixer: Any, k: str, p: str) -> list[Entry]:
    cfg = mixer.config
    if cfg.qk_norm:
        raise NotImplementedError(
            "flash_attn's MHA has no QK-norm; a model with qk_norm=True has no safari form"
        )
    sizes = [mixer.num_heads * mixer.head_dim] + [mixer.num_kv_heads * mixer.head_dim] * 2
    cuts = np.cumsum(sizes)[:-1]
    names = ("q_proj", "k_proj", "v_proj")
    rules: list[Entry] = [
        Rule(
            (f"{k}Wqkv.weight",),
            tuple(f"{p}{n}.kernel" for n in names),
            lambda w: tuple(part.T for part in np.split(w, cuts, axis=0)),
            lambda *ws: (np.concatenate([w.T for w in ws], axis=0),),
        )
    ]
    if cfg.use_bias:
        rules.append(
            Rule(
                (f"{k}Wqkv.bias",),
                tuple(f"{p}{n}.bias" for n in names),
                lambda b: tuple(np.split(b, cuts)),
                lambda *bs: (np.concatenate(bs),),
            )
        )
    rules += linear(f"{k}out_proj", f"{p}out_proj", bias=cfg.use_bias)
    if cfg.rope:
        dh = mixer.head_dim
        inv = (1.0 / cfg.rope_theta ** (np.arange(0, dh, 2, dtype=np.float64) / dh)).astype(np.float32)
        rules.append(
            Buffer(
                f"{k}rotary_emb.inv_freq",
                inv,
                "rotary frequencies, recomputed from rope_theta",
                hint=f"ours use rope_theta={cfg.rope_theta} over the whole head (head_dim={dh})",
            )
        )
    return rules


def _h3_rules(mixer: Any, k: str, p: str) -> list[Entry]:
    rules: list[Entry] = []
    for n in ("q_proj", "k_proj", "v_proj"):
        rules += linear(f"{k}{n}", f"{p}{n}")
    rules += linear(f"{k}output_linear", f"{p}out_proj")
    add0, drop0 = (lambda x: x[None]), (lambda x: x[0])
    rules += [
        same(f"{k}ssm_k_kernel.kernel.B", f"{p}shift_kernel.B"),
        same(f"{k}ssm_k_kernel.kernel.C", f"{p}shift_kernel.C", load=drop0, export=add0),
        same(f"{k}ssm_k_D", f"{p}D_k"),
        same(f"{k}D", f"{p}D"),
    ]
    kk = f"{k}kernel.kernel."
    for n in ("log_dt", "inv_A_real", "A_imag"):
        rules.append(same(f"{kk}{n}", f"{p}diag_kernel.{n}"))
    if getattr(mixer.diag_kernel, "trainable_B", False):
        rules += [
            same(f"{kk}C", f"{p}diag_kernel.C", load=drop0, export=add0),
            same(f"{kk}B", f"{p}diag_kernel.B"),
        ]
    else:
        rules.append(Rule((f"{kk}C", f"{kk}B"), (f"{p}diag_kernel.C",), _fold_b, _unit_b))
    return rules


def _fold_b(c: np.ndarray, b: np.ndarray) -> tuple[np.ndarray]:
    """safari's kernel uses C * B (complex); a model without its own B takes the product as C."""
    cb = (c[0, ..., 0] + 1j * c[0, ..., 1]) * (b[..., 0] + 1j * b[..., 1])
    return (np.stack([cb.real, cb.imag], axis=-1).astype(np.float32),)


def _unit_b(c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return c[None], np.stack([np.ones(c.shape[:-1]), np.zeros(c.shape[:-1])], -1).astype(np.float32)


def _hyena_rules(mixer: Any, k: str, p: str) -> list[Entry]:
    if not isinstance(mixer.filter, HyenaFilter):
        raise NotImplementedError(
            "a Hyena model with an explicit (conv1d) filter has no safari checkpoint form"
        )
    rules = linear(f"{k}in_proj", f"{p}in_proj") + linear(f"{k}out_proj", f"{p}out_proj")
    rules += depthwise_conv(f"{k}short_filter", f"{p}short_conv")
    return rules + filter_rules(mixer.filter, mixer.filter.config, f"{k}filter_fn.", f"{p}filter.")


def _long_conv_rules(mixer: Any, k: str, p: str) -> list[Entry]:
    if mixer.bidirectional:
        raise NotImplementedError("a bidirectional long convolution has no ConvLMHeadModel form")
    c, d = mixer.channels, mixer.d_model
    return [
        same(  # [C, d, l] <-> [1, C, l, d]
            f"{k}kernel.kernel",
            f"{p}kernel.kernel",
            load=lambda w: w.transpose(0, 2, 1)[None],
            export=lambda w: w[0].transpose(0, 2, 1),
        ),
        same(f"{k}D", f"{p}D", load=lambda x: x.reshape(-1), export=lambda x: x.reshape(c, d)),
        *linear(f"{k}output_linear.0", f"{p}out_proj"),
    ]


_MIXER_RULES = {
    "attention": _attention_rules,
    "h3": _h3_rules,
    "hyena": _hyena_rules,
    "long_conv": _long_conv_rules,
}


def mixer_rules(kind: str, mixer: Any, k: str = "", p: str = "") -> list[Entry]:
    """The layout of one mixer (``kind`` as ``LMConfig.mixer_of``): original keys under prefix ``k``,
    our parameter paths under ``p``. ``export(mixer, mixer_rules(kind, mixer))`` is the state dict of the
    original layer alone (``jaxflash.bench.torch_layers`` loads it)."""
    if kind not in _MIXER_RULES:
        raise NotImplementedError(
            f"mixer={kind!r} has no ConvLMHeadModel converter ({sorted(_MIXER_RULES)} do)"
        )
    return _MIXER_RULES[kind](mixer, k, p)


def layout(model: LanguageModel) -> list[Entry]:
    """The ConvLMHeadModel layout of ``model`` (module docstring)."""
    if not isinstance(model, LanguageModel):
        raise NotImplementedError(f"a {type(model).__name__} has no safari ConvLMHeadModel form")
    cfg = model.config
    if cfg.mlp != "gelu" or cfg.norm != "layer":
        raise NotImplementedError(
            f"mlp={cfg.mlp!r}, norm={cfg.norm!r}: safari's LM has the tanh-GELU MLP and LayerNorm only"
        )
    rules: list[Entry] = [Tied((EMBED, "lm_head.weight"), "embed.embedding", lambda x: x, lambda x: x)]
    if cfg.learned_pos_emb:
        rules.append(same(POS_EMBED, "pos_emb.embedding"))
    for i, block in enumerate(model.blocks):
        k, p = f"backbone.layers.{i}.", f"blocks.{i}."
        rules += layer_norm(f"{k}norm1", f"{p}norm1") + layer_norm(f"{k}norm2", f"{p}norm2")
        rules += linear(f"{k}mlp.fc1", f"{p}mlp.fc1") + linear(f"{k}mlp.fc2", f"{p}mlp.fc2")
        rules += mixer_rules(cfg.mixer_of(i), block.mixer, f"{k}mixer.", f"{p}mixer.")
    return rules + layer_norm("backbone.ln_f", "final_norm")


# --- the converters ----------------------------------------------------------------------------------


def from_safari_lm(
    state_dict: Mapping[str, Any],
    config: LMConfig | None = None,
    *,
    options: Mapping[str, Any] | None = None,
    rngs: nnx.Rngs | None = None,
) -> tuple[LanguageModel, ConversionReport]:
    """A ``LanguageModel`` holding a safari LM checkpoint (module docstring), and the report.

    Args:
      state_dict: ``{key: array}`` (``load_state_dict`` of a ``.safetensors`` / ``.pt`` / Lightning
        ``.ckpt``), in the current or the legacy key layout.
      config: the ``LMConfig`` to load into; it is checked against every key's shape (``ValueError``
        naming the key and both shapes). None: inferred from the shapes (vocab, width, depth, d_inner,
        which layers are attention, H3 d_state and head_dim, Hyena order / filter width / emb_dim /
        inner MLPs / short-filter taps, long-conv channels, max_seq_len where a filter, kernel or
        position table has it, rotary), the rest from ``options`` or the defaults, listed as assumed.
      options: the original model config (a ``ConvLMHeadModel`` / ``lm_simple`` config dict with
        ``layer`` and ``attn_cfg``): checked by ``check_original_options`` and used for the settings the
        weights do not hold (num_heads, layer_norm_epsilon, Hyena ``w`` / ``modulate`` / decays, long-
        conv ``lam``, H3 ``disc``, ``l_max``). Note safari's ``configs/evals/hyena_small_150b.yaml``
        evaluates the released Hyena-small with ``modulate: False``.
      rngs: for the parameters the checkpoint does not hold (none for this family); default
        ``nnx.Rngs(0)``.
    """
    report = ConversionReport(FAMILY)
    options = dict(options or {})
    report.notes += check_original_options(options, FAMILY)
    sd = {k: np.asarray(v) for k, v in unwrap(state_dict).items()}
    _refuse_layouts(sd)
    sd = _remap_legacy(sd, report.notes)
    from_options = safari_fields(options)
    inferred = _infer(sd, from_options)
    fields = settle_fields(FAMILY, config, inferred, from_options, _defaults(inferred), report)
    if config is None:
        if fields["mixer"] == "attention" or fields["attn_layer_idx"]:
            _kv_heads(sd, fields)
            report.inferred["attention.num_kv_heads"] = fields["attention.num_kv_heads"]
        config = build_config(LMConfig, fields)
    report.config = config
    rotary = (options.get("attn_cfg") or {}).get("rotary_emb_dim") or 0
    head_dim = config.d_model // config.attention.num_heads
    if rotary and rotary != head_dim:
        raise NotImplementedError(
            f"attention option rotary_emb_dim={rotary} with head_dim={head_dim} (partial rotary, e.g. "
            f"H3-2.7B's rotary model) is not implemented: ours rotate the whole head"
        )
    if "attention.rope" in inferred and "attention.num_heads" not in from_options and config is None:
        report.notes.append("num_heads read from rotary_emb.inv_freq, assuming rotary over the whole head")
    model = LanguageModel(config, rngs=rngs or nnx.Rngs(0))
    if config.uses("h3") and not config.h3.diag_B:
        report.notes.append("H3Config.diag_B=False: safari's diagonal-SSM B folded into C (C <- C * B)")
    load_into(model, layout(model), sd, report)
    return model, report


def to_safari_lm(model: LanguageModel) -> dict[str, np.ndarray]:
    """``model``'s weights in safari's ConvLMHeadModel layout (module docstring): float32 arrays under
    the original keys, buffers and the tied ``lm_head.weight`` included."""
    config = getattr(model, "config", None)
    if isinstance(config, LMConfig) and config.uses("hyena") and config.hyena.filter_heads is not None:
        raise NotImplementedError(
            "hyena.filter_heads (weight-tied filters) has no counterpart in safari's HyenaOperator"
        )
    return export(model, layout(model))
