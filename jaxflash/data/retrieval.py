"""A long-document retrieval task that ships with Python: the standard library's own documentation.

Each document is the plain-text ``pydoc`` page of one standard-library module or subpackage (what
``python -m pydoc json`` prints: its description, classes, functions, data), and its query is the
module's one-paragraph summary (the first paragraph of its docstring), removed from the page wherever it
occurs so that the task is not string matching. LoCo's tasks pair a summary or a title with a long
document in the same way (``shared/reference/models.md`` section 5). Pages run from under 1K to over
200K bytes, so the task asks how much of a long document an encoder reads.

Nothing is downloaded: the text is rendered from the modules of the running interpreter, so it is fixed
by the Python version (3.12 on the development machines; :attr:`RetrievalCorpus.python_version` records
it). Pages are cleaned of what depends on the machine (the ``FILE`` section's paths, the ``MODULE
REFERENCE`` links, the ``DATA`` section of module constants, the interpreter's paths in default
arguments, memory addresses). Modules that cannot be imported here, whose summary is under
:data:`MIN_QUERY_WORDS` words, or whose summary is another module's too, are left out.

Splits are of *queries*, by a hash of the module name (stable across machines and versions): 20% test,
10% validation, the rest train. Every split searches the whole document collection, as a deployed
retriever would; a query's one relevant document is its own page.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import io
import pkgutil
import re
import sys
import warnings
import zlib

MIN_QUERY_WORDS = 3
SPLIT_FRACTIONS = {"test": 0.2, "validation": 0.1}
# Modules whose import has side effects (opens a browser, prints, needs a display) or that are tests.
EXCLUDED = frozenset(
    {"antigravity", "this", "idlelib", "turtledemo", "tkinter", "turtle", "test", "pydoc_data", "lib2to3"}
)
# The sections that hold what differs between machines: the source path, documentation links, and the
# module's data (``sys.executable``, ``os.environ``, ...).
_DROPPED_SECTIONS = ("FILE", "MODULE REFERENCE", "DATA")
_ADDRESS = re.compile(r" at 0x[0-9a-f]+")


@dataclasses.dataclass(frozen=True)
class RetrievalCorpus:
    """Queries, documents and relevance judgements.

    Attributes:
      names: the module of each document (``documents[i]`` is the page of ``names[i]``).
      documents: the page texts.
      queries: per split, the query texts.
      qrels: per split, for each query, ``{document index: relevance}`` (here one document, relevance 1).
      python_version: the interpreter the pages were rendered from.
    """

    names: tuple[str, ...]
    documents: tuple[str, ...]
    queries: dict[str, tuple[str, ...]]
    qrels: dict[str, tuple[dict[int, int], ...]]
    python_version: str


def split_of(name: str, fractions: dict[str, float] = SPLIT_FRACTIONS) -> str:
    """``"test"``, ``"validation"`` or ``"train"`` for a name (here a module's), from its CRC-32 and the
    ``"test"`` and ``"validation"`` shares in ``fractions``."""
    u = zlib.crc32(name.encode()) / 2**32
    if u < fractions["test"]:
        return "test"
    if u < fractions["test"] + fractions["validation"]:
        return "validation"
    return "train"


def _module_names() -> list[str]:
    """Public standard-library modules and their public submodules (one level), sorted."""
    names = set()
    for top in sorted(sys.stdlib_module_names):
        if top.startswith("_") or top in EXCLUDED:
            continue
        names.add(top)
        module = _import(top)
        for info in pkgutil.iter_modules(getattr(module, "__path__", None) or []):
            if not info.name.startswith("_") and "test" not in info.name:
                names.add(f"{top}.{info.name}")
    return sorted(names)


def _import(name: str):
    """The module, or None when it cannot be imported here; its import's output and warnings muted."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        with contextlib.redirect_stderr(io.StringIO()):
            try:
                return importlib.import_module(name)
            except Exception:  # noqa: BLE001 - any failure to import means "not on this machine"
                return None


def _machine_paths() -> list[str]:
    """The interpreter's and the user's directories, longest first."""
    import os

    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, os.getcwd(), os.path.expanduser("~")}
    return sorted((p for p in paths if len(p) > 1), key=len, reverse=True)


def summary_of(docstring: str) -> str:
    """The first paragraph of a docstring, its lines joined by single spaces."""
    lines = []
    for line in docstring.strip().splitlines():
        if not line.strip():
            break
        lines.append(line.strip())
    return " ".join(lines)


def _page(module, summary: str) -> str:
    import pydoc

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        text = pydoc.render_doc(module, title="%s", renderer=pydoc.plaintext)
    kept, skipping = [], False
    for line in text.splitlines():
        if line and not line[0].isspace():  # a section heading
            skipping = line.strip() in _DROPPED_SECTIONS
        if not skipping:
            kept.append(line)
    text = _ADDRESS.sub("", "\n".join(kept))
    for path in _machine_paths():  # defaults such as platform.architecture(executable=sys.executable)
        text = text.replace(path, "<path>")
    words = summary.split()
    return re.sub(r"\s+".join(map(re.escape, words)), "", text).strip() + "\n"


@functools.cache
def python_docs_corpus() -> RetrievalCorpus:
    """The standard library's pydoc pages as a retrieval task (module docstring). The first call takes a
    few seconds (it imports about 400 modules into this process); later calls return the same object."""
    entries = []
    for name in _module_names():
        module = _import(name)
        if module is None or not isinstance(module.__doc__, str):
            continue
        summary = summary_of(module.__doc__)
        if len(summary.split()) < MIN_QUERY_WORDS:
            continue
        entries.append((name, summary, module))
    counts: dict[str, int] = {}
    for _, summary, _ in entries:
        counts[summary] = counts.get(summary, 0) + 1
    entries = [e for e in entries if counts[e[1]] == 1]
    names = tuple(e[0] for e in entries)
    documents = tuple(_page(module, summary) for _, summary, module in entries)
    queries: dict[str, list[str]] = {s: [] for s in ("train", "validation", "test")}
    qrels: dict[str, list[dict[int, int]]] = {s: [] for s in queries}
    for i, (name, summary, _) in enumerate(entries):
        queries[split_of(name)].append(summary)
        qrels[split_of(name)].append({i: 1})
    version = ".".join(map(str, sys.version_info[:3]))
    return RetrievalCorpus(
        names=names,
        documents=documents,
        queries={s: tuple(q) for s, q in queries.items()},
        qrels={s: tuple(r) for s, r in qrels.items()},
        python_version=version,
    )
