"""Flax NNX sequence models built on jaxflash's public ops. Installed as ``jaxflash.models``."""
