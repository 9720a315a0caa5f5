"""The train bench suite: its cases, the jitted train step it times, and the loop-overhead measurement."""

import math

import pytest

from jaxflash.bench import suites
from jaxflash.bench import train as bench_train

TINY = ["model.d_model=16", "model.d_inner=32"]
TINY_LM = [*TINY, "model.n_layers=1"]


def test_suite_is_registered():
    suite = suites.get_suite("train")
    assert suite is bench_train.SUITE
    assert "train()" in suite.description


def test_cases_hold_every_family_and_the_measured_overhead(monkeypatch):
    calls = []

    def fake_overhead(config, **kwargs):
        calls.append((config.model.max_seq_len, config.batch_size))
        return bench_train.LoopOverhead(
            steps=5,
            bare_s=0.01,
            loop_s=0.0102,
            overhead=0.02,
            pair_overhead=0.03,
            loop_tokens_per_s=1e5,
            pairs=((0.01, 0.0103),),
        )

    monkeypatch.setattr(bench_train, "loop_overhead", fake_overhead)
    monkeypatch.setenv(bench_train.OVERHEAD_ENV, "")
    cases = bench_train.SUITE.cases([64, 96], False)
    step_cases = [c for c in cases if c.config["measure"] == "train step"]
    assert [c.config["seq"] for c in step_cases] == [64, 96]
    for case in step_cases:
        assert [c.name for c in case.candidates] == list(bench_train.FAMILIES)
        assert (
            case.baseline == "attention"
            and case.config["tokens"] == case.config["seq"] * case.config["batch"]
        )
    overhead = [c for c in cases if c.config["measure"] == "loop overhead"]
    assert [(c.config["seq"], c.config["batch"]) for c in overhead] == [
        (seq, batch) for _, seq, batch in bench_train.OVERHEAD_SIZES
    ]
    assert overhead[0].config["overhead"] == "+2.0%" and overhead[0].config["steps"] == 5
    assert overhead[0].config["overhead (median pair)"] == "+3.0%"
    assert overhead[0].baseline in [c.name for c in overhead[0].candidates]
    # The memory subprocesses build the cases again: they inherit the numbers instead of measuring.
    monkeypatch.setattr(bench_train, "loop_overhead", lambda *a, **k: pytest.fail("measured twice"))
    assert bench_train.SUITE.cases([64], False)[-1].config == overhead[-1].config
    assert len(calls) == len(bench_train.OVERHEAD_SIZES)


@pytest.mark.parametrize("family", ["long_conv", pytest.param("parcae", marks=pytest.mark.slow)])
def test_train_step_thunk_trains(family):
    tiny = TINY if family == "parcae" else TINY_LM  # Parcae counts its blocks by kind
    step = bench_train.train_step_thunk(bench_train.FAMILIES[family], 32, 2, tiny)
    for _ in range(3):  # the state is donated and carried from call to call
        metrics = step()
        assert math.isfinite(float(metrics["loss"])) and float(metrics["tokens"]) == 2 * 32
    assert float(metrics["update_norm"]) > 0  # past the first step of warmup (lr 0)


def test_train_step_thunk_skips_a_size_the_data_refuses():
    with pytest.raises(NotImplementedError, match="lm_hyena refuses seq 10000000.*shorter than one window"):
        bench_train.train_step_thunk("lm_hyena", 10_000_000)


def test_loop_overhead_times_steady_state_windows():
    config = bench_train.bench_config("lm_long_conv", 32, 2, TINY_LM)
    result = bench_train.loop_overhead(config, steps=3, windows=2, repeats=1)
    assert result.steps == 3 and len(result.pairs) == 1
    assert 0 < result.bare_s <= result.pairs[0][0] and 0 < result.loop_s <= result.pairs[0][1]
    assert result.overhead == pytest.approx(result.loop_s / result.bare_s - 1)
    assert result.pair_overhead == pytest.approx(result.pairs[0][1] / result.pairs[0][0] - 1)
    assert result.loop_tokens_per_s == pytest.approx(2 * 32 / result.loop_s, rel=1e-6)
