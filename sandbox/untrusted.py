"""Reading what a run wrote, as data: never through a link, never from a pipe, never unbounded.

Everything in a run's out/ folder was written by the agent's code. It may be a symlink to a
secret, a FIFO that blocks a reader for ever, or gigabytes of one line; these readers open
the last path component with O_NOFOLLOW and O_NONBLOCK, check with fstat that it is a
regular file, and read at most `limit` bytes. Anything else reads as absent.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def read_bytes(path: Path, limit: int, *, tail: bool = False) -> bytes | None:
    """At most `limit` bytes of the regular file `path` (its last ones with `tail`); None if
    it is missing, a link, or anything but a regular file."""
    found = read_from(path, 0, limit, tail=tail)
    return None if found is None else found[1]


def read_from(path: Path, offset: int, limit: int, *, tail: bool = False) -> tuple[int, bytes] | None:
    """The file's size, and at most `limit` of its bytes from `offset` on (its last ones with
    `tail`), as `read_bytes` reads them: for following a file that grows."""
    try:
        descriptor = os.open(path, _FLAGS)
    except OSError:  # missing, a link (ELOOP), unreadable
        return None
    with os.fdopen(descriptor, "rb") as handle:
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode):
            return None
        handle.seek(max(offset, info.st_size - limit) if tail else offset)
        return info.st_size, handle.read(limit)


def read_text(path: Path, limit: int, *, tail: bool = False) -> str:
    """`read_bytes` as text, "" for a missing or refused file."""
    data = read_bytes(path, limit, tail=tail)
    return data.decode("utf-8", errors="replace") if data else ""


def read_json_object(path: Path, limit: int) -> dict[str, Any] | None:
    """The JSON object in `path`, or None if it is missing, refused, too big or not an object."""
    data = read_bytes(path, limit + 1)
    if data is None or len(data) > limit:
        return None
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None
