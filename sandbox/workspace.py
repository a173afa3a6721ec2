"""The agent's workspace: path confinement, editable vs protected files, atomic writes.

Every path a tool receives goes through `Workspace.resolve`: it must name something inside
the workspace, also after symlinks are followed, and never the server's own state
(`.autoresearch/`) or the research history (`.git/`). The installed harness can be read
(the agent needs to see how it is measured) under the `@harness/` prefix; nothing writes it.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from autoresearch_mcp.sandbox.config import WorkspaceConfig
from autoresearch_mcp.sandbox.errors import UserError

STATE_DIR = ".autoresearch"
PROTECTED_DIRS = (".git", STATE_DIR)
HARNESS_PREFIX = "@harness/"
MAX_PATH_CHARS = 4096


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
    """A directory the server manages; see ARCHITECTURE.md for its layout."""

    def __init__(self, root: Path | str):
        self.root = Path(os.path.realpath(root))
        if not self.root.is_dir():
            raise UserError(f"workspace {self.root} does not exist; create it with `autoresearch-mcp init {self.root}`")
        self.state_dir = self.root / STATE_DIR
        self.config = WorkspaceConfig.load(self.state_dir / "config.toml")

    # ---- path confinement -------------------------------------------------------------

    def resolve(self, path: str, *, must_exist: bool = True) -> ResolvedPath:
        """Map an agent-supplied path to a real path inside the workspace (or the harness)."""
        _check_path_text(path)
        if path.startswith(HARNESS_PREFIX) or path.rstrip("/") == HARNESS_PREFIX.rstrip("/"):
            return self._resolve_harness(path[len(HARNESS_PREFIX):])
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
            raise UserError(f"{path}: the harness is read-only (it defines how runs are measured); edit {self.editable_list()} instead")
        if lexical.is_symlink():
            raise UserError(f"{path}: is a symbolic link; tools never write through links. Remove the link by hand if it is not meant to be there")
        if not resolved.editable:
            raise UserError(f"{path}: not editable; the editable files are {self.editable_list()} (set `editable` in .autoresearch/config.toml to change that)")
        if resolved.path.exists() and not resolved.path.is_file():
            raise UserError(f"{path}: is not a regular file")
        return resolved

    def is_editable(self, relative: str) -> bool:
        return relative in {PurePosixPath(p).as_posix() for p in self.config.editable}

    def editable_list(self) -> str:
        return ", ".join(self.config.editable) or "(none)"

    def _lexical_relative(self, path: str) -> PurePosixPath:
        raw = Path(path)
        if raw.is_absolute():
            try:
                raw = Path(os.path.normpath(raw)).relative_to(self.root)
            except ValueError:
                raise UserError(f"{path}: outside the workspace ({self.root}); use a path relative to it, e.g. train.py") from None
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
            raise UserError(f"{HARNESS_PREFIX}{inner}: escapes the harness folder; use list_files('{HARNESS_PREFIX}') to see its files")
        target = Path(os.path.realpath(root / normalized))
        if target != root and root not in target.parents:
            raise UserError(f"{HARNESS_PREFIX}{inner}: resolves outside the harness folder; refused")
        if not target.exists():
            raise UserError(f"{HARNESS_PREFIX}{inner}: no such harness file; use list_files('{HARNESS_PREFIX}')")
        relative = target.relative_to(root).as_posix()
        return ResolvedPath(target, HARNESS_PREFIX + ("" if relative == "." else relative), False, True)

    # ---- writes -----------------------------------------------------------------------

    def atomic_write(self, resolved: ResolvedPath, data: str | bytes) -> None:
        """Replace the file's content all at once: a crash leaves the old or the new file, never half."""
        if resolved.in_harness or not resolved.editable:
            raise UserError(f"{resolved.display}: not editable")
        atomic_write(resolved.path, data)


def atomic_write(path: Path, data: str | bytes) -> None:
    """Write through a temporary file in the same folder, then rename over the target.

    The rename replaces the directory entry, so a symlink planted at `path` is replaced,
    never written through.
    """
    payload = data.encode("utf-8") if isinstance(data, str) else data
    mode = path.stat().st_mode & 0o777 if path.exists() and not path.is_symlink() else 0o644
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _check_path_text(path: str) -> None:
    if not isinstance(path, str) or not path.strip():
        raise UserError("empty path; name a file relative to the workspace, e.g. train.py")
    if "\x00" in path:
        raise UserError("path contains a NUL byte; refused")
    if len(path) > MAX_PATH_CHARS:
        raise UserError(f"path is {len(path)} characters long; at most {MAX_PATH_CHARS}")


def _refuse_protected(relative: PurePosixPath, original: str) -> None:
    if relative.parts and relative.parts[0] in PROTECTED_DIRS:
        raise UserError(
            f"{original}: {relative.parts[0]}/ belongs to the server (history and run records) and is not "
            "accessible through file tools; use list_experiments / read_log / workspace_diff instead"
        )
