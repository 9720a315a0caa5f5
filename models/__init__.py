"""Flax NNX sequence models built on jaxflash's public ops. Installed as ``jaxflash.models``.

Models (``tokens [batch, seq] -> logits [batch, seq, vocab]``, each with ``init_state`` / ``step`` for
generation where it is causal) and their configs::

    LanguageModel(LMConfig)      Transformer, H3, Hyena, long-convolution LMs and hybrids
    M2GPT(M2Config)              causal Monarch Mixer LM (causal=True)
    M2Bert(M2Config)             Monarch Mixer BERT encoder with MLM head and pooler
    M2BertClassifier             M2Bert + sequence-classification head (CLS or mean pooling)
    Parcae(ParcaeConfig)         looped LM with a stable diagonal injection
    DiT(DiTConfig)               class-conditional diffusion transformer on images (x, t, y) -> eps, v

Presets are functions returning configs (``tiny_lm("hyena")``, ``hyena_153m()``); ``PRESETS`` maps
their names to them; the DiT presets are in ``DIT_PRESETS`` under DiT's names (``"DiT-XL/2"``,
``"DiT-S/8"``, ``"DiT-tiny"``). The layers compose into other models: the mixers (``Attention``, ``H3``,
``HyenaOperator``, ``LongConv``, ``S4D``, ``M2Mixer``) share ``__call__`` / ``init_state`` / ``step``, and
``Block`` wraps any of them with an ``MLP`` (see ``transformer.py``). ``graft`` swaps a DiT block's attention
or MLP for one of the ``OPERATORS`` (``HyenaX``, ``HyenaY``, ``HyenaSE``, ``SlidingWindowAttention``,
``LinearAttention``, an MLP of another ratio) and ``parallelize`` runs pairs of blocks side by side
(``graft.py``, Chandrasegaran et al. 2025).
"""

from jaxflash.models.config import (
    DIT_PRESETS,
    GPT2_VOCAB,
    M2_FILTER,
    PARCAE_ATTENTION,
    PRESETS,
    AttentionConfig,
    DiTConfig,
    H3Config,
    HyenaConfig,
    LMConfig,
    LongConvConfig,
    M2Config,
    ParcaeConfig,
    S4DConfig,
    dit,
    dit_d14,
    dit_tiny,
    gpt2_125m,
    h3_125m,
    hyena_153m,
    m2_bert_80m,
    m2_bert_tiny,
    m2_gpt_tiny,
    parcae_140m,
    parcae_tiny,
    tiny_lm,
)
from jaxflash.models.dit import DiT, DiTBlock, FinalLayer, LabelEmbedder, SelfAttention, TimestepEmbedder
from jaxflash.models.graft import (
    OPERATORS,
    HyenaSE,
    HyenaX,
    HyenaY,
    LinearAttention,
    ParallelDiTBlock,
    SlidingWindowAttention,
    graft,
    interleaved,
    make_operator,
    mlp_operator,
    parallelize,
    trace_block,
)
from jaxflash.models.h3 import H3, S4D, SSMParam
from jaxflash.models.hyena import HyenaFilter, HyenaOperator, ShortConv
from jaxflash.models.lm import M2GPT, DecoderLM, LanguageModel
from jaxflash.models.long_conv import LongConv
from jaxflash.models.m2 import BlockDiagGLU, M2Bert, M2BertClassifier, M2Mixer
from jaxflash.models.monarch import BlockDiagLinear, MonarchLinear
from jaxflash.models.parcae import NoDecayParam, Parcae
from jaxflash.models.transformer import MLP, Attention, Block, rope, step_blocks
from jaxflash.models.validation import parameter_count

__all__ = [
    "DIT_PRESETS",
    "GPT2_VOCAB",
    "M2GPT",
    "M2_FILTER",
    "MLP",
    "OPERATORS",
    "PARCAE_ATTENTION",
    "PRESETS",
    "H3",
    "Attention",
    "AttentionConfig",
    "Block",
    "BlockDiagGLU",
    "BlockDiagLinear",
    "DecoderLM",
    "DiT",
    "DiTBlock",
    "DiTConfig",
    "FinalLayer",
    "H3Config",
    "HyenaConfig",
    "HyenaFilter",
    "HyenaOperator",
    "HyenaSE",
    "HyenaX",
    "HyenaY",
    "LMConfig",
    "LabelEmbedder",
    "LanguageModel",
    "LinearAttention",
    "LongConv",
    "LongConvConfig",
    "M2Bert",
    "M2BertClassifier",
    "M2Config",
    "M2Mixer",
    "MonarchLinear",
    "NoDecayParam",
    "Parcae",
    "ParcaeConfig",
    "ParallelDiTBlock",
    "S4D",
    "S4DConfig",
    "SSMParam",
    "SelfAttention",
    "ShortConv",
    "SlidingWindowAttention",
    "TimestepEmbedder",
    "dit",
    "dit_d14",
    "dit_tiny",
    "gpt2_125m",
    "graft",
    "h3_125m",
    "hyena_153m",
    "interleaved",
    "m2_bert_80m",
    "m2_bert_tiny",
    "m2_gpt_tiny",
    "make_operator",
    "mlp_operator",
    "parallelize",
    "parameter_count",
    "parcae_140m",
    "parcae_tiny",
    "rope",
    "step_blocks",
    "tiny_lm",
    "trace_block",
]
