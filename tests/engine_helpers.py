"""Helpers for the experiment-engine tests: workspaces, train.py bodies for the stand-in
harness, and bounded waits (a wait that runs out fails the test; none asserts a duration)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from autoresearch_mcp.sandbox.config import WorkspaceConfig
from autoresearch_mcp.sandbox.engine import ExperimentEngine
from autoresearch_mcp.sandbox.runstore import RunRecord
from autoresearch_mcp.sandbox.workspace import Workspace
from autoresearch_mcp.tools.setup import init_workspace


def train_script(*, sleep: float = 0.0, val_bpb: float = 1.0, before: str = "") -> str:
    """A train.py for the stand-in: run `before`, sleep, then report `val_bpb`."""
    return f"import time\n{before}\ntime.sleep({sleep})\nopen('val_bpb.txt', 'w').write('{val_bpb}')\n"


def new_workspace(root: Path, train_py: str) -> Workspace:
    """A real workspace on the `cpu` profile and one host slot, whose train.py is `train_py`."""
    workspace = init_workspace(root, WorkspaceConfig(profile="cpu", devices="cpu"))
    (root / "train.py").write_text(train_py, encoding="utf-8")
    return workspace


def finish(engine: ExperimentEngine, run_id: str, timeout: float = 60.0) -> RunRecord:
    """The run's record once it has ended; fails the test if it is still going after `timeout`."""
    give_up = time.monotonic() + timeout
    record = engine.store.get(run_id)
    while not record.finished:
        assert time.monotonic() < give_up, f"{run_id} still {record.status} ({record.phase}) after {timeout} s"
        [record] = engine.wait(run_id, 1.0)
    return record


def until(condition: Callable[[], object], timeout: float = 30.0, what: str = "condition") -> None:
    """Poll `condition` until it holds; fails the test after `timeout` seconds."""
    give_up = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < give_up, f"{what} not reached after {timeout} s"
        time.sleep(0.05)
