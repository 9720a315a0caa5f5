"""Generation and serving for jaxflash's models.

``generate(model, prompts, max_new_tokens)``: a parallel ``prefill`` of the prompts, then one jitted
decode loop of the model's recurrent ``step`` (every causal model has both), with ragged prompts, stop
tokens, greedy / temperature / top-k / top-p sampling and log-probabilities (``Generation``).
"""

from jaxflash.inference.generate import Generation, filter_logits, generate

__all__ = ["Generation", "filter_logits", "generate"]
