"""safari ConvLMHeadModel checkpoints <-> LanguageModel: every key used, exact round trips, logits equal to
a numpy forward of the original modules, config inference and checking, refusals."""

import dataclasses

import numpy as np
import pytest
from flax import nnx

from jaxflash import models
from jaxflash.checkpoints import (
    check_original_options,
    from_safari_lm,
    load_state_dict,
    save_state_dict,
    to_safari_lm,
)

# The originals' layer mixes, each with the config fields the shapes must give.
CASES = {
    "hyena": (dict(layers=("hyena", "hyena")), {"mixer": "hyena", "hyena.order": 2, "max_seq_len": 12}),
    "hyena_order3": (
        dict(layers=("hyena",), hyena=dict(order=3, n_inner=1, short=4)),
        {"hyena.order": 3, "hyena.num_inner_mlps": 1, "hyena.short_filter_order": 4},
    ),
    "h3": (dict(layers=("h3", "h3")), {"mixer": "h3", "h3.d_state": 8, "h3.head_dim": 1}),
    "h3_heads": (dict(layers=("h3",), h3=dict(d_state=4, head_dim=2)), {"h3.d_state": 4, "h3.head_dim": 2}),
    "long_conv": (dict(layers=("long_conv", "long_conv")), {"mixer": "long_conv", "long_conv.channels": 2}),
    "h3_hybrid": (
        dict(layers=("h3", "attention", "h3"), attn=dict(num_heads=2)),
        {"mixer": "h3", "attn_layer_idx": (1,), "attention.use_bias": True},
    ),
    "hyena_hybrid_rotary_gqa": (
        dict(layers=("attention", "hyena"), attn=dict(num_heads=2, num_heads_kv=1, rotary_dim=4)),
        {"attn_layer_idx": (0,), "attention.rope": True, "attention.rope_theta": 10000.0},
    ),
    "transformer": (
        dict(layers=("attention", "attention"), max_position_embeddings=12, attn=dict(num_heads=2)),
        {"mixer": "attention", "learned_pos_emb": True, "max_seq_len": 12},
    ),
}


def _tokens(spec, length, seed=0):
    return np.random.default_rng(seed).integers(0, spec["vocab"], (2, length))


def _options(spec):
    return {"attn_cfg": {"num_heads": spec["attn"]["num_heads"]}} if "attention" in spec["layers"] else {}


@pytest.mark.parametrize("case", sorted(CASES))
def test_convert_matches_original_and_round_trips(originals, case):
    overrides, expect = CASES[case]
    spec = originals.safari_spec(**overrides)
    sd = originals.safari_lm_state_dict(spec)
    model, report = from_safari_lm(sd, options=_options(spec))

    assert sorted(report.used + list(report.ignored)) == sorted(sd)
    assert report.ignored["lm_head.weight"].startswith("tied copy")
    assert report.not_in_checkpoint == {}
    for field, value in expect.items():
        assert report.inferred[field] == value, field
    assert report.inferred["d_model"] == spec["d_model"] and report.inferred["d_inner"] == spec["d_inner"]

    back = to_safari_lm(model)
    assert sorted(back) == sorted(sd)
    for key in sd:
        np.testing.assert_array_equal(back[key], sd[key], err_msg=key)

    tokens = _tokens(spec, spec["l_max"])
    want = originals.ref_safari_lm(sd, tokens, spec)
    np.testing.assert_allclose(np.asarray(model(tokens)), want, atol=2e-4, rtol=2e-4)


def _small_lm(mixer, **overrides):
    """Our tiny LM at the sizes of the originals' specs (so the tests share compiled ops)."""
    return models.tiny_lm(
        mixer,
        d_model=8,
        d_inner=16,
        max_seq_len=12,
        attention=models.AttentionConfig(num_heads=2, num_kv_heads=1, rope=True),
        hyena=models.HyenaConfig(filter_order=8, emb_dim=5),
        **overrides,
    )


@pytest.mark.parametrize("mixer", ["hyena", "h3", "long_conv", "attention"])
def test_ours_export_load_gives_identical_logits(mixer):
    cfg = _small_lm(mixer, attn_layer_idx=(1,) if mixer != "attention" else ())
    model = models.LanguageModel(cfg, rngs=nnx.Rngs(3))
    loaded, report = from_safari_lm(to_safari_lm(model), cfg)
    tokens = np.random.default_rng(1).integers(0, cfg.vocab_size, (2, 12))
    np.testing.assert_array_equal(np.asarray(loaded(tokens)), np.asarray(model(tokens)))
    assert report.config is cfg


def test_infers_the_config_of_our_own_export():
    cfg = _small_lm("hyena", attn_layer_idx=(0,))
    model = models.LanguageModel(cfg, rngs=nnx.Rngs(0))
    loaded, report = from_safari_lm(to_safari_lm(model))
    got = report.config
    for field in ("vocab_size", "d_model", "n_layers", "d_inner", "max_seq_len", "mixer", "attn_layer_idx"):
        assert getattr(got, field) == getattr(cfg, field), field
    assert (got.hyena.order, got.hyena.filter_order, got.hyena.emb_dim) == (2, 8, 5)
    # head_dim 4 from the rotary buffer (rotary over the whole head) gives the 2 heads back, GQA the 1
    assert (got.attention.num_heads, got.attention.num_kv_heads, got.attention.rope) == (2, 1, True)
    assert "hyena.modulate" in report.assumed and "norm_eps" in report.assumed


def test_safetensors_file_round_trip(originals, tmp_path):
    spec = originals.safari_spec(layers=("h3", "attention"))
    sd = originals.safari_lm_state_dict(spec)
    path = tmp_path / "h3.safetensors"
    save_state_dict(sd, path)
    read = load_state_dict(path)
    assert sorted(read) == sorted(sd)
    model, _ = from_safari_lm(read, options=_options(spec))
    save_state_dict(to_safari_lm(model), tmp_path / "back.safetensors")
    again, _ = from_safari_lm(load_state_dict(tmp_path / "back.safetensors"), model.config)
    tokens = _tokens(spec, 12)
    np.testing.assert_array_equal(np.asarray(again(tokens)), np.asarray(model(tokens)))


def test_legacy_layout_loads_like_the_current_one(originals):
    spec = originals.safari_spec(layers=("h3", "attention"))
    sd = originals.safari_lm_state_dict(spec)
    current, _ = from_safari_lm(sd, options=_options(spec))
    legacy, report = from_safari_lm(originals.to_legacy(sd, spec), options=_options(spec))
    assert any("post-norm" in n for n in report.notes) and any("q_proj" in n for n in report.notes)
    tokens = _tokens(spec, 12)
    np.testing.assert_array_equal(np.asarray(legacy(tokens)), np.asarray(current(tokens)))


def test_config_mismatch_names_the_key_and_both_shapes(originals):
    spec = originals.safari_spec()
    sd = originals.safari_lm_state_dict(spec)
    _, report = from_safari_lm(sd)
    wrong = dataclasses.replace(report.config, d_inner=24)
    with pytest.raises(
        ValueError,
        match=r"mlp\.fc1\.weight: the checkpoint has shape \(16, 8\) but the config gives \(24, 8\)",
    ):
        from_safari_lm(sd, wrong)
    with pytest.raises(ValueError, match="keys the config needs that the checkpoint lacks"):
        from_safari_lm(sd, dataclasses.replace(report.config, mixer="h3"))


def test_unknown_and_missing_keys_are_listed(originals):
    sd = originals.safari_lm_state_dict(originals.safari_spec())
    extra = {**sd, "backbone.layers.0.mixer.something_new": np.zeros(3, np.float32)}
    with pytest.raises(ValueError, match=r"does not know: \['backbone\.layers\.0\.mixer\.something_new'\]"):
        from_safari_lm(extra)
    fewer = {k: v for k, v in sd.items() if k != "backbone.layers.1.mlp.fc2.bias"}
    with pytest.raises(ValueError, match=r"lacks: \['backbone\.layers\.1\.mlp\.fc2\.bias'\]"):
        from_safari_lm(fewer)


def test_buffers_are_checked_not_silently_dropped(originals):
    spec = originals.safari_spec()
    sd = originals.safari_lm_state_dict(spec)
    key = "backbone.layers.0.mixer.filter_fn.modulation.deltas"
    slower = {**sd, key: sd[key] * 0.5}
    with pytest.raises(ValueError, match="modulation.deltas: the checkpoint's buffer differs"):
        from_safari_lm(slower)
    # safari's eval config for the released Hyena-small turns the modulation off: the deltas go unused
    model, report = from_safari_lm(slower, options={"layer": {"_name_": "hyena", "modulate": False}})
    assert "unused" in report.ignored[key] and not report.config.hyena.modulate
    tokens = _tokens(spec, 12)
    want = originals.ref_safari_lm(slower, tokens, spec, modulate=False)
    np.testing.assert_allclose(np.asarray(model(tokens)), want, atol=2e-4, rtol=2e-4)
    with pytest.raises(ValueError, match=r"pos_emb\.t: the checkpoint's buffer differs"):
        from_safari_lm(
            {**sd, "backbone.layers.1.mixer.filter_fn.pos_emb.t": sd[key[:-17] + "pos_emb.t"] ** 2}
        )


def test_options_fill_what_the_weights_cannot_reveal(originals):
    spec = originals.safari_spec(layers=("long_conv",))
    sd = originals.safari_lm_state_dict(spec)
    opts = {"layer_norm_epsilon": 1e-6, "layer": {"_name_": "long-conv", "lam": 0.01, "channels": 2}}
    model, report = from_safari_lm(sd, options=opts)
    assert report.config.long_conv.lam == 0.01 and report.config.norm_eps == 1e-6
    assert report.assumed["long_conv.lam"] == "0.01 (options)"
    tokens = _tokens(spec, 12)
    want = originals.ref_safari_lm(sd, tokens, spec, eps=1e-6, lam=0.01)
    np.testing.assert_allclose(np.asarray(model(tokens)), want, atol=2e-4, rtol=2e-4)
    with pytest.raises(
        ValueError, match=r"options set long_conv\.lam=0\.01 but the config has long_conv\.lam=0\.003"
    ):
        from_safari_lm(
            sd, dataclasses.replace(report.config, long_conv=models.LongConvConfig(channels=2)), options=opts
        )


def test_h3_b_folds_into_c_when_the_model_has_no_b(originals):
    spec = originals.safari_spec(layers=("h3",))
    sd = originals.safari_lm_state_dict(spec)
    _, report = from_safari_lm(sd)
    cfg = dataclasses.replace(report.config, h3=dataclasses.replace(report.config.h3, diag_B=False))
    model, report = from_safari_lm(sd, cfg)
    assert any("folded into C" in n for n in report.notes)
    tokens = _tokens(spec, 12)
    np.testing.assert_allclose(
        np.asarray(model(tokens)), originals.ref_safari_lm(sd, tokens, spec), atol=2e-4, rtol=2e-4
    )
    back = to_safari_lm(model)
    np.testing.assert_array_equal(back["backbone.layers.0.mixer.kernel.kernel.B"][..., 1], 0.0)


def test_zoh_discretisation_from_options(originals):
    spec = originals.safari_spec(layers=("h3",))
    sd = originals.safari_lm_state_dict(spec)
    model, _ = from_safari_lm(sd, options={"layer": {"_name_": "h3", "disc": "zoh"}})
    tokens = _tokens(spec, 12)
    want = originals.ref_safari_lm(sd, tokens, spec, disc="zoh")
    np.testing.assert_allclose(np.asarray(model(tokens)), want, atol=2e-4, rtol=2e-4)


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda sd: {**sd, "backbone.layers.0.mixer.ord_proj_w": np.zeros((2, 1, 1))}, "post_order_ffn"),
        (
            lambda sd: {**sd, "backbone.layers.0.mixer.kernel.kernel": np.zeros((4, 8, 12), np.float32)},
            "bidirectional long convolution",
        ),
        (
            lambda sd: {
                k.replace("backbone.layers.", "layers.").replace(".mixer.", ".layer."): v
                for k, v in sd.items()
                if k.startswith("backbone.layers.")
            },
            "SequenceModel backbone",
        ),
    ],
    ids=["post_order_ffn", "bidirectional", "lra_backbone"],
)
def test_refuses_what_the_weights_reveal(originals, change, match):
    sd = originals.safari_lm_state_dict(originals.safari_spec(layers=("long_conv", "long_conv")))
    with pytest.raises(NotImplementedError, match=match):
        from_safari_lm(change(sd))


def test_refuses_partial_rotary(originals):
    spec = originals.safari_spec(layers=("h3", "attention"))
    sd = originals.safari_lm_state_dict(spec)  # H3-2.7B's rotary model: rotary_emb_dim 64 of head_dim 128
    with pytest.raises(NotImplementedError, match="partial rotary"):
        from_safari_lm(sd, options={"attn_cfg": {"num_heads": 1, "rotary_emb_dim": 4}})
    key = "backbone.layers.1.mixer.rotary_emb.inv_freq"
    with pytest.raises(NotImplementedError, match="partial rotary"):
        from_safari_lm({**sd, key: np.ones(2, np.float32)}, options={"attn_cfg": {"num_heads": 1}})


def test_refuses_h3_shared_ssm_and_mixed_mixers(originals):
    sd = originals.safari_lm_state_dict(originals.safari_spec(layers=("h3",)))
    for name in ("inv_A_real", "A_imag", "B"):
        key = f"backbone.layers.0.mixer.kernel.kernel.{name}"
        sd[key] = sd[key][:1]
    with pytest.raises(NotImplementedError, match="n_ssm"):
        from_safari_lm(sd)
    mixed = originals.safari_lm_state_dict(originals.safari_spec(layers=("h3", "hyena")))
    with pytest.raises(NotImplementedError, match="several mixer kinds"):
        from_safari_lm(mixed)


@pytest.mark.parametrize(
    "options, family, match",
    [
        ({"num_heads": 2}, "hyena", "num_heads=2"),
        ({"inner_factor": 2}, "hyena", "inner_factor"),
        ({"outer_mixing": True}, "hyena", "outer_mixing"),
        ({"post_order_ffn": True}, "hyena", "post_order_ffn"),
        ({"normalized": True}, "hyena", "normalized"),
        ({"bias": False}, "hyena", "bias=False"),
        ({"shift": 0.5}, "hyena", "shift"),
        ({"modulation_lr": 1e-3}, "hyena", "trainable decay"),
        ({"disc": "dss"}, "h3", "disc"),
        ({"rotary_emb_interleaved": True}, "attention", "interleaved"),
        ({"layer": {"_name_": "hyena", "num_heads": 4}}, "safari_lm", "num_heads=4"),
        ({"layer": {"_name_": "s4_simple"}}, "safari_lm", "s4_simple"),
    ],
)
def test_refused_options(options, family, match):
    with pytest.raises(NotImplementedError, match=match):
        check_original_options(options, family)
    if family == "safari_lm":
        with pytest.raises(NotImplementedError, match=match):
            from_safari_lm({}, options=options)


def test_released_configs_pass_the_option_check():
    pile_hyena = {  # safari configs/experiment/pile/hyena.yaml
        "d_model": 864,
        "n_layer": 18,
        "vocab_size": 50257,
        "embed_dropout": 0.1,
        "layer": {
            "_name_": "hyena",
            "emb_dim": 33,
            "filter_order": 64,
            "local_order": 3,
            "l_max": 2048,
            "fused_fft_conv": True,
            "modulate": True,
            "w": 14,
            "lr": 6e-4,
            "lr_pos_emb": 6e-4,
        },
        "fused_mlp": True,
        "residual_in_fp32": True,
        "pad_vocab_size_multiple": 8,
    }
    notes = check_original_options(pile_hyena, "safari_lm")
    assert any("local_order" in n for n in notes)
    pile_h3 = {
        "layer": {"_name_": "h3", "d_state": 64, "head_dim": 1, "mode": "diag", "measure": "diag-lin"},
        "attn_layer_idx": [1, 8],
        "attn_cfg": {"num_heads": 12, "use_flash_attn": True, "dropout": 0.1},
    }
    check_original_options(pile_h3, "safari_lm")


def test_export_refuses_models_safari_cannot_hold():
    model = models.LanguageModel(_small_lm("hyena", mlp="swiglu"), rngs=nnx.Rngs(0))
    with pytest.raises(NotImplementedError, match="swiglu"):
        to_safari_lm(model)
    with pytest.raises(NotImplementedError, match="M2GPT"):
        to_safari_lm(nnx.eval_shape(lambda: models.M2GPT(models.m2_gpt_tiny(), rngs=nnx.Rngs(0))))
    tied = dataclasses.replace(
        _small_lm("hyena"), hyena=dataclasses.replace(_small_lm("hyena").hyena, filter_heads=2)
    )
    with pytest.raises(NotImplementedError, match="filter_heads"):
        to_safari_lm(models.LanguageModel(tied, rngs=nnx.Rngs(0)))
