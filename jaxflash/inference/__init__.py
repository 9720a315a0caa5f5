"""Generation and serving for jaxflash's models.

``generate(model, prompts, max_new_tokens)``: a parallel ``prefill`` of the prompts, then one jitted
decode loop of the model's recurrent ``step`` (every causal model has both), with ragged prompts, stop
tokens, greedy / temperature / top-k / top-p sampling and log-probabilities (``Generation``).

``hydragen_generate(model, prefixes, suffixes, max_new_tokens)``: Hydragen's shared-prefix engine for
attention LMs (each shared prefix's KV computed once, attended by all its sequences' queries as one
matrix-matrix product); ``generate_many`` for ``num_return_sequences`` completions of one prompt.

``distill_hyena(model, order)``: Laughing Hyena distillation of every Hyena filter into a modal SSM of
``order`` modes (``fit_modal``), giving a drop-in model that decodes in O(order) per token and channel.
"""

from jaxflash.inference.distill import DistillReport, ModalHyena, distill_hyena, fit_modal
from jaxflash.inference.generate import Generation, filter_logits, generate
from jaxflash.inference.hydragen import generate_many, hydragen_generate

__all__ = [
    "DistillReport",
    "Generation",
    "ModalHyena",
    "distill_hyena",
    "filter_logits",
    "fit_modal",
    "generate",
    "generate_many",
    "hydragen_generate",
]
