"""The working copy against the research history: workspace_diff and reset_workspace.

Both compare file contents in-process (GitPython reads the commit's tree); no git command
runs, so the history is never written by a read, and a ref cannot smuggle in an option.

A `base` / `to` argument is a run id (launch pins each run's commit under
refs/autoresearch/runs/<id>) or any git ref; `_base_commit` is the one place that decides.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

import git
from pydantic import BaseModel, Field

from autoresearch_mcp.sandbox.history import (
    BEST_BRANCH,
    RUN_REF_PREFIX,
    files_at,
    open_history,
    resolve_commit,
    set_base,
)
from autoresearch_mcp.sandbox.workspace import MAX_FILE_BYTES, PROTECTED_DIRS, Workspace
from autoresearch_mcp.tools.diffs import decode_text, unified_diff
from autoresearch_mcp.tools.text import as_block, counted

# What may follow RUN_REF_PREFIX in a pin's name (a run id, in practice; runstore.RUN_ID is
# that exact form): checked before the name is joined into a ref.
_PIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class WorkspaceDiff(BaseModel):
    base: str
    commit: str
    files: list[str] = Field(description="files that differ from the base")
    diff: str
    truncated: bool = False

    def text(self) -> str:
        against = f"{self.base} ({self.commit[:7]})"
        if not self.files:
            return f"the working copy is the same as {against}"
        cut = f"\n(diff cut at {len(self.diff):,} characters)" if self.truncated else ""
        differ = "differs" if len(self.files) == 1 else "differ"
        changed = f"{counted(len(self.files), 'file')} {differ}: {', '.join(self.files)}"
        return f"working copy vs {against}, {changed}\n{as_block(self.diff)}{cut}"


class ResetResult(BaseModel):
    to: str
    commit: str
    restored: list[str] = Field(description="editable files put back to their content at the commit")
    removed: list[str] = Field(description="editable files that did not exist at the commit")
    diff: str = Field(description="the change the reset made; its '-' lines are the edits it discarded")

    def text(self) -> str:
        to = f"{self.to} ({self.commit[:7]})"
        if not (self.restored or self.removed):
            return f"nothing to reset: the editable files already match {to}"
        done = [
            f"restored {', '.join(self.restored)}" if self.restored else "",
            f"removed {', '.join(self.removed)}" if self.removed else "",
        ]
        return f"reset to {to}: {'; '.join(part for part in done if part)}; the diff shows what was discarded:\n{as_block(self.diff)}"


def workspace_diff(workspace: Workspace, base: str = BEST_BRANCH) -> WorkspaceDiff:
    """The working copy's editable files against `base` (a run id or a ref), as a unified diff."""
    commit = _base_commit(open_history(workspace.root), base)
    committed = {path: data for path, data in files_at(commit).items() if path.split("/", 1)[0] not in PROTECTED_DIRS}
    working = {path: _working_copy(workspace, path) for path in set(committed) | set(workspace.config.editable)}
    changed = file_diffs(committed, working)
    diff = "".join(text for _, text in changed)
    truncated = len(diff) > MAX_FILE_BYTES
    return WorkspaceDiff(
        base=base,
        commit=commit.hexsha,
        files=[path for path, _ in changed],
        diff=diff[:MAX_FILE_BYTES] if truncated else diff,
        truncated=truncated,
    )


def file_diffs(before: Mapping[str, bytes | None], after: Mapping[str, bytes | None]) -> list[tuple[str, str]]:
    """(path, unified diff) of every file that differs between two trees, in path order; a
    path missing from a tree (or None) is a file that does not exist there."""
    diffs = ((path, _file_diff(path, before.get(path), after.get(path))) for path in sorted(set(before) | set(after)))
    return [(path, text) for path, text in diffs if text]


def reset_workspace(workspace: Workspace, to: str = BEST_BRANCH) -> ResetResult:
    """Put every editable file back to its content at `to` (a run id or a ref), and make that
    commit the next launch's parent."""
    repo = open_history(workspace.root)
    commit = _base_commit(repo, to)
    committed = files_at(commit)
    with workspace.lock:
        changes = []
        for path in workspace.config.editable:
            resolved = workspace.resolve_editable(path, must_exist=False)
            current = _working_copy(workspace, resolved.display)
            wanted = committed.get(resolved.display)
            if current != wanted:
                changes.append((resolved, current, wanted))
        workspace.write_all([(resolved, wanted) for resolved, _, wanted in changes])
        set_base(repo, commit.hexsha)
    return ResetResult(
        to=to,
        commit=commit.hexsha,
        restored=[resolved.display for resolved, _, wanted in changes if wanted is not None],
        removed=[resolved.display for resolved, _, wanted in changes if wanted is None],
        diff="".join(_file_diff(resolved.display, current, wanted) for resolved, current, wanted in changes),
    )


def _base_commit(repo: git.Repo, ref: str) -> git.Commit:
    """The commit a `base` / `to` argument names: a run id (its pinned experiment commit) or a git ref."""
    pinned = RUN_REF_PREFIX + ref
    if _PIN_NAME.fullmatch(ref) and any(
        run.path == pinned for run in git.Reference.iter_items(repo, common_path=RUN_REF_PREFIX.rstrip("/"))
    ):
        return resolve_commit(repo, pinned)
    return resolve_commit(repo, ref)


def _working_copy(workspace: Workspace, path: str) -> bytes | None:
    """The file's bytes in the working copy, or None where there is no regular file to compare."""
    if not os.path.isfile(workspace.root / path) or os.path.islink(workspace.root / path):
        return None
    return workspace.read_bytes(workspace.resolve(path), max_bytes=MAX_FILE_BYTES)


def _file_diff(path: str, before: bytes | None, after: bytes | None) -> str:
    if before == after:
        return ""
    old, new = (None if data is None else decode_text(data) for data in (before, after))
    if (old is None and before is not None) or (new is None and after is not None):
        return f"diff --git a/{path} b/{path}\nBinary files a/{path} and b/{path} differ\n"
    return unified_diff(path, old, new)
