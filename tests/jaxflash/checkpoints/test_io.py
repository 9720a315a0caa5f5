"""Reading and writing state dicts: safetensors without torch, torch formats with it, wrappers unwrapped."""

import sys

import numpy as np
import pytest

from jaxflash.checkpoints import load_state_dict, save_state_dict


def _state():
    rng = np.random.default_rng(0)
    return {
        "a.weight": rng.standard_normal((3, 4)).astype(np.float32),
        "b.ids": np.arange(5, dtype=np.int64)[None],
    }


def test_safetensors_round_trip(tmp_path):
    sd = _state()
    path = tmp_path / "w.safetensors"
    save_state_dict(sd, path, metadata={"format": "pt"})
    back = load_state_dict(path)
    assert sorted(back) == sorted(sd)
    for k in sd:
        np.testing.assert_array_equal(back[k], sd[k])
        assert back[k].dtype == sd[k].dtype


def test_unknown_suffix_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown checkpoint format"):
        load_state_dict(tmp_path / "w.npz")


def test_torch_formats_without_torch_name_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now fails, installed or not
    with pytest.raises(ImportError, match=r"pip install jaxflash\[torch\]"):
        load_state_dict(tmp_path / "w.bin")
    with pytest.raises(ImportError, match=r"pip install jaxflash\[torch\]"):
        save_state_dict(_state(), tmp_path / "w.pt")


def test_torch_formats_and_wrappers(tmp_path):
    torch = pytest.importorskip("torch", reason="torch is an optional extra (jaxflash[torch])")
    sd = _state()
    save_state_dict(sd, tmp_path / "w.bin")
    back = load_state_dict(tmp_path / "w.bin")
    for k in sd:
        np.testing.assert_array_equal(back[k], sd[k])
    tensors = {k: torch.from_numpy(v) for k, v in sd.items()}
    half = {"a.weight": torch.from_numpy(sd["a.weight"]).to(torch.bfloat16)}
    wrappers = {
        "lightning.ckpt": {
            "state_dict": {f"model.{k}": v for k, v in tensors.items()},
            "pytorch-lightning_version": "1.8",
        },
        "composer.pt": {"state": {"model": {f"model.{k}": v for k, v in tensors.items()}}},
        "ddp.pt": {f"module.{k}": v for k, v in tensors.items()},
    }
    for name, obj in wrappers.items():
        torch.save(obj, tmp_path / name)
        back = load_state_dict(tmp_path / name)
        assert sorted(back) == sorted(sd), name
        np.testing.assert_array_equal(back["a.weight"], sd["a.weight"])
    torch.save(half, tmp_path / "half.pt")
    back = load_state_dict(tmp_path / "half.pt")
    assert back["a.weight"].dtype == np.float32
    np.testing.assert_allclose(back["a.weight"], sd["a.weight"], rtol=1e-2, atol=1e-2)
