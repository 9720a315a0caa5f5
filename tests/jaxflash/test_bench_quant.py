"""The quant bench suite: its cases, error columns and thunks (small samples), and the trained-model
samples read from a run."""

import numpy as np
import pytest
from jaxflash.train import apply_overrides, presets, train

from jaxflash.bench import quant as bench_quant
from jaxflash.bench import suites


def test_quick_cases_report_errors_and_time_both_quantizers(monkeypatch, tmp_path):
    monkeypatch.setenv("JAXFLASH_QUANT_RUN", str(tmp_path / "no-run"))
    assert suites.get_suite("quant") is bench_quant.SUITE
    cases = bench_quant.SUITE.cases([4096], True)
    assert [(c.config["sample"], c.config["format"]) for c in cases] == [
        (s, f) for s in bench_quant.QUICK_SAMPLES for f, _ in bench_quant.SETTINGS
    ]
    for case in cases:
        assert float(case.config["mse search"]) <= float(case.config["mse max"])
        assert case.config["values"] == "4096"
        for candidate in case.candidates:
            assert candidate.setup()().dtype == np.uint8
    # Without a run, the trained-model samples are left out, not failed.
    assert {c.config["sample"] for c in bench_quant.SUITE.cases([4096], False)} == {
        "normal",
        "student-t3",
        "laplace",
        "outlier",
    }


def test_weights_and_activations_of_a_run(monkeypatch, tmp_path):
    overrides = [
        "steps=1",
        "model.d_model=32",
        "model.d_inner=64",
        "model.n_layers=1",
        "batch_size=2",
        "eval_every=1",
        "eval_batches=1",
        "checkpoint_every=1",
        "sample_tokens=0",
        "progress=false",
        "mesh.data=1",
        f"workdir={tmp_path}",
    ]
    train(apply_overrides(presets.get("lm_attention"), overrides), echo=None)
    monkeypatch.setenv("JAXFLASH_QUANT_RUN", str(tmp_path))
    weights = bench_quant.sample("weights")
    activations = bench_quant.sample("activations")
    assert weights.shape[1] == 32 and weights.shape[0] == (4 * 32 * 32 + 2 * 32 * 64) // 32
    assert activations.shape[1] == 32
    assert np.all(np.isfinite(activations))


@pytest.mark.parametrize("name", ["normal", "outlier"])
def test_samples_are_seeded(name):
    np.testing.assert_array_equal(bench_quant.sample(name, 512), bench_quant.sample(name, 512))


def test_the_gpu_checks_body_passes_in_interpret_mode():
    """What ``make gpu-check`` runs compiled, here through the interpreter at a small size."""
    assert len(bench_quant.GPU_CHECKS) == 6
    for fmt in ("int4", "mxfp4", "nvfp4"):
        result = bench_quant.check_quantized_matmul(fmt, 16, 256, 64, "float32", "pallas_interpret")
        assert result["max_abs_err"] <= result["atol"]
