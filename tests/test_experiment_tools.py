"""The experiment tools as an MCP client sees them, before any run: names, annotations, input
checks, refusals, prompt and resources; and the pure pieces the tools share (downsampling,
the leaderboard's deltas, results.tsv). Runs themselves are exercised in test_loop_e2e.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from autoresearch_mcp.sandbox.config import WorkspaceConfig
from autoresearch_mcp.sandbox.engine import ExperimentEngine
from autoresearch_mcp.sandbox.runstore import RunRecord, RunStore
from autoresearch_mcp.sandbox.workspace import Workspace
from autoresearch_mcp.server.app import build_server
from autoresearch_mcp.server.lab import ResultsWriter
from autoresearch_mcp.tests import stand_in_harness
from autoresearch_mcp.tests.engine_helpers import until
from autoresearch_mcp.tools import experiments
from autoresearch_mcp.tools.experiments import MetricPoint, downsample, last_metric
from autoresearch_mcp.tools.leaderboard import build_board
from autoresearch_mcp.tools.results_tsv import render_results_tsv
from autoresearch_mcp.tools.setup import init_workspace

EXPERIMENT_TOOLS = {
    # name: (read_only, destructive, idempotent)
    "launch_training": (False, False, False),
    "training_status": (True, False, True),
    "read_metrics": (True, False, True),
    "read_log": (True, False, True),
    "stop_training": (False, True, False),
    "keep_experiment": (False, False, False),
    "discard_experiment": (False, False, False),
    "list_experiments": (True, False, True),
    "compare_experiments": (True, False, True),
    "measure_noise": (False, False, False),
    "repeat_experiment": (False, False, False),
    "validate_experiment": (False, False, False),
    "research_summary": (True, False, True),
    "plot_progress": (True, False, True),
    "gpu_status": (True, False, True),
}


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    return init_workspace(tmp_path / "workspace", WorkspaceConfig(profile="cpu", budget_seconds=2, devices="cpu"))


def with_client(workspace: Workspace, session: Any) -> None:
    async def main() -> None:
        async with Client(build_server(workspace), raise_exceptions=True) as client:
            await session(client)

    anyio.run(main)


async def refusal(client: Client, tool: str, **arguments: Any) -> str:
    result = await client.call_tool(tool, arguments)
    assert result.is_error, f"{tool}({arguments}) was accepted: {result.structured_content}"
    return result.content[0].text


def test_tools_are_listed_with_their_annotations(workspace: Workspace) -> None:
    async def session(client: Client) -> None:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
        for name, (read_only, destructive, idempotent) in EXPERIMENT_TOOLS.items():
            hints = tools[name].annotations
            assert (hints.read_only_hint, hints.destructive_hint, hints.idempotent_hint, hints.open_world_hint) == (
                read_only,
                destructive,
                idempotent,
                False,
            ), name
            assert tools[name].description, f"{name} has no description for the model"
        status = tools["training_status"].input_schema["properties"]
        assert set(status) == {"run_id", "wait_seconds"}, "the SDK context and progress callback are not arguments"
        # The long-poll's cap keeps every call inside the 60 s TypeScript-SDK clients wait for an answer.
        assert (status["wait_seconds"]["minimum"], status["wait_seconds"]["maximum"]) == (0, 45)
        assert "before clients time out" in status["wait_seconds"]["description"]
        assert tools["training_status"].output_schema["properties"]["runs"]
        assert tools["list_experiments"].input_schema["properties"]["sort"]["enum"] == ["launch", "val_bpb"]

    with_client(workspace, session)


def test_bad_arguments_are_refused_with_a_reason(workspace: Workspace) -> None:
    async def session(client: Client) -> None:
        assert "less than or equal to 45" in await refusal(client, "training_status", wait_seconds=46)
        assert "greater than or equal to 0" in await refusal(client, "training_status", wait_seconds=-1)
        assert "launch" in await refusal(client, "list_experiments", sort="newest")
        assert "greater than or equal to 1" in await refusal(client, "list_experiments", limit=0)
        assert "greater than or equal to 1" in await refusal(client, "read_metrics", run_id="r0001", last_n=0)
        assert "at least 1 character" in await refusal(client, "launch_training", description="")
        assert "describe the experiment" in await refusal(client, "launch_training", description="   ")
        assert "slots are cpu" in await refusal(client, "launch_training", description="x", device="cuda:7")
        assert "greater than 0" in await refusal(client, "launch_training", description="x", budget_seconds=0)

    with_client(workspace, session)


@pytest.mark.parametrize(
    ("tool", "arguments"),
    [
        ("training_status", {"run_id": "r0042"}),
        ("read_metrics", {"run_id": "r0042"}),
        ("read_log", {"run_id": "r0042"}),
        ("stop_training", {"run_id": "r0042"}),
        ("keep_experiment", {"run_id": "r0042"}),
        ("discard_experiment", {"run_id": "r0042", "note": "n/a"}),
        ("compare_experiments", {"run_a": "r0042", "run_b": "r0043"}),
        ("repeat_experiment", {"run_id": "r0042"}),
        ("validate_experiment", {"run_id": "r0042"}),
    ],
)
def test_unknown_runs_are_refused(workspace: Workspace, tool: str, arguments: dict[str, Any]) -> None:
    async def session(client: Client) -> None:
        message = await refusal(client, tool, **arguments)
        assert "no run 'r0042'" in message and "list_experiments" in message

    with_client(workspace, session)


def test_a_path_is_not_a_run_id(workspace: Workspace) -> None:
    async def session(client: Client) -> None:
        message = await refusal(client, "read_log", run_id="../../etc")
        assert "no run" in message or "not a run id" in message
        with pytest.raises(MCPError, match="no run"):
            await client.read_resource("autoresearch://runs/r0042/log")

    with_client(workspace, session)


def test_a_fresh_workspace(workspace: Workspace) -> None:
    async def session(client: Client) -> None:
        status = await client.call_tool("training_status", {"wait_seconds": 45})
        assert status.structured_content["runs"] == [] and status.structured_content["waited_seconds"] < 45
        assert "launch_training('baseline')" in status.structured_content["message"]
        listed = (await client.call_tool("list_experiments", {})).structured_content
        assert (listed["experiments"], listed["apart"], listed["total"], listed["best_run_id"]) == ([], [], 0, None)
        tsv = (await client.read_resource("autoresearch://results.tsv")).contents[0].text
        assert tsv == "commit\tval_bpb\tmemory_gb\tstatus\tdescription\trun\texperiment\tverdict\tdelta_vs_best\n"
        assert (workspace.state_dir / "results.tsv").read_text(encoding="utf-8") == tsv
        plot = await client.call_tool("plot_progress", {})
        assert plot.content[0].type == "image" and (workspace.state_dir / "progress.png").exists()
        gpus = (await client.call_tool("gpu_status", {})).structured_content
        assert gpus["host"]["cpu_count"] >= 1 and isinstance(gpus["nvidia_gpu"], bool)

    with_client(workspace, session)


def test_prompt_and_program_follow_the_human_s_program_md(workspace: Workspace) -> None:
    (workspace.root / "program.md").write_text("# my lab\nOnly try optimizer changes.\n", encoding="utf-8")

    async def session(client: Client) -> None:
        program = (await client.read_resource("autoresearch://program")).contents[0]
        assert program.text == "# my lab\nOnly try optimizer changes.\n" and program.mime_type == "text/markdown"
        prompt = (await client.get_prompt("autoresearch")).messages[0].content.text
        assert prompt.startswith("Where things stand: no experiments yet.") and prompt.endswith(
            "Only try optimizer changes.\n"
        )
        (workspace.root / "program.md").unlink()
        fallback = (await client.get_prompt("autoresearch")).messages[0].content.text
        assert "Baseline first" in fallback and "Never stop" in fallback, "the shipped template stands in"

    with_client(workspace, session)


# ---- the pure pieces -------------------------------------------------------------------


def point(step: int) -> MetricPoint:
    return MetricPoint(step=step, loss=10.0 / step)


@pytest.mark.parametrize(
    ("n_points", "n", "steps"),
    [(5, 10, [1, 2, 3, 4, 5]), (10, 1, [10]), (10, 4, [1, 4, 7, 10]), (101, 3, [1, 51, 101])],
)
def test_downsample_is_even_and_keeps_the_last(n_points: int, n: int, steps: list[int]) -> None:
    assert [p.step for p in downsample([point(i) for i in range(1, n_points + 1)], n)] == steps


def test_last_metric_skips_a_half_written_line(tmp_path: Path) -> None:
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text(
        json.dumps({"step": 1, "loss": 5.0}) + "\n" + json.dumps({"step": 2, "loss": 4.0}) + "\n" + '{"step": 3, "lo',
        encoding="utf-8",
    )

    assert last_metric(metrics) == MetricPoint(step=2, loss=4.0)
    assert last_metric(tmp_path / "missing.jsonl") is None


def record(
    n: int,
    parent: int | None,
    status: str = "succeeded",
    decision: str | None = None,
    val_bpb: float | None = None,
    budget: float = 2,
) -> RunRecord:
    return RunRecord(
        id=f"r{n:04d}",
        commit=f"c{n:039d}",
        parent_commit=f"c{parent:039d}" if parent else "c-initial",
        description=f"idea\t{n}\n",
        profile="cpu",
        budget_seconds=budget,
        seed=42,
        status=status,
        decision=decision,
        created_at=100.0 + n,
        started_at=100.0 + n,
        finished_at=None if status in ("queued", "running") else 110.0 + n,
        summary={"val_bpb": val_bpb, "peak_memory_mb": 2048.0} if val_bpb is not None else None,
        experiment=f"r{n:04d}",
    )


def test_leaderboard_deltas_and_results_tsv() -> None:
    records = [
        record(1, None, decision="keep", val_bpb=2.0),
        record(2, 1, decision="keep", val_bpb=1.9),
        record(3, 2, decision="discard", val_bpb=1.95),
        record(4, 2, "crashed", "discard"),
        record(5, 4, val_bpb=1.8),  # its parent crashed: nothing measured to compare with
        record(6, 2, "running"),
        record(7, 2, val_bpb=1.5, budget=90),  # a longer budget: not ranked against the others
    ]

    rows = build_board(records, [], k=2.0).rows

    assert [(r.delta_vs_parent, r.delta_vs_best, r.apart) for r in rows] == [
        (None, 0.1, None),
        (-0.1, 0.0, None),
        (0.05, 0.05, None),
        (None, None, None),
        (None, -0.1, None),
        (None, None, None),
        (None, None, "budget 90 s, best r0002 is 2 s"),
    ]
    assert [r.verdict for r in rows] == ["unknown", "unknown", "unknown", None, "unknown", None, "not comparable"]
    assert rows[0].memory_gb == 2.0 and rows[0].duration_seconds == 10.0 and rows[0].commit == "c000000"
    assert render_results_tsv(records, [], k=2.0).splitlines() == [
        "commit\tval_bpb\tmemory_gb\tstatus\tdescription\trun\texperiment\tverdict\tdelta_vs_best",
        "c000000\t2.000000\t2.0\tkeep\tidea 1\tr0001\tr0001\tunknown\t+0.100000",
        "c000000\t1.900000\t2.0\tkeep\tidea 2\tr0002\tr0002\tunknown\t+0.000000",
        "c000000\t1.950000\t2.0\tdiscard\tidea 3\tr0003\tr0003\tunknown\t+0.050000",
        "c000000\t0.000000\t0.0\tcrash\tidea 4\tr0004\tr0004\t\t",
        "c000000\t1.800000\t2.0\tpending\tidea 5\tr0005\tr0005\tunknown\t-0.100000",
        "c000000\t1.500000\t2.0\tpending\tidea 7\tr0007\tr0007\tnot comparable\t",
    ]


def test_a_long_poll_leaves_the_event_loop_free_and_can_be_cancelled(workspace: Workspace) -> None:
    (workspace.root / "train.py").write_text("import time\ntime.sleep(600)\n", encoding="utf-8")
    with ExperimentEngine(workspace, command=stand_in_harness.command) as engine:
        run_id = engine.launch("sleeps until stopped").id
        try:
            while engine.store.get(run_id).phase != "training":
                engine.wait(run_id, timeout=5)
            progress_reports: list[tuple[float, float, str]] = []
            waited = anyio.run(
                experiments.training_status, engine, run_id, 2.5, lambda *report: progress_reports.append(report)
            )
            assert not waited.changed and waited.runs[0].status == "running"
            assert progress_reports and all(
                total == 2.5 and f"{run_id} running (training)" in message for _, total, message in progress_reports
            )

            async def cancel_a_long_poll() -> tuple[bool, int]:
                ticks = 0

                async def tick() -> None:
                    nonlocal ticks
                    while True:
                        await anyio.sleep(0.01)
                        ticks += 1

                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(tick)
                    with anyio.move_on_after(0.5) as deadline:
                        await experiments.training_status(engine, run_id, wait_seconds=120)
                    tasks.cancel_scope.cancel()
                return deadline.cancelled_caught, ticks

            cancelled, ticks = anyio.run(cancel_a_long_poll)
            assert cancelled and ticks > 0, "the wait ran off the event loop and ended on cancellation"
            assert engine.store.get(run_id).status == "running", "cancelling a status call leaves the run alone"
        finally:
            engine.stop(run_id)


def test_results_tsv_follows_the_store_on_its_own_thread(tmp_path: Path) -> None:
    """Whoever changes a run only writes the store; the writer thread brings the file up to date."""
    store = RunStore(tmp_path / "runs.db")
    writer = ResultsWriter(tmp_path / "results.tsv", store, k=2.0)
    writer.start()
    try:
        assert (
            (tmp_path / "results.tsv")
            .read_text(encoding="utf-8")
            .startswith("commit\tval_bpb\tmemory_gb\tstatus\tdescription\t")
        )
        run_id = store.create(
            commit="c" * 40, parent_commit=None, description="idea", profile="cpu", budget_seconds=60, seed=42
        ).id
        store.update(run_id, status="succeeded", summary={"val_bpb": 1.25, "peak_memory_mb": 2048})
        until(lambda: "1.250000\t2.0\tpending\tidea" in (tmp_path / "results.tsv").read_text(encoding="utf-8"))
    finally:
        writer.stop()
    store.update(run_id, decision="keep")
    assert "pending" in (tmp_path / "results.tsv").read_text(encoding="utf-8"), "a stopped writer writes nothing"
