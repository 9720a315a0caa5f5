"""The machinery every converter shares: a checkpoint layout as a list of rules, each tying original
keys to our parameter paths with the two transforms between them, and the report of a conversion.

A layout is built from a model: the rules say which original keys hold which of its parameters, so the
same rules export the model (``export``) and fill it from a checkpoint (``load_into``). Loading checks
every key's shape against the export of the model being filled, so a config that does not match the
checkpoint fails on the first key whose shape differs, naming the key and both shapes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

Arrays = dict[str, np.ndarray]


@dataclasses.dataclass
class ConversionReport:
    """What a conversion did with every key of the original and every parameter of ours.

    ``used``: original keys that filled a parameter. ``ignored``: original keys left unused, each with
    the reason (buffers the model recomputes, checked against it first; tied copies of a parameter).
    ``inferred``: config fields read from the shapes. ``assumed``: config fields the weights cannot
    reveal, with the value taken (from the given config, the original options, or the default).
    ``not_in_checkpoint``: our parameters the checkpoint has no counterpart for (e.g. the pooler of a
    masked-LM checkpoint), left at their initial values, each with the reason. ``notes``: anything else
    the conversion changed (a legacy key layout remapped, B folded into C, options that only affect
    training).
    """

    family: str
    config: Any = None
    used: list[str] = dataclasses.field(default_factory=list)
    ignored: dict[str, str] = dataclasses.field(default_factory=dict)
    inferred: dict[str, Any] = dataclasses.field(default_factory=dict)
    assumed: dict[str, Any] = dataclasses.field(default_factory=dict)
    not_in_checkpoint: dict[str, str] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)

    def summary(self) -> str:
        lines = [
            f"{self.family}: {len(self.used)} keys used, {len(self.ignored)} ignored",
            f"inferred: {self.inferred}",
            f"assumed (not in the weights): {self.assumed}",
        ]
        if self.not_in_checkpoint:
            lines.append(f"kept at init (not in the checkpoint): {sorted(self.not_in_checkpoint)}")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class Rule:
    """Original ``keys`` <-> our parameter ``paths``. ``load(*originals) -> ours`` and
    ``export(*ours) -> originals``, each a tuple in the order of the names."""

    keys: tuple[str, ...]
    paths: tuple[str, ...]
    load: Callable[..., tuple[np.ndarray, ...]]
    export: Callable[..., tuple[np.ndarray, ...]]


@dataclasses.dataclass(frozen=True)
class Tied:
    """One parameter of ours stored under several original names (torch ties one tensor to several
    modules: the LM head and the embedding, one Sin module at several places of a Sequential). Any
    non-empty subset may be present (safetensors keeps one copy of a shared tensor); those present must
    be equal. Export writes every name."""

    keys: tuple[str, ...]
    path: str
    load: Callable[[np.ndarray], np.ndarray]
    export: Callable[[np.ndarray], np.ndarray]


@dataclasses.dataclass(frozen=True)
class Buffer:
    """An original buffer our model recomputes: never loaded. When present it must equal ``expected``
    (what our model computes), else the checkpoint was made with settings we would silently ignore.
    ``check=False`` for a buffer the original does not use either (e.g. decays with modulation off)."""

    key: str
    expected: np.ndarray
    reason: str
    hint: str = ""
    check: bool = True
    rtol: float = 1e-5
    atol: float = 1e-6


Entry = Rule | Tied | Buffer


def linear(key: str, path: str, *, bias: bool = True) -> list[Rule]:
    """torch ``Linear`` (weight [out, in]) <-> ``nnx.Linear`` (kernel [in, out])."""
    rules = [same(f"{key}.weight", f"{path}.kernel", load=np.transpose, export=np.transpose)]
    if bias:
        rules.append(same(f"{key}.bias", f"{path}.bias"))
    return rules


def layer_norm(key: str, path: str) -> list[Rule]:
    """torch ``LayerNorm`` (weight, bias) <-> ``nnx.LayerNorm`` (scale, bias)."""
    return [same(f"{key}.weight", f"{path}.scale"), same(f"{key}.bias", f"{path}.bias")]


def depthwise_conv(key: str, path: str) -> list[Rule]:
    """torch depthwise ``Conv1d`` (weight [C, 1, taps]) <-> our ``ShortConv`` (weight [taps, C])."""
    return [
        same(
            f"{key}.weight", f"{path}.weight", load=lambda w: w[:, 0, :].T, export=lambda w: w.T[:, None, :]
        ),
        same(f"{key}.bias", f"{path}.bias"),
    ]


def same(
    key: str,
    path: str,
    *,
    load: Callable[[np.ndarray], np.ndarray] = lambda x: x,
    export: Callable[[np.ndarray], np.ndarray] = lambda x: x,
) -> Rule:
    """A one-to-one rule."""
    return Rule((key,), (path,), lambda x: (load(x),), lambda x: (export(x),))


def params_of(model: nnx.Module) -> Arrays:
    """Every parameter of ``model`` as a float32 numpy array, keyed by its dotted path."""
    return {
        ".".join(map(str, path)): np.asarray(node[...], np.float32)
        for path, node in nnx.iter_graph(model)
        if isinstance(node, nnx.Param)
    }


def param_paths(model: nnx.Module) -> list[str]:
    return [".".join(map(str, path)) for path, node in nnx.iter_graph(model) if isinstance(node, nnx.Param)]


def set_params(model: nnx.Module, values: Mapping[str, np.ndarray]) -> None:
    """Write ``values`` (dotted path -> array of the parameter's shape) into ``model``."""
    remaining = dict(values)
    for path, node in nnx.iter_graph(model):
        name = ".".join(map(str, path))
        if isinstance(node, nnx.Param) and name in remaining:
            value = np.asarray(remaining.pop(name), np.float32)
            if value.shape != node.shape:
                raise AssertionError(f"{name}: converted shape {value.shape} != parameter shape {node.shape}")
            node.set_value(jnp.asarray(value, node[...].dtype))
    if remaining:
        raise AssertionError(f"no such parameters in the model: {sorted(remaining)}")


def export(model: nnx.Module, layout: Iterable[Entry]) -> Arrays:
    """The original state dict of ``model``: every key of the layout, buffers included."""
    ours = params_of(model)
    out: Arrays = {}
    for entry in layout:
        if isinstance(entry, Rule):
            values = entry.export(*(ours[p] for p in entry.paths))
            out.update(zip(entry.keys, values, strict=True))
        elif isinstance(entry, Tied):
            value = entry.export(ours[entry.path])
            out.update((k, value) for k in entry.keys)
        else:
            out[entry.key] = entry.expected
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def load_into(
    model: nnx.Module,
    layout: list[Entry],
    state_dict: Mapping[str, np.ndarray],
    report: ConversionReport,
    *,
    absent: Mapping[str, str] | None = None,
) -> None:
    """Fill ``model`` from ``state_dict`` by ``layout``; every key must be used or ignored with a
    reason, and every parameter filled except those ``absent`` names (path prefix -> reason).

    Raises ``ValueError`` for a missing key, a shape that differs from what the model's config gives
    (naming the key and both shapes), tied copies that differ, a buffer that differs from what the
    model computes, or keys the layout does not know.
    """
    expected = export(model, layout)
    wanted = {k for e in layout for k in (e.keys if not isinstance(e, Buffer) else (e.key,))}
    unknown = sorted(set(state_dict) - wanted)
    required = {k for e in layout if isinstance(e, Rule) for k in e.keys}
    missing = sorted(required - set(state_dict))
    missing += sorted(
        " or ".join(e.keys)
        for e in layout
        if isinstance(e, Tied) and not any(k in state_dict for k in e.keys)
    )
    if unknown or missing:
        raise ValueError(
            f"the checkpoint does not match the {report.family} layout of this config:"
            + (f"\n  keys this converter does not know: {unknown}" if unknown else "")
            + (f"\n  keys the config needs that the checkpoint lacks: {missing}" if missing else "")
        )
    for key, value in state_dict.items():
        want = expected[key].shape
        if tuple(value.shape) != want:
            raise ValueError(
                f"{key}: the checkpoint has shape {tuple(value.shape)} but the config gives {want}; "
                f"fix the config (or pass config=None to infer it from the shapes)"
            )
    ours: Arrays = {}
    for entry in layout:
        if isinstance(entry, Rule):
            values = entry.load(*(np.asarray(state_dict[k], np.float32) for k in entry.keys))
            ours.update(zip(entry.paths, values, strict=True))
            report.used.extend(entry.keys)
        elif isinstance(entry, Tied):
            present = [k for k in entry.keys if k in state_dict]
            first = np.asarray(state_dict[present[0]], np.float32)
            for k in present[1:]:
                if not np.array_equal(np.asarray(state_dict[k], np.float32), first):
                    raise ValueError(
                        f"{k} and {present[0]} are one tied parameter in the original but differ here"
                    )
            ours[entry.path] = entry.load(first)
            report.used.append(present[0])
            for k in present[1:]:
                report.ignored[k] = f"tied copy of {present[0]}"
        elif entry.key in state_dict:
            if entry.check:
                check_buffer(entry, np.asarray(state_dict[entry.key]))
            report.ignored[entry.key] = entry.reason
    absent = dict(absent or {})
    unfilled = []
    for path in param_paths(model):
        if path in ours:
            continue
        reason = next((r for prefix, r in absent.items() if path.startswith(prefix)), None)
        if reason is None:
            unfilled.append(path)
        else:
            report.not_in_checkpoint[path] = reason
    assert not unfilled, f"parameters the layout does not fill: {unfilled}"
    set_params(model, ours)


def check_buffer(buffer: Buffer, value: np.ndarray) -> None:
    want = buffer.expected
    if value.shape != want.shape or not np.allclose(
        value.astype(np.float64), want.astype(np.float64), rtol=buffer.rtol, atol=buffer.atol
    ):
        worst = (
            float(np.max(np.abs(value.astype(np.float64) - want.astype(np.float64))))
            if value.shape == want.shape
            else float("nan")
        )
        raise ValueError(
            f"{buffer.key}: the checkpoint's buffer differs from what our model computes "
            f"(max |difference| {worst:.3g}, shapes {value.shape} / {want.shape}); loading it would "
            f"silently change the model. {buffer.hint}"
        )


def get_field(config: Any, field: str) -> Any:
    """``config.a.b`` for ``field="a.b"``."""
    for name in field.split("."):
        config = getattr(config, name)
    return config


def build_config(cls: type, fields: Mapping[str, Any]) -> Any:
    """``cls(**fields)`` where a dotted field ``"sub.name"`` replaces ``name`` in the sub-config ``sub``
    (starting from ``cls``'s default for ``sub``)."""
    top = {k: v for k, v in fields.items() if "." not in k}
    subs: dict[str, dict[str, Any]] = {}
    for k, v in fields.items():
        if "." in k:
            head, rest = k.split(".", 1)
            subs.setdefault(head, {})[rest] = v
    defaults = {f.name: f for f in dataclasses.fields(cls)}
    for head, kw in subs.items():
        f = defaults[head]
        base = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        top[head] = dataclasses.replace(base, **kw)
    return cls(**top)


def settle_fields(
    name: str,
    config: Any,
    inferred: Mapping[str, Any],
    from_options: Mapping[str, Any],
    defaults: Mapping[str, Any],
    report: ConversionReport,
) -> dict[str, Any]:
    """The full field dict: ``inferred`` (from the shapes) plus, for each field of ``defaults`` (those
    the weights cannot reveal), the given config's value, else the original options', else the default.
    A field the options set that the given config contradicts raises ``ValueError``. Records
    ``report.inferred`` / ``report.assumed``."""
    report.inferred.update(inferred)
    fields = dict(inferred)
    for field, default in defaults.items():
        if config is not None:
            value, source = get_field(config, field), "config"
            if field in from_options and from_options[field] != value:
                raise ValueError(
                    f"{name}: the original options set {field}={from_options[field]!r} but the config "
                    f"has {field}={value!r}"
                )
        elif field in from_options:
            value, source = from_options[field], "options"
        else:
            value, source = default, "default"
        fields[field] = value
        report.assumed[field] = f"{value!r} ({source})"
    return fields
