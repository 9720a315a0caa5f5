"""Configs fail at construction on bad values; presets build; the papers' presets have the papers'
parameter counts (shapes only); the three config families share field names and sub-configs."""

import dataclasses

import pytest
from jaxflash.models import (
    M2_FILTER,
    PARCAE_ATTENTION,
    PRESETS,
    AttentionConfig,
    H3Config,
    HyenaConfig,
    LanguageModel,
    LMConfig,
    LongConvConfig,
    M2Bert,
    M2Config,
    Parcae,
    ParcaeConfig,
    m2_bert_tiny,
    parameter_count,
    parcae_140m,
    parcae_tiny,
    tiny_lm,
)

NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    "build, match",
    [
        (
            lambda: tiny_lm("attention", attention=AttentionConfig(num_heads=5)),
            "num_heads=5 must divide d_model=32",
        ),
        (lambda: AttentionConfig(num_heads=4, num_kv_heads=3), "num_kv_heads=3 must divide num_heads=4"),
        (lambda: tiny_lm("attention", attention=AttentionConfig(num_heads=32)), "head_dim .* must be even"),
        (lambda: tiny_lm("h3", h3=H3Config(head_dim=3)), "h3.head_dim=3 must divide d_model=32"),
        (lambda: H3Config(d_state=7), "d_state=7 must be even"),
        (lambda: tiny_lm("hyena", fft_size=65), "fft_size=65 must be an even int"),
        (lambda: tiny_lm("hyena", fft_size=32), "at least 2 \\* max_seq_len"),
        (lambda: m2_bert_tiny(fft_size=63), "fft_size=63 must be an even int"),
        (lambda: HyenaConfig(order=1), "order=1 must be >= 2"),
        (lambda: HyenaConfig(emb_dim=4), "emb_dim=4 must be odd"),
        (lambda: parcae_tiny(mean_recurrence=0), "mean_recurrence .* must be a positive integer"),
        (lambda: parcae_tiny(backprop_depth=0), "backprop_depth .* must be a positive integer"),
        (lambda: parcae_tiny(max_recurrence=2), "max_recurrence=2 must be >= mean_recurrence=3"),
        (
            lambda: parcae_tiny(attention=dataclasses.replace(PARCAE_ATTENTION, num_heads=5)),
            "num_heads=5 must divide d_model=32",
        ),
        (lambda: parcae_tiny(ssm_decay=1.0), "ssm_decay=1.0 must lie in"),
        (lambda: parcae_tiny(injection="gated"), "injection='gated'"),
        (lambda: tiny_lm("mamba"), "mixer='mamba'"),
        (lambda: tiny_lm("attention", attn_layer_idx=(2,)), "attn_layer_idx contains 2"),
        (lambda: tiny_lm("attention", dtype="int32"), "must be a floating dtype"),
        (lambda: tiny_lm("long_conv", long_conv=LongConvConfig(bidirectional=True)), "bidirectional"),
        (lambda: m2_bert_tiny(mlp_nblocks=3), "mlp_nblocks=3 must divide d_model=32"),
        (lambda: m2_bert_tiny(d_inner=66), "mlp_nblocks=4 must divide d_inner=66"),
        (lambda: m2_bert_tiny(hyena=HyenaConfig(order=3)), "hyena.order=3: the Monarch Mixer"),
    ],
)
def test_bad_config_fails_at_construction(build, match):
    with pytest.raises(ValueError, match=match):
        build()


# NaN passes `x <= 0` and `x < 0`, so every float field is checked in the positive form; each case
# names the field.
@pytest.mark.parametrize(
    "build, field",
    [
        *[(lambda v=v: tiny_lm(init_std=v), "init_std") for v in (NAN, -0.02, 0.0, INF)],
        *[(lambda v=v: tiny_lm(norm_eps=v), "norm_eps") for v in (NAN, -1e-5)],
        *[(lambda v=v: m2_bert_tiny(norm_eps=v), "norm_eps") for v in (NAN, 0.0)],
        *[(lambda v=v: parcae_tiny(init_std=v), "init_std") for v in (NAN, -1.0)],
        *[(lambda v=v: parcae_tiny(norm_eps=v), "norm_eps") for v in (NAN, -1.0)],
        *[(lambda v=v: AttentionConfig(rope_theta=v), "rope_theta") for v in (NAN, -1.0, 0.0, INF)],
        *[(lambda v=v: tiny_lm(embed_dropout=v), "embed_dropout") for v in (NAN, 1.0, -0.1)],
        (lambda: tiny_lm(resid_dropout=NAN), "resid_dropout"),
        (lambda: m2_bert_tiny(dropout=NAN), "dropout"),
        (lambda: LongConvConfig(kernel_dropout=NAN), "kernel_dropout"),
        *[(lambda v=v: LongConvConfig(lam=v), "lam") for v in (NAN, -0.1)],
        *[(lambda v=v: H3Config(dt_min=v), "dt_min") for v in (NAN, -1e-3, 0.0)],
        (lambda: H3Config(dt_max=NAN), "dt_max"),
        (lambda: H3Config(dt_max=INF), "dt_max"),
        (lambda: H3Config(dt_min=0.5, dt_max=0.1), "dt_min <= dt_max"),
        (lambda: HyenaConfig(sine_freq=NAN), "sine_freq"),
        (lambda: HyenaConfig(fast_decay_pct=NAN), "fast_decay_pct"),
        (lambda: HyenaConfig(slow_decay_pct=INF), "slow_decay_pct"),
        (lambda: HyenaConfig(decay_target=NAN), "decay_target"),
        (lambda: parcae_tiny(ssm_decay=NAN), "ssm_decay"),
    ],
)
def test_nan_negative_and_infinite_floats_fail(build, field):
    with pytest.raises(ValueError, match=field):
        build()


def test_config_families_share_names_and_sub_configs():
    shared = {"vocab_size", "d_model", "d_inner", "max_seq_len", "norm_eps", "init_std", "dtype"}
    for cls in (LMConfig, M2Config, ParcaeConfig):
        assert shared <= {f.name for f in dataclasses.fields(cls)}, cls
    # M2's filter is a HyenaConfig with m2's defaults; Parcae's attention an AttentionConfig with Parcae's.
    m2 = M2Config()
    assert m2.hyena == M2_FILTER and isinstance(m2.hyena, HyenaConfig)
    assert (m2.hyena.emb_dim, m2.hyena.filter_order, m2.hyena.sine_freq, m2.hyena.order) == (5, 128, 10.0, 2)
    assert (m2.hyena.num_inner_mlps, m2.hyena.short_filter_order) == (2, 3)
    att = ParcaeConfig().attention
    assert (att.num_heads, att.qk_norm, att.use_bias, att.rope, att.rope_theta) == (6, True, False, True, 1e4)
    assert ParcaeConfig().ffn_dim == M2Config().ffn_dim == 3072  # d_inner None = 4 * d_model


def test_every_preset_constructs():
    for name, preset in PRESETS.items():
        assert preset() is not None, name


# The papers' sizes (models.md): GPT-2 small 124M; safari H3-125M; Hyena "small" 153M (the Pile config);
# M2-BERT-base "80M". Within 2% (rounding of the names, padded vocabularies).
@pytest.mark.parametrize(
    "preset, cls, millions",
    [
        ("gpt2_125m", LanguageModel, 124),
        ("h3_125m", LanguageModel, 125),
        ("hyena_153m", LanguageModel, 153),
        ("m2_bert_80m", M2Bert, 80),
    ],
)
def test_paper_preset_parameter_count(preset, cls, millions):
    count = parameter_count(cls, PRESETS[preset]())
    assert abs(count / 1e6 - millions) / millions < 0.02, f"{preset}: {count / 1e6:.2f}M vs {millions}M"


def test_parcae_preset_counts_blocks_and_embedding():
    # "parcae-small-140m" is the release's name; its config (see parcae_140m) builds 68.8M parameters,
    # which this pins: 6 blocks of 768 (attention 4 d^2, relu^2 MLP 2 d d_inner), tied 32768 x 768
    # embedding, injection B and readout C (d^2 each), norms.
    cfg = parcae_140m()
    d, heads = cfg.d_model, cfg.attention.num_heads
    per_block = 4 * d * d + 2 * d * cfg.ffn_dim + 2 * d + 2 * (d // heads)
    expected = cfg.n_layers * per_block + cfg.vocab_size * d + 2 * d * d + 2 * d + 2 * d
    assert parameter_count(Parcae, cfg) == expected
    assert abs(expected / 1e6 - 68.8) < 0.1
    assert cfg.n_layers == 6  # 2 prelude + 2 core + 2 coda
