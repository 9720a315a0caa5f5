"""The command line: presets listed, the resolved config printed, errors for unknown keys and bad
values with exit status 2 before anything runs."""

import json
import subprocess
import sys

from jaxflash.train import presets
from jaxflash.train.cli import main


def test_list_prints_every_preset_with_a_line(capsys):
    assert main(["--list"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == list(presets.PRESETS)
    assert all(len(line.split()) > 3 for line in lines)


def test_print_config_shows_the_overrides(capsys):
    assert main(["demo", "steps=7", "model.d_model=64", "--print-config"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["steps"] == 7 and data["model"]["d_model"] == 64 and data["model"]["family"] == "LMConfig"


def test_errors_name_the_key_and_exit_2(capsys):
    assert main(["demo", "stepz=3"]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'stepz'" in err and "checkpoint_every" in err
    assert main(["demo", "optim.lr=fast"]) == 2
    assert "optim.lr='fast'" in capsys.readouterr().err
    assert main(["nosuchpreset"]) == 2
    assert "unknown preset" in capsys.readouterr().err
    assert main([]) == 2


def test_the_module_runs_as_a_command():
    out = subprocess.run(
        [sys.executable, "-m", "jaxflash.train", "--list"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0 and "demo" in out.stdout
