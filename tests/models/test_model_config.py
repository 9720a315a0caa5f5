"""Configs fail at construction on bad values; presets build; the papers' presets have the papers'
parameter counts (shapes only, through nnx.eval_shape)."""

import math

import jax
import pytest
from flax import nnx
from jaxflash.models import config as C
from jaxflash.models.lm import LanguageModel
from jaxflash.models.m2 import M2Bert
from jaxflash.models.parcae import Parcae


@pytest.mark.parametrize(
    "build, match",
    [
        (
            lambda: C.tiny_lm("attention", attention=C.AttentionConfig(num_heads=5)),
            "num_heads=5 must divide d_model=32",
        ),
        (lambda: C.AttentionConfig(num_heads=4, num_kv_heads=3), "num_kv_heads=3 must divide num_heads=4"),
        (
            lambda: C.tiny_lm("attention", attention=C.AttentionConfig(num_heads=32)),
            "head_dim .* must be even",
        ),
        (lambda: C.tiny_lm("h3", h3=C.H3Config(head_dim=3)), "h3.head_dim=3 must divide d_model=32"),
        (lambda: C.H3Config(d_state=7), "d_state=7 must be even"),
        (lambda: C.tiny_lm("hyena", fft_size=65), "fft_size=65 must be an even int"),
        (lambda: C.tiny_lm("hyena", fft_size=32), "at least 2 \\* max_seq_len"),
        (lambda: C.m2_bert_tiny(fft_size=63), "fft_size=63 must be an even int"),
        (lambda: C.HyenaConfig(order=1), "order=1 must be >= 2"),
        (lambda: C.HyenaConfig(emb_dim=4), "emb_dim=4 must be odd"),
        (lambda: C.parcae_tiny(mean_recurrence=0), "mean_recurrence .* must be an int >= 1"),
        (lambda: C.parcae_tiny(backprop_depth=0), "backprop_depth .* must be an int >= 1"),
        (lambda: C.parcae_tiny(max_recurrence=2), "max_recurrence=2 must be >= mean_recurrence=3"),
        (lambda: C.parcae_tiny(n_heads=5, n_kv_heads=None), "num_heads=5 must divide d_model=32"),
        (lambda: C.parcae_tiny(ssm_decay=1.0), "ssm_decay=1.0 must lie in"),
        (lambda: C.parcae_tiny(injection="gated"), "injection='gated'"),
        (lambda: C.tiny_lm("mamba"), "mixer='mamba'"),
        (lambda: C.tiny_lm("attention", attn_layer_idx=(2,)), "attn_layer_idx contains 2"),
        (lambda: C.tiny_lm("attention", dtype="int32"), "must be a floating dtype"),
        (lambda: C.tiny_lm("long_conv", long_conv=C.LongConvConfig(bidirectional=True)), "bidirectional"),
        (lambda: C.m2_bert_tiny(mlp_nblocks=3), "mlp_nblocks=3 must divide d_model=32"),
    ],
)
def test_bad_config_fails_at_construction(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_every_preset_constructs():
    for name, preset in C.PRESETS.items():
        assert preset() is not None, name


def _count(cls, cfg) -> int:
    model = nnx.eval_shape(lambda: cls(cfg, rngs=nnx.Rngs(0)))
    return sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


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
    count = _count(cls, C.PRESETS[preset]())
    assert abs(count / 1e6 - millions) / millions < 0.02, f"{preset}: {count / 1e6:.2f}M vs {millions}M"


def test_parcae_preset_counts_blocks_and_embedding():
    # "parcae-small-140m" is the release's name; its config (see C.parcae_140m) builds 68.8M parameters,
    # which this pins: 6 blocks of 768 (attention 4 d^2, relu^2 MLP 2 d d_ff), tied 32768 x 768
    # embedding, injection B and readout C (d^2 each), norms.
    cfg = C.parcae_140m()
    d, blocks = cfg.d_model, cfg.n_prelude + cfg.n_core + cfg.n_coda
    per_block = 4 * d * d + 2 * d * cfg.d_ff + 2 * d + 2 * (d // cfg.n_heads)
    expected = blocks * per_block + cfg.vocab_size * d + 2 * d * d + 2 * d + 2 * d
    assert _count(Parcae, cfg) == expected
    assert abs(expected / 1e6 - 68.8) < 0.1
