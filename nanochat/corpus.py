"""The built-in offline corpus: text every Python install has.

Documents are the interpreter's pydoc topics (the language reference, as `help()` shows
it) and the standard library's own .py source files, read in sorted order, so one Python
version gives the same corpus on every machine. About 9 MB and 500 documents on 3.11.

Directories that distributions often ship separately (tests, tkinter, IDLE, ...) are left
out so that the corpus does not depend on which extra packages are installed; so are
generated tables (encodings) that would teach the tokenizer nothing.

The validation split is half of the pydoc topics (in_validation_split): text Python does not need
to run, so the training sandbox can hide every copy of it (validation_sources) while train.py still
imports the standard library, whose source is in the sandbox's view and so is training text only.
Without the hidden text the rule that picks the split is of no use to train.py.
"""

from __future__ import annotations

import glob
import hashlib
import importlib.util
import os
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

_SKIPPED_DIRS = frozenset(
    {
        "site-packages",
        "dist-packages",
        "__pycache__",
        "test",
        "tests",
        "idlelib",
        "tkinter",
        "turtledemo",
        "lib2to3",
        "ensurepip",
        "encodings",
        "pydoc_data",  # its one module is the topics dict, which is read directly
    }
)

# About one document in ten is validation, for a local file split by document (data.py). The rule
# depends on the document's name only, so a document never moves between splits.
VALIDATION_SHARE = 10
TOPIC_PREFIX = "pydoc-topic/"
# Of the pydoc topics, one in two is validation (about 40 topics, 50k tokens on 3.11): the other
# half trains, so the validation text is of a kind the model has seen.
TOPIC_VALIDATION_SHARE = 2
# Other Pythons' standard libraries in the folders every sandbox binds (/usr): Debian's python3
# beside a pyenv or venv interpreter of the same version has the same topics. And Python's HTML
# documentation (python3-doc), the topics' source.
_OTHER_COPIES = (
    "/usr/lib*/python3*/pydoc_data",
    "/usr/local/lib*/python3*/pydoc_data",
    "/usr/share/doc/python3.*/html",
)


@dataclass(frozen=True)
class Document:
    name: str  # stable identity, e.g. "pydoc-topic/assert" or "json/decoder.py"
    text: str


def is_validation(name: str) -> bool:
    """The pinned split of local documents: whether the one called `name` belongs to validation."""
    return _bucket(name, VALIDATION_SHARE) == 0


def in_validation_split(document: Document) -> bool:
    """The built-in corpus's pinned split: whether `document` belongs to validation."""
    return document.name.startswith(TOPIC_PREFIX) and _bucket(document.name, TOPIC_VALIDATION_SHARE) == 0


def validation_sources() -> list[Path]:
    """Every folder on this machine that holds the text of the built-in validation split: this
    interpreter's pydoc_data package, that of every other Python 3 under /usr, and Python's HTML
    documentation, resolved. The training sandbox hides them all (sandbox/supervisor.py)."""
    spec = importlib.util.find_spec("pydoc_data")
    own = list(spec.submodule_search_locations or []) if spec else []
    others = [path for pattern in _OTHER_COPIES for path in glob.glob(pattern)]
    return sorted({Path(os.path.realpath(path)) for path in [*own, *others] if os.path.isdir(path)})


def _bucket(name: str, buckets: int) -> int:
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % buckets


def builtin_documents(max_chars: int | None = None) -> list[Document]:
    """The corpus in its fixed order; with `max_chars`, the leading documents up to that size."""
    documents = []
    total = 0
    for document in _all_documents():
        if max_chars is not None and total >= max_chars:
            break
        documents.append(document)
        total += len(document.text)
    return documents


def corpus_label() -> str:
    """Names the interpreter the corpus comes from, for cache keys: e.g. "py3.11"."""
    return f"py{sys.version_info.major}.{sys.version_info.minor}"


def _all_documents():
    from pydoc_data.topics import topics

    for topic in sorted(topics):
        yield Document(f"{TOPIC_PREFIX}{topic}", topics[topic])
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in _stdlib_sources(stdlib):
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue  # a few files are deliberately not UTF-8; the same ones everywhere
        if text.strip():
            yield Document(path.relative_to(stdlib).as_posix(), text)


def _stdlib_sources(stdlib: Path) -> list[Path]:
    """The .py files under `stdlib`, sorted, not descending into skipped directories
    (site-packages alone can hold far more files than the standard library)."""
    sources: list[Path] = []
    for directory, subdirectories, files in os.walk(stdlib):
        subdirectories[:] = [d for d in subdirectories if d not in _SKIPPED_DIRS and not d.startswith("config-")]
        sources.extend(Path(directory, name) for name in files if name.endswith(".py"))
    return sorted(sources)
