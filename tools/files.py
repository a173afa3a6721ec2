"""The workspace file tools: read, list, search, and change editable files.

Every path goes through `Workspace.resolve` (confinement) or `resolve_editable` (writes);
every change is checked in full before anything is written, and returns the unified diff
of what it did, so the agent always sees the exact effect of its call.
"""

from __future__ import annotations

import os
import time
from contextlib import suppress

import regex
from pydantic import BaseModel, Field

from autoresearch_mcp.nanochat.errors import UserError
from autoresearch_mcp.sandbox.workspace import (
    HARNESS_PREFIX,
    MAX_FILE_BYTES,
    PROTECTED_DIRS,
    ResolvedPath,
    Workspace,
    harness_root,
)
from autoresearch_mcp.tools.diffs import (
    FilePatch,
    apply_file_patch,
    closest_region,
    decode_text,
    describe_mismatch,
    line_ending,
    number_lines,
    parse_patch,
    split_lines,
    unified_diff,
)
from autoresearch_mcp.tools.text import as_block, counted, table

MAX_READ_LINES = 2000
MAX_LIST_ENTRIES = 1000
MAX_PATTERN_CHARS = 1000
MAX_MATCH_CHARS = 300
SEARCH_SECONDS = 5.0
# A workspace with a dataset unpacked into it must not stall a call: walks stop here.
MAX_WALK_ENTRIES = 50_000
WALK_SECONDS = 10.0
SKIPPED_FOLDERS = frozenset({"__pycache__"})


# ---- results ---------------------------------------------------------------------------------


class FileText(BaseModel):
    path: str
    # `text` on the wire; `lines` in Python, where `text()` is the whole answer as text.
    lines: str = Field(alias="text", description="the lines, each prefixed with its number and a tab")
    start_line: int
    end_line: int
    total_lines: int
    size_bytes: int
    editable: bool
    binary: bool = False
    line_ending: str = Field(description="'lf' or 'crlf'; edits keep the file's style")
    note: str | None = None

    def text(self) -> str:
        if self.binary:
            return f"{self.path}: binary file, {self.size_bytes:,} bytes; its content is not shown"
        access = "editable" if self.editable else "read-only"
        crlf = ", CRLF line endings" if self.line_ending == "crlf" else ""
        header = f"{self.path} (lines {self.start_line}-{self.end_line} of {self.total_lines}, {access}{crlf})"
        return "\n".join(part for part in (header, self.lines, self.note) if part)


class FileEntry(BaseModel):
    path: str
    size_bytes: int
    editable: bool
    symlink_to: str | None = None


class FileListing(BaseModel):
    files: list[FileEntry]
    truncated: bool = False

    def text(self) -> str:
        if not self.files:
            return "no files here"
        rows = [
            [
                entry.path,
                f"{entry.size_bytes:,}",
                f"-> {entry.symlink_to}" if entry.symlink_to else "editable" if entry.editable else "",
            ]
            for entry in self.files
        ]
        editable = sum(entry.editable for entry in self.files)
        lines = [f"{counted(len(self.files), 'file')} ({editable} editable); sizes in bytes", table(rows, right=[1])]
        if self.truncated:
            lines.append(f"only the first {len(self.files)} are listed; list a subfolder to see the rest")
        return "\n".join(lines)


class SearchMatch(BaseModel):
    path: str
    line: int
    text: str


class SearchResult(BaseModel):
    matches: list[SearchMatch]
    files_searched: int
    truncated: bool = Field(description="more matches exist than max_results")
    skipped: list[str] = Field(default_factory=list, description="files not searched (binary or too large)")

    def text(self) -> str:
        lines = [f"{match.path}:{match.line}:{match.text}" for match in self.matches]
        summary = f"{counted(len(self.matches), 'match', 'matches')} in {counted(self.files_searched, 'file')} searched"
        if self.truncated:
            summary += "; there are more: raise max_results or narrow the pattern or path"
        lines.append(summary)
        if self.skipped:
            lines.append(f"not searched (binary or too large): {', '.join(self.skipped)}")
        return "\n".join(lines)


class FileChange(BaseModel):
    path: str
    diff: str = Field(description="unified diff of the change, as `git diff` prints it")
    replacements: int | None = None

    def text(self) -> str:
        replaced = (
            f" ({counted(self.replacements, 'replacement')})" if self.replacements and self.replacements > 1 else ""
        )
        return f"changed {self.path}{replaced}:\n{as_block(self.diff)}"


class PatchResult(BaseModel):
    applied: bool = Field(description="false for a dry run: nothing was written")
    files: list[str]
    diff: str = Field(description="the diff as applied, with corrected line numbers")

    def text(self) -> str:
        names = ", ".join(self.files)
        header = f"applied to {names}:" if self.applied else f"dry run, nothing written; it would change {names}:"
        return f"{header}\n{as_block(self.diff)}"


# ---- reading ---------------------------------------------------------------------------------


def read_file(workspace: Workspace, path: str, start_line: int | None = None, end_line: int | None = None) -> FileText:
    """Lines `start_line`..`end_line` (1-based, inclusive; at most MAX_READ_LINES) of a workspace
    or harness file, numbered."""
    resolved = workspace.resolve(path)
    data = workspace.read_bytes(resolved, max_bytes=MAX_FILE_BYTES)
    text = decode_text(data)
    if text is None:
        return FileText(
            path=resolved.display,
            text="",
            start_line=0,
            end_line=0,
            total_lines=0,
            size_bytes=len(data),
            editable=resolved.editable,
            binary=True,
            line_ending="lf",
            note="binary file; its content is not shown",
        )
    lines = split_lines(text)
    first = start_line or 1
    if first > max(len(lines), 1):
        raise UserError(f"{resolved.display} has {len(lines)} lines; start_line {first} is past the end")
    if end_line is not None and end_line < first:
        raise UserError(f"end_line {end_line} is before start_line {first}; both are 1-based and inclusive")
    last = min(end_line or len(lines), len(lines), first + MAX_READ_LINES - 1)
    note = None
    if last < min(end_line or len(lines), len(lines)):
        note = f"showing lines {first}-{last} of {len(lines)}; call again with start_line={last + 1} for more"
    shown = [body for body, _ in lines[first - 1 : last]]
    return FileText(
        path=resolved.display,
        text=number_lines(shown, first),
        start_line=first,
        end_line=last,
        total_lines=len(lines),
        size_bytes=len(data),
        editable=resolved.editable,
        line_ending="crlf" if line_ending(lines) == "\r\n" else "lf",
        note=note,
    )


def list_files(workspace: Workspace, path: str | None = None) -> FileListing:
    """Files under a workspace (or harness) folder with size and whether editable."""
    entries: list[FileEntry] = []
    found, complete = _walk(workspace, path or ".", time.monotonic() + WALK_SECONDS)
    for display, real in found:
        if len(entries) > MAX_LIST_ENTRIES:
            break
        with suppress(FileNotFoundError):  # removed since the walk saw it (a run may be writing there)
            entries.append(_entry(workspace, display, real))
    truncated = not complete or len(entries) > MAX_LIST_ENTRIES
    return FileListing(files=entries[:MAX_LIST_ENTRIES], truncated=truncated)


def search_files(workspace: Workspace, pattern: str, path: str | None = None, max_results: int = 100) -> SearchResult:
    """Lines matching a regular expression in the text files under `path`, within SEARCH_SECONDS."""
    compiled = _compile(pattern)
    deadline = time.monotonic() + SEARCH_SECONDS
    matches: list[SearchMatch] = []
    skipped: list[str] = []
    searched = 0
    found, complete = _walk(workspace, path or ".", deadline)
    if not complete:
        raise UserError(_too_many_files(path))
    for display, real in found:
        if time.monotonic() > deadline:
            raise UserError(_too_many_files(path, searched))
        if os.path.islink(real):
            continue  # a link is searched where it points, if that is in the workspace
        try:
            text = decode_text(workspace.read_bytes(workspace.resolve(display), max_bytes=MAX_FILE_BYTES))
        except UserError:
            text = None
        if text is None:
            skipped.append(display)
            continue
        searched += 1
        for number, (body, _) in enumerate(split_lines(text), 1):
            if _search(compiled, body, deadline, pattern):
                if len(matches) == max_results:
                    return SearchResult(matches=matches, files_searched=searched, truncated=True, skipped=skipped)
                matches.append(SearchMatch(path=display, line=number, text=body[:MAX_MATCH_CHARS]))
    return SearchResult(matches=matches, files_searched=searched, truncated=False, skipped=skipped)


# ---- writing ---------------------------------------------------------------------------------


def write_file(workspace: Workspace, path: str, content: str) -> FileChange:
    """Replace (or create) an editable file's whole content; a CRLF file stays CRLF."""
    _check_text("content", content)
    if "\x00" in content:
        raise UserError("content contains NUL characters; only text files can be written")
    with workspace.lock:
        resolved = workspace.resolve_editable(path, must_exist=False)
        if not resolved.path.parent.is_dir():
            raise UserError(f"{resolved.display}: its folder does not exist; create files only where the config says")
        before = _read_text(workspace, resolved) if resolved.path.exists() else None
        if before is not None and line_ending(split_lines(before)) == "\r\n" and "\r\n" not in content:
            content = content.replace("\n", "\r\n")
        if content == before:
            raise UserError(f"{resolved.display}: content is identical to the file; nothing written")
        workspace.atomic_write(resolved, content)
    return FileChange(path=resolved.display, diff=unified_diff(resolved.display, before, content))


def edit_file(workspace: Workspace, path: str, old_text: str, new_text: str, replace_all: bool = False) -> FileChange:
    """Replace the one exact occurrence of old_text (every one, with replace_all) in an editable file."""
    _check_text("old_text", old_text)
    _check_text("new_text", new_text)
    if not old_text:
        raise UserError(
            "old_text is empty; copy the exact lines to replace from read_file (or use write_file for a whole file)"
        )
    with workspace.lock:
        resolved = workspace.resolve_editable(path)
        before = _read_text(workspace, resolved)
        # In a CRLF file the agent's "\n" means the file's "\r\n": edit an LF view, then convert back.
        crlf = before.count("\n") == before.count("\r\n") > 0 and "\r" not in old_text
        view = before.replace("\r\n", "\n") if crlf else before
        new = new_text.replace("\r\n", "\n") if crlf else new_text
        if old_text == new:
            raise UserError("old_text and new_text are identical; nothing to change")
        count = view.count(old_text)
        if count == 0:
            raise UserError(_no_match(resolved.display, view, old_text))
        if count > 1 and not replace_all:
            raise UserError(
                f"{resolved.display}: old_text matches {count} times (at lines {_occurrence_lines(view, old_text)}); "
                "include more surrounding lines to make it unique, or pass replace_all=true to replace every one"
            )
        after = view.replace(old_text, new, -1 if replace_all else 1)
        if crlf:
            after = after.replace("\n", "\r\n")
        _check_text("the edited file", after)
        workspace.atomic_write(resolved, after)
    return FileChange(
        path=resolved.display,
        diff=unified_diff(resolved.display, before, after),
        replacements=count if replace_all else 1,
    )


def apply_diff(workspace: Workspace, diff: str, dry_run: bool = False) -> PatchResult:
    """Apply a unified diff to editable files, all or nothing; with dry_run, check and show only."""
    _check_text("diff", diff)
    with workspace.lock:
        planned = _plan_patch(workspace, parse_patch(diff))
        if not dry_run:
            workspace.write_all([(resolved, after.encode("utf-8")) for resolved, _, after in planned])
    applied = "".join(unified_diff(resolved.display, before, after) for resolved, before, after in planned)
    return PatchResult(applied=not dry_run, files=[resolved.display for resolved, _, _ in planned], diff=applied)


def _plan_patch(workspace: Workspace, patches: list[FilePatch]) -> list[tuple[ResolvedPath, str | None, str]]:
    """(file, content before, content after) for every file the diff touches, in first-touched order."""
    planned: dict[str, tuple[ResolvedPath, str | None, str]] = {}
    for patch in patches:
        _refuse_unsupported(patch)
        if patch.old_path is None:
            resolved = workspace.resolve_editable(patch.path, must_exist=False)  # the new file's path
            if resolved.display in planned or os.path.lexists(resolved.path):
                raise UserError(
                    f"{patch.new_path}: already exists, but the diff creates it (--- /dev/null); diff against the current file instead"
                )
            if not resolved.path.parent.is_dir():
                raise UserError(
                    f"{patch.new_path}: its folder does not exist; new files can only go where the config lists them"
                )
            before, current = None, ""
        else:
            resolved = workspace.resolve_editable(patch.old_path)
            if resolved.display in planned:
                _, before, current = planned[resolved.display]
            else:
                before = current = _read_text(workspace, resolved)
        after = apply_file_patch(current, patch, resolved.display)
        _check_text(f"{resolved.display} after the patch", after)
        planned[resolved.display] = (resolved, before, after)
    for resolved, before, after in planned.values():
        if before == after:
            raise UserError(
                f"{resolved.display}: the diff changes nothing in this file (its '-' and '+' lines cancel out); nothing was written"
            )
    return list(planned.values())


def _refuse_unsupported(patch: FilePatch) -> None:
    headers = " ".join(patch.git_headers)
    if "Binary files" in headers or "GIT binary patch" in headers:
        raise UserError(f"{patch.path}: binary patches are not supported; only text files can be changed")
    renamed = patch.old_path is not None and patch.new_path is not None and patch.old_path != patch.new_path
    if renamed or "rename from" in headers or "copy from" in headers:
        raise UserError(
            f"{patch.old_path} -> {patch.new_path}: renaming or copying files is not supported; change the file's content in place"
        )
    if patch.new_path is None or "deleted file mode" in headers:
        raise UserError(
            f"{patch.path}: the diff deletes the file; tools never delete files (use reset_workspace to undo changes)"
        )
    if "old mode" in headers or "new mode" in headers:
        raise UserError(f"{patch.path}: file mode changes are not supported; send content changes only")
    if not patch.hunks:
        raise UserError(
            f"{patch.path} (diff line {patch.diff_line}): the section has no '@@' hunks, so it changes nothing"
        )


# ---- helpers ---------------------------------------------------------------------------------


def _read_text(workspace: Workspace, resolved: ResolvedPath) -> str:
    text = decode_text(workspace.read_bytes(resolved, max_bytes=MAX_FILE_BYTES))
    if text is None:
        raise UserError(f"{resolved.display}: is a binary file (NUL bytes or not UTF-8); text tools cannot change it")
    return text


def _check_text(name: str, text: str) -> None:
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise UserError(
            f"{name} is not valid Unicode text (it holds a lone surrogate such as \\ud800); send plain UTF-8 text"
        ) from None
    if size > MAX_FILE_BYTES:
        raise UserError(
            f"{name} is {size:,} bytes; at most {MAX_FILE_BYTES:,} per call — split the change into smaller edits"
        )


def _no_match(display: str, text: str, old: str) -> str:
    bodies = [body for body, _ in split_lines(text)]
    wanted = [body for body, _ in split_lines(old)]
    region = closest_region(bodies, wanted)
    message = f"{display}: old_text not found; it must match the file exactly, including indentation and blank lines"
    if region is None:
        return f"{message}. The file has only {len(bodies)} lines; re-read it with read_file"
    first = max(region.start - 2, 0)
    last = min(region.start + len(wanted) + 2, len(bodies), first + 40)
    return (
        f"{message}. The closest region is {_line_span(region.start + 1, region.start + len(wanted))} "
        f"({describe_mismatch(bodies, wanted, region)}):\n{number_lines(bodies[first:last], first + 1)}\n"
        "Copy old_text from the file as it is (read_file shows it) and resend."
    )


def _line_span(first: int, last: int) -> str:
    return f"line {first}" if first == last else f"lines {first}-{last}"


def _occurrence_lines(text: str, needle: str) -> str:
    starts: list[int] = []
    position = text.find(needle)
    while position != -1 and len(starts) < 10:
        starts.append(text.count("\n", 0, position) + 1)
        position = text.find(needle, position + len(needle))
    return ", ".join(map(str, starts))


def _compile(pattern: str) -> regex.Pattern:
    if not pattern:
        raise UserError("empty pattern; pass a regular expression such as 'learning_rate|lr ='")
    if len(pattern) > MAX_PATTERN_CHARS:
        raise UserError(
            f"pattern is {len(pattern)} characters; at most {MAX_PATTERN_CHARS}: search for a shorter, distinctive part of the text"
        )
    try:
        return regex.compile(pattern)
    except (regex.error, ValueError) as exc:
        raise UserError(
            f"bad regular expression {pattern[:80]!r}: {exc}; escape special characters such as ( [ . * + ? with a backslash"
        ) from None


def _search(compiled: regex.Pattern, line: str, deadline: float, pattern: str) -> bool:
    try:
        return compiled.search(line, timeout=max(deadline - time.monotonic(), 0.001)) is not None
    except TimeoutError:
        raise UserError(
            f"pattern {pattern[:80]!r} took longer than {SEARCH_SECONDS:.0f} s; simplify it (alternatives that overlap inside a repeat, such as (a|a)+, backtrack badly) or narrow the path"
        ) from None


def _too_many_files(path: str | None, searched: int | None = None) -> str:
    progress = f" ({searched} files searched by then)" if searched is not None else ""
    return (
        f"{path or 'the workspace'} holds too many files to search in {SEARCH_SECONDS:.0f} s{progress}; "
        "search a folder or file inside it (list_files shows them)"
    )


def _walk(workspace: Workspace, path: str, deadline: float) -> tuple[list[tuple[str, str]], bool]:
    """(display path, real path) of the files under `path`, links included but not followed, and
    whether that is all of them: the walk stops at MAX_WALK_ENTRIES or at `deadline`."""
    resolved = workspace.resolve(path)
    if not resolved.path.is_dir():
        return [(resolved.display, str(resolved.path))], True
    prefix = HARNESS_PREFIX if resolved.in_harness else ""
    root = harness_root() if resolved.in_harness else workspace.root
    found = []
    for folder, subfolders, names in os.walk(resolved.path):
        relative_folder = os.path.relpath(folder, root)
        subfolders[:] = sorted(
            name
            for name in subfolders
            if name not in SKIPPED_FOLDERS
            and _nameable(name)
            and not (relative_folder == "." and not resolved.in_harness and name in PROTECTED_DIRS)
        )
        names = [name for name in names if _nameable(name)]
        # os.walk lists a link to a folder among the folders; show it as an entry, do not descend.
        links = [name for name in subfolders if os.path.islink(os.path.join(folder, name))]
        subfolders[:] = [name for name in subfolders if name not in links]
        for name in sorted(names + links):
            if resolved.in_harness and name.endswith(".pyc"):
                continue
            relative = os.path.normpath(os.path.join(relative_folder, name)).replace(os.sep, "/")
            found.append((prefix + relative, os.path.join(folder, name)))
        if len(found) >= MAX_WALK_ENTRIES or time.monotonic() > deadline:
            return sorted(found), False
    return sorted(found), True


def _nameable(name: str) -> bool:
    """False for a name that is not UTF-8 on disk: no tool call could name it, so it is not listed."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _entry(workspace: Workspace, display: str, real: str) -> FileEntry:
    info = os.lstat(real)
    link = os.readlink(real) if os.path.islink(real) else None
    editable = not display.startswith(HARNESS_PREFIX) and link is None and workspace.is_editable(display)
    return FileEntry(path=display, size_bytes=info.st_size, editable=editable, symlink_to=link)
