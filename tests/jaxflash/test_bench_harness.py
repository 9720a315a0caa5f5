"""The benchmark harness: same-run ratios, skipped peers, errors, tables, JSON, --record, memory."""

import json
import sys
import types

import numpy as np
import pytest

from jaxflash.bench import suites
from jaxflash.bench.__main__ import main as bench_main
from jaxflash.bench.harness import Candidate, Case, Suite, markdown_table, measure_peak_memory, run_suite


def _busy(n):
    def setup():
        a = np.ones((n, n))
        return lambda: (a @ a)[:8, :8]

    return setup


def _cases(sizes, quick):
    def broken():
        raise RuntimeError("kernel exploded")

    def refusing():
        raise NotImplementedError("needs a GPU\nsecond line")

    return [
        Case(
            config={"n": 64},
            candidates=(
                Candidate("slow", _busy(160)),
                Candidate("fast", _busy(8)),
                Candidate("peer", _busy(8), requires=("surely_not_installed_pkg",), peer=True),
                Candidate("broken", broken),
                Candidate("refusing", refusing),
            ),
            baseline="slow",
            reference=lambda: np.full((8, 8), 8.0),
        )
    ]


FAKE = Suite(name="_fake", description="a suite the tests register", cases=_cases)


@pytest.fixture
def fake_suite(monkeypatch):
    module = types.ModuleType("_jaxflash_fake_suite")
    module.SUITE = FAKE
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(suites.SUITE_MODULES, "_fake", module.__name__)
    return FAKE


def test_run_suite_ratios_and_statuses(fake_suite):
    results = {
        r.candidate: r for r in run_suite(fake_suite, warmup=1, repeats=3, memory=False, log=lambda s: None)
    }
    assert results["slow"].speedup == pytest.approx(1.0)
    assert results["fast"].speedup > 1.0
    assert results["fast"].runs == 3 and results["fast"].median_s > 0
    assert results["fast"].max_error == pytest.approx(0.0)
    assert results["slow"].max_error == pytest.approx(160.0 - 8.0)
    assert results["peer"].status.startswith("skipped: surely_not_installed_pkg not installed")
    assert results["broken"].status == "error: RuntimeError: kernel exploded"
    assert results["refusing"].status == "skipped: needs a GPU"
    table = markdown_table(list(results.values()))
    assert "| 64 | peer |" in table and "skipped: surely_not_installed_pkg" in table
    assert table.splitlines()[0].startswith("| n | candidate | median ms | speedup vs baseline |")


def test_cli_writes_json_and_records(fake_suite, tmp_path, capsys):
    out = tmp_path / "r.json"
    bench_file = tmp_path / "BENCHMARKS.md"
    bench_file.write_text("# Benchmarks\n")
    rc = bench_main(
        [
            "_fake",
            "--no-memory",
            "--repeats",
            "2",
            "--json",
            str(out),
            "--record",
            "--benchmarks-file",
            str(bench_file),
        ]
    )
    assert rc == 1  # the broken candidate is an error, and errors fail the run
    data = json.loads(out.read_text())
    assert data["suite"] == "_fake"
    assert data["machine"]["jax"] and data["machine"]["backend"] == "cpu"
    assert "python -m jaxflash.bench _fake" in data["command"]
    assert {r["candidate"] for r in data["results"]} == {"slow", "fast", "peer", "broken", "refusing"}
    recorded = bench_file.read_text()
    assert recorded.startswith("# Benchmarks\n")
    assert "## _fake: a suite the tests register" in recorded and "CPU timings" in recorded
    assert "| 64 | fast |" in capsys.readouterr().out


def test_cli_runs_several_suites_in_one_run(fake_suite, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    bench_file = tmp_path / "BENCHMARKS.md"
    rc = bench_main(
        ["_fake", "_fake", "--no-memory", "--repeats", "1", "--record", "--benchmarks-file", str(bench_file)]
    )
    assert rc == 1
    assert bench_file.read_text().count("## _fake: a suite the tests register") == 2
    assert len(list((tmp_path / "bench-results").glob("_fake-*.json"))) >= 1
    with pytest.raises(SystemExit):
        bench_main(["_fake", "_fake", "--json", str(tmp_path / "one.json")])
    assert "--json names one file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench_main(["_fake", "--sizes", "attention=1024"])
    assert "names suite 'attention'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench_main(["_fake", "--sizes", "1e3"])
    assert "--sizes takes integers" in capsys.readouterr().err


def test_help_lists_the_suites(capsys):
    with pytest.raises(SystemExit) as info:
        bench_main(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for name in suites.SUITE_MODULES:
        assert name in text


def test_unknown_suite():
    with pytest.raises(ValueError, match="unknown benchmark suite 'nope'"):
        suites.get_suite("nope")


def test_every_registered_suite_is_well_formed():
    for name in suites.SUITE_MODULES:
        suite = suites.get_suite(name)
        cases = suite.cases(None, True)
        assert cases, name
        for case in cases:
            names = [c.name for c in case.candidates]
            assert case.baseline in names, (name, case.config)
            assert len(set(names)) == len(names), (name, case.config)


def test_peak_memory_is_measured_in_a_subprocess():
    # A 1024 x 1024 float32 matmul allocates a 4 MiB output; the child must see most of it (the
    # kernel may reuse a few pages it already holds) and not much more.
    peak = measure_peak_memory("matmul", 0, "numpy.matmul", [1024], False)
    assert peak is not None and 3.0 <= peak < 200
