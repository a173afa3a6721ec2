"""`address = "local"`: the server starts a one-node Ray itself, leaves it to the next server while
runs go on, and stops it (every process of it) when it shuts down with nothing running."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest.importorskip("ray", reason="Ray is not installed here (pip install 'autoresearch-mcp[ray]')")

from autoresearch_mcp.sandbox.engine import ExperimentEngine
from autoresearch_mcp.sandbox.ray_cluster import HEAD_FILE
from autoresearch_mcp.sandbox.ray_head import LocalHead, processes_of
from autoresearch_mcp.tests import stand_in_harness
from autoresearch_mcp.tests.engine_helpers import finish, train_script, until
from autoresearch_mcp.tests.ray_helpers import cluster_workspace, stop_everything


@pytest.mark.timeout(400)
def test_a_local_head_is_started_kept_for_running_runs_and_stopped(
    tmp_path: Path, cpu_data_dir: Path, prepared_cpu_data: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUTORESEARCH_MCP_CACHE", str(cpu_data_dir))  # the head, and so its jobs, inherit it
    workspace = cluster_workspace(tmp_path / "ws", train_script(sleep=4, val_bpb=1.25), "local")
    state = workspace.state_dir / HEAD_FILE
    first = ExperimentEngine(workspace, command=stand_in_harness.command, poll_seconds=0.1)
    first.start()
    head = None
    try:
        head = LocalHead.load(state)
        assert head is not None and first.slots  # one slot per CPU Ray found here
        run_id = first.launch("on a head of our own", budget_seconds=5).id
        until(lambda: first.store.get(run_id).phase == "training", 90, "training")
        first.shutdown()
        assert head.running(), "a head with runs going is left for the next server"

        second = ExperimentEngine(workspace, command=stand_in_harness.command, poll_seconds=0.1)
        second.start()
        try:
            assert LocalHead.load(state) == head, "the next server uses the same head"
            record = finish(second, run_id, 120)
            assert (record.status, record.summary and record.summary["val_bpb"]) == ("succeeded", 1.25)
        finally:
            stop_everything(second)
        assert not head.running() and not processes_of(head.temp_dir) and not os.path.exists(head.temp_dir)
        assert not state.exists()
    finally:
        if head is not None and head.running():
            head.stop()
