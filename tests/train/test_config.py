"""Training configs: every preset round-trips through JSON, overrides reach nested fields and parse by
type, and unknown keys or bad values are refused with the key's name and what is accepted."""

import dataclasses

import pytest
from jaxflash.train import TrainConfig, apply_overrides, presets
from jaxflash.train import config as config_lib


@pytest.mark.parametrize("name", list(presets.PRESETS))
def test_every_preset_round_trips_through_json(name):
    config = presets.get(name)
    assert isinstance(config, TrainConfig)
    again = config_lib.loads(config_lib.dumps(config))
    assert again == config and config_lib.differences(config, again) == []


def test_overrides_reach_nested_fields_and_parse_by_type():
    config = apply_overrides(
        presets.get("demo"),
        [
            "steps=12",
            "model.d_model=64",
            "model.hyena.filter_order=32",
            "optim.lr=3e-4",
            "optim.clip_norm=none",
            "model.attn_layer_idx=1,3",
            "progress=false",
            "data.seq_len=128",
            "batch_size=1e1",
        ],
    )
    assert config.steps == 12 and config.model.d_model == 64 and config.model.hyena.filter_order == 32
    assert config.optim.lr == 3e-4 and config.optim.clip_norm is None
    assert config.model.attn_layer_idx == (1, 3) and config.progress is False
    assert config.data.seq_len == 128 and config.batch_size == 10
    assert config_lib.differences(presets.get("demo"), config)[:3] == [
        "batch_size",
        "data.seq_len",
        "model.attn_layer_idx",
    ]


def test_a_model_preset_can_replace_the_model():
    config = apply_overrides(presets.get("demo"), ["model=hyena_tiny", "model.vocab_size=256"])
    assert config.model.n_layers == 2 and config.model.vocab_size == 256


@pytest.mark.parametrize(
    "override, words",
    [
        ("stepz=3", ["unknown key 'stepz'", "steps", "batch_size"]),
        ("model.d_modle=3", ["unknown key 'model.d_modle'", "d_model"]),
        ("optim=3", ["section", "optim.lr"]),
        ("steps.x=3", ["'steps' is a value"]),
        ("steps=three", ["steps='three'", "int"]),
        ("steps=1.5", ["steps", "integer"]),
        ("steps=0", ["steps", "positive"]),
        ("optim.lr=-1", ["optim.lr", "> 0"]),
        ("optim.lr=nan", ["optim.lr", "finite"]),
        ("optim.schedule=exp", ["optim.schedule", "cosine"]),
        ("progress=maybe", ["progress", "true or false"]),
        ("model.num_heads=3", ["unknown key", "attention"]),
        ("model=nope", ["not a model preset", "hyena_tiny"]),
        ("batch_size", ["not key=value"]),
        ("model.hyena.emb_dim=4", ["model.hyena.emb_dim", "odd"]),
    ],
)
def test_unknown_keys_and_bad_values_are_named(override, words):
    with pytest.raises((KeyError, ValueError)) as info:
        apply_overrides(presets.get("demo"), [override])
    message = info.value.args[0]
    for word in words:
        assert word in message, (word, message)


def test_an_unknown_preset_lists_the_accepted_ones():
    with pytest.raises(KeyError, match="demo"):
        presets.get("dmeo")


def test_batch_size_must_split_into_microbatches():
    with pytest.raises(ValueError, match="grad_accum"):
        dataclasses.replace(
            presets.get("demo"),
            batch_size=6,
            optim=dataclasses.replace(presets.get("demo").optim, grad_accum=4),
        )
