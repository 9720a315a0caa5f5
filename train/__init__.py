"""Jitted optax training, checkpoints, sharding and metrics. Installed as ``jaxflash.train``.

``jaxflash.train.optim``: the papers' optimizer parameter groups (``make_optimizer``, ``param_labels``).
"""

from jaxflash.train.optim import GROUPS, labels_fn, make_optimizer, param_labels

__all__ = ["GROUPS", "labels_fn", "make_optimizer", "param_labels"]
