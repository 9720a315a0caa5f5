"""Converters between the papers' released PyTorch checkpoints and jaxflash models.

Installed as ``jaxflash.checkpoints`` (it imports ``jaxflash.models``; nothing imports it)::

    sd = load_state_dict("model.safetensors")       # .bin / .pt / .ckpt need torch (jaxflash[torch])
    model, report = from_safari_lm(sd)               # config inferred from the shapes, or config=...
    print(report.summary())                          # keys used / ignored, inferred / assumed fields
    save_state_dict(to_safari_lm(model), "out.safetensors")

Families:

- ``from_safari_lm`` / ``to_safari_lm``: safari's ``ConvLMHeadModel`` and ``lm_simple`` (and H3's
  ``SSMLMHeadModel``) with H3, Hyena, long-convolution and attention layers, hybrids included
  (``checkpoints/safari.py``); safari's LRA ``SequenceModel`` backbone is refused.
- ``from_m2_bert`` / ``to_m2_bert``: M2-BERT masked LM, sequence classification
  (``jaxflash.models.M2BertClassifier``) and the long-context retrieval encoders (``checkpoints/m2.py``).

Every original key is used or ignored with a reason (buffers the model recomputes are checked against
it first), unknown keys raise ``ValueError``, a config that does not fit names the key and both
shapes, and the originals' options we do not implement raise ``NotImplementedError``
(:func:`check_original_options`). Export writes the original keys, shapes and layouts (torch Linear
weights [out, in], Conv1d weights [C, 1, taps]) as float32 numpy arrays, buffers included.
"""

from jaxflash.checkpoints.io import load_state_dict, save_state_dict
from jaxflash.checkpoints.layout import ConversionReport
from jaxflash.checkpoints.m2 import from_m2_bert, to_m2_bert
from jaxflash.checkpoints.options import check_original_options
from jaxflash.checkpoints.safari import from_safari_lm, to_safari_lm

__all__ = [
    "ConversionReport",
    "check_original_options",
    "from_m2_bert",
    "from_safari_lm",
    "load_state_dict",
    "save_state_dict",
    "to_m2_bert",
    "to_safari_lm",
]
