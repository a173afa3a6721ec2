"""Text from outside the interpreter: ClimbMix shards from the hub, and local files.

ClimbMix (the data autoresearch trains on) is a set of parquet shards with a `text`
column; `autoresearch-mcp prepare` fetches the first N for training plus the last one,
which is pinned as validation. Downloads resume from a `.part` file with an HTTP Range
request, retry with backoff, and only become a shard once the parquet file opens.

Local data is a directory of (or a list of) .parquet (`text` column), .jsonl (a `text`
field per line) or .txt files. Stdlib only (urllib): no new dependency.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import shutil
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow.parquet as pq

from autoresearch_mcp.nanochat.errors import UserError

log = logging.getLogger(__name__)

CLIMBMIX_BASE_URL = "https://huggingface.co/datasets/karpathy/climbmix-400b-shuffle/resolve/main"
CLIMBMIX_VAL_SHARD = 6542  # the last shard, pinned as validation (as the original)
LOCAL_SUFFIXES = (".parquet", ".jsonl", ".txt")

_CHUNK_BYTES = 1 << 20
_TXT_DOCUMENT_CHARS = 4096


def shard_name(index: int) -> str:
    return f"shard_{index:05d}.parquet"


def climbmix_dir(data_dir: Path) -> Path:
    """Where downloaded ClimbMix shards live in a data directory."""
    return Path(data_dir) / "climbmix"


def download_climbmix(data_dir: Path, num_train_shards: int, *, base_url: str = CLIMBMIX_BASE_URL) -> list[Path]:
    """Fetch training shards 0..num_train_shards-1 and the validation shard; return their paths."""
    indices = [*range(num_train_shards), CLIMBMIX_VAL_SHARD]
    return download_shards(base_url, indices, climbmix_dir(data_dir))


def download_shards(
    base_url: str,
    shard_indices: Sequence[int],
    dest_dir: Path,
    *,
    retries: int = 5,
    timeout: float = 60.0,
    backoff_seconds: float = 2.0,
    workers: int = 4,
) -> list[Path]:
    """Download `shard_XXXXX.parquet` files from `base_url` into `dest_dir`.

    Shards already present are kept. Each file is fetched into `<name>.part`, resumed
    from where an earlier attempt stopped, and renamed once it opens as parquet.
    Raises UserError when the server cannot be reached or refuses a shard.
    """
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)

    def fetch(index: int) -> Path:
        url = f"{base_url.rstrip('/')}/{shard_name(index)}"
        return _download_file(url, dest_dir / shard_name(index), retries, timeout, backoff_seconds)

    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(shard_indices)))) as pool:
        return list(pool.map(fetch, shard_indices))


def _download_file(url: str, dest: Path, retries: int, timeout: float, backoff_seconds: float) -> Path:
    if retries < 1:
        raise ValueError(f"retries must be at least 1, got {retries}")
    if dest.exists() and _is_parquet(dest):
        return dest
    part = dest.with_name(dest.name + ".part")
    if part.exists() and _is_parquet(part):  # finished earlier, interrupted before the rename
        os.replace(part, dest)
        return dest
    for attempt in range(1, retries + 1):
        try:
            _fetch_into(url, part, timeout)
        except urllib.error.HTTPError as exc:
            if exc.code < 500 and exc.code not in (416, 429):  # 416: our .part was dropped, start over
                raise UserError(
                    f"{url}: the server answered HTTP {exc.code} {exc.reason}; check the URL and shard index"
                ) from exc
            error: Exception = exc
        except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            error = exc
        else:
            if _is_parquet(part):
                os.replace(part, dest)
                log.info("downloaded %s", dest.name)
                return dest
            part.unlink()  # complete but corrupt: start over rather than resume garbage
            error = ValueError("the downloaded file is not a readable parquet file")
        log.warning("%s: attempt %d/%d failed: %s", dest.name, attempt, retries, error)
        if attempt < retries:
            time.sleep(backoff_seconds * 2 ** (attempt - 1))
    host = urllib.parse.urlsplit(url).netloc
    failure = (
        f"could not reach {host}" if _is_connection_failure(error) else f"could not download {dest.name} from {host}"
    )
    raise UserError(
        f"{failure} after {retries} attempts ({_describe(error)}); "
        "check the network, or use local files with --source DIR (parquet, jsonl or txt)"
    )


def _fetch_into(url: str, part: Path, timeout: float) -> None:
    """Append the rest of `url` to `part`: resumed with a Range request where possible."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416:  # our partial file is not a prefix of theirs: start again
            part.unlink()
        raise
    with response:
        resumed = response.status == 206
        expected = response.headers.get("Content-Length")
        with open(part, "ab" if resumed else "wb") as out:
            shutil.copyfileobj(response, out, _CHUNK_BYTES)
            written = out.tell() - (have if resumed else 0)
    if expected is not None and written != int(expected):
        raise http.client.IncompleteRead(b"", int(expected) - written)


def _is_parquet(path: Path) -> bool:
    try:
        pq.ParquetFile(path).close()
    except (OSError, ValueError):  # pyarrow's ArrowInvalid is a ValueError
        return False
    return True


def _is_connection_failure(error: Exception) -> bool:
    if isinstance(error, urllib.error.HTTPError):
        return False
    return isinstance(error, (urllib.error.URLError, ConnectionError, socket.timeout, TimeoutError))


def _describe(error: Exception) -> str:
    if isinstance(error, urllib.error.URLError) and isinstance(error.reason, Exception):
        error = error.reason
    if isinstance(error, (socket.timeout, TimeoutError)):
        return "timed out"
    return str(error) or type(error).__name__


def local_files(source: str | Path | Sequence[str | Path]) -> list[Path]:
    """The data files a local source names: a directory (searched recursively) or files."""
    paths = [Path(source)] if isinstance(source, (str, Path)) else [Path(p) for p in source]
    files: list[Path] = []
    for path in paths:
        path = path.expanduser()
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.suffix in LOCAL_SUFFIXES and p.is_file()))
        elif path.is_file():
            if path.suffix not in LOCAL_SUFFIXES:
                raise UserError(
                    f"{path}: unsupported data file; use .parquet (text column), .jsonl (text field) or .txt"
                )
            files.append(path)
        else:
            raise UserError(f"{path}: no such file or directory; point the data source at parquet, jsonl or txt files")
    if not files:
        raise UserError(f"no .parquet, .jsonl or .txt files in {', '.join(map(str, paths))}")
    return files


def read_documents(path: Path) -> Iterator[str]:
    """The documents in one data file, in file order."""
    path = Path(path)
    readers = {".parquet": _parquet_documents, ".jsonl": _jsonl_documents, ".txt": _txt_documents}
    if path.suffix not in readers:
        raise UserError(f"{path}: unsupported data file; use .parquet, .jsonl or .txt")
    try:
        yield from readers[path.suffix](path)
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); convert it to UTF-8") from exc


def _parquet_documents(path: Path) -> Iterator[str]:
    try:
        parquet = pq.ParquetFile(path)
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: not a readable parquet file ({exc}); re-download or remove it") from exc
    if "text" not in parquet.schema_arrow.names:
        raise UserError(f"{path}: no 'text' column (columns: {', '.join(parquet.schema_arrow.names)})")
    with parquet:
        for batch in parquet.iter_batches(columns=["text"], batch_size=1024):
            yield from (text for text in batch.column(0).to_pylist() if text)


def _jsonl_documents(path: Path) -> Iterator[str]:
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                text = json.loads(line)["text"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise UserError(f"{path}:{number}: expected a JSON object with a 'text' field on every line") from exc
            if not isinstance(text, str):
                raise UserError(f"{path}:{number}: 'text' must be a string")
            if text:
                yield text


def _txt_documents(path: Path) -> Iterator[str]:
    """Paragraphs (split at blank lines) gathered into documents of a few thousand characters,
    so that one big text file still yields many documents to shuffle and split."""
    document: list[str] = []
    size = 0
    for paragraph in path.read_text(encoding="utf-8").split("\n\n"):
        if not paragraph.strip():
            continue
        document.append(paragraph)
        size += len(paragraph)
        if size >= _TXT_DOCUMENT_CHARS:
            yield "\n\n".join(document)
            document, size = [], 0
    if document:
        yield "\n\n".join(document)
