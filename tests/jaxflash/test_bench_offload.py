"""The offload bench suite: its cases, columns and that every thunk it times gives the in-memory tokens;
the policy cases carry both predictions and a token rate, and the searched policies fit the budget."""

import numpy as np

from jaxflash.bench import offload as bench_offload
from jaxflash.bench import suites
from jaxflash.inference.cost_model import FIT_GROUPS


def test_quick_cases_run_and_agree():
    assert suites.get_suite("offload") is bench_offload.SUITE
    cases = bench_offload.SUITE.cases(None, True)
    n_place, n_cost = len(bench_offload.PLACEMENTS), 2
    placements = cases[:n_place]
    predicted = cases[n_place : n_place + n_cost]
    searched = cases[n_place + n_cost :]
    assert [c.config["weights on"] for c in placements] == list(bench_offload.PLACEMENTS)
    assert [c.config["policy"] for c in predicted] == list(bench_offload.COST_MODEL_POLICIES)[:2]
    # The quick grid is its first shape and placement; then the two searches.
    assert [c.config["policy"] for c in searched] == [
        "grid: w host",
        "search (fitted constants)",
        "search (calibrated constants)",
    ]
    for case in predicted + searched:  # the cost model's predictions beside an engine that runs
        assert float(case.config["predicted ms (calibrated)"]) > 0
        assert float(case.config["predicted ms (fitted)"]) > 0
        gbs, nb = (int(v) for v in case.config["gbs x nb"].split("x"))
        unit, count = case.rate
        assert unit == "token" and count == gbs * nb * case.config["new tokens"]
        assert gbs * nb <= bench_offload.MAX_BLOCK
        assert case.candidates[0].setup()().shape == (gbs * nb, case.config["new tokens"])
    for case in placements:
        assert float(case.config["peak MB"]) <= float(case.config["budget MB"])
        assert float(case.config["budget MB"]) * 4 <= float(case.config["model MB"]) + 0.1
        outputs = [np.asarray(c.setup()()) for c in case.candidates]
        in_memory = outputs[0][:, bench_offload.PROMPT : bench_offload.PROMPT + case.config["new tokens"]]
        for out in outputs[1:]:
            np.testing.assert_array_equal(out, in_memory)
    fit = bench_offload.fitted_hardware(True, bench_offload.QUICK_SIZES[0])
    assert fit.hardware.call_overhead > 0 and set(fit.factors) == set(FIT_GROUPS)
