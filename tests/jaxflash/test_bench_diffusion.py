"""bench diffusion: its cases are built as described and its GPU checks pass on the CPU in interpret mode
(the same functions make gpu-check runs compiled); the timings themselves are the benchmark's business."""

import pytest

from jaxflash.bench import diffusion


def test_cases_name_every_candidate_and_the_baseline():
    (quick,) = diffusion.SUITE.cases(None, True)
    assert [c.name for c in quick.candidates] == ["dense", "grafted Hyena-Y 50%", "chipmunk (attn + mlp)"]
    full = diffusion.SUITE.cases(None, False)
    assert [c.config["batch"] for c in full] == list(diffusion.DEFAULT_BATCHES)
    names = [c.name for c in full[0].candidates]
    assert names[0] == "dense" and len(names) == 1 + len(diffusion.GRAFTED) + len(diffusion.CHIPMUNK)
    assert all(c.baseline == "dense" and c.rate == ("step", diffusion.STEPS) for c in full)


def test_a_sampling_thunk_runs():
    out = diffusion.sample_thunk("hyena_y", 2, {"attn_top_keys": 0.5})()
    assert out.shape == (2, 16, 16, 1)


@pytest.mark.parametrize("causal", [True, False])
def test_linear_attention_gpu_check_in_interpret_mode(causal):
    result = diffusion.check_linear_attention(causal, "float32", 40, implementation="pallas_interpret")
    assert result["max_rel_err"] <= result["rtol"]


def test_column_sparse_attention_gpu_check_in_interpret_mode():
    result = diffusion.check_column_sparse_attention("float32", 200, implementation="pallas_interpret")
    assert result["max_abs_err"] <= result["atol"]


def test_gpu_checks_are_listed():
    names = [c.name for c in diffusion.GPU_CHECKS]
    assert sum("linear_attention" in n for n in names) == 3 and sum("column_sparse" in n for n in names) == 2
