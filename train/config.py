"""The configuration of a training run: frozen dataclasses, ``key=value`` overrides, JSON round trip.

A run is one :class:`TrainConfig`: the model's own config (``jaxflash.models`` LMConfig, M2Config,
ParcaeConfig, or DiTConfig with its :class:`DiffusionConfig`), the data
(:class:`jaxflash.data.DataConfig`), the optimizer, the device mesh and the multi-host setup, plus the
run's lengths and paths. Every field can be overridden from the command line
by its dotted path (``model.d_model=64``, ``optim.lr=3e-4``); the value is parsed by the field's type
and the dataclass revalidates, so a bad value is refused with the key's name before anything runs.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from typing import Any, Union

from jaxflash.models import DIT_PRESETS, DiTConfig, LMConfig, M2Config, ParcaeConfig
from jaxflash.models import PRESETS as LM_PRESETS

from jaxflash.data import DataConfig
from jaxflash.utils import check_int, check_real

MODEL_CONFIGS = {cls.__name__: cls for cls in (LMConfig, M2Config, ParcaeConfig, DiTConfig)}
MODEL_PRESETS = {**LM_PRESETS, **DIT_PRESETS}
SCHEDULES = ("cosine", "linear", "constant")


@dataclasses.dataclass(frozen=True, kw_only=True)
class OptimConfig:
    """AdamW with the papers' parameter groups (``jaxflash.train.optim``), its schedule and clipping."""

    lr: float = 1e-3  # peak learning rate of the "default" group
    weight_decay: float = 0.1
    b1: float = 0.9
    b2: float = 0.98
    eps: float = 1e-8
    schedule: str = "cosine"  # "cosine" (warmup then cosine to min_lr_ratio), "linear" decay, "constant"
    warmup_steps: int = 0  # linear warmup from 0 to lr
    min_lr_ratio: float = 0.1  # the final lr as a fraction of the peak (safari lr_min = 0.1 lr)
    clip_norm: float | None = 1.0  # clip the global gradient norm to this; None = no clipping
    grad_accum: int = 1  # microbatches per step (the batch is split; the mean gradient is the same)
    ssm_lr: float = 1e-3  # H3/long-conv kernel parameters: lr min(ssm_lr, lr), no weight decay
    filter_lr: float | None = None  # Hyena filter FFN: None = lr
    filter_weight_decay: float = 0.0
    pos_emb_lr: float | None = None  # Hyena filter positional encoding: None = filter_lr

    def __post_init__(self):
        check_real("optim.lr", self.lr, above=0)
        for name in ("weight_decay", "filter_weight_decay"):
            check_real(f"optim.{name}", getattr(self, name), at_least=0)
        check_real("optim.b1", self.b1, at_least=0, below=1)
        check_real("optim.b2", self.b2, at_least=0, below=1)
        check_real("optim.eps", self.eps, above=0)
        if self.schedule not in SCHEDULES:
            raise ValueError(f"optim.schedule={self.schedule!r}; choose one of {SCHEDULES}")
        check_int("optim.warmup_steps", self.warmup_steps, minimum=0)
        check_real("optim.min_lr_ratio", self.min_lr_ratio, at_least=0, at_most=1)
        if self.clip_norm is not None:
            check_real("optim.clip_norm", self.clip_norm, above=0)
        check_int("optim.grad_accum", self.grad_accum)
        check_real("optim.ssm_lr", self.ssm_lr, above=0)
        for name in ("filter_lr", "pos_emb_lr"):
            if getattr(self, name) is not None:
                check_real(f"optim.{name}", getattr(self, name), above=0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class MaskedLMConfig:
    """BERT's masked-LM objective for the bidirectional M2-BERT (``M2Config(causal=False)``); ignored by
    the other models. Each token of a window is chosen with probability ``mask_rate`` (M2-BERT's recipe:
    0.3 in training, 0.15 in evaluation, ``shared/reference/models.md`` 5.2); a chosen token is replaced
    by ``[MASK]`` (the id ``model.vocab_size - 1``, which the data must not use) with probability 0.8, by a
    random id below it with 0.1, and kept with 0.1; the loss is the cross-entropy of the original token at
    the chosen positions only."""

    mask_rate: float = 0.3
    eval_mask_rate: float = 0.15

    def __post_init__(self):
        check_real("mlm.mask_rate", self.mask_rate, above=0, at_most=1)
        check_real("mlm.eval_mask_rate", self.eval_mask_rate, above=0, at_most=1)


@dataclasses.dataclass(frozen=True, kw_only=True)
class DiffusionConfig:
    """How a DiT is trained and sampled (``jaxflash.diffusion``); ignored for the language models.

    Training uses DiT's ``create_diffusion("")``: ``diffusion_steps`` steps of ``noise_schedule``,
    epsilon prediction, the learned variance when the model has ``learn_sigma`` (MSE + VB loss). Each
    evaluation also draws ``eval_samples`` class-conditional images from the EMA weights with
    ``sampler`` over ``sample_steps`` respaced steps, scores them (digits-FD, label accuracy,
    nearest-neighbour distance, beside the real held-out floor; :mod:`jaxflash.diffusion.evaluate`) and
    saves a grid of them as ``samples/step_<N>.png`` in the workdir.
    """

    diffusion_steps: int = 1000  # T of the training chain (DiT: 1000)
    noise_schedule: str = "linear"  # "linear" (DiT) or "squaredcos_cap_v2"
    ema_decay: float = 0.9999  # DiT's; its code suggests 0.999 for small experiments
    sampler: str = "ddim"  # "ddim" (eta 0) or "ddpm" (ancestral)
    sample_steps: int = 50  # respaced steps of the sampling chain
    cfg_scale: float = 1.0  # classifier-free guidance of the evaluation samples (1 = none)
    eval_samples: int = -1  # images per evaluation; -1 = the evaluator's floor size, 0 = no sampling
    grid_samples: int = 100  # of those, how many go in the PNG grid (10 per row)

    def __post_init__(self):
        check_int("diffusion.diffusion_steps", self.diffusion_steps, minimum=2)
        if self.noise_schedule not in ("linear", "squaredcos_cap_v2"):
            raise ValueError(
                f"diffusion.noise_schedule={self.noise_schedule!r}; choose 'linear' or 'squaredcos_cap_v2'"
            )
        check_real("diffusion.ema_decay", self.ema_decay, at_least=0, at_most=1)
        if self.sampler not in ("ddim", "ddpm"):
            raise ValueError(f"diffusion.sampler={self.sampler!r}; choose 'ddim' or 'ddpm'")
        check_int("diffusion.sample_steps", self.sample_steps)
        if self.sample_steps > self.diffusion_steps:
            raise ValueError(
                f"diffusion.sample_steps={self.sample_steps} exceeds diffusion_steps={self.diffusion_steps}"
            )
        check_real("diffusion.cfg_scale", self.cfg_scale, at_least=0)
        if self.eval_samples != -1:
            check_int("diffusion.eval_samples (or -1)", self.eval_samples, minimum=0)
        check_int("diffusion.grid_samples", self.grid_samples, minimum=0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class MeshConfig:
    """The device mesh ``jax.make_mesh((data, fsdp), ("data", "fsdp"))``: the batch is split over both
    axes, parameters and optimizer state over ``fsdp``. ``data=-1`` takes every device ``fsdp`` leaves."""

    data: int = -1
    fsdp: int = 1

    def __post_init__(self):
        if self.data != -1:
            check_int("mesh.data (or -1 for all remaining devices)", self.data)
        check_int("mesh.fsdp", self.fsdp)


@dataclasses.dataclass(frozen=True, kw_only=True)
class DistributedConfig:
    """Several processes (hosts) under ``jax.distributed.initialize``. Each field left None is taken
    from the environment (``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``) or,
    on Slurm, Kubernetes and Cloud TPU, detected by JAX itself."""

    enabled: bool | None = None  # None: initialize when a coordinator or a process count is given
    coordinator_address: str | None = None  # "host:port" of process 0
    num_processes: int | None = None
    process_id: int | None = None
    local_device_ids: str | None = None  # e.g. "0,1": the devices this process drives

    def __post_init__(self):
        if self.num_processes is not None:
            check_int("distributed.num_processes", self.num_processes)
        if self.process_id is not None:
            check_int("distributed.process_id", self.process_id, minimum=0)
            if self.num_processes is not None and self.process_id >= self.num_processes:
                raise ValueError(
                    f"distributed.process_id={self.process_id} must be < num_processes={self.num_processes}"
                )


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """One training run (module docstring). ``steps`` optimizer steps of ``batch_size`` sequences."""

    model: LMConfig | M2Config | ParcaeConfig | DiTConfig
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    diffusion: DiffusionConfig = dataclasses.field(default_factory=DiffusionConfig)
    mlm: MaskedLMConfig = dataclasses.field(default_factory=MaskedLMConfig)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    distributed: DistributedConfig = dataclasses.field(default_factory=DistributedConfig)
    workdir: str = "runs/default"  # config, metrics, TensorBoard events and checkpoints; reused to resume
    steps: int = 1000
    seed: int = 0  # parameters, dropout and Parcae's loop counts (the data has its own data.seed)
    batch_size: int = 32  # global, in sequences or images: split over the mesh and over processes
    checkpoint_every: int = 500  # and a final checkpoint at the last step
    keep_checkpoints: int = 3
    async_checkpoints: bool = True  # write checkpoints in the background while training goes on
    eval_every: int = 500  # and an evaluation at the last step; 0 = only at the end
    eval_batches: int = 16  # validation batches per evaluation (at most the whole split)
    log_every: int = 50  # metrics.jsonl, TensorBoard and the progress bar's numbers
    sample_tokens: int = 200  # generated at the end (causal LMs); 0 = no sample
    sample_prompt: str = ""  # byte-level corpora: text; token datasets: ignored (first eval sequence)
    sample_temperature: float = 0.8
    progress: bool = True  # the progress bar (only process 0 shows one)
    tensorboard: bool = True

    def __post_init__(self):
        if type(self.model).__name__ not in MODEL_CONFIGS:
            raise ValueError(f"model must be one of {sorted(MODEL_CONFIGS)}; got {type(self.model).__name__}")
        for name in (
            "steps",
            "batch_size",
            "checkpoint_every",
            "keep_checkpoints",
            "log_every",
            "eval_batches",
        ):
            check_int(name, getattr(self, name))
        for name in ("seed", "eval_every", "sample_tokens"):
            check_int(name, getattr(self, name), minimum=0)
        check_real("sample_temperature", self.sample_temperature, at_least=0)
        if not self.workdir:
            raise ValueError("workdir must be a directory path")
        if self.batch_size % self.optim.grad_accum:
            raise ValueError(
                f"batch_size={self.batch_size} must be divisible by optim.grad_accum={self.optim.grad_accum}"
            )


# --- overrides -----------------------------------------------------------------------------------------


def _fields(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def _union_members(tp: Any) -> tuple[Any, ...]:
    if typing.get_origin(tp) in (Union, types.UnionType):
        return typing.get_args(tp)
    return (tp,)


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise ValueError("expected true or false")


def _parse_scalar(tp: Any, text: str) -> Any:
    if tp is bool:
        return _parse_bool(text)
    if tp is int:
        try:
            return int(text)
        except ValueError:
            number = float(text)  # "1e3" is an int too, when it is whole
            if not number.is_integer():
                raise ValueError("expected an integer") from None
            return int(number)
    if tp is float:
        return float(text)
    if tp is str:
        return text
    if typing.get_origin(tp) is tuple:
        (item, *_rest) = typing.get_args(tp)
        parts = [p for p in text.strip("()[] ").split(",") if p.strip()]
        return tuple(_parse_scalar(item, p.strip()) for p in parts)
    raise ValueError(f"cannot parse a value of type {tp}")


def _parse(tp: Any, text: str) -> Any:
    members = _union_members(tp)
    if type(None) in members and text.strip().lower() in ("none", "null"):
        return None
    errors = []
    for member in (m for m in members if m is not type(None)):
        try:
            return _parse_scalar(member, text)
        except ValueError as e:
            errors.append(str(e))
    raise ValueError("; ".join(errors) or f"expected one of {members}")


def _describe(tp: Any) -> str:
    return " | ".join(getattr(m, "__name__", str(m)).replace("NoneType", "None") for m in _union_members(tp))


def _set(config: Any, path: list[str], text: str, full_key: str) -> Any:
    name, rest = path[0], path[1:]
    fields = _fields(type(config))
    if name not in fields:
        raise KeyError(
            f"unknown key {full_key!r}: {type(config).__name__} has no field {name!r}; accepted: "
            f"{', '.join(sorted(fields))}"
        )
    tp = fields[name]
    current = getattr(config, name)
    if dataclasses.is_dataclass(current):
        if rest:
            return dataclasses.replace(config, **{name: _set(current, rest, text, full_key)})
        if name == "model":  # model=<a jaxflash.models preset>
            if text not in MODEL_PRESETS:
                raise ValueError(
                    f"model={text!r} is not a model preset; accepted: {', '.join(MODEL_PRESETS)}"
                )
            return dataclasses.replace(config, model=MODEL_PRESETS[text]())
        raise KeyError(
            f"{full_key!r} is a section; set one of its fields: "
            f"{', '.join(f'{full_key}.{f}' for f in sorted(_fields(type(current))))}"
        )
    if rest:
        raise KeyError(f"unknown key {full_key!r}: {name!r} is a value ({_describe(tp)}), not a section")
    try:
        value = _parse(tp, text)
    except ValueError as e:
        raise ValueError(f"{full_key}={text!r}: expected {_describe(tp)} ({e})") from None
    return dataclasses.replace(config, **{name: value})


def apply_overrides(config: TrainConfig, overrides: list[str]) -> TrainConfig:
    """``config`` with each ``key=value`` applied in order (dotted keys reach nested fields).

    Raises ``KeyError`` for an unknown key (naming the accepted ones) and ``ValueError`` for a value that
    does not parse or that the config refuses (naming the key)."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r} is not key=value (e.g. steps=100, model.d_model=64)")
        try:
            config = _set(config, key.strip().split("."), text, key.strip())
        except (ValueError, TypeError) as e:
            message = str(e)
            if not message.startswith(key.strip()):
                message = f"{key.strip()}={text!r}: {message}"
            raise ValueError(message) from None
    return config


# --- JSON round trip ---------------------------------------------------------------------------------


def to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config; the model config carries its class name under ``"family"``."""
    out = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            value = to_dict(value)
            if f.name == "model":
                value = {"family": type(getattr(config, f.name)).__name__, **value}
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out


def _from_dict(cls: type, data: dict[str, Any]) -> Any:
    fields = _fields(cls)
    unknown = set(data) - set(fields)
    if unknown:
        raise KeyError(f"{cls.__name__} has no fields {sorted(unknown)}")
    kwargs = {}
    for name, value in data.items():
        members = _union_members(fields[name])
        if isinstance(value, dict):
            if name == "model":
                value = dict(value)
                family = value.pop("family")
                kwargs[name] = _from_dict(MODEL_CONFIGS[family], value)
                continue
            (sub,) = [m for m in members if dataclasses.is_dataclass(m)]
            kwargs[name] = _from_dict(sub, value)
        elif isinstance(value, list):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    return cls(**kwargs)


def from_dict(data: dict[str, Any]) -> TrainConfig:
    """The inverse of :func:`to_dict`."""
    return _from_dict(TrainConfig, data)


def dumps(config: TrainConfig) -> str:
    return json.dumps(to_dict(config), indent=2, sort_keys=True)


def loads(text: str) -> TrainConfig:
    return from_dict(json.loads(text))


def differences(a: TrainConfig, b: TrainConfig) -> list[str]:
    """Dotted keys whose values differ between two configs."""

    def flat(d: dict, prefix: str = "") -> dict[str, Any]:
        out = {}
        for k, v in d.items():
            if isinstance(v, dict):
                out.update(flat(v, f"{prefix}{k}."))
            else:
                out[f"{prefix}{k}"] = v
        return out

    fa, fb = flat(to_dict(a)), flat(to_dict(b))
    return sorted(k for k in set(fa) | set(fb) if fa.get(k) != fb.get(k))
