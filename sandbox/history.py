"""The research history: the workspace's git repository (GitPython).

Branch `best` always points at the best kept experiment; every launched experiment
becomes a commit. Refs given by the agent are validated here (never start with '-').
"""

from __future__ import annotations

from pathlib import Path

import git

from autoresearch_mcp.sandbox.errors import UserError

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
        raise UserError(f"{root} has no research history (.git); create the workspace with `autoresearch-mcp init {root}`") from None
