"""The README's main job, `autoresearch-mcp demo`, as a newcomer runs it (tiny budget)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from autoresearch_mcp.nanochat.data import PreparedData
from autoresearch_mcp.tests.cli_process import clean_env, run_cli

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_demo_runs_the_loop_end_to_end(tmp_path: Path, prepared_cpu_data: PreparedData, cpu_data_dir: Path) -> None:
    workspace = tmp_path / "demo"
    result = run_cli(
        "demo",
        "--workspace",
        str(workspace),
        "--budget",
        "2",
        "--profile",
        "cpu",
        env=clean_env(AUTORESEARCH_MCP_CACHE=str(cpu_data_dir)),
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "AttributeError: 'Tensor' object has no attribute 'sqaure'" in out, "the broken edit comes back as a crash"
    assert f"progress plot: {workspace / '.autoresearch' / 'progress.png'}" in out
    assert (workspace / ".autoresearch" / "progress.png").read_bytes().startswith(PNG_MAGIC)

    with sqlite3.connect(workspace / ".autoresearch" / "runs.db") as db:
        runs = db.execute("SELECT id, status, decision, kind FROM runs ORDER BY id").fetchall()
        floors = db.execute("SELECT runs FROM noise_floors").fetchall()
    assert [r[0] for r in runs] == ["r0001", "r0002", "r0003", "r0004", "r0005", "r0006"]
    assert [r[1] for r in runs] == ["succeeded"] * 5 + ["crashed"]
    assert [r[3] for r in runs] == ["experiment", "noise", "noise", "experiment", "experiment", "experiment"]
    assert floors == [(3,)], "the baseline's keep measured the noise floor from three runs"
    assert "noise floor: the baseline again with other seeds (r0002, r0003)" in out
    experiments = [r for r in runs if r[3] == "experiment"]
    assert experiments[0][2] == "keep" and experiments[-1][2] == "discard"
    assert all(decision in ("keep", "discard") for _, _, decision, _ in experiments), "every experiment is decided"
    # The leaderboard has a row for every experiment; the journal follows it.
    for run_id, status, _, _ in experiments:
        assert any(line.startswith(run_id) and status in line for line in out.splitlines())
    assert "Research journal: 4 experiments (6 runs)" in out
