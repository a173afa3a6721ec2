"""The research instructions: the workspace's program.md, and the `autoresearch` prompt built on it."""

from __future__ import annotations

from autoresearch_mcp.sandbox.engine import ExperimentEngine
from autoresearch_mcp.sandbox.runstore import ACTIVE_STATUSES
from autoresearch_mcp.sandbox.workspace import Workspace, harness_root
from autoresearch_mcp.tools.leaderboard import board

PROGRAM_FILE = "program.md"


def program_text(workspace: Workspace) -> str:
    """The human's instructions: the workspace's program.md, or the shipped template if it is gone."""
    path = workspace.root / PROGRAM_FILE
    if path.is_file():
        return path.read_text(encoding="utf-8", errors="replace")
    return (harness_root() / "template" / PROGRAM_FILE).read_text(encoding="utf-8")


def autoresearch_prompt(engine: ExperimentEngine) -> str:
    """program.md, preceded by where the research stands, so a fresh context can pick up the loop."""
    return f"{_state_line(engine)}\n\n{program_text(engine.workspace)}"


def _state_line(engine: ExperimentEngine) -> str:
    current = board(engine)
    rows = current.rows
    if not rows:
        return "Where things stand: no experiments yet. Start with the baseline."
    best = current.best
    active = [run.id for run in engine.store.list(ACTIVE_STATUSES)]
    undecided = [row.run_id for row in rows if row.decision is None and not set(row.run_ids) & set(active)]
    parts = [f"{len(rows)} experiments so far"]
    parts.append(f"best kept: {best.run_id} with val_bpb {best.val_bpb:.6f}" if best else "nothing kept yet")
    if active:
        parts.append(f"in progress: {', '.join(active)}")
    if undecided:
        parts.append(f"waiting for a decision: {', '.join(undecided)}")
    return (
        "Where things stand: "
        + "; ".join(parts)
        + ". Before anything else, read the research journal (research_summary(), or the resource "
        "autoresearch://journal): the best so far and how it was reached, what was tried and failed, "
        "what is running, and the noise floor, so you do not repeat old ideas."
    )
