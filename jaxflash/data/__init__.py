"""Deterministic datasets for training, on the host in NumPy.

``make_dataset(DataConfig(name=..., ...), split)`` gives a :class:`Dataset`: ``vocab_size``, ``seq_len``
(the model's input length T), ``num_examples``, and batches
``dict(inputs=int32 [B, T], targets=int32 [B, T], weights=float32 [B, T])`` (next-token targets; weight 0
where a position is not scored). ``dataset.batch(step, batch_size)`` is a pure function of the config,
the seed and the step, so a resumed run reads what the uninterrupted run read; ``process_index`` /
``process_count`` give each host its rows of the global batch. ``dataset.eval_batches(batch_size)``
walks the split in order, the last batch padded with weight-0 rows.

Datasets (:data:`DATASETS`): the papers' synthetic recall tasks (safari's induction head and associative
recall, zoology's MQAR, MAD's selective copying; :mod:`jaxflash.data.synthetic`) and language-model
corpora (the built-in ``pydoc`` bytes, your text files, a token array; :mod:`jaxflash.data.text`); and
class-labelled images for diffusion, scikit-learn's ``digits`` (:mod:`jaxflash.data.images`, batches
``dict(images=float32 [B, H, W, C] in [-1, 1], labels=int32 [B], weights=float32 [B])``).
Shuffling and seeds: :mod:`jaxflash.data.base`.
"""

from jaxflash.data.base import SPLITS, Dataset, TokenDataset
from jaxflash.data.config import DATASETS, DataConfig, make_dataset
from jaxflash.data.images import ImageDataset, digits_split
from jaxflash.data.synthetic import safari_vocab
from jaxflash.data.text import END_OF_DOCUMENT, decode_bytes, encode_bytes

__all__ = [
    "DATASETS",
    "END_OF_DOCUMENT",
    "SPLITS",
    "DataConfig",
    "Dataset",
    "ImageDataset",
    "TokenDataset",
    "decode_bytes",
    "digits_split",
    "encode_bytes",
    "make_dataset",
    "safari_vocab",
]
