"""Converters between the papers' released PyTorch checkpoints and jaxflash models."""
