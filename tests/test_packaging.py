"""The installed distribution: one `jaxflash` namespace, no top-level `models` or `train`."""

import pathlib
import subprocess
import sys
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run(code: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_namespaces_import_from_outside_the_checkout(tmp_path):
    proc = _run(
        "import jaxflash, jaxflash.pallas_kernels, jaxflash.models, jaxflash.train, jaxflash.ws;"
        "print(jaxflash.models.__name__)",
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "jaxflash.models"


def test_no_top_level_packages_leak(tmp_path):
    for name in ("models", "train", "pallas_kernels"):
        proc = _run(f"import {name}", tmp_path)
        assert proc.returncode != 0 and "ModuleNotFoundError" in proc.stderr, name


def test_every_package_folder_is_listed_in_pyproject():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = set()
    for dotted, folder in config["package-dir"].items():
        base = ROOT / folder
        for init in base.rglob("__init__.py"):
            rel = init.parent.relative_to(base)
            found.add(".".join([dotted, *rel.parts]) if rel.parts else dotted)
    assert found <= listed, f"add to [tool.setuptools] packages in pyproject.toml: {sorted(found - listed)}"
    assert listed <= found, f"listed but missing: {sorted(listed - found)}"


def test_import_jaxflash_is_light(tmp_path):
    proc = _run("import sys, jaxflash; print('flax' in sys.modules, 'optax' in sys.modules)", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "False"]
