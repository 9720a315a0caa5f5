"""Losses for training end models on weak supervision: :func:`noise_aware_cross_entropy`."""

from jaxflash.losses.noise_aware import noise_aware_cross_entropy

__all__ = ["noise_aware_cross_entropy"]
