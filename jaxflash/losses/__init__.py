"""Losses: :func:`noise_aware_cross_entropy` for training end models on weak supervision, and the
contrastive losses of :mod:`jaxflash.losses.contrastive` - :func:`supcon_loss`, Perfectly Balanced's
:func:`class_conditional_infonce` and :func:`spread_loss`, TABi's :func:`tabi_loss` (with
:func:`tabi_entity_loss`, :func:`tabi_type_loss`, :func:`tabi_type_mask`), and the retrieval losses
:func:`orthogonal_projection_loss` and :func:`multiple_negatives_ranking_loss`."""

from jaxflash.losses.contrastive import (
    class_conditional_infonce,
    multiple_negatives_ranking_loss,
    orthogonal_projection_loss,
    spread_loss,
    supcon_loss,
    tabi_entity_loss,
    tabi_loss,
    tabi_type_loss,
    tabi_type_mask,
)
from jaxflash.losses.noise_aware import noise_aware_cross_entropy

__all__ = [
    "class_conditional_infonce",
    "multiple_negatives_ranking_loss",
    "noise_aware_cross_entropy",
    "orthogonal_projection_loss",
    "spread_loss",
    "supcon_loss",
    "tabi_entity_loss",
    "tabi_loss",
    "tabi_type_loss",
    "tabi_type_mask",
]
