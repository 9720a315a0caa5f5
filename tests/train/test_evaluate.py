"""``python -m jaxflash.train.evaluate``: a checkpoint's validation metrics equal the training loop's own
evaluation; shape-keeping model overrides (Parcae's test-time loop count) change them; overrides that
change a parameter's shape and missing workdirs exit with status 2."""

import json

import pytest
from jaxflash.train import apply_overrides, presets, train
from jaxflash.train.evaluate import evaluate_run, main
from jaxflash.train.metrics import read_metrics

TINY = [
    "steps=2",
    "model.d_model=16",
    "model.d_inner=32",
    "model.max_seq_len=32",
    "data.seq_len=32",
    "batch_size=4",
    "checkpoint_every=2",
    "eval_every=2",
    "eval_batches=2",
    "sample_tokens=0",
    "progress=false",
    "mesh.data=1",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    path = tmp_path_factory.mktemp("parcae")
    train(apply_overrides(presets.get("lm_parcae"), [*TINY, f"workdir={path}"]), echo=None)
    return path


def test_metrics_equal_the_loops_evaluation(run):
    logged = [m for m in read_metrics(run) if "eval_loss" in m][-1]
    result = evaluate_run(run)
    assert result["step"] == 2
    assert result["eval_loss"] == pytest.approx(logged["eval_loss"], rel=1e-5)
    assert result["eval_accuracy"] == pytest.approx(logged["eval_accuracy"], abs=1e-6)


def test_loop_count_override_and_cli(run, capsys):
    more = evaluate_run(run, ["model.max_recurrence=16", "model.mean_recurrence=16"])
    assert more["eval_loss"] != pytest.approx(evaluate_run(run)["eval_loss"], rel=1e-7)
    assert main([str(run), "eval_batches=1"]) == 0
    assert json.loads(capsys.readouterr().out)["overrides"] == ["eval_batches=1"]


def test_bad_calls_exit_2(run, tmp_path, capsys):
    assert main([str(run), "model.d_model=32"]) == 2
    assert "change the model's parameters" in capsys.readouterr().err
    assert main([str(tmp_path / "none")]) == 2
    assert "error:" in capsys.readouterr().err


def test_quantized_evaluation_changes_the_loss_by_the_quantization_only(run, capsys):
    """W4 evaluation: the report counts the Linear kernels; NVFP4 with ScaleSearch is a different
    model than f32 but close to it; the CLI takes the same options."""
    exact = evaluate_run(run)
    w4 = evaluate_run(run, quantize="nvfp4", scale_search=8)
    assert w4["quantize"] == "nvfp4" and w4["quantized_tensors"] > 0
    assert 4.0 < w4["bits_per_weight"] < 5.0
    assert w4["eval_loss"] != exact["eval_loss"]
    assert w4["eval_loss"] == pytest.approx(exact["eval_loss"], rel=0.05)
    assert main([str(run), "--quantize", "int4", "eval_batches=1"]) == 0
    assert json.loads(capsys.readouterr().out)["quantize"] == "int4"
