"""The papers' optimizer parameter groups, as optax transforms over an NNX model's parameters.

The models mark parameter *kinds* (``jaxflash.models.SSMParam``, ``NoDecayParam``, the parameters of a
``HyenaFilter``); this module maps each kind to a group (models.md section 6.3, trap 5)::

    "ssm"      H3 A, B, dt and long-conv kernels       lr = min(ssm_lr, lr), no weight decay
    "filter"   Hyena/M2 implicit-filter FFN and freq   lr = filter_lr, weight decay filter_wd
    "pos_emb"  the filter's positional encoding z      lr = pos_emb_lr, no weight decay
    "no_decay" biases, norm scales, Parcae A_log/dt/B/C lr, no weight decay
    "default"  everything else (weights, embeddings)   lr, weight_decay
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import optax
from flax import nnx
from jaxflash.models import HyenaFilter, NoDecayParam, SSMParam

from jaxflash.utils import check_real

GROUPS = ("default", "no_decay", "ssm", "filter", "pos_emb")
NO_DECAY_NAMES = ("bias", "scale", "mlm_bias")  # biases, norm scales and M2-BERT's decoder bias


def _label(param: nnx.Variable, path: tuple, filter_paths: list[tuple]) -> str:
    if isinstance(param, SSMParam):
        return "ssm"
    if isinstance(param, NoDecayParam):
        return "no_decay"
    under_filter = next((p for p in filter_paths if path[: len(p)] == p), None)
    if under_filter is not None:
        rest = path[len(under_filter) :]
        if rest == ("z",):
            return "pos_emb"
        if rest == ("bias",):
            return "no_decay"
        return "filter"  # the FFN weights and the shared Sin frequency
    if path[-1] in NO_DECAY_NAMES:
        return "no_decay"
    return "default"


def param_labels(model: nnx.Module) -> dict[tuple, str]:
    """Path of every ``nnx.Param`` (as in ``nnx.state(model, nnx.Param)``) -> its group in :data:`GROUPS`."""
    nodes = list(nnx.iter_graph(model))
    filter_paths = [tuple(p) for p, node in nodes if isinstance(node, HyenaFilter)]
    return {
        tuple(p): _label(node, tuple(p), filter_paths) for p, node in nodes if isinstance(node, nnx.Param)
    }


def _path_key(path: tuple) -> tuple:
    keys = []
    for entry in path:
        if isinstance(entry, jax.tree_util.DictKey):
            keys.append(entry.key)
        elif isinstance(entry, jax.tree_util.SequenceKey):
            keys.append(entry.idx)
        elif isinstance(entry, jax.tree_util.GetAttrKey):
            keys.append(entry.name)
        else:
            keys.append(getattr(entry, "key", entry))
    if keys and keys[-1] == "value":  # a Variable's own leaf
        keys.pop()
    return tuple(keys)


def labels_fn(model: nnx.Module) -> Callable[[Any], Any]:
    """For ``optax.multi_transform``: maps a parameter pytree of ``model`` (an ``nnx.State`` or its pure
    dict) to the same tree of group names."""
    table = param_labels(model)

    def fn(params: Any) -> Any:
        def one(path, _):
            key = _path_key(path)
            if key not in table:
                raise KeyError(f"parameter {key} is not a parameter of the model the labels were built for")
            return table[key]

        return jax.tree_util.tree_map_with_path(one, params)

    return fn


def make_optimizer(
    model: nnx.Module,
    *,
    lr: float,
    weight_decay: float = 0.1,
    schedule: Callable[[jax.Array], jax.Array] | None = None,
    ssm_lr: float = 1e-3,
    filter_lr: float | None = None,
    filter_weight_decay: float = 0.0,
    pos_emb_lr: float | None = None,
    b1: float = 0.9,
    b2: float = 0.98,
    eps: float = 1e-8,
) -> optax.GradientTransformation:
    """AdamW with the papers' groups (module docstring), for ``nnx.Optimizer(model, tx, wrt=nnx.Param)``.

    ``schedule(step)`` multiplies every group's learning rate (warm-up/decay shape, peak 1), as
    safari's scheduler scales all groups alike. ``ssm_lr`` is capped at ``lr`` (safari:
    ``min(0.001, lr)``); ``filter_lr`` defaults to ``lr`` and ``pos_emb_lr`` to ``filter_lr``.
    Learning rates must be > 0, weight decays >= 0, betas in [0, 1) (``ValueError`` naming the argument).
    """
    filter_lr = lr if filter_lr is None else filter_lr
    pos_emb_lr = filter_lr if pos_emb_lr is None else pos_emb_lr
    for name, value in (("lr", lr), ("ssm_lr", ssm_lr), ("filter_lr", filter_lr), ("pos_emb_lr", pos_emb_lr)):
        check_real(name, value, above=0)
    for name, value in (("weight_decay", weight_decay), ("filter_weight_decay", filter_weight_decay)):
        check_real(name, value, at_least=0)
    check_real("b1", b1, at_least=0, below=1)
    check_real("b2", b2, at_least=0, below=1)
    check_real("eps", eps, above=0)

    def adamw(group_lr: float, wd: float) -> optax.GradientTransformation:
        rate = group_lr if schedule is None else (lambda step: group_lr * schedule(step))
        return optax.adamw(rate, b1=b1, b2=b2, eps=eps, weight_decay=wd)

    transforms = {
        "default": adamw(lr, weight_decay),
        "no_decay": adamw(lr, 0.0),
        "ssm": adamw(min(ssm_lr, lr), 0.0),
        "filter": adamw(filter_lr, filter_weight_decay),
        "pos_emb": adamw(pos_emb_lr, 0.0),
    }
    return optax.multi_transform(transforms, labels_fn(model))
