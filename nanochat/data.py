"""Data preparation: corpus -> tokenizer -> token shards on disk, once per profile and data.

Layout, under `data_dir/<key>/` (the key names the source, the vocabulary and a digest of
everything that shapes the result, so a change of any of them is a new directory):

    manifest.json    what was built, counts, and the sha256 of every file below; written last
    tokenizer/       see tokenizer.py
    train/           shard_00000.npy ...  flat token arrays, every document led by BOS
    val/             shard_00000.npy ...  the pinned validation split, same format

The training process is told `train/` only; the trusted evaluation reads `val/`. Before a run
uses the data, `verify` checks every file against the manifest's sha256 (remembering, per file,
the inode, size, mtime and ctime it last verified, so a large cache is hashed once: ctime cannot
be set from user space, so a file rewritten with its old size and mtime is still hashed again).

Building happens in a hidden staging directory that is renamed into place when complete,
under an exclusive file lock, so a crash never leaves a cache that looks finished and two
processes preparing the same data build it once. numpy only: no torch here.
"""

from __future__ import annotations

import fcntl
import hashlib
import itertools
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from autoresearch_mcp.nanochat import corpus, download
from autoresearch_mcp.nanochat.errors import UserError
from autoresearch_mcp.nanochat.profiles import Profile
from autoresearch_mcp.nanochat.tokenizer import Tokenizer, bpe_available

log = logging.getLogger(__name__)

# Bump when the on-disk layout or the way text becomes tokens changes: old caches then
# stop matching instead of being misread.
FORMAT_VERSION = 3  # 3: the built-in corpus's validation split is half the pydoc topics
_MANIFEST = "manifest.json"
_VERIFIED = ".verified.json"  # file -> the (inode, size, mtime_ns, ctime_ns) its sha256 matched at
_PINNED_DIRS = ("train", "val", "tokenizer")
_HASH_CHUNK_BYTES = 1 << 20
_ENCODE_BATCH_DOCUMENTS = 1024

DocumentStream = Callable[[], Iterator[str]]  # re-readable: the tokenizer and the shards each read the text


@dataclass(frozen=True)
class PreparedData:
    root: Path
    train_dir: Path
    val_dir: Path
    tokenizer_dir: Path
    vocab_size: int
    bos_id: int
    source: str  # "builtin", "climbmix" or "local"
    train_documents: int
    val_documents: int
    train_tokens: int
    val_tokens: int
    text_bytes: int  # UTF-8 size of all the text, both splits

    def load_tokenizer(self) -> Tokenizer:
        return Tokenizer.load(self.tokenizer_dir)


class DataChanged(UserError):
    """A cached file no longer has the sha256 it was prepared with."""


@dataclass(frozen=True)
class _Source:
    kind: str  # "builtin", "climbmix" or "local"
    label: str  # names the cache directory
    fingerprint: str  # changes whenever the text could
    train: list[DocumentStream]
    val: list[DocumentStream]


def prepare_data(
    profile: Profile,
    data_dir: Path,
    source: str | Path | Sequence[str | Path] | None = None,
    *,
    repair: bool = False,
    build: bool = True,
) -> PreparedData:
    """Tokenized train/val data and tokenizer for `profile`, built on first use, then loaded.

    `source` overrides `profile.data_source`: "builtin" (the stdlib corpus), "climbmix"
    (shards fetched beforehand by `autoresearch-mcp prepare`, see download.py), or a
    directory / file / list of files of local .parquet, .jsonl or .txt data. With two or
    more local files the last one (in sorted order) is the validation split; a single
    file is split by document, one in ten to validation by a fixed hash rule.
    `repair`: a cache whose files no longer match their sha256 is built again.
    `build=False`: data not prepared yet is refused (UserError naming the `prepare` command)
    instead of built: where a run must find it ready, as on a cluster's nodes.
    """
    data_dir = Path(data_dir).expanduser()
    spec = _resolve_source(profile, data_dir, profile.data_source if source is None else source)
    key = _cache_key(profile, spec)
    root = data_dir / key
    if (root / _MANIFEST).exists():
        if not repair:
            return _load(root)
        try:
            verify(root)
            return _load(root)
        except DataChanged as change:
            log.warning("%s; building it again", change)
    if not build:
        local = f" --source {source}" if spec.kind == "local" and isinstance(source, (str, Path)) else ""
        raise UserError(
            f"no prepared {profile.name} data ({spec.label}) in {data_dir}: run "
            f"`autoresearch-mcp prepare --profile {profile.name} --data-dir {data_dir}{local}` here first"
        )
    try:
        _build_once(data_dir, key, profile, spec, rebuild=repair)
    except OSError as exc:  # most often an unwritable or full disk: the user can fix that
        raise UserError(
            f"could not prepare the data cache in {data_dir} ({exc}); check that it is writable and has space, "
            "or point --data-dir (or AUTORESEARCH_MCP_CACHE) elsewhere"
        ) from exc
    return _load(root)


def _build_once(data_dir: Path, key: str, profile: Profile, spec: _Source, *, rebuild: bool = False) -> None:
    """Build `data_dir/key` unless present (and, with `rebuild`, intact), under a lock so racing
    processes build it once."""
    root = data_dir / key
    data_dir.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(data_dir / f".{key}.lock"):
        if (root / _MANIFEST).exists():  # another process built it while we waited
            if not rebuild:
                return
            try:
                verify(root)
                return
            except DataChanged:
                pass
        for leftover in data_dir.glob(f".{key}.building-*"):  # from a crashed build; we hold the lock
            shutil.rmtree(leftover)
        if root.exists():  # damaged by hand (no manifest): rebuild
            shutil.rmtree(root)
        staging = data_dir / f".{key}.building-{os.getpid()}"
        log.info("preparing %s data in %s (first use; later runs load it)", spec.label, root)
        try:
            _build(staging, profile, spec)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        os.rename(staging, root)
        _fsync(data_dir)


def _resolve_source(profile: Profile, data_dir: Path, source: str | Path | Sequence[str | Path]) -> _Source:
    if source == "builtin":
        return _builtin_source(profile.max_corpus_chars)
    if source == "climbmix":
        return _climbmix_source(profile, data_dir)
    return _local_source(download.local_files(source), profile.max_corpus_chars)


def _builtin_source(max_chars: int | None) -> _Source:
    documents = corpus.builtin_documents(max_chars)
    digest = hashlib.sha256()
    for document in documents:
        digest.update(f"{document.name}\0{document.text}\0".encode())
    train = tuple(d.text for d in documents if not corpus.in_validation_split(d))
    val = tuple(d.text for d in documents if corpus.in_validation_split(d))
    label = f"builtin-{corpus.corpus_label()}"
    return _Source("builtin", label, digest.hexdigest(), [partial(iter, train)], [partial(iter, val)])


def _climbmix_source(profile: Profile, data_dir: Path) -> _Source:
    shard_dir = download.climbmix_dir(data_dir)
    train = [shard_dir / download.shard_name(i) for i in range(profile.climbmix_train_shards)]
    val = shard_dir / download.shard_name(download.CLIMBMIX_VAL_SHARD)
    missing = [path.name for path in [*train, val] if not path.exists()]
    if missing:
        raise UserError(
            f"ClimbMix shards missing from {shard_dir} ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}); "
            f"run `autoresearch-mcp prepare --profile {profile.name}` (needs network) or use local files"
        )
    return _Source(
        "climbmix",
        "climbmix",
        _files_fingerprint([*train, val]),
        [partial(_read_capped, path, profile.max_corpus_chars) for path in train],
        [partial(_read_capped, val, profile.max_corpus_chars)],
    )


def _local_source(files: list[Path], max_chars: int | None) -> _Source:
    fingerprint = _files_fingerprint(files)
    train: list[DocumentStream]
    val: list[DocumentStream]
    if len(files) >= 2:
        train = [partial(_read_capped, path, max_chars) for path in files[:-1]]
        val = [partial(_read_capped, files[-1], max_chars)]
    else:
        train = [partial(_hash_split, files[0], max_chars, validation=False)]
        val = [partial(_hash_split, files[0], max_chars, validation=True)]
    return _Source("local", "local", fingerprint, train, val)


def _read_capped(path: Path, max_chars: int | None) -> Iterator[str]:
    return _capped(download.read_documents(path), max_chars)


def _hash_split(path: Path, max_chars: int | None, *, validation: bool) -> Iterator[str]:
    documents = _read_capped(path, max_chars)
    return (text for text in documents if corpus.is_validation(text) == validation)


def _capped(texts: Iterable[str], max_chars: int | None) -> Iterator[str]:
    """The leading texts, up to the one that reaches `max_chars` in total (None: all)."""
    if max_chars is None:
        yield from texts
        return
    total = 0
    for text in texts:
        if total >= max_chars:
            return
        yield text
        total += len(text)


def _files_fingerprint(files: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in files:
        stat = path.stat()
        digest.update(f"{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
    return digest.hexdigest()


def _cache_key(profile: Profile, spec: _Source) -> str:
    recipe = {
        "format": FORMAT_VERSION,
        "source": spec.fingerprint,
        "vocab_size": profile.vocab_size,
        "tokenizer": "bpe" if bpe_available() else "bytes",
        "tokenizer_train_chars": profile.tokenizer_train_chars,
        "max_corpus_chars": profile.max_corpus_chars,
    }
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
    return f"{spec.label}-v{profile.vocab_size}-{digest}"


def _build(staging: Path, profile: Profile, spec: _Source) -> None:
    staging.mkdir()
    training_text = _capped(
        itertools.chain.from_iterable(stream() for stream in spec.train), profile.tokenizer_train_chars
    )
    tokenizer = Tokenizer.train(training_text, profile.vocab_size)
    tokenizer.save(staging / "tokenizer")
    train = _write_shards(staging / "train", spec.train, tokenizer)
    val = _write_shards(staging / "val", spec.val, tokenizer)
    for split, counts in (("training", train), ("validation", val)):
        if counts["documents"] == 0:
            raise UserError(f"the {split} split of the {spec.label} data is empty; give more documents or files")
    manifest = {
        "format": FORMAT_VERSION,
        "source": spec.kind,
        "profile": profile.name,
        "vocab_size": tokenizer.vocab_size,
        "bos_id": tokenizer.bos_id,
        "tokenizer": tokenizer.kind,
        "train": train,
        "val": val,
        "sha256": {name: _sha256(staging / name) for name in _pinned_files(staging)},
    }
    _write_durably(staging / _MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())


def _write_shards(directory: Path, streams: list[DocumentStream], tokenizer: Tokenizer) -> dict[str, int]:
    directory.mkdir()
    counts = {"documents": 0, "tokens": 0, "text_bytes": 0}
    for index, stream in enumerate(streams):
        pieces = []
        documents = stream()
        while batch := list(itertools.islice(documents, _ENCODE_BATCH_DOCUMENTS)):
            pieces.append(tokenizer.encode_documents(batch))
            counts["documents"] += len(batch)
            counts["text_bytes"] += sum(len(text.encode("utf-8")) for text in batch)
        tokens = np.concatenate(pieces) if pieces else np.empty(0, dtype=tokenizer.token_dtype)
        counts["tokens"] += len(tokens)
        with open(directory / f"shard_{index:05d}.npy", "wb") as out:
            np.save(out, tokens)
            out.flush()
            os.fsync(out.fileno())
    return counts


def _load(root: Path) -> PreparedData:
    manifest = json.loads((root / _MANIFEST).read_text(encoding="utf-8"))
    return PreparedData(
        root=root,
        train_dir=root / "train",
        val_dir=root / "val",
        tokenizer_dir=root / "tokenizer",
        vocab_size=manifest["vocab_size"],
        bos_id=manifest["bos_id"],
        source=manifest["source"],
        train_documents=manifest["train"]["documents"],
        val_documents=manifest["val"]["documents"],
        train_tokens=manifest["train"]["tokens"],
        val_tokens=manifest["val"]["tokens"],
        text_bytes=manifest["train"]["text_bytes"] + manifest["val"]["text_bytes"],
    )


# ---- pinning ----------------------------------------------------------------------------------


def verify(root: Path) -> str:
    """Check every file of the prepared data against its sha256 in the manifest; return the data
    id (a digest of the validation split's and the tokenizer's hashes: what a score depends on).

    Raises DataChanged when a file changed, is missing, or was added.
    """
    try:
        pinned: dict[str, str] = json.loads((root / _MANIFEST).read_text(encoding="utf-8"))["sha256"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise _changed(root, f"its manifest is unreadable or has no checksums ({error})") from None
    present = _pinned_files(root)
    if set(present) != set(pinned):
        odd = sorted(set(present) ^ set(pinned))
        raise _changed(root, f"{odd[0]} was added or removed")
    memo = _read_memo(root)
    verified = {}
    for name in present:
        if (root / name).is_symlink() or not (root / name).is_file():
            raise _changed(root, f"{name} is not a regular file")
        identity = _file_identity(root / name)
        if memo.get(name) != identity and _sha256(root / name) != pinned[name]:
            raise _changed(root, f"{name} does not match its checksum")
        verified[name] = identity
    if verified != memo:
        with suppress(OSError):  # a read-only shared cache is verified every time instead
            _write_durably(root / _VERIFIED, json.dumps(verified).encode())
    scored = {name: digest for name, digest in pinned.items() if not name.startswith("train/")}
    return hashlib.sha256(json.dumps(scored, sort_keys=True).encode()).hexdigest()[:16]


def _changed(root: Path, what: str) -> DataChanged:
    return DataChanged(f"the cached data changed ({root}: {what}): run `autoresearch-mcp prepare` again")


def _pinned_files(root: Path) -> list[str]:
    """Every file (or anything else that is not a folder) under the pinned folders, relative."""
    names = []
    for folder in _PINNED_DIRS:
        for directory, subfolders, files in os.walk(root / folder):
            for name in files + [sub for sub in subfolders if os.path.islink(os.path.join(directory, sub))]:
                names.append(Path(directory, name).relative_to(root).as_posix())
    return sorted(names)


def _file_identity(path: Path) -> list[int]:
    stat = path.lstat()
    return [stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns]


def _read_memo(root: Path) -> dict[str, list[int]]:
    try:
        memo = json.loads((root / _VERIFIED).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return memo if isinstance(memo, dict) else {}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


@contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    """Held until the block ends; the kernel drops it if the process dies."""
    with open(path, "a+b") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process that is preparing the same data (%s)", path)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _write_durably(path: Path, content: bytes) -> None:
    with open(path, "wb") as out:
        out.write(content)
        out.flush()
        os.fsync(out.fileno())


def _fsync(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
