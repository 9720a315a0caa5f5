"""The reproduction presets (REPRODUCTIONS.md): each builds a valid config that keeps its paper's recipe,
and trains 2 steps at a tiny size. Compiling a train step takes seconds on CPU, so the default run trains
the presets whose model settings no other test reaches (long-conv channels and kernel dropout, H3
head_dim 2, Parcae's linear injection); the others train under the ``slow`` marker."""

import math

import pytest
from jaxflash.train import apply_overrides, presets, train
from jaxflash.train import config as config_lib

# Each new preset and the overrides that shrink it (the task's own length knobs differ).
SAFARI_AR = ["data.seq_len=8", "data.num_examples=64", "data.num_test_examples=8", "model.max_seq_len=10"]
MQAR = [
    "data.seq_len=16",
    "data.vocab_size=32",
    "model.vocab_size=32",
    "data.num_examples=64",
    "model.max_seq_len=16",
]
REPRODUCTIONS = {
    "associative_recall_transformer": SAFARI_AR,
    "associative_recall_1k_hyena": [*SAFARI_AR, "model.hyena.filter_order=8"],
    "associative_recall_1k_h3": [*SAFARI_AR, "model.h3.d_state=8"],
    "associative_recall_1k_conv1d": [*SAFARI_AR, "model.hyena.explicit_taps=4"],
    "associative_recall_s4d": [*SAFARI_AR, "model.s4d.d_state=8"],
    "induction_head_s4d": [
        "data.seq_len=8",
        "data.num_examples=64",
        "data.num_test_examples=8",
        "model.max_seq_len=9",
        "model.s4d.d_state=8",
    ],
    "associative_recall_512_long_conv": SAFARI_AR,
    "mqar_hyena": [*MQAR, "model.hyena.filter_order=8"],
    "mqar_h3": [*MQAR, "model.h3.d_state=8"],
    "mqar_long_conv": MQAR,
    "mqar_m2": [*MQAR, "model.hyena.filter_order=8"],
    "lm_parcae_linear": ["data.seq_len=16", "model.max_seq_len=16"],
    "m2_bert_pydoc": ["data.seq_len=16", "model.max_seq_len=16", "model.hyena.filter_order=8"],
    "bert_pydoc": ["data.seq_len=16", "model.max_seq_len=16", "model.num_attention_heads=2"],
}
# The model settings no other test trains; every other preset's 2 steps are slow-marked.
QUICK = ("associative_recall_512_long_conv", "mqar_h3", "lm_parcae_linear")
TINY = [
    "steps=3",
    "batch_size=4",
    "model.d_model=16",
    "model.d_inner=32",
    "checkpoint_every=100",
    "eval_every=0",
    "log_every=1",
    "sample_tokens=0",
    "progress=false",
    "tensorboard=false",
    "mesh.data=1",
]


def test_every_reproduction_preset_is_listed_with_a_docstring():
    assert set(REPRODUCTIONS) <= set(presets.PRESETS)
    for name in REPRODUCTIONS:
        assert (presets.PRESETS[name].__doc__ or "").strip(), name


@pytest.mark.parametrize("name", sorted(REPRODUCTIONS))
def test_preset_config_round_trips(name):
    config = presets.get(name)
    assert config_lib.loads(config_lib.dumps(config)) == config
    assert config.workdir.startswith("runs/")


def test_long_ar_presets_keep_hyena_table_a1():
    for name in (
        "associative_recall_1k_hyena",
        "associative_recall_1k_h3",
        "associative_recall_512_long_conv",
    ):
        c = presets.get(name)
        assert (c.model.d_model, c.model.n_layers, c.batch_size) == (64, 2, 32), name
        assert (c.optim.lr, c.optim.weight_decay, c.model.embed_dropout) == (5e-4, 0.1, 0.0), name
        assert (c.data.vocab_size, c.data.num_examples) == (30, 2000), name
        assert c.steps == 200 * 2000 // 32 and c.optim.warmup_steps == c.steps // 20, name
        assert c.model.max_seq_len == c.data.seq_len + 2, name
    hyena = presets.get("associative_recall_1k_hyena").model.hyena
    assert (hyena.emb_dim, hyena.filter_order, hyena.sine_freq) == (5, 64, 10.0)
    conv1d = presets.get("associative_recall_1k_conv1d").model.hyena
    assert (conv1d.filter, conv1d.explicit_taps) == ("conv1d", 64)
    lc = presets.get("associative_recall_512_long_conv").model.long_conv
    assert (lc.channels, lc.lam, lc.kernel_dropout) == (2, 0.003, 0.2)


def test_mqar_presets_share_the_starter_recipe():
    reference = presets.get("mqar_attention")
    for name in ("mqar_hyena", "mqar_h3", "mqar_long_conv", "mqar_m2"):
        c = presets.get(name)
        assert (c.data, c.optim, c.steps, c.batch_size) == (
            reference.data,
            reference.optim,
            reference.steps,
            reference.batch_size,
        ), name
        assert (c.model.d_model, c.model.vocab_size, c.model.max_seq_len) == (128, 256, 64), name
    h3 = presets.get("mqar_h3").model.h3
    assert (h3.d_state, h3.head_dim) == (64, 2)
    # Figure 2's 100K examples (the starter's 10K leave attention at 0.25, REPRODUCTIONS.md); zoology's
    # Hyena filter defaults (emb_dim 3, w 1).
    assert (reference.data.num_examples, reference.batch_size) == (100_000, 128)
    hyena = presets.get("mqar_hyena").model.hyena
    assert (hyena.emb_dim, hyena.sine_freq, hyena.filter_order) == (3, 1.0, 64)


def test_parcae_linear_differs_from_lm_parcae_in_the_injection_only():
    assert config_lib.differences(presets.get("lm_parcae"), presets.get("lm_parcae_linear")) == [
        "model.injection",
        "workdir",
    ]


@pytest.mark.parametrize(
    "name", [n if n in QUICK else pytest.param(n, marks=pytest.mark.slow) for n in sorted(REPRODUCTIONS)]
)
def test_preset_trains_two_steps_tiny(name, tmp_path):
    config = apply_overrides(presets.get(name), [*TINY, *REPRODUCTIONS[name], f"workdir={tmp_path}"])
    result = train(config, stop_after=2, echo=None)
    assert result.step == 2
    assert math.isfinite(result.train["loss"]) and result.train["loss"] > 0
