"""The data configuration (:class:`DataConfig`), the dataset registry and :func:`make_dataset`."""

from __future__ import annotations

import dataclasses

from jaxflash.data import images, synthetic, text
from jaxflash.data.base import Dataset, check_split
from jaxflash.utils import check_int, check_real


@dataclasses.dataclass(frozen=True)
class _Task:
    description: str
    seq_len: int | None
    vocab_size: int | None = None
    num_examples: int | None = None
    num_test_examples: int | None = None


# The papers' defaults: safari's ICL synthetics (H3 settings), zoology's Figure-2 MQAR, MAD's baseline.
_TASKS: dict[str, _Task] = {
    "pydoc": _Task("bytes of Python's pydoc_data topics (about 490 KB, no download)", 256, 256),
    "text": _Task("bytes of your text files: path = a file, a directory of .txt files, or a list", 256, 256),
    "tokens": _Task("a token array: path = a 1-D .npy, or a raw .bin of token_dtype", 256),
    "induction_head": _Task(
        "safari induction head (H3): copy the token after the earlier '=>'", 30, 20, 5000, 500
    ),
    "associative_recall": _Task(
        "safari associative recall (H3): the value of the queried key", 20, 10, 5000, 500
    ),
    "mqar": _Task("zoology multi-query associative recall: every key queried once", 64, 8192, 100_000, 3000),
    "selective_copying": _Task(
        "MAD selective copying: the non-blank tokens, in order", 256, 16, 12_800, 1280
    ),
    "digits": _Task("scikit-learn's 1,797 8x8 handwritten digits, 10 classes (images, for DiT)", None),
}
IMAGE_DATASETS = ("digits",)

DATASETS: dict[str, str] = {name: task.description for name, task in _TASKS.items()}
"""Each dataset's name and a one-line description."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataConfig:
    """Which dataset, and its parameters. Fields left None take the task's default
    (:meth:`with_defaults`). A task ignores the other tasks' parameters (``num_kv_pairs`` outside mqar),
    but ``path`` and the example counts are refused where they do not apply."""

    name: str = "pydoc"  # a key of DATASETS
    # The model's input length T; for induction_head / associative_recall the papers' input_seq_len,
    # the regular tokens before the query (the model then reads input_seq_len + 1 / + 2 positions).
    seq_len: int | None = None
    vocab_size: int | None = None  # byte corpora: 256 (or more); tokens: max token + 1
    num_examples: int | None = None  # train examples of a synthetic task
    num_test_examples: int | None = None  # validation examples of a synthetic task
    seed: int = 0  # the synthetic examples and every epoch's order (jaxflash.data.base)
    path: str | None = (
        None  # text: file, directory of .txt files, or comma-separated list; tokens: .npy / .bin
    )
    token_dtype: str = "uint16"  # the dtype of a raw .bin token file
    num_kv_pairs: int = 4  # mqar: key-value pairs per example
    power_a: float = 0.01  # mqar: query gaps g drawn with p(g) ∝ (g + 1)^(power_a - 1); 1 = uniform
    random_non_queries: bool = True  # mqar: fill the positions between queries with random tokens, not 0
    num_tokens_to_copy: int = 16  # selective_copying
    validation_fraction: float = 0.1  # corpora: the share of the text held out; digits: of the images
    image_size: int = 8  # digits: the side the 8x8 images are resized to (bilinear)

    def __post_init__(self):
        if self.name not in _TASKS:
            raise ValueError(f"name={self.name!r} is not a dataset; accepted: {', '.join(_TASKS)}")
        for field in ("seq_len", "vocab_size", "num_examples", "num_test_examples"):
            if getattr(self, field) is not None:
                check_int(field, getattr(self, field))
        check_int("seed", self.seed, minimum=0)
        for field in ("num_kv_pairs", "num_tokens_to_copy"):
            check_int(field, getattr(self, field))
        check_real("power_a", self.power_a, above=0)
        check_real("validation_fraction", self.validation_fraction, above=0, below=1)
        if not isinstance(self.random_non_queries, bool):
            raise ValueError(f"random_non_queries must be true or false; got {self.random_non_queries!r}")
        text.check_token_dtype(self.token_dtype)
        needs_path = self.name in ("text", "tokens")
        if needs_path and not (isinstance(self.path, str) and self.path.strip()):
            raise ValueError(f"name={self.name!r} reads path, which must name a file; got path={self.path!r}")
        if not needs_path and self.path is not None:
            raise ValueError(f"name={self.name!r} reads no files; path must be None, got {self.path!r}")
        check_int("image_size", self.image_size)
        if self.name in IMAGE_DATASETS:
            for field in ("seq_len", "vocab_size", "num_examples", "num_test_examples"):
                if getattr(self, field) is not None:
                    raise ValueError(
                        f"{field} applies to token datasets; {self.name} is images (set image_size); "
                        f"got {field}={getattr(self, field)}"
                    )
            if self.image_size < images.DIGITS_SIZE:
                raise ValueError(
                    f"image_size={self.image_size} must be >= {images.DIGITS_SIZE} (the digits' side)"
                )
        elif self.name in text.CORPORA:
            for field in ("num_examples", "num_test_examples"):
                if getattr(self, field) is not None:
                    raise ValueError(
                        f"{field} applies to the synthetic tasks; a corpus ({self.name}) has as many "
                        f"examples as windows; got {field}={getattr(self, field)}"
                    )
            if (
                self.name != "tokens"
                and self.vocab_size is not None
                and self.vocab_size < text.BYTE_VOCAB_SIZE
            ):
                raise ValueError(
                    f"{self.name} has byte tokens: vocab_size must be >= 256; got {self.vocab_size}"
                )
        else:
            synthetic.check_synthetic(self.with_defaults())

    def with_defaults(self) -> DataConfig:
        """This config with every None field that the task gives a default filled in."""
        task = _TASKS[self.name]
        fields = ("seq_len", "vocab_size", "num_examples", "num_test_examples")
        filled = {f: getattr(task, f) for f in fields if getattr(self, f) is None}
        return dataclasses.replace(self, **filled) if filled else self


def make_dataset(config: DataConfig, split: str) -> Dataset:
    """Split ``split`` (``"train"`` or ``"validation"``) of the dataset ``config`` describes."""
    if not isinstance(config, DataConfig):
        raise TypeError(f"config must be a DataConfig; got {type(config).__name__}")
    check_split(split)
    config = config.with_defaults()
    if config.name in IMAGE_DATASETS:
        return images.digits_split(
            split,
            image_size=config.image_size,
            validation_fraction=config.validation_fraction,
            seed=config.seed,
        )
    if config.name in text.CORPORA:
        return text.corpus_split(config, split)
    return synthetic.synthetic_split(config, split)
