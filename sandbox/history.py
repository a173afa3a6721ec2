"""The research history: the workspace's git repository (GitPython).

Branch `best` always points at the best kept experiment; every launched experiment
becomes a commit. Refs given by the agent are validated here (never start with '-').
"""

from __future__ import annotations

import io
import os
import re
import shutil
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import git
from git.objects.blob import Blob
from gitdb.base import IStream

from autoresearch_mcp.nanochat.errors import UserError
from autoresearch_mcp.sandbox.workspace import STATE_DIR, atomic_write

BEST_BRANCH = "best"
AUTHOR_NAME = "autoresearch-mcp"
AUTHOR_EMAIL = "autoresearch-mcp@localhost"


def init_history(root: Path, files: list[str], message: str = "baseline: template train.py") -> git.Repo:
    """Create the repository with one commit holding `files`, and point `best` at it."""
    repo = git.Repo.init(root, initial_branch=BEST_BRANCH)
    with repo.config_writer() as config:
        config.set_value("user", "name", AUTHOR_NAME)
        config.set_value("user", "email", AUTHOR_EMAIL)
        # Line endings and file modes are the agent's business, not git's.
        config.set_value("core", "autocrlf", "false")
    repo.index.add(files)
    repo.index.commit(message)
    return repo


def open_history(root: Path) -> git.Repo:
    try:
        return git.Repo(root)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        raise UserError(
            f"{root} has no research history (.git); create the workspace with `autoresearch-mcp init {root}`"
        ) from None


# ---- experiment snapshots ---------------------------------------------------------------
#
# A launch commits the editable files as they are in the working copy, on top of the commit
# the working copy was edited from (its "base", kept in .autoresearch/base), without touching
# the working copy, the user's index or HEAD. A ref per run keeps the commit from git's
# garbage collection; the commit is exported into the run's own folder, so later edits and
# concurrent runs never see each other's code.

RUN_REF_PREFIX = "refs/autoresearch/runs/"
BASE_FILE = "base"  # in the workspace's state folder


@dataclass(frozen=True)
class Snapshot:
    commit: str
    parent: str
    tree: str  # equal trees: the same code


def working_base(repo: git.Repo) -> str:
    """The commit the working copy was last launched, reset or created from."""
    recorded = _base_path(repo)
    if recorded.exists():
        return recorded.read_text(encoding="utf-8").strip()
    return repo.commit(BEST_BRANCH).hexsha


def set_base(repo: git.Repo, commit: str) -> None:
    """Record that the working copy now descends from `commit` (after a launch or a reset)."""
    atomic_write(_base_path(repo), repo.commit(commit).hexsha + "\n")


def snapshot(repo: git.Repo, files: Sequence[str], message: str) -> Snapshot:
    """Commit the working copy's `files` (paths relative to the root) on top of its base.

    Files of the base that are not in `files` are carried over unchanged; a listed file
    missing from the working copy is left out. The commit may have the same tree as its
    parent (a re-run of the same code for noise).
    """
    root = _working_tree(repo)
    parent = working_base(repo)
    with tempfile.TemporaryDirectory(prefix="autoresearch-index-") as scratch:
        # A private index: the user's .git/index stays as it was.
        private = {"GIT_INDEX_FILE": os.path.join(scratch, "index")}
        repo.git.read_tree(parent, env=private)
        for name in files:
            path = root / name
            if path.is_file():
                data = path.read_bytes()
                blob = repo.odb.store(IStream(Blob.type, len(data), io.BytesIO(data))).binsha.hex()
                mode = "100755" if os.access(path, os.X_OK) else "100644"
                repo.git.update_index("--add", "--cacheinfo", f"{mode},{blob},{name}", env=private)
            else:
                repo.git.update_index("--force-remove", "--", name, env=private)
        tree = repo.git.write_tree(env=private)
    identity = {
        "GIT_AUTHOR_NAME": AUTHOR_NAME,
        "GIT_AUTHOR_EMAIL": AUTHOR_EMAIL,
        "GIT_COMMITTER_NAME": AUTHOR_NAME,
        "GIT_COMMITTER_EMAIL": AUTHOR_EMAIL,
    }
    commit = repo.git.commit_tree(tree, "-p", parent, "-m", message, env=identity)
    return Snapshot(commit=commit, parent=parent, tree=tree)


def pin_run(repo: git.Repo, run_id: str, commit: str) -> None:
    """Point refs/autoresearch/runs/<run_id> at the run's commit, so gc never drops it."""
    repo.git.update_ref(RUN_REF_PREFIX + run_id, commit)


def export(repo: git.Repo, commit: str, dest: Path) -> None:
    """Write the files of `commit` into the new folder `dest` (all or nothing)."""
    archive = io.BytesIO()
    repo.archive(archive, treeish=commit, format="tar")
    archive.seek(0)
    partial = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        with tarfile.open(fileobj=archive) as tar:
            tar.extractall(partial, filter="data")
        partial.rename(dest)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def root_commit(repo: git.Repo) -> str:
    """The first commit of the research history: names this workspace (a new one made at the same
    path has another), e.g. in the ids of its runs' cluster jobs."""
    return repo.git.rev_list("--max-parents=0", BEST_BRANCH).split()[0]


def move_best(repo: git.Repo, commit: str) -> None:
    """Point branch `best` at `commit` (the agent decided it is the best so far)."""
    repo.git.update_ref(f"refs/heads/{BEST_BRANCH}", repo.commit(commit).hexsha)


def _base_path(repo: git.Repo) -> Path:
    return _working_tree(repo) / STATE_DIR / BASE_FILE


def _working_tree(repo: git.Repo) -> Path:
    if repo.working_tree_dir is None:  # never for a workspace: init_history makes a working tree
        raise UserError(f"{repo.git_dir} is a bare repository; a workspace's history has a working tree")
    return Path(repo.working_tree_dir)


# ---- read-only views for the file tools ------------------------------------------------------

MAX_REF_CHARS = 256
# What an agent may name: `best`, HEAD or a (short) commit sha, optionally followed by ancestry
# steps (~N, ^). No tree paths (`HEAD:file`), ranges, reflog (`@{...}`), searches (`:/text`) or
# other refs: they resolve to things that are not commits of this history, or not in it.
_COMMIT_SPEC = re.compile(rf"(?:{BEST_BRANCH}|HEAD|[0-9a-fA-F]{{4,40}})(?:~[0-9]{{0,6}}|\^[0-9]?)*")


def resolve_commit(repo: git.Repo, ref: str) -> git.Commit:
    """The commit an agent-supplied ref names (`best`, a sha, `best~2`...), or a UserError.

    Refs never reach a git command line: GitPython resolves them in-process, and only the plain
    grammar above gets that far.
    """
    if not isinstance(ref, str) or len(ref) > MAX_REF_CHARS or not _COMMIT_SPEC.fullmatch(ref):
        shown = ref[:80] if isinstance(ref, str) else ref
        raise UserError(
            f"{shown!r} is not a valid ref; use a run id (r0003), {BEST_BRANCH}, a commit sha or e.g. {BEST_BRANCH}~1"
        )
    try:
        commit = repo.commit(ref)
        if not repo.odb.has_object(commit.binsha):
            raise ValueError("no such commit object")
    except Exception as exc:  # GitPython raises many kinds for a name it cannot resolve
        raise UserError(
            f"{ref!r} does not name a commit in the research history ({type(exc).__name__}); use a run id, "
            f"{BEST_BRANCH}, a commit sha or e.g. {BEST_BRANCH}~1"
        ) from None
    return commit


def commit_files(repo: git.Repo, ref: str) -> dict[str, bytes]:
    """Every file of the commit `ref` names (path -> content)."""
    return files_at(resolve_commit(repo, ref))


def files_at(commit: git.Commit) -> dict[str, bytes]:
    """Every file of the commit's tree (path -> content)."""
    return {
        os.fspath(blob.path): blob.data_stream.read() for blob in commit.tree.traverse() if isinstance(blob, git.Blob)
    }
