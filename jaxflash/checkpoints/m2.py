"""m2's M2-BERT checkpoints <-> ``jaxflash.models.M2Bert``.

Three heads, each the layout m2 ``bert/src/bert_layers.py`` saves (HF ``config.json`` + weights;
Composer checkpoints hold the same keys under ``state.model`` with a ``model.`` prefix, stripped):

- ``"mlm"``: ``BertForMaskedLM`` (``bert.*`` without a pooler, ``cls.predictions.*``): the pretrained
  M2-BERT. Our pooler is not in such a checkpoint and keeps its initial values (the report lists it).
- ``"classification"``: ``BertForSequenceClassification`` (``bert.*`` with ``bert.pooler.dense``, and
  ``classifier``): GLUE fine-tunes. Converted to :class:`M2BertClassifier` (our ``M2Bert`` plus the
  classifier Linear); the MLM head keeps its initial values. m2's GLUE yamls pool by the mean over the
  mask (``pool_all: True``), which the weights do not show: pass ``options={"pool_all": True}``.
- ``"retrieval"``: the long-context retrieval encoders (``togethercomputer/m2-bert-80M-{2k,8k,32k}-
  retrieval``): ``bert/embeddings_inference.py`` builds a ``BertForSequenceClassification``, drops its
  ``classifier`` and uses ``bert``'s pooled output, i.e. the layout above without ``classifier``. The
  embedding is ``M2Bert.pool(M2Bert.encode(ids))`` (CLS -> dense -> tanh; m2 pads every input to the
  evaluation length, e.g. 32768). The MLM head keeps its initial values. A retrieval file that still
  holds the unused ``classifier`` is detected as ``"classification"``; pass ``head="retrieval"`` to
  load it as the encoder (the classifier keys are then ignored).

Key layout (``E`` = ``bert.embeddings``, ``L.i`` = ``bert.encoder.layer.{i}``)::

    E.word_embeddings / position_embeddings / token_type_embeddings -> word_emb / pos_emb / type_emb
    E.LayerNorm                                        -> emb_norm
    E.position_ids [1, max_position_embeddings]        buffer arange, checked
    L.i.attention.in_linear, out_linear                -> layers.i.mixer.in_linear, out_proj
    L.i.attention.short_filter (Conv1d [3 d, 1, 3])    -> layers.i.mixer.short_conv
    L.i.attention.filter_fn.*, filter_fn2.*            -> layers.i.mixer.filter.*, filter2.* (bidirectional
                                                          filters, checkpoints/hyena_filter.py)
    L.i.attention.layernorm (hyena_training_additions) -> layers.i.mixer.layernorm
    L.i.mlp.gated_layers.weight [nb, 2 f / nb, d / nb] -> layers.i.mlp.gated.w (same layout; a dense
                                                          [2 f, d] weight when use_monarch_mlp=False,
                                                          nb = 1)
    L.i.mlp.wo.weight [nb, d / nb, f / nb], bias       -> layers.i.mlp.out.w, bias
    L.i.mlp.layernorm                                  -> layers.i.mlp.norm
    cls.predictions.transform.dense / LayerNorm        -> mlm_dense / mlm_norm
    cls.predictions.decoder.weight (tied to E.word_embeddings), decoder.bias -> mlm_bias
    bert.pooler.dense                                  -> pooler
    classifier                                         -> classifier (M2BertClassifier)

Where our M2Bert differs from m2's (none changes a converted checkpoint's function): m2's MLM-head
LayerNorm has a fixed eps 1e-12 (ours: ``norm_eps``, 1e-12 by default); m2 runs the mixer through
``MonarchMixerSequenceMixing`` on ``[B, L, D]`` with no attention mask (ours neither); ``long_conv_l_max``
and ``max_position_embeddings`` are one ``max_seq_len`` here (a checkpoint where they differ is refused).
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
from jaxflash.checkpoints.options import check_original_options, m2_fields
from jaxflash.models import M2Bert, M2BertClassifier, M2Config, M2Mixer

FAMILY = "m2_bert"
HEADS = ("mlm", "classification", "retrieval")
E = "bert.embeddings."
_LAYER = re.compile(r"^bert\.encoder\.layer\.(\d+)\.")
# Not in the weights: defaults of m2's BertConfig / hyena_utils (dropout 0 for inference).
_DEFAULTS = {
    "norm_eps": 1e-12,
    "dropout": 0.0,
    "hyena.sine_freq": 10.0,
    "hyena.modulate": True,
    "hyena.fast_decay_pct": 0.3,
    "hyena.slow_decay_pct": 1.5,
    "hyena.decay_target": 1e-2,
}


def detect_head(state_dict: Mapping[str, Any]) -> str:
    """``"mlm"``, ``"classification"`` or ``"retrieval"`` from the keys (module docstring)."""
    if any(k.startswith("cls.predictions.") for k in state_dict):
        return "mlm"
    if "classifier.weight" in state_dict:
        return "classification"
    if "bert.pooler.dense.weight" in state_dict:
        return "retrieval"
    raise ValueError(
        "no cls.predictions.*, classifier.* or bert.pooler.* keys: not an m2 BertForMaskedLM / "
        "BertForSequenceClassification / retrieval-encoder state dict"
    )


def _refuse(sd: Mapping[str, np.ndarray]) -> None:
    keys = list(sd)
    revealed = {
        r"^bert\.pooler\.(Wqkv|dense[1-4])\.": "m2 option attention_pooling=True",
        r"\.attention\.(self|output)\.": "an attention BERT (monarch_mixer_sequence_mixing=False)",
        r"\.attention\.(fast_filter|x1_s|x2_s|v_s)": "m2 option use_flash_mm=True (FlashMM parameter layout)",
        r"^cls\.seq_relationship\.": "BERT's next-sentence head",
    }
    for pattern, what in revealed.items():
        hits = [k for k in keys if re.search(pattern, k)]
        if hits:
            raise NotImplementedError(f"{what} (key {hits[0]}) is not implemented by jaxflash's models")


def _shape(sd: Mapping[str, np.ndarray], key: str) -> tuple[int, ...]:
    if key not in sd:
        raise ValueError(f"the checkpoint lacks {key}")
    return tuple(sd[key].shape)


def _infer(sd: Mapping[str, np.ndarray]) -> dict[str, Any]:
    vocab, d = _shape(sd, f"{E}word_embeddings.weight")
    idx = {int(m.group(1)) for k in sd if (m := _LAYER.match(k))}
    if not idx or idx != set(range(max(idx) + 1)):
        raise ValueError(f"bert.encoder.layer indices {sorted(idx)} are not contiguous from 0")
    a, mlp = "bert.encoder.layer.0.attention.", "bert.encoder.layer.0.mlp."
    length = _shape(sd, f"{E}position_embeddings.weight")[0]
    conv_len = _shape(sd, f"{a}filter_fn.pos_emb.z")[1]
    if conv_len != length:
        raise NotImplementedError(
            f"long_conv_l_max={conv_len} != max_position_embeddings={length}: our M2Config has one "
            f"max_seq_len for both"
        )
    if f"{a}filter_fn.implicit_filter_rev.0.weight" not in sd:
        raise NotImplementedError("m2 option bidirectional=False (a causal filter in the BERT encoder)")
    n_lin = sum(1 for k in sd if re.match(re.escape(f"{a}filter_fn.implicit_filter.") + r"\d+\.weight$", k))
    if n_lin < 2:
        raise NotImplementedError("a filter with a single linear map (linear_mixer) is not implemented")
    linears, _ = ffn_keys(n_lin - 2)
    if any(f"{a}filter_fn.implicit_filter.{i}.weight" not in sd for i in linears):
        raise ValueError(f"{a}filter_fn.implicit_filter: Linear layers are not at indices {linears}")
    gated = _shape(sd, f"{mlp}gated_layers.weight")
    wo = _shape(sd, f"{mlp}wo.weight")
    nblocks = gated[0] if len(gated) == 3 else 1
    d_inner = nblocks * wo[-1]
    if gated[-2] * nblocks != 2 * d_inner:
        raise NotImplementedError(f"{mlp}gated_layers.weight {gated}: not the GLU MLP (use_glu_mlp=False?)")
    filter_order, emb_dim = _shape(sd, f"{a}filter_fn.implicit_filter.0.weight")
    return {
        "vocab_size": vocab,
        "d_model": d,
        "n_layers": max(idx) + 1,
        "d_inner": d_inner,
        "max_seq_len": length,
        "type_vocab_size": _shape(sd, f"{E}token_type_embeddings.weight")[0],
        "mlp_nblocks": nblocks,
        "residual_long_conv": f"{a}filter_fn2.bias" in sd,
        "training_additions": f"{a}layernorm.weight" in sd,
        "causal": False,
        "hyena.order": 2,
        "hyena.filter_order": filter_order,
        "hyena.emb_dim": emb_dim,
        "hyena.num_inner_mlps": n_lin - 2,
        "hyena.short_filter_order": _shape(sd, f"{a}short_filter.weight")[2],
    }


def _blockdiag(key: str, path: str, nblocks: int, *, bias: bool) -> list[Entry]:
    """m2 ``BlockdiagLinear`` (weight [nb, out/nb, in/nb], the layout ours keeps), or with one block the
    dense ``nn.Linear`` of ``use_monarch_mlp=False`` (weight [out, in])."""
    if nblocks == 1:
        rules = [same(f"{key}.weight", f"{path}.w", load=lambda w: w[None], export=lambda w: w[0])]
    else:
        rules = [same(f"{key}.weight", f"{path}.w")]
    return rules + ([same(f"{key}.bias", f"{path}.bias")] if bias else [])


def mixer_rules(mixer: M2Mixer, cfg: M2Config, k: str = "", p: str = "") -> list[Entry]:
    """The layout of one Monarch Mixer sequence mixer (m2's ``MonarchMixerSequenceMixing``): original
    keys under prefix ``k``, our parameter paths under ``p``."""
    rules = linear(f"{k}in_linear", f"{p}in_linear") + linear(f"{k}out_linear", f"{p}out_proj")
    rules += depthwise_conv(f"{k}short_filter", f"{p}short_conv")
    rules += filter_rules(mixer.filter, cfg.hyena, f"{k}filter_fn.", f"{p}filter.", bidirectional=True)
    if cfg.residual_long_conv:
        rules += filter_rules(mixer.filter2, cfg.hyena, f"{k}filter_fn2.", f"{p}filter2.", bidirectional=True)
    if cfg.training_additions:
        rules += layer_norm(f"{k}layernorm", f"{p}layernorm")
    return rules


def layout(model: M2Bert | M2BertClassifier, head: str) -> list[Entry]:
    """The m2 layout of ``model`` for ``head`` (module docstring)."""
    if head not in HEADS:
        raise ValueError(f"head={head!r}; choose one of {HEADS}")
    if head == "classification":
        if not isinstance(model, M2BertClassifier):
            raise ValueError("head='classification' exports an M2BertClassifier (M2Bert plus its classifier)")
        bert, p = model.bert, "bert."
    elif isinstance(model, M2Bert):
        bert, p = model, ""
    else:
        raise NotImplementedError(f"a {type(model).__name__} has no m2 {head} form")
    cfg = bert.config
    if not cfg.monarch_mixer_sequence_mixing:
        raise NotImplementedError(
            "the m2 layout covers the Monarch Mixer layers; an attention BERT "
            "(monarch_mixer_sequence_mixing=False) has no converter"
        )
    if cfg.hyena.filter != "implicit":
        raise NotImplementedError(f"hyena.filter={cfg.hyena.filter!r}: m2's filters are implicit")
    word = f"{E}word_embeddings.weight"
    rules: list[Entry] = [
        Tied((word, "cls.predictions.decoder.weight"), f"{p}word_emb.embedding", lambda x: x, lambda x: x)
        if head == "mlm"
        else same(word, f"{p}word_emb.embedding"),
        same(f"{E}position_embeddings.weight", f"{p}pos_emb.embedding"),
        same(f"{E}token_type_embeddings.weight", f"{p}type_emb.embedding"),
        *layer_norm(f"{E}LayerNorm", f"{p}emb_norm"),
        Buffer(
            f"{E}position_ids",
            np.arange(cfg.max_seq_len, dtype=np.int64)[None],
            "position ids arange(max_position_embeddings), recomputed",
            rtol=0.0,
            atol=0.0,
        ),
    ]
    for i, layer in enumerate(bert.layers):
        k, q = f"bert.encoder.layer.{i}.", f"{p}layers.{i}."
        rules += mixer_rules(layer.mixer, cfg, f"{k}attention.", f"{q}mixer.")
        rules += _blockdiag(f"{k}mlp.gated_layers", f"{q}mlp.gated", cfg.mlp_nblocks, bias=False)
        rules += _blockdiag(f"{k}mlp.wo", f"{q}mlp.out", cfg.mlp_nblocks, bias=True)
        rules += layer_norm(f"{k}mlp.layernorm", f"{q}mlp.norm")
    if head == "mlm":
        rules += linear("cls.predictions.transform.dense", f"{p}mlm_dense")
        rules += layer_norm("cls.predictions.transform.LayerNorm", f"{p}mlm_norm")
        rules.append(same("cls.predictions.decoder.bias", f"{p}mlm_bias"))
    else:
        rules += linear("bert.pooler.dense", f"{p}pooler")
    if head == "classification":
        rules += linear("classifier", "classifier")
    return rules


def _absent(head: str, prefix: str) -> dict[str, str]:
    if head == "mlm":
        return {f"{prefix}pooler.": "a BertForMaskedLM checkpoint has no pooler (add_pooling_layer=False)"}
    why = f"a {head} checkpoint has no MLM head"
    return {f"{prefix}mlm_{n}": why for n in ("dense", "norm", "bias")}


def from_m2_bert(
    state_dict: Mapping[str, Any],
    config: M2Config | None = None,
    *,
    head: str | None = None,
    options: Mapping[str, Any] | None = None,
    rngs: nnx.Rngs | None = None,
) -> tuple[M2Bert | M2BertClassifier, ConversionReport]:
    """Our model holding an m2 M2-BERT checkpoint (module docstring), and the report.

    Args:
      state_dict: ``{key: array}`` (``load_state_dict`` of ``model.safetensors`` / ``pytorch_model.bin``
        / a Composer ``.pt``).
      config: the ``M2Config`` to load into, checked against every key's shape. None: inferred from the
        shapes (vocab, width, depth, d_inner, max_seq_len, token types, block count of the MLP, residual
        long conv, training additions, filter width / emb_dim / inner MLPs), the rest (norm_eps, the Sin
        frequency's init ``hyena_w``, modulation and decays) from ``options`` or m2's defaults.
      head: ``"mlm"``, ``"classification"`` or ``"retrieval"``; None detects it from the keys.
      options: the HF ``config.json`` / YAML ``model_config`` (checked by ``check_original_options``).
      rngs: for the parameters the checkpoint has no counterpart for (the head it lacks).

    Returns ``M2Bert`` for ``"mlm"`` / ``"retrieval"``, ``M2BertClassifier`` for ``"classification"``.
    """
    report = ConversionReport(FAMILY)
    options = dict(options or {})
    report.notes += check_original_options(options, FAMILY)
    sd = {k: np.asarray(v) for k, v in unwrap(state_dict).items()}
    _refuse(sd)
    head = head or detect_head(sd)
    if head not in HEADS:
        raise ValueError(f"head={head!r}; choose one of {HEADS}")
    if head == "retrieval":
        for key in [k for k in sd if k.startswith("classifier.")]:
            del sd[key]
            report.ignored[key] = "the retrieval encoder drops the classifier (m2 embeddings_inference.py)"
    report.family = f"{FAMILY} ({head})"
    inferred = _infer(sd)
    fields = settle_fields(report.family, config, inferred, m2_fields(options), _DEFAULTS, report)
    config = config or build_config(M2Config, fields)
    report.config = config
    rngs = rngs or nnx.Rngs(0)
    pool_all = bool(options.get("pool_all", False))
    if pool_all and head != "classification":
        raise NotImplementedError(
            f"m2 option pool_all=True (mean pooling) for the {head} head: M2Bert.pool takes the CLS token; "
            f"only M2BertClassifier (head='classification') implements pool_all"
        )
    if pool_all:
        report.assumed["pool_all"] = "True (options)"
    if head == "classification":
        model: M2Bert | M2BertClassifier = M2BertClassifier(
            config, _shape(sd, "classifier.weight")[0], pool_all=pool_all, rngs=rngs
        )
        prefix = "bert."
    else:
        model, prefix = M2Bert(config, rngs=rngs), ""
    load_into(model, layout(model, head), sd, report, absent=_absent(head, prefix))
    return model, report


def to_m2_bert(model: M2Bert | M2BertClassifier, head: str | None = None) -> dict[str, np.ndarray]:
    """``model``'s weights in m2's layout for ``head`` (default: ``"classification"`` for an
    ``M2BertClassifier``, else ``"mlm"``; ``"retrieval"`` writes the pooler instead of the MLM head)."""
    head = head or ("classification" if isinstance(model, M2BertClassifier) else "mlm")
    return export(model, layout(model, head))
