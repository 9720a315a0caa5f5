"""The attention ops: :func:`attention` (``api``), Hydragen's :func:`shared_prefix_attention`
(``hydragen``) and :func:`decode_attention` (``decode``), with their shared meaning in ``spec`` (masks,
reference), their argument checks in ``validation`` and the chunked XLA path in ``xla``. Importing this
package registers the implementations with the dispatcher."""

from jaxflash.ops.attention.api import attention, cudnn_unsupported_reason
from jaxflash.ops.attention.decode import decode_attention
from jaxflash.ops.attention.hydragen import combine_by_lse, shared_prefix_attention
from jaxflash.ops.attention.spec import AttentionSpec, MaskArrays
from jaxflash.ops.attention.xla import ChunkConfig
from jaxflash.pallas_kernels.flash_attention import FlashConfig

__all__ = [
    "AttentionSpec",
    "ChunkConfig",
    "FlashConfig",
    "MaskArrays",
    "attention",
    "combine_by_lse",
    "cudnn_unsupported_reason",
    "decode_attention",
    "shared_prefix_attention",
]
