"""bench retrieval: its cases are built as described, the thunks run at tiny sizes, and the two searches
agree (the timings themselves are the benchmark's business)."""

import numpy as np

from jaxflash.bench import retrieval
from jaxflash.bench.suites import get_suite


def test_cases_and_baselines():
    assert get_suite("retrieval") is retrieval.SUITE
    full = retrieval.SUITE.cases(None, False)
    encode = [c for c in full if c.config["task"] == "encode"]
    assert [c.config["length"] for c in encode] == list(retrieval.DEFAULT_LENGTHS)
    assert all(
        c.baseline == "attention BERT" and [x.name for x in c.candidates][1] == "M2-BERT" for c in encode
    )
    assert all(c.rate == ("token", retrieval.BATCH * c.config["length"]) for c in encode)
    search = [c for c in full if c.config["task"] == "search"]
    assert [c.config["length"] for c in search] == list(retrieval.SEARCH_SIZES)


def test_quick_encoders_run_and_searches_agree():
    out = retrieval.encode_thunk(True, 128, quick=True)()
    assert out.shape == (retrieval.BATCH, 32) and np.all(np.isfinite(out))
    assert retrieval.encode_thunk(False, 128, quick=True)().shape == (retrieval.BATCH, 32)
    _, ours = retrieval.search_thunk(325)()
    np.testing.assert_array_equal(ours, retrieval.numpy_search_thunk(325)())
