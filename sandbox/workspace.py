"""The agent's workspace: path confinement, editable vs protected files, atomic writes.

Every path a tool receives goes through `Workspace.resolve`: it must name something inside
the workspace, also after symlinks are followed, and never the server's own state
(`.autoresearch/`) or the research history (`.git/`). The installed harness can be read
(the agent needs to see how it is measured) under the `@harness/` prefix; nothing writes it.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath

from autoresearch_mcp.nanochat.errors import UserError
from autoresearch_mcp.sandbox.config import WorkspaceConfig

STATE_DIR = ".autoresearch"
PROTECTED_DIRS = (".git", STATE_DIR)
HARNESS_PREFIX = "@harness/"
MAX_PATH_CHARS = 4096
MAX_FILE_BYTES = 1_000_000  # the largest file (or diff, or edit) tools read or write in one call


def harness_root() -> Path:
    """The installed harness package (read-only to tools)."""
    import autoresearch_mcp.nanochat as harness_package

    return Path(harness_package.__file__).resolve().parent


@dataclass(frozen=True)
class ResolvedPath:
    path: Path  # absolute, symlinks resolved
    display: str  # how to name it back to the agent: workspace-relative or "@harness/..."
    editable: bool
    in_harness: bool


class Workspace:
    """A directory the server manages; see docs/design.md for its layout."""

    def __init__(self, root: Path | str):
        self.root = Path(os.path.realpath(root))
        if not self.root.is_dir():
            raise UserError(f"workspace {self.root} does not exist; create it with `autoresearch-mcp init {self.root}`")
        self.state_dir = self.root / STATE_DIR
        self.config = WorkspaceConfig.load(self.state_dir / "config.toml")
        self._editable = frozenset(PurePosixPath(p).as_posix() for p in self.config.editable)
        # Guards the editable files: tools run on worker threads, and every read-modify-write
        # (edit, patch, write, reset) and a launch's capture of the files holds this lock, so no
        # change is lost or half-captured. The first lock in the order (docs/design.md): taken
        # before the engine's git lock, never while holding it or any later one.
        self.lock = threading.RLock()

    # ---- path confinement -------------------------------------------------------------

    def resolve(self, path: str, *, must_exist: bool = True) -> ResolvedPath:
        """Map an agent-supplied path to a real path inside the workspace (or the harness)."""
        _check_path_text(path)
        if path.startswith(HARNESS_PREFIX) or path.rstrip("/") == HARNESS_PREFIX.rstrip("/"):
            return self._resolve_harness(path[len(HARNESS_PREFIX) :])
        relative = self._lexical_relative(path)
        target = Path(os.path.realpath(self.root / relative))
        real_relative = self._inside(target, path)
        if must_exist and not target.exists():
            raise UserError(f"{path}: no such file in the workspace; use list_files to see what exists")
        display = real_relative.as_posix() or "."
        return ResolvedPath(target, display, self.is_editable(display), False)

    def resolve_editable(self, path: str, *, must_exist: bool = True) -> ResolvedPath:
        """Like `resolve`, but only for files the config lists as editable, never a symlink."""
        resolved = self.resolve(path, must_exist=must_exist)
        lexical = self.root / self._lexical_relative(path)
        if resolved.in_harness:
            raise UserError(
                f"{path}: the harness is read-only (it defines how runs are measured); edit {self.editable_list()} instead"
            )
        if lexical.is_symlink():
            raise UserError(
                f"{path}: is a symbolic link; tools never write through links. Remove the link by hand if it is not meant to be there"
            )
        if not resolved.editable:
            raise UserError(
                f"{path}: not editable; the editable files are {self.editable_list()} (set `editable` in .autoresearch/config.toml to change that)"
            )
        if resolved.path.is_dir():
            raise UserError(f"{path}: is a folder; only files can be changed")
        if resolved.path.exists() and not resolved.path.is_file():
            raise UserError(
                f"{path}: is not a regular file (a device, socket or pipe); only regular files can be changed"
            )
        return resolved

    def is_editable(self, relative: str) -> bool:
        return relative in self._editable

    def editable_list(self) -> str:
        return ", ".join(self.config.editable) or "(none)"

    def _lexical_relative(self, path: str) -> PurePosixPath:
        raw = Path(path)
        if raw.is_absolute():
            try:
                raw = Path(os.path.normpath(raw)).relative_to(self.root)
            except ValueError:
                raise UserError(
                    f"{path}: outside the workspace ({self.root}); use a path relative to it, e.g. train.py"
                ) from None
        normalized = PurePosixPath(os.path.normpath(raw.as_posix()))
        if normalized.parts[:1] == ("..",):
            raise UserError(f"{path}: escapes the workspace with '..'; use a path inside it, e.g. train.py")
        relative = PurePosixPath() if str(normalized) == "." else normalized
        _refuse_protected(relative, path)
        return relative

    def _inside(self, target: Path, original: str) -> PurePosixPath:
        try:
            relative = PurePosixPath(target.relative_to(self.root).as_posix())
        except ValueError:
            raise UserError(f"{original}: resolves outside the workspace (through a symbolic link); refused") from None
        relative = PurePosixPath() if str(relative) == "." else relative
        _refuse_protected(relative, original)
        return relative

    def _resolve_harness(self, inner: str) -> ResolvedPath:
        root = harness_root()
        normalized = os.path.normpath(inner or ".")
        if os.path.isabs(normalized) or normalized.split(os.sep)[0] == "..":
            raise UserError(
                f"{HARNESS_PREFIX}{inner}: escapes the harness folder; use list_files('{HARNESS_PREFIX}') to see its files"
            )
        target = Path(os.path.realpath(root / normalized))
        if target != root and root not in target.parents:
            raise UserError(f"{HARNESS_PREFIX}{inner}: resolves outside the harness folder; refused")
        if not target.exists():
            raise UserError(f"{HARNESS_PREFIX}{inner}: no such harness file; use list_files('{HARNESS_PREFIX}')")
        relative = target.relative_to(root).as_posix()
        return ResolvedPath(target, HARNESS_PREFIX + ("" if relative == "." else relative), False, True)

    # ---- confined file access -----------------------------------------------------------
    #
    # `resolve` checks a path, but the tree can change before the file is opened (a process the
    # agent started may swap a file or folder for a symlink). So reads and writes below walk
    # from the workspace root one folder at a time with O_NOFOLLOW: a link planted after the
    # check makes the operation fail instead of leaving the workspace.

    def read_bytes(self, resolved: ResolvedPath, *, max_bytes: int) -> bytes:
        """The file's content; refuses links planted since `resolve`, non-files and files over `max_bytes`."""
        if resolved.in_harness:
            fd = _open_checked(lambda: os.open(resolved.path, os.O_RDONLY), resolved.display)
        else:
            with self._folder(resolved) as folder:
                fd = _open_checked(
                    lambda: os.open(resolved.path.name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=folder), resolved.display
                )
        kind = stat.S_IFMT(os.fstat(fd).st_mode)
        if kind != stat.S_IFREG:
            os.close(fd)
            if kind == stat.S_IFDIR:
                raise UserError(f"{resolved.display}: is a folder; use list_files to see what is in it")
            raise UserError(
                f"{resolved.display}: is not a regular file (a device, socket or pipe); tools read regular files only"
            )
        with os.fdopen(fd, "rb") as handle:
            data = handle.read(max_bytes + 1)
            if len(data) > max_bytes:
                raise UserError(
                    f"{resolved.display}: is larger than {max_bytes:,} bytes, the most tools read at once; use search_files to find what you need in it"
                )
            return data

    def atomic_write(self, resolved: ResolvedPath, data: str | bytes) -> None:
        """Replace the file's content all at once: a crash leaves the old or the new file, never half."""
        self._require_editable(resolved)
        payload = data.encode("utf-8") if isinstance(data, str) else data
        with self._folder(resolved) as folder:
            try:
                _replace_in_folder(folder, resolved.path.name, payload)
            except OSError as exc:
                raise UserError(
                    f"{resolved.display}: could not be written ({exc.strerror}); the file is unchanged"
                ) from exc

    def remove(self, resolved: ResolvedPath) -> None:
        """Delete an editable file (the directory entry itself: a link is removed, never followed)."""
        self._require_editable(resolved)
        with self._folder(resolved) as folder, suppress(FileNotFoundError):
            os.unlink(resolved.path.name, dir_fd=folder)

    def write_all(self, changes: Sequence[tuple[ResolvedPath, bytes | None]]) -> None:
        """Write (bytes) or delete (None) several editable files: all of them or, on failure, none.

        Each file is replaced atomically; if a later one fails, the ones already replaced get
        their previous content back, so the workspace never holds half a change.
        """
        for resolved, _ in changes:
            self._require_editable(resolved)
        originals = [(resolved, self._current(resolved)) for resolved, _ in changes]
        done: list[tuple[ResolvedPath, bytes | None]] = []
        try:
            for (resolved, payload), original in zip(changes, originals, strict=True):
                if payload is None:
                    self.remove(resolved)
                else:
                    self.atomic_write(resolved, payload)
                done.append(original)
        except BaseException:
            for resolved, previous in reversed(done):
                if previous is None:
                    self.remove(resolved)
                else:
                    self.atomic_write(resolved, previous)
            raise

    def _current(self, resolved: ResolvedPath) -> bytes | None:
        if not os.path.lexists(resolved.path):
            return None
        return self.read_bytes(resolved, max_bytes=MAX_FILE_BYTES)

    def _require_editable(self, resolved: ResolvedPath) -> None:
        if resolved.in_harness or not resolved.editable:
            raise UserError(f"{resolved.display}: not editable; the editable files are {self.editable_list()}")

    @contextmanager
    def _folder(self, resolved: ResolvedPath) -> Iterator[int]:
        """An open descriptor of the file's folder, reached from the root without following links."""
        parts = PurePosixPath(resolved.display).parts[:-1]
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for part in parts:
                inner = _open_checked(
                    partial(os.open, part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd), resolved.display
                )
                os.close(fd)
                fd = inner
            yield fd
        finally:
            os.close(fd)


def atomic_write(path: Path, data: str | bytes) -> None:
    """Write through a temporary file in the same folder, then rename over the target.

    The rename replaces the directory entry, so a symlink planted at `path` is replaced,
    never written through.
    """
    payload = data.encode("utf-8") if isinstance(data, str) else data
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        _replace_in_folder(fd, path.name, payload)
    finally:
        os.close(fd)


def _replace_in_folder(folder: int, name: str, payload: bytes) -> None:
    try:
        info = os.stat(name, dir_fd=folder, follow_symlinks=False)
        mode = stat.S_IMODE(info.st_mode) if stat.S_ISREG(info.st_mode) else 0o644
    except FileNotFoundError:
        mode = 0o644
    temporary = f".{name}.{secrets.token_hex(6)}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode, dir_fd=folder)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)  # os.open's mode is masked by the umask
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, name, src_dir_fd=folder, dst_dir_fd=folder)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(temporary, dir_fd=folder)
        raise
    os.fsync(folder)  # the rename itself survives a power cut


def _open_checked(opener: Callable[[], int], display: str) -> int:
    try:
        return opener()
    except FileNotFoundError:
        raise UserError(f"{display}: no such file in the workspace; use list_files to see what exists") from None
    except NotADirectoryError:
        raise UserError(
            f"{display}: a folder on its path is not a folder (or was replaced by a link); refused"
        ) from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UserError(
                f"{display}: became a symbolic link after it was checked; refused (tools never follow links planted in the workspace)"
            ) from None
        raise UserError(f"{display}: cannot be opened ({exc.strerror})") from None


def _check_path_text(path: str) -> None:
    if not isinstance(path, str) or not path.strip():
        raise UserError("empty path; name a file relative to the workspace, e.g. train.py")
    if "\x00" in path:
        raise UserError("path contains a NUL byte; name the file without it, e.g. train.py")
    if len(path) > MAX_PATH_CHARS:
        raise UserError(
            f"path is {len(path)} characters long; at most {MAX_PATH_CHARS}: use a path relative to the workspace, e.g. train.py"
        )
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise UserError(
            "path is not valid Unicode text (it holds a lone surrogate); name the file in plain UTF-8"
        ) from None


def _refuse_protected(relative: PurePosixPath, original: str) -> None:
    if relative.parts and relative.parts[0] in PROTECTED_DIRS:
        raise UserError(
            f"{original}: {relative.parts[0]}/ belongs to the server (history and run records) and is not "
            "accessible through file tools; use list_experiments / read_log / workspace_diff instead"
        )
