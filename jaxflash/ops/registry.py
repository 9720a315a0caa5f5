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
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

import jax

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


_REGISTRY: dict[str, dict[str, _Entry]] = {}


def current_platform() -> str:
    """The platform jit compiles for by default: ``"cpu"``, ``"gpu"`` or ``"tpu"``."""
    platform = jax.default_backend()
    return "gpu" if platform in ("cuda", "rocm") else platform


def register(
    op: str, implementation: str, *, platforms: Iterable[str] | None = ..., default: bool = True
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator registering ``fn`` as ``implementation`` of ``op``.

    Args:
      op: the op's public name, e.g. ``"attention"``.
      implementation: one of :data:`IMPLEMENTATIONS`.
      platforms: backends it runs on (``{"gpu", "tpu"}``); ``None`` for all. Defaults per
        implementation: cuDNN on GPU, Pallas on GPU and TPU, everything else everywhere.
      default: False keeps it out of the default order (it runs when asked for by name or through
        ``JAXFLASH_IMPLEMENTATION``); for a path that works but measured slower than the next one.
    """
    _check_name(implementation)
    plats = _DEFAULT_PLATFORMS[implementation] if platforms is ... else platforms
    plats = None if plats is None else frozenset(plats)

    def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
        impls = _REGISTRY.setdefault(op, {})
        if implementation in impls and impls[implementation].fn is not fn:
            raise ValueError(f"{op!r} already has a {implementation!r} implementation registered")
        impls[implementation] = _Entry(fn, plats, default)
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
        implementation = tuple(s.strip() for s in env.split(",") if s.strip())
        if len(implementation) == 1:
            implementation = implementation[0]
    if isinstance(implementation, str):
        _check_name(implementation)
        return (implementation,), True
    order = tuple(implementation)
    if not order:
        raise ValueError("implementation= got an empty sequence; pass None for the default order")
    for name in order:
        _check_name(name)
    return order, False


def dispatch(op: str, implementation: str | Sequence[str] | None, /, *args: Any, **kwargs: Any) -> Any:
    """Calls the first implementation of ``op`` in the resolved order that serves the call."""
    if op not in _REGISTRY:
        raise ValueError(f"no op named {op!r} is registered; registered ops: {sorted(_REGISTRY)}")
    order, explicit = resolve(implementation)
    by_default = implementation is None and not os.environ.get(ENV_VAR, "").strip()
    impls = _REGISTRY[op]
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
            return entry.fn(*args, **kwargs)
        except NotImplementedError as e:
            if explicit:
                raise NotImplementedError(f"{op}(implementation={name!r}) cannot serve this call: {e}") from e
            reasons.append((name, e))
    lines = "\n".join(f"  - {name}: {e}" for name, e in reasons)
    raise NotImplementedError(
        f"no implementation of {op!r} could serve this call (tried {', '.join(order)}):\n{lines}\n"
        f"Choose another with implementation=... or the {ENV_VAR} environment variable."
    )


def _runs_on(entry: _Entry, platform: str) -> bool:
    return entry.platforms is None or platform in entry.platforms


def _check_name(implementation: Any) -> None:
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(
            f"unknown implementation {implementation!r}; expected one of {IMPLEMENTATIONS}, "
            "a sequence of them, or None"
        )
