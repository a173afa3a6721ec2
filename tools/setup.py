"""Creating a workspace: template files, config, and the first commit of the history."""

from __future__ import annotations

import shutil
from pathlib import Path

from autoresearch_mcp.nanochat.errors import UserError
from autoresearch_mcp.sandbox.config import WorkspaceConfig
from autoresearch_mcp.sandbox.history import init_history
from autoresearch_mcp.sandbox.workspace import STATE_DIR, Workspace, atomic_write, harness_root

TEMPLATE_FILES = ("train.py", "program.md")


def init_workspace(root: Path, config: WorkspaceConfig | None = None) -> Workspace:
    """Create (or refuse to clobber) a workspace at `root` and return it."""
    root = root.expanduser().absolute()
    if (root / STATE_DIR).exists():
        raise UserError(f"{root} is already a workspace; use it with `autoresearch-mcp serve --workspace {root}`")
    if root.exists() and any(root.iterdir()):
        raise UserError(f"{root} exists and is not empty; pick an empty or new directory")
    (root / STATE_DIR).mkdir(parents=True)
    template = harness_root() / "template"
    for name in TEMPLATE_FILES:
        shutil.copyfile(template / name, root / name)
    (root / ".gitignore").write_text(f"{STATE_DIR}/\n__pycache__/\n", encoding="utf-8")
    atomic_write(root / STATE_DIR / "config.toml", (config or WorkspaceConfig()).to_toml())
    init_history(root, [*TEMPLATE_FILES, ".gitignore"])
    return Workspace(root)


def ensure_workspace(root: Path) -> Workspace:
    """The workspace at `root`, created on first use (so a bare `serve` just works)."""
    if (root / STATE_DIR).exists():
        return Workspace(root)
    return init_workspace(root)
