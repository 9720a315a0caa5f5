"""Public ops and the dispatch contract they share (see :mod:`jaxflash.ops.registry`)."""

from jaxflash.ops.registry import (
    DEFAULT_ORDER,
    ENV_VAR,
    IMPLEMENTATIONS,
    Implementation,
    config_types,
    current_platform,
    dispatch,
    register,
    registered,
    resolve,
    supported,
    unregister,
)

__all__ = [
    "DEFAULT_ORDER",
    "ENV_VAR",
    "IMPLEMENTATIONS",
    "Implementation",
    "config_types",
    "current_platform",
    "dispatch",
    "register",
    "registered",
    "resolve",
    "supported",
    "unregister",
]
