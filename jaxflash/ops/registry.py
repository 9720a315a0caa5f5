"""The implementation registry every public op dispatches through.

Each op (``"attention"``, ``"fftconv"``, ...) registers up to five implementations:

- ``"cudnn"``: a vendor library kernel reached through JAX (attention: cuDNN's fused attention via
  ``jax.nn.dot_product_attention``); GPU only, and only for the calls that library serves.
- ``"pallas"``: the compiled Pallas kernel; GPU and TPU only.
- ``"pallas_interpret"``: the same kernel body run by the Pallas interpreter on any backend
  (tests and debugging; slow).
- ``"xla"``: an efficient pure-XLA path, the production path on CPU.
- ``"reference"``: the naive form, the ground truth for tests.

An implementation that cannot serve a particular call (device, dtype, shape, feature) raises
``NotImplementedError`` with a reason; the dispatcher then tries the next one, as tokamax does. When
one implementation is asked for by name, its error is re-raised. When every candidate fails, the
error lists each one's reason. Any other exception (a ``ValueError`` for bad input, say) propagates
at once: bad input is never retried on another path.

``implementation=None`` means "the best available": the order in ``JAXFLASH_IMPLEMENTATION``
(comma-separated) when that variable is set, else :data:`DEFAULT_ORDER`, leaving out implementations
registered with ``default=False`` (ones that work but measured slower than the next candidate; they run
when asked for by name).

Configs. An implementation registered with ``config_type=`` (tile sizes of a kernel, chunk sizes of an
XLA path: a frozen dataclass that validates its fields) is always called with ``config=``: the user's
config when it is one of that type, else None (its default). ``dispatch(..., config=c)`` forwards ``c``
to the implementation that runs; a candidate with no config of ``c``'s type refuses the call
(``NotImplementedError``), so a named implementation re-raises and a default order moves on. A mapping
``{implementation: config}`` gives each implementation its own. A config type that no implementation of
the op takes is a ``TypeError`` at once.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

from jaxflash import utils

Implementation = Literal["cudnn", "pallas", "pallas_interpret", "xla", "reference"]

IMPLEMENTATIONS: tuple[str, ...] = ("cudnn", "pallas", "pallas_interpret", "xla", "reference")

# The interpreter is never picked by default: it is a simulator, orders of magnitude slower than XLA.
DEFAULT_ORDER: tuple[str, ...] = ("cudnn", "pallas", "xla", "reference")

ENV_VAR = "JAXFLASH_IMPLEMENTATION"

# Where an implementation can run, unless its registration says otherwise. None: every backend.
_DEFAULT_PLATFORMS: dict[str, frozenset[str] | None] = {
    "cudnn": frozenset({"gpu"}),
    "pallas": frozenset({"gpu", "tpu"}),
    "pallas_interpret": None,
    "xla": None,
    "reference": None,
}


@dataclasses.dataclass(frozen=True)
class _Entry:
    fn: Callable[..., Any]
    platforms: frozenset[str] | None
    default: bool = True
    config_type: type | None = None


_REGISTRY: dict[str, dict[str, _Entry]] = {}


def current_platform() -> str:
    """The platform jit compiles for by default (see :func:`jaxflash.utils.current_platform`)."""
    return utils.current_platform()


def register(
    op: str,
    implementation: str,
    *,
    platforms: Iterable[str] | None = ...,
    default: bool = True,
    config_type: type | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator registering ``fn`` as ``implementation`` of ``op``.

    Args:
      op: the op's public name, e.g. ``"attention"``.
      implementation: one of :data:`IMPLEMENTATIONS`.
      platforms: backends it runs on (``{"gpu", "tpu"}``); ``None`` for all. Defaults per
        implementation: cuDNN on GPU, Pallas on GPU and TPU, everything else everywhere.
      default: False keeps it out of the default order (it runs when asked for by name or through
        ``JAXFLASH_IMPLEMENTATION``); for a path that works but measured slower than the next one.
      config_type: the class of the configs it takes; it is then always called with ``config=`` (None
        for its default). None: it takes no config.
    """
    _check_name(implementation)
    plats = _DEFAULT_PLATFORMS[implementation] if platforms is ... else platforms
    plats = None if plats is None else frozenset(plats)

    def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
        impls = _REGISTRY.setdefault(op, {})
        if implementation in impls and impls[implementation].fn is not fn:
            raise ValueError(f"{op!r} already has a {implementation!r} implementation registered")
        impls[implementation] = _Entry(fn, plats, default, config_type)
        return fn

    return decorator


def unregister(op: str, implementation: str | None = None) -> None:
    """Removes one implementation of ``op``, or the whole op when ``implementation`` is None."""
    if implementation is None:
        _REGISTRY.pop(op, None)
    else:
        _REGISTRY.get(op, {}).pop(implementation, None)
        if op in _REGISTRY and not _REGISTRY[op]:
            del _REGISTRY[op]


def registered(op: str | None = None) -> dict[str, tuple[str, ...]]:
    """Op name -> the implementations registered for it, in :data:`IMPLEMENTATIONS` order."""
    ops = [op] if op is not None else sorted(_REGISTRY)
    return {name: tuple(i for i in IMPLEMENTATIONS if i in _REGISTRY.get(name, {})) for name in ops}


def supported(op: str | None = None, platform: str | None = None) -> dict[str, tuple[str, ...]]:
    """Op name -> the registered implementations that can run on ``platform`` (default: this device).

    This is what the device allows; a given call may still be refused for its arguments.
    """
    platform = platform or current_platform()
    out = {}
    for name, impls in registered(op).items():
        out[name] = tuple(i for i in impls if _runs_on(_REGISTRY[name][i], platform))
    return out


def resolve(implementation: str | Sequence[str] | None) -> tuple[tuple[str, ...], bool]:
    """The candidates to try, in order, and whether a single one was asked for explicitly."""
    if implementation is None:
        env = os.environ.get(ENV_VAR, "").strip()
        if not env:
            return DEFAULT_ORDER, False
        names = tuple(s.strip() for s in env.split(",") if s.strip())
        for name in names:
            _check_name(name, source=f"the {ENV_VAR} environment variable ({env!r})")
        return names, len(names) == 1
    if isinstance(implementation, str):
        _check_name(implementation)
        return (implementation,), True
    if not isinstance(implementation, Sequence):
        raise TypeError(
            "implementation= must be a name, a sequence of names or None; "
            f"got {type(implementation).__name__}"
        )
    order = tuple(implementation)
    if not order:
        raise ValueError("implementation= got an empty sequence; pass None for the default order")
    for name in order:
        _check_name(name)
    return order, False


def dispatch(
    op: str, implementation: str | Sequence[str] | None, /, *args: Any, config: Any = None, **kwargs: Any
) -> Any:
    """Calls the first implementation of ``op`` in the resolved order that serves the call.

    ``config`` (one config object, or a mapping from implementation name to config) is forwarded to the
    implementations that take configs of its type (module docstring).
    """
    if op not in _REGISTRY:
        raise ValueError(f"no op named {op!r} is registered; registered ops: {sorted(_REGISTRY)}")
    order, explicit = resolve(implementation)
    by_default = implementation is None and not os.environ.get(ENV_VAR, "").strip()
    impls = _REGISTRY[op]
    configs = _check_config(op, impls, config)
    platform = current_platform()
    reasons: list[tuple[str, NotImplementedError]] = []
    for name in order:
        entry = impls.get(name)
        try:
            if entry is None:
                raise NotImplementedError(f"{op!r} has no {name!r} implementation registered")
            if not _runs_on(entry, platform):
                raise NotImplementedError(
                    f"{name!r} runs on {sorted(entry.platforms)}, but the default backend is {platform!r}"
                )
            if by_default and not entry.default:
                raise NotImplementedError(f"{name!r} is not used by default; ask for it by name")
            if entry.config_type is None:
                if configs.get(name) is not None:
                    raise NotImplementedError(
                        f"{name!r} takes no config; config={configs[name]!r} is for "
                        f"{_takers(impls, type(configs[name]))}"
                    )
                return entry.fn(*args, **kwargs)
            chosen = configs.get(name)
            if chosen is not None and not isinstance(chosen, entry.config_type):
                raise NotImplementedError(
                    f"{name!r} takes a {entry.config_type.__name__}; config={chosen!r} is for "
                    f"{_takers(impls, type(chosen))}"
                )
            return entry.fn(*args, config=chosen, **kwargs)
        except NotImplementedError as e:
            if explicit:
                raise NotImplementedError(f"{op}(implementation={name!r}) cannot serve this call: {e}") from e
            reasons.append((name, e))
    lines = "\n".join(f"  - {name}: {e}" for name, e in reasons)
    raise NotImplementedError(
        f"no implementation of {op!r} could serve this call (tried {', '.join(order)}):\n{lines}\n"
        f"Choose another with implementation=... or the {ENV_VAR} environment variable."
    )


def config_types(op: str) -> dict[str, type]:
    """Implementation name -> the config class it takes, for the implementations of ``op`` that take one."""
    return {name: e.config_type for name, e in _REGISTRY.get(op, {}).items() if e.config_type is not None}


def _takers(impls: dict[str, _Entry], config_type: type) -> str:
    names = [n for n in IMPLEMENTATIONS if n in impls and impls[n].config_type is config_type]
    return ", ".join(repr(n) for n in names) or "no implementation"


def _check_config(op: str, impls: dict[str, _Entry], config: Any) -> dict[str, Any]:
    """The config of each implementation name (absent: none given), after checking its type."""
    if config is None:
        return {}
    accepted = {e.config_type for e in impls.values() if e.config_type is not None}
    known = ", ".join(sorted(f"{t.__name__} ({_takers(impls, t)})" for t in accepted)) or "none"
    if isinstance(config, Mapping):
        out = {}
        for name, value in config.items():
            _check_name(name, source="a key of config=")
            entry = impls.get(name)
            if entry is None or entry.config_type is None:
                raise TypeError(f"config[{name!r}]: {op}'s {name!r} implementation takes no config")
            if value is not None and not isinstance(value, entry.config_type):
                raise TypeError(
                    f"config[{name!r}] must be a {entry.config_type.__name__}; got {type(value).__name__}"
                )
            out[name] = value
        return out
    if type(config) not in accepted:
        raise TypeError(f"config={config!r} is not a config of {op!r}; its implementations take: {known}")
    return {name: config for name in impls}


def _runs_on(entry: _Entry, platform: str) -> bool:
    return entry.platforms is None or platform in entry.platforms


def _check_name(implementation: Any, source: str = "implementation=") -> None:
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(
            f"unknown implementation {implementation!r} in {source}; expected one of {IMPLEMENTATIONS}, "
            "a sequence of them, or None"
        )
