"""Linear attention: :func:`linear_attention` and :func:`linear_attention_step` (``api``), their shared
meaning in ``spec`` (feature map, state, reference), their argument checks in ``validation`` and the
chunked XLA path in ``xla``. Importing this package registers the implementations with the dispatcher."""

from jaxflash.ops.linear_attention.api import linear_attention, linear_attention_step
from jaxflash.ops.linear_attention.spec import LinearAttentionState, elu_feature_map, reference
from jaxflash.pallas_kernels.linear_attention import LinearAttentionConfig

__all__ = [
    "LinearAttentionConfig",
    "LinearAttentionState",
    "elu_feature_map",
    "linear_attention",
    "linear_attention_step",
    "reference",
]
