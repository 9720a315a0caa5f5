"""Generation and serving for jaxflash's models.

``generate(model, prompt, max_new_tokens)``: autoregressive sampling through a model's recurrent
``init_state`` / ``step`` (every causal model has them), compiled as one ``lax.scan``.
"""

from jaxflash.inference.generate import generate

__all__ = ["generate"]
