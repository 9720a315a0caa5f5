"""Language-model corpora: token streams cut into windows.

* ``pydoc``: the English text of ``pydoc_data.topics.topics`` (the help pages of Python's ``help()``,
  about 79 topics, 490 KB), present wherever Python is: a byte-level corpus that needs no download.
* ``text``: a user's text files (a file, a directory of ``*.txt`` files, or a comma-separated list).
* ``tokens``: an already tokenised corpus: a 1-D ``.npy`` array (memory-mapped) or a raw ``.bin`` file
  of ``token_dtype`` (``np.memmap``), as nanoGPT-style pipelines write.

Byte corpora. Tokens are UTF-8 bytes (``vocab_size`` 256); each document is followed by
:data:`END_OF_DOCUMENT` (byte 0, which text does not contain) and the documents are concatenated.

Splits. The documents are taken in a fixed order (topic names sorted; files in the order given,
directories sorted) and each goes to validation when that brings the validation share of the text seen
so far closer to ``validation_fraction`` (:func:`split_documents`): deterministic, independent of the
seed, whole documents on either side. Where that leaves a side empty (one file, say), the validation split
is the final ``validation_fraction`` of the stream's bytes. A ``tokens`` corpus is one stream: validation
is its final ``validation_fraction`` of tokens.

Windows. Example ``i`` of a stream is the window ``stream[i*T : i*T + T + 1]`` (stride ``T``, one token of
overlap): ``inputs = window[:-1]``, ``targets = window[1:]``, every position scored.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from jaxflash.data.base import TokenDataset

if TYPE_CHECKING:
    from jaxflash.data.config import DataConfig

END_OF_DOCUMENT = 0
BYTE_VOCAB_SIZE = 256
CORPORA = ("pydoc", "text", "tokens")
TOKEN_FILE_SUFFIXES = (".npy", ".bin")


def encode_bytes(text: str) -> np.ndarray:
    """``text`` as byte tokens: its UTF-8 bytes, int32."""
    return np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32)


def decode_bytes(tokens: Sequence[int] | np.ndarray) -> str:
    """Byte tokens back to text (invalid UTF-8 becomes U+FFFD), for printing samples of byte models."""
    array = np.asarray(tokens).ravel()
    if array.size and (not np.issubdtype(array.dtype, np.integer) or array.min() < 0 or array.max() > 255):
        raise ValueError(f"byte tokens must be integers in [0, 256); got dtype {array.dtype}, values {array}")
    return array.astype(np.uint8).tobytes().decode("utf-8", errors="replace")


def check_token_dtype(token_dtype: str) -> np.dtype:
    """``token_dtype`` as an integer NumPy dtype, or a ``ValueError`` saying what is accepted."""
    try:
        dtype = np.dtype(token_dtype)
    except TypeError:
        dtype = None
    if dtype is None or dtype.kind not in "iu":
        raise ValueError(
            f"token_dtype must name an integer NumPy dtype (uint8, uint16, uint32, int32, int64); "
            f"got {token_dtype!r}"
        )
    return dtype


def split_documents(documents: Sequence[bytes], validation_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """The train and validation byte streams of ``documents`` (module docstring: whole documents, each to
    validation when that brings the validation share closer to ``validation_fraction``; else the final
    fraction of the bytes)."""
    train: list[bytes] = []
    validation: list[bytes] = []
    seen = held_out = 0
    for document in documents:
        document = document + bytes([END_OF_DOCUMENT])
        seen += len(document)
        target = validation_fraction * seen
        if abs(held_out + len(document) - target) < abs(held_out - target):
            validation.append(document)
            held_out += len(document)
        else:
            train.append(document)
    if not train or not validation:
        stream = b"".join(train + validation)
        cut = len(stream) - round(validation_fraction * len(stream))
        train, validation = [stream[:cut]], [stream[cut:]]
    return tuple(np.frombuffer(b"".join(part), np.uint8) for part in (train, validation))


def pydoc_documents() -> list[bytes]:
    """The distinct ``pydoc_data.topics`` texts as UTF-8, in sorted topic order. Some topics share one text
    ("if" and "else"); it is kept once, so that no text is in both splits."""
    from pydoc_data.topics import topics

    texts = dict.fromkeys(topics[name].encode("utf-8") for name in sorted(topics))
    return list(texts)


def text_files(path: str) -> list[str]:
    """The files ``path`` names: a file, a directory (its ``*.txt`` files, recursively, sorted), or a
    comma-separated list of those, in the order given."""
    files: list[str] = []
    for part in (p.strip() for p in path.split(",")):
        if not part:
            continue
        if os.path.isdir(part):
            found = sorted(
                os.path.join(root, f) for root, _, names in os.walk(part) for f in names if f.endswith(".txt")
            )
            if not found:
                raise ValueError(f"path={part!r} is a directory without .txt files")
            files += found
        elif os.path.isfile(part):
            files.append(part)
        else:
            raise FileNotFoundError(f"path={part!r}: no such file or directory")
    if not files:
        raise ValueError(f"path={path!r} names no files; give a file, a directory of .txt files, or a list")
    return files


def load_tokens(path: str, token_dtype: str = "uint16") -> np.ndarray:
    """The 1-D token array in ``path``, memory-mapped: a ``.npy`` file or a raw ``.bin`` of token_dtype."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"path={path!r}: no such file")
    suffix = os.path.splitext(path)[1]
    if suffix not in TOKEN_FILE_SUFFIXES:
        raise ValueError(f"path={path!r}: a token file must end in one of {TOKEN_FILE_SUFFIXES}")
    if suffix == ".bin":
        dtype = check_token_dtype(token_dtype)
        size = os.path.getsize(path)
        if size % dtype.itemsize:
            raise ValueError(
                f"path={path!r} has {size} bytes, not a whole number of token_dtype={token_dtype!r} tokens"
            )
        if size == 0:
            raise ValueError(f"path={path!r} is empty")
        return np.memmap(path, dtype=dtype, mode="r")
    tokens = np.load(path, mmap_mode="r")
    if tokens.ndim != 1 or tokens.dtype.kind not in "iu":
        raise ValueError(f"path={path!r} must hold a 1-D integer array; got {tokens.dtype} {tokens.shape}")
    if tokens.size == 0:
        raise ValueError(f"path={path!r} is empty")
    return tokens


class TokenWindows(TokenDataset):
    """A split of a token stream, example ``i`` the window ``tokens[i*T : i*T + T + 1]`` (module docstring).
    ``tokens`` is the split's whole stream (possibly memory-mapped)."""

    def __init__(
        self, *, name: str, split: str, tokens: np.ndarray, seq_len: int, vocab_size: int, seed: int
    ):
        num_windows = (len(tokens) - 1) // seq_len
        if num_windows < 1:
            raise ValueError(
                f"the {split} split of {name} has {len(tokens)} tokens, shorter than one window of "
                f"seq_len + 1 = {seq_len + 1}; lower seq_len or validation_fraction, or use a larger corpus"
            )
        super().__init__(
            name=name,
            split=split,
            vocab_size=vocab_size,
            seq_len=seq_len,
            num_examples=num_windows,
            seed=seed,
        )
        self.tokens = tokens

    def _rows(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        positions = indices[:, None] * self.seq_len + np.arange(self.seq_len + 1)
        window = np.asarray(self.tokens[positions])
        return window[:, :-1], window[:, 1:], np.ones((len(indices), self.seq_len), np.float32)


def corpus_split(config: DataConfig, split: str) -> TokenWindows:
    """Split ``split`` of the corpus ``config.name`` (task defaults applied)."""
    c = config
    if c.name == "tokens":
        tokens = load_tokens(c.path, c.token_dtype)
        low, high = int(tokens.min()), int(tokens.max())
        if low < 0:
            raise ValueError(f"path={c.path!r} holds a negative token id {low}")
        vocab_size = high + 1 if c.vocab_size is None else c.vocab_size
        if high >= vocab_size:
            raise ValueError(f"vocab_size={vocab_size} but path={c.path!r} holds token id {high}")
        cut = len(tokens) - round(c.validation_fraction * len(tokens))
        part = tokens[:cut] if split == "train" else tokens[cut:]
        return TokenWindows(
            name=c.name, split=split, tokens=part, seq_len=c.seq_len, vocab_size=vocab_size, seed=c.seed
        )
    if c.name == "pydoc":
        documents = pydoc_documents()
    elif c.name == "text":
        documents = []
        for file in text_files(c.path):
            with open(file, "rb") as f:
                documents.append(f.read())
        if not any(documents):
            raise ValueError(f"path={c.path!r}: the corpus is empty")
    else:
        raise ValueError(f"{c.name!r} is not a corpus; accepted: {CORPORA}")
    train, validation = split_documents(documents, c.validation_fraction)
    return TokenWindows(
        name=c.name,
        split=split,
        tokens=train if split == "train" else validation,
        seq_len=c.seq_len,
        vocab_size=c.vocab_size,
        seed=c.seed,
    )
