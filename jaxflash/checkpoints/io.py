"""Reading and writing state dicts as ``{key: numpy array}``: safetensors without torch, torch's own
formats (``.bin`` / ``.pt`` / ``.ckpt``) when torch is installed (``pip install jaxflash[torch]``).

Checkpoint wrappers are unwrapped on reading: a PyTorch Lightning checkpoint (safari) holds the
weights under ``state_dict`` with a ``model.`` prefix; a MosaicML Composer checkpoint (m2) under
``state.model``, also with ``model.``; a DistributedDataParallel save prefixes ``module.``. The
prefixes are stripped.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

SAFETENSORS = (".safetensors",)
TORCH_FORMATS = (".bin", ".pt", ".pth", ".ckpt")


def _import_torch(what: str) -> Any:
    try:
        import torch
    except ImportError as e:
        raise ImportError(
            f"{what} needs torch, which is not installed: pip install jaxflash[torch] "
            f"(or convert the file to .safetensors elsewhere)"
        ) from e
    return torch


def _suffix(path: str | os.PathLike) -> str:
    name = os.fspath(path).lower()
    for suffix in SAFETENSORS + TORCH_FORMATS:
        if name.endswith(suffix):
            return suffix
    raise ValueError(
        f"{os.fspath(path)!r}: unknown checkpoint format; use one of {SAFETENSORS + TORCH_FORMATS}"
    )


def _strip(state: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix) :]: v for k, v in state.items()}
    return dict(state)


def unwrap(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The weights inside a Lightning or Composer checkpoint (or the dict itself), prefixes stripped.

    Lightning: ``{"state_dict": {"model.<key>": ...}, "pytorch-lightning_version": ...}`` (keys outside
    ``model.``, e.g. a task's metric buffers, are dropped). Composer: ``{"state": {"model": {...}}}``.
    """
    if "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        inner = obj["state_dict"]
        if any(k.startswith("model.") for k in inner):
            return {k[len("model.") :]: v for k, v in inner.items() if k.startswith("model.")}
        return dict(inner)
    if isinstance(obj.get("state"), Mapping) and isinstance(obj["state"].get("model"), Mapping):
        return _strip(_strip(obj["state"]["model"], "model."), "module.")
    return _strip(_strip(obj, "module."), "model.")


def _to_numpy(value: Any, torch: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        if value.is_floating_point():
            value = value.float()  # bf16 / fp16 have no exact numpy twin everywhere; f32 holds both
        return value.numpy()
    return np.asarray(value)


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """``{key: array}`` from a ``.safetensors`` file, or (with torch) a ``.bin`` / ``.pt`` / ``.ckpt``.

    torch files are read with ``torch.load(weights_only=True, map_location="cpu")``; floating tensors
    become float32 arrays. Lightning / Composer / DDP wrappers are unwrapped (module docstring).
    """
    suffix = _suffix(path)
    if suffix in SAFETENSORS:
        from safetensors.numpy import load_file

        return unwrap(load_file(os.fspath(path)))
    torch = _import_torch(f"reading {suffix} files")
    obj = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    if not isinstance(obj, Mapping):
        raise ValueError(f"{os.fspath(path)!r} holds a {type(obj).__name__}, not a state dict")
    return {k: _to_numpy(v, torch) for k, v in unwrap(obj).items()}


def save_state_dict(
    state_dict: Mapping[str, np.ndarray],
    path: str | os.PathLike,
    *,
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write ``{key: array}`` as ``.safetensors`` (``metadata``: string pairs stored in the header), or
    with torch as a ``.bin`` / ``.pt`` (a plain ``torch.save`` of the tensors)."""
    suffix = _suffix(path)
    arrays = {k: np.ascontiguousarray(np.asarray(v)) for k, v in state_dict.items()}
    if suffix in SAFETENSORS:
        from safetensors.numpy import save_file

        save_file(arrays, os.fspath(path), metadata=dict(metadata) if metadata else None)
        return
    if metadata:
        raise ValueError("metadata= is stored by the safetensors format only")
    torch = _import_torch(f"writing {suffix} files")
    torch.save({k: torch.from_numpy(v.copy()) for k, v in arrays.items()}, os.fspath(path))
