"""The offload bench suite: its cases, columns and that every thunk it times gives the in-memory tokens."""

import numpy as np

from jaxflash.bench import offload as bench_offload
from jaxflash.bench import suites


def test_quick_cases_run_and_agree():
    assert suites.get_suite("offload") is bench_offload.SUITE
    cases = bench_offload.SUITE.cases(None, True)
    placements, predicted = cases[: len(bench_offload.PLACEMENTS)], cases[len(bench_offload.PLACEMENTS) :]
    assert [c.config["weights on"] for c in placements] == list(bench_offload.PLACEMENTS)
    assert [c.config["policy"] for c in predicted] == list(bench_offload.COST_MODEL_POLICIES)[:2]
    for case in predicted:  # the cost model's prediction beside an engine that runs
        assert float(case.config["predicted ms"]) > 0
        assert case.candidates[0].setup()().shape == (8, case.config["new tokens"])
    for case in placements:
        assert float(case.config["peak MB"]) <= float(case.config["budget MB"])
        assert float(case.config["budget MB"]) * 4 <= float(case.config["model MB"]) + 0.1
        outputs = [np.asarray(c.setup()()) for c in case.candidates]
        in_memory = outputs[0][:, bench_offload.PROMPT : bench_offload.PROMPT + case.config["new tokens"]]
        for out in outputs[1:]:
            np.testing.assert_array_equal(out, in_memory)
