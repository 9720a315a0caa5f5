"""The commands the README promises: the demo and the GPU check (exercised here on CPU)."""

import json
import time

from jaxflash.bench import gpu_check
from jaxflash.demo import main as demo_main


def test_demo_runs_every_step(capsys):
    assert demo_main(["ops", "--quick"]) == 0
    out = capsys.readouterr().out
    assert "== environment and op registry" in out
    assert "demo: " in out and "failed" not in out.splitlines()[-1]


def test_gpu_check_refuses_a_machine_without_gpu(tmp_path, capsys):
    assert gpu_check.main(["--out", str(tmp_path)]) == 2
    assert "no GPU found" in capsys.readouterr().out
    assert json.loads((tmp_path / "gpu_check.json").read_text())["note"] == "no GPU found"


def test_gpu_check_script_runs_on_cpu_when_allowed(tmp_path, capsys):
    # One suite's checks (each in its own process; JAX starts in each, so not every suite here).
    rc = gpu_check.main(["--out", str(tmp_path), "--allow-cpu", "--no-timings", "--suites", "monarch"])
    out = capsys.readouterr().out
    data = json.loads((tmp_path / "gpu_check.json").read_text())
    # On CPU the compiled kernels cannot run: each check reports an error instead of passing silently.
    assert all(c["status"] in ("pass", "ERROR", "FAIL") for c in data["checks"])
    assert rc == (1 if any(c["status"] != "pass" for c in data["checks"]) else 0)
    assert out.rstrip().splitlines()[-1].endswith("failed")
    assert (tmp_path / "gpu_check.md").exists()


def test_gpu_check_order_covers_every_suite():
    from jaxflash.bench.suites import SUITE_MODULES

    assert sorted(gpu_check.GPU_ORDER) == sorted(SUITE_MODULES)


def test_gpu_check_kills_a_check_past_its_time():
    deadline = time.monotonic() + 120
    rows = gpu_check.run_checks_in_child("monarch", [0, 1], timeout=0.5, deadline=deadline)
    # JAX alone takes longer than 0.5 s to start: each check's fresh process is killed in turn.
    assert [rows[i]["status"] for i in (0, 1)] == ["TIMEOUT", "TIMEOUT"] and "killed" in rows[0]["detail"]


def test_gpu_check_runs_a_suites_checks_in_one_process():
    rows = gpu_check.run_checks_in_child("monarch", [0, 1, 2], timeout=120, deadline=time.monotonic() + 300)
    # On CPU the compiled kernels cannot run: each check reports its error, one after another.
    assert sorted(rows) == [0, 1, 2] and all(r["status"] == "ERROR" for r in rows.values())
    none = gpu_check.run_checks_in_child("monarch", [0], timeout=120, deadline=time.monotonic() - 1)
    assert none[0]["status"] == "not run: time budget spent"


def test_gpu_check_kills_a_suite_timing_past_its_time():
    out = gpu_check.run_timings_in_child("matmul", timeout=0.5)
    assert isinstance(out, str) and "killed" in out


def test_the_train_console_script_is_installed():
    from importlib.metadata import entry_points

    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "jaxflash-train"]
    assert script.value == "jaxflash.train.cli:main"
