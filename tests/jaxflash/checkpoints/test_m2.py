"""m2 M2-BERT checkpoints <-> M2Bert / M2BertClassifier: the three heads, exact round trips, outputs equal
to a numpy forward of m2's modules, config inference and checking, refusals."""

import dataclasses

import numpy as np
import pytest
from flax import nnx
from jaxflash.models import M2BertClassifier

from jaxflash import models
from jaxflash.checkpoints import check_original_options, from_m2_bert, to_m2_bert

CASES = {
    "mlm": dict(head="mlm"),
    "classification": dict(head="classification"),
    "retrieval_additions": dict(head="retrieval", training_additions=True),
    "dense_mlp_no_residual": dict(head="mlm", nblocks=1, residual_long_conv=False, n_layer=1),
}


def _ids(spec, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, spec["vocab"], (2, spec["max_len"])), rng.integers(0, 2, (2, spec["max_len"]))


def _outputs(model, head, ids, types):
    bert = model.bert if isinstance(model, M2BertClassifier) else model
    if head == "mlm":
        return np.asarray(bert(ids, types))
    if head == "classification":
        return np.asarray(model(ids, types))
    return np.asarray(bert.pool(bert.encode(ids, types)))


@pytest.mark.parametrize("case", sorted(CASES))
def test_convert_matches_original_and_round_trips(originals, case):
    spec = originals.m2_spec(**CASES[case])
    sd = originals.m2_state_dict(spec)
    model, report = from_m2_bert(sd)
    head = spec["head"]

    assert sorted(report.used + list(report.ignored)) == sorted(sd)
    assert report.ignored["bert.embeddings.position_ids"].startswith("position ids")
    absent = "pooler" if head == "mlm" else "mlm_dense"
    assert any(absent in path for path in report.not_in_checkpoint)
    cfg = report.config
    assert (cfg.d_model, cfg.n_layers, cfg.d_inner, cfg.max_seq_len) == (8, spec["n_layer"], 16, 10)
    assert (cfg.mlp_nblocks, cfg.residual_long_conv, cfg.training_additions) == (
        spec["nblocks"],
        spec["residual_long_conv"],
        spec["training_additions"],
    )
    assert isinstance(model, M2BertClassifier) == (head == "classification")

    back = to_m2_bert(model, head)
    assert sorted(back) == sorted(sd)
    for key in sd:
        np.testing.assert_array_equal(back[key], sd[key], err_msg=key)

    ids, types = _ids(spec)
    hidden, want = originals.ref_m2_bert(sd, ids, types)
    bert = model.bert if head == "classification" else model
    # f32 FFT convolutions of O(5) gated signals, then post-LNs of small-variance sums: ~1e-4 apart
    np.testing.assert_allclose(np.asarray(bert.encode(ids, types)), hidden, atol=1e-3, rtol=1e-3)
    np.testing.assert_allclose(_outputs(model, head, ids, types), want, atol=1e-3, rtol=1e-3)


def test_ours_export_load_gives_identical_outputs():
    hyena = dataclasses.replace(models.M2_FILTER, filter_order=8)  # the sizes of the originals' specs
    cfg = models.m2_bert_tiny(d_model=8, d_inner=16, max_seq_len=10, hyena=hyena, training_additions=True)
    model = models.M2Bert(cfg, rngs=nnx.Rngs(2))
    ids = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 10))
    for head in ("mlm", "retrieval"):
        loaded, _ = from_m2_bert(to_m2_bert(model, head), cfg)
        np.testing.assert_array_equal(np.asarray(loaded.encode(ids)), np.asarray(model.encode(ids)))
        if head == "mlm":
            np.testing.assert_array_equal(np.asarray(loaded(ids)), np.asarray(model(ids)))
        else:
            np.testing.assert_array_equal(
                np.asarray(loaded.pool(loaded.encode(ids))), np.asarray(model.pool(model.encode(ids)))
            )


def test_config_mismatch_names_the_key_and_both_shapes(originals):
    sd = originals.m2_state_dict(originals.m2_spec(n_layer=1))
    _, report = from_m2_bert(sd)
    with pytest.raises(
        ValueError,
        match=r"position_embeddings\.weight: the checkpoint has shape \(10, 8\) but the config gives "
        r"\(12, 8\)",
    ):
        from_m2_bert(sd, dataclasses.replace(report.config, max_seq_len=12))
    with pytest.raises(ValueError, match="keys the config needs that the checkpoint lacks"):
        from_m2_bert(sd, dataclasses.replace(report.config, training_additions=True))


def test_unknown_keys_and_tied_copies(originals):
    sd = originals.m2_state_dict(originals.m2_spec(n_layer=1))
    with pytest.raises(ValueError, match=r"does not know: \['bert\.encoder\.layer\.0\.attention\.extra'\]"):
        from_m2_bert({**sd, "bert.encoder.layer.0.attention.extra": np.ones(2, np.float32)})
    key = "bert.encoder.layer.0.attention.filter_fn.implicit_filter_rev.3.freq"
    with pytest.raises(ValueError, match="one tied parameter"):
        from_m2_bert({**sd, key: sd[key] + 1})
    # safetensors keeps one copy of a shared tensor: the others may be missing
    fewer = {
        k: v for k, v in sd.items() if not k.endswith((".3.freq", ".5.freq")) and "decoder.weight" not in k
    }
    model, _ = from_m2_bert(fewer)
    assert sorted(to_m2_bert(model)) == sorted(sd)


@pytest.mark.parametrize(
    "options, match",
    [
        ({"hyena_w_mod": 2}, "hyena_w_mod"),
        ({"use_flash_mm": True}, "use_flash_mm"),
        ({"normalized": True}, "normalized"),
        ({"bias": False}, "bias=False"),
        ({"monarch_mixer_sequence_mixing": False}, "attention BERT"),
    ],
)
def test_refused_options(originals, options, match):
    with pytest.raises(NotImplementedError, match=match):
        check_original_options(options, "m2_bert")
    with pytest.raises(NotImplementedError, match=match):
        from_m2_bert(originals.m2_state_dict(originals.m2_spec(n_layer=1)), options=options)


def test_retrieval_head_ignores_a_leftover_classifier(originals):
    spec = originals.m2_spec(n_layer=1, head="classification")
    sd = originals.m2_state_dict(spec)
    model, report = from_m2_bert(sd, head="retrieval")
    assert isinstance(model, models.M2Bert) and "drops the classifier" in report.ignored["classifier.weight"]
    assert sorted(report.used + list(report.ignored)) == sorted(sd)
    ids, types = _ids(spec)
    classifier, _ = from_m2_bert(sd)
    np.testing.assert_array_equal(
        np.asarray(model.pool(model.encode(ids, types))),
        np.asarray(classifier.bert.pool(classifier.bert.encode(ids, types))),
    )
    assert "inferred" in report.summary()


def test_mean_pooling_of_the_glue_yamls(originals):
    spec = originals.m2_spec(n_layer=1, head="classification")
    sd = originals.m2_state_dict(spec)
    model, report = from_m2_bert(sd, options={"pool_all": True})
    assert model.pool_all and report.assumed["pool_all"] == "True (options)"
    ids, types = _ids(spec)
    mask = np.ones_like(ids)
    mask[1, 6:] = 0
    _, want = originals.ref_m2_bert(sd, ids, types, pool_all=True, mask=mask)
    np.testing.assert_allclose(np.asarray(model(ids, types, mask)), want, atol=1e-3, rtol=1e-3)
    retrieval = originals.m2_state_dict(originals.m2_spec(n_layer=1, head="retrieval"))
    with pytest.raises(NotImplementedError, match="pool_all=True"):
        from_m2_bert(retrieval, options={"pool_all": True})


def test_refuses_what_the_weights_reveal(originals):
    sd = originals.m2_state_dict(originals.m2_spec(n_layer=1, head="retrieval"))
    with pytest.raises(NotImplementedError, match="attention_pooling"):
        from_m2_bert({**sd, "bert.pooler.Wqkv.weight": np.zeros((24, 8), np.float32)})
    no_rev = {k: v for k, v in sd.items() if "implicit_filter_rev" not in k}
    with pytest.raises(NotImplementedError, match="bidirectional=False"):
        from_m2_bert(no_rev)


def test_released_retrieval_config_passes_and_sets_the_unrevealed_fields(originals):
    # m2 yamls/embeddings/m2-bert-80M-32k-retrieval.yaml model_config (sizes shrunk in the weights only)
    options = {
        "num_attention_heads": 12,
        "max_position_embeddings": 32768,
        "pool_all": False,
        "monarch_mixer_sequence_mixing": True,
        "long_conv_l_max": 32768,
        "hyena_w": 10,
        "hyena_wd": 0.1,
        "hyena_emb_dim": 5,
        "hyena_filter_order": 128,
        "hyena_training_additions": False,
        "bidirectional": True,
        "residual_long_conv": True,
        "use_glu_mlp": True,
        "use_monarch_mlp": True,
        "monarch_mlp_nblocks": 4,
        "use_positional_encodings": True,
        "use_flash_fft": True,
        "layer_norm_eps": 1e-12,
    }
    notes = check_original_options(options, "m2_bert")
    assert any("use_flash_fft" in n for n in notes)
    sd = originals.m2_state_dict(originals.m2_spec(n_layer=1, head="retrieval"))
    _, report = from_m2_bert(sd, options=options)
    assert report.assumed["hyena.sine_freq"] == "10.0 (options)"
