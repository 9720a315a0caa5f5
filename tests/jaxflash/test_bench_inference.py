"""The inference bench suite: its cases and that every thunk it times runs (tiny sizes)."""

import jax

from jaxflash.bench import inference as bench_inference
from jaxflash.bench import suites


def test_suite_is_registered_with_its_cases():
    assert suites.get_suite("inference") is bench_inference.SUITE
    cases = bench_inference.SUITE.cases([128], False)
    decode = [c for c in cases if c.config["measure"] == "decode"]
    assert [c.config["batch"] for c in decode] == list(bench_inference.DECODE_BATCHES)
    assert {c.baseline for c in decode} == {"hyena (conv cache)"}
    assert len(decode[0].candidates) == 3
    assert any(c.config["measure"] == "hydragen" for c in cases)
    assert cases[-1].config["measure"] == "hydragen generate"
    quick = bench_inference.SUITE.cases(None, True)
    assert {c.config["measure"] for c in quick} == {"decode", "hydragen"}


def test_the_thunks_run():
    for kind in ("attention", "hyena", "distilled"):
        out = bench_inference.decode_thunk(kind, 32, 2)()
        assert out.shape == (2, 256)
    shared = bench_inference.hydragen_thunk(True, 64, 4)()
    alone = bench_inference.hydragen_thunk(False, 64, 4)()
    assert shared.shape == (4, 1, 8, 64) and alone.shape == (4, 8, 64)
    # The same attention: one shared prefix copy against per-sequence copies.
    assert float(jax.numpy.max(jax.numpy.abs(shared[:, 0] - alone))) < 1e-4
