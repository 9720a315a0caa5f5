"""Jitted optax training, checkpoints, sharding and metrics. Installed as ``jaxflash.train``."""
