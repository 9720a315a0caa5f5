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
    data = set(config["package-data"])  # data folders, listed as packages so that they ship
    found = set()
    for dotted, folder in config["package-dir"].items():
        base = ROOT / folder
        for init in base.rglob("__init__.py"):
            rel = init.parent.relative_to(base)
            found.add(".".join([dotted, *rel.parts]) if rel.parts else dotted)
    assert found <= listed, f"add to [tool.setuptools] packages in pyproject.toml: {sorted(found - listed)}"
    assert listed <= found | data, f"listed but missing: {sorted(listed - found - data)}"
    for name in data:
        folder = ROOT / "jaxflash" / pathlib.Path(*name.split(".")[1:])
        assert name in listed and folder.is_dir() and not (folder / "__init__.py").exists(), name


def test_the_wheel_ships_the_data_without_build_warnings(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "BuildBackendWarning" not in proc.stderr + proc.stdout
    import zipfile

    (wheel,) = tmp_path.glob("jaxflash-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for file in ("L_train.npy", "LICENSE", "README.md"):
        assert f"jaxflash/ws/data/youtube_spam/{file}" in names
    assert "jaxflash/models/lm.py" in names and "jaxflash/pallas_kernels/flash_attention.py" in names


def test_import_jaxflash_is_light(tmp_path):
    proc = _run("import sys, jaxflash; print('flax' in sys.modules, 'optax' in sys.modules)", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "False"]
