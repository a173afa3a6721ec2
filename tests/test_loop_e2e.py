"""The whole autoresearch loop through MCP, with real training runs on the `cpu` profile.

One story per test, as an agent would drive it: a baseline that is kept, a run stopped while
it holds the only slot with two launches queued behind it, a worse change that is discarded,
a change that raises and is read back as a traceback; then list_experiments, results.tsv and
plot_progress must tell the same story. Over real stdio, the server is restarted while a run
is live: the run is re-adopted, and a run whose process died meanwhile ends up `lost`. And
research validity on real numbers: the baseline's keep measures the noise floor from three
seeds, and a worse change is refused with the numbers, then kept by force.

Budgets are 2 s of training; the model is shrunk through edit_file, as an agent would.
"""

from __future__ import annotations

import base64
import csv
import io
import os
import signal
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import anyio
import psutil
import pytest
from mcp import Client, StdioServerParameters
from PIL import Image

from autoresearch_mcp.nanochat.data import PreparedData
from autoresearch_mcp.sandbox.config import WorkspaceConfig
from autoresearch_mcp.sandbox.runner import RunProcess
from autoresearch_mcp.sandbox.runstore import RunStore
from autoresearch_mcp.sandbox.workspace import Workspace
from autoresearch_mcp.server.app import build_server
from autoresearch_mcp.tests.agent import ACTIVE, Agent
from autoresearch_mcp.tests.cli_process import clean_env, cli_path
from autoresearch_mcp.tests.test_gpu_status import FakeNvml
from autoresearch_mcp.tools.setup import init_workspace

BUDGET_SECONDS = 2.0
# The template's cpu model shrunk to depth 1, width 32 (two heads of 16), 1,024 tokens per step.
TINY_MODEL = {
    'DEPTH = {"h100": 8, "gpu": 6, "cpu": 2}': 'DEPTH = {"h100": 8, "gpu": 6, "cpu": 1}',
    "ASPECT_RATIO = 64": "ASPECT_RATIO = 32",
    'HEAD_DIM = {"h100": 128, "gpu": 64, "cpu": 32}': 'HEAD_DIM = {"h100": 128, "gpu": 64, "cpu": 16}',
    'ROWS = {"h100": 64, "gpu": 16, "cpu": 16}': 'ROWS = {"h100": 64, "gpu": 16, "cpu": 4}',
    'BATCH_TOKENS = {"h100": 2**19, "gpu": 2**17, "cpu": 2**12}': 'BATCH_TOKENS = {"h100": 2**19, "gpu": 2**17, "cpu": 2**10}',
}
# Placed before `import torch`, so a long run costs no CPU while it waits to be stopped.
SLEEP_AT_IMPORT = "import time\ntime.sleep(600)  # a run that only ends when stopped\nimport contextlib\n"
NO_LEARNING = {
    "MATRIX_LR = 0.02": "MATRIX_LR = 0.0",
    "EMBEDDING_LR = 0.2": "EMBEDDING_LR = 0.0",
    "UNEMBEDDING_LR = 0.004": "UNEMBEDDING_LR = 0.0",
    "SCALAR_LR = 0.5": "SCALAR_LR = 0.0",
}
CRASH = {
    "    model = GPT(config).to(run.device)\n": '    raise RuntimeError("deliberate failure for the test")\n    model = GPT(config).to(run.device)\n'
}


@pytest.fixture
def workspace(tmp_path: Path, prepared_cpu_data: PreparedData, cpu_data_dir: Path) -> Iterator[Workspace]:
    # No automatic noise runs after the baseline keep: this story is about the queue and the record.
    config = WorkspaceConfig(
        profile="cpu", budget_seconds=BUDGET_SECONDS, devices="cpu", data_dir=str(cpu_data_dir), noise_runs=0
    )
    workspace = init_workspace(tmp_path / "workspace", config)
    yield workspace
    kill_leftover_runs(workspace)


def kill_leftover_runs(workspace: Workspace) -> None:
    """Runs outlive their server by design; a test that failed half-way must not leave any behind."""
    store = RunStore(workspace.state_dir / "runs.db")
    try:
        for record in store.list(["running"]):
            process = RunProcess.adopt(record.pid, record.pid_create_time) if record.pid else None
            if process is not None:
                process.signal_group(signal.SIGKILL)
    finally:
        store.close()


def process_group_gone(leader_pid: int) -> bool:
    try:
        os.killpg(leader_pid, 0)
    except ProcessLookupError:
        return True
    return False


def run_record(workspace: Workspace, run_id: str):
    """What the store holds (pids included), read beside the server as any reader may."""
    store = RunStore(workspace.state_dir / "runs.db")
    try:
        return store.get(run_id)
    finally:
        store.close()


def test_the_research_loop(workspace: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:

    async def story() -> None:
        async with Client(build_server(workspace), raise_exceptions=True) as client:
            agent = Agent(client)

            # Baseline first: the template, shrunk for a 2 s budget.
            await agent.edit(TINY_MODEL)
            baseline = await agent.launch("baseline")
            assert (baseline["run_id"], baseline["status"], baseline["device"]) == ("r0001", "running", "cpu")
            assert "still running" in await agent.refused("keep_experiment", run_id="r0001")
            done = await agent.finish("r0001")
            assert done["status"] == "succeeded" and done["progress"] == 1.0 and done["latest_loss"] > 0
            metrics = await agent.call("read_metrics", run_id="r0001", last_n=3)
            baseline_bpb = metrics["val_bpb"]
            assert 0 < baseline_bpb == metrics["summary"]["val_bpb"]
            assert len(metrics["history"]) == min(3, metrics["logged_steps"])
            assert metrics["history"][-1]["progress"] == 1.0, "the downsampled history ends with the last step"
            kept = await agent.call("keep_experiment", run_id="r0001", note="the reference")
            assert (kept["best_run_id"], kept["best_val_bpb"]) == ("r0001", baseline_bpb)
            assert "already decided" in await agent.refused("discard_experiment", run_id="r0001")

            # A long run holds the only slot; two launches queue behind it, in order.
            await agent.edit({"import contextlib\n": SLEEP_AT_IMPORT})
            sleeper = await agent.launch("a run that hangs")
            await agent.call("reset_workspace")
            # Far worse than the 2 s baseline's seed spread (which is wide on a busy machine):
            # confident random guesses score well above the uniform guesses of an untrained model.
            await agent.edit({**NO_LEARNING, "lm_head.weight.normal_(std=0.001)": "lm_head.weight.normal_(std=1.0)"})
            worse = await agent.launch("no learning, large random output weights")
            await agent.call("reset_workspace")
            await agent.edit(CRASH)
            crash = await agent.launch("raise before building the model")
            await agent.call("reset_workspace")
            assert [sleeper["status"], worse["status"], crash["status"]] == ["running", "queued", "queued"]
            assert [worse["queue_position"], crash["queue_position"]] == [1, 2]
            active = await agent.call("training_status")
            assert [run["run_id"] for run in active["runs"]] == ["r0002", "r0003", "r0004"]

            # While it waits: progress notifications, and the run's processes seen on a (faked) GPU.
            running = await agent.until("r0002", lambda run: run["phase"] == "training")
            assert running["status"] == "running" and running["elapsed_seconds"] >= 0
            notes: list[tuple[float, float | None, str | None]] = []

            async def on_progress(progress: float, total: float | None, message: str | None) -> None:
                notes.append((progress, total, message))

            unchanged = await agent.status("r0002", wait_seconds=3, progress=on_progress)
            assert unchanged["status"] == "running" and notes, "a long-poll reports progress while it waits"
            assert all(total == 3 and "r0002 running" in message for _, total, message in notes)
            leader = run_record(workspace, "r0002").pid
            train_py = psutil.Process(leader).children(recursive=True)
            assert train_py, "the harness runs train.py as a child process"
            FakeNvml({0: [train_py[0].pid]}).install(monkeypatch)
            gpus = await agent.call("gpu_status")
            assert gpus["nvidia_gpu"] and gpus["running"] == {"cpu": "r0002"}
            assert [p["run_id"] for p in gpus["gpus"][0]["processes"]] == ["r0002"]
            monkeypatch.undo()

            # Stopped mid-way: killed, the whole process group gone, the queue moves on.
            stopped = await agent.call("stop_training", run_id="r0002")
            assert stopped["status"] == "killed"
            assert process_group_gone(leader) and not any(
                p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in train_py
            )
            assert "nothing to stop" in await agent.refused("stop_training", run_id="r0002")
            assert "has no val_bpb" in await agent.refused("keep_experiment", run_id="r0002")
            await agent.call("discard_experiment", run_id="r0002", note="stopped")

            # The worse change runs next and is discarded.
            done = await agent.finish("r0003")
            assert done["status"] == "succeeded" and done["val_bpb"] > baseline_bpb
            await agent.call("discard_experiment", run_id="r0003", note="no learning, no progress")

            # The change that raises: crashed, with its traceback.
            done = await agent.finish("r0004")
            assert done["status"] == "crashed" and "deliberate failure" in done["error"]
            log = await agent.call("read_log", run_id="r0004", tail=50)
            assert log["traceback"].startswith("Traceback (most recent call last):")
            assert log["traceback"].rstrip().endswith("RuntimeError: deliberate failure for the test")
            assert "train.py" in log["traceback"] and "deliberate failure" in log["log"]
            assert "has no val_bpb" in await agent.refused("keep_experiment", run_id="r0004")
            await agent.call("discard_experiment", run_id="r0004")
            order = [run_record(workspace, rid) for rid in ("r0002", "r0003", "r0004")]
            # In launch order (the next one may set up while the one before is evaluated: a held start).
            assert order[0].started_at <= order[1].started_at <= order[2].started_at, "queued runs started in order"
            assert order[0].finished_at <= order[1].finished_at <= order[2].finished_at, "and ended in order"

            await check_the_record(agent, client, workspace, baseline_bpb)

    anyio.run(story)


async def check_the_record(agent: Agent, client: Client, workspace: Workspace, baseline_bpb: float) -> None:
    """list_experiments, results.tsv and plot_progress agree with what happened."""
    listed = await agent.call("list_experiments")
    rows = {row["run_id"]: row for row in listed["experiments"]}
    assert list(rows) == ["r0004", "r0003", "r0002", "r0001"], "newest first"
    assert [(rows[r]["status"], rows[r]["decision"]) for r in ("r0001", "r0002", "r0003", "r0004")] == [
        ("succeeded", "keep"),
        ("killed", "discard"),
        ("succeeded", "discard"),
        ("crashed", "discard"),
    ]
    assert (listed["best_run_id"], listed["best_val_bpb"], listed["total"]) == ("r0001", baseline_bpb, 4)
    worse = rows["r0003"]
    assert (
        worse["delta_vs_best"] == worse["delta_vs_parent"] == pytest.approx(worse["val_bpb"] - baseline_bpb, abs=1e-6)
    )
    assert worse["delta_vs_best"] > 0 and rows["r0001"]["delta_vs_best"] == 0
    assert rows["r0004"]["val_bpb"] is None and rows["r0004"]["duration_seconds"] > 0
    by_score = await agent.call("list_experiments", sort="val_bpb", limit=2)
    assert [row["run_id"] for row in by_score["experiments"]] == ["r0001", "r0003"]

    tsv = (await client.read_resource("autoresearch://results.tsv")).contents[0].text
    assert (workspace.state_dir / "results.tsv").read_text(encoding="utf-8") == tsv, "the exported file is current"
    table = list(csv.DictReader(io.StringIO(tsv), delimiter="\t"))
    assert [(r["commit"], r["status"], r["description"]) for r in table] == [
        (rows[rid]["commit"], status, rows[rid]["description"])
        for rid, status in (("r0001", "keep"), ("r0002", "crash"), ("r0003", "discard"), ("r0004", "crash"))
    ]
    assert float(table[0]["val_bpb"]) == pytest.approx(baseline_bpb, abs=1e-6) and float(table[0]["memory_gb"]) > 0
    assert table[3]["val_bpb"] == "0.000000"

    compared = await agent.call("compare_experiments", run_a="r0001", run_b="r0003")
    assert "-MATRIX_LR = 0.02" in compared["diff"] and "+MATRIX_LR = 0.0" in compared["diff"]
    val = next(m for m in compared["metrics"] if m["name"] == "val_bpb")
    assert val["delta"] == pytest.approx(worse["val_bpb"] - baseline_bpb, abs=1e-6)

    plot = await client.call_tool("plot_progress", {})
    image, summary = plot.content
    assert "4 finished experiments, 1 kept; best kept: r0001" in summary.text
    png = base64.b64decode(image.data)
    assert image.mime_type == "image/png" and Image.open(io.BytesIO(png)).format == "PNG"
    assert (workspace.state_dir / "progress.png").read_bytes() == png

    prompt = (await client.get_prompt("autoresearch")).messages[0].content.text
    assert "4 experiments so far; best kept: r0001" in prompt and "Never stop" in prompt
    log = (await client.read_resource("autoresearch://runs/r0004/log")).contents[0].text
    assert "RuntimeError: deliberate failure for the test" in log


def test_server_restart_mid_run_over_stdio(workspace: Workspace) -> None:
    server = StdioServerParameters(
        command=cli_path(), args=["serve", "--workspace", str(workspace.root)], env=clean_env(), cwd=str(workspace.root)
    )

    async def serve_once(session: Callable[[Agent], Awaitable[None]]) -> None:
        async with Client(server) as client:
            await session(Agent(client))

    async def launch_a_hanging_run(agent: Agent) -> None:
        await agent.call("reset_workspace")
        await agent.edit({"import contextlib\n": SLEEP_AT_IMPORT})
        launched = await agent.launch("a run that hangs")
        await agent.until(launched["run_id"], lambda run: run["phase"] == "training")

    async def readopt_and_stop(agent: Agent) -> None:
        run = await agent.status("r0001")
        assert run["status"] == "running", "a live run is re-adopted by the next server"
        assert (await agent.call("stop_training", run_id="r0001"))["status"] == "killed"

    async def find_it_lost(agent: Agent) -> None:
        run = await agent.until("r0002", lambda run: run["status"] not in ACTIVE, max_polls=3)
        assert run["status"] == "lost" and "server restart" in run["error"]
        listed = await agent.call("list_experiments")
        assert [row["status"] for row in listed["experiments"]] == ["lost", "killed"]
        tsv = (await agent.client.read_resource("autoresearch://results.tsv")).contents[0].text
        assert [line.split("\t")[3] for line in tsv.splitlines()[1:]] == ["crash", "crash"]

    async def story() -> None:
        await serve_once(launch_a_hanging_run)
        first = run_record(workspace, "r0001")
        assert first.status == "running" and not process_group_gone(first.pid), "the run outlives its server"
        await serve_once(readopt_and_stop)
        assert process_group_gone(first.pid)

        await serve_once(launch_a_hanging_run)
        second = run_record(workspace, "r0002")
        os.killpg(second.pid, signal.SIGKILL)  # dies while no server watches it
        await serve_once(find_it_lost)

    anyio.run(story)


def test_noise_floor_and_gated_keeps_on_the_real_harness(
    tmp_path: Path, prepared_cpu_data: PreparedData, cpu_data_dir: Path
) -> None:
    config = WorkspaceConfig(
        profile="cpu", budget_seconds=BUDGET_SECONDS, devices="cpu", data_dir=str(cpu_data_dir), noise_runs=2
    )
    workspace = init_workspace(tmp_path / "workspace", config)

    async def story() -> None:
        async with Client(build_server(workspace), raise_exceptions=True) as client:
            agent = Agent(client)
            await agent.edit(TINY_MODEL)
            baseline = await agent.launch("baseline")
            await agent.finish(baseline["run_id"])
            kept = await agent.call("keep_experiment", run_id=baseline["run_id"])
            assert kept["noise_runs"] == ["r0002", "r0003"], "the first keep measures the noise floor"
            seeds = []
            for run_id in kept["noise_runs"]:
                assert (await agent.finish(run_id))["status"] == "succeeded"
                seeds.append((await agent.call("read_metrics", run_id=run_id))["summary"]["seed"])
            assert seeds == [43, 44], "each noise run trained with its own seed"

            board = await agent.call("list_experiments")
            floor = board["noise_floor"]
            (row,) = board["experiments"]
            assert (floor["runs"], floor["experiment"], row["runs"]) == (3, "r0001", 3)
            assert floor["measured_std"] > 0, "different seeds give different val_bpb"
            assert floor["measured_std"] == pytest.approx(row["spread"], abs=1e-6)

            # Far worse than the 2 s baseline's seed spread (which is wide on a busy machine):
            # confident random guesses score well above the uniform guesses of an untrained model.
            await agent.edit({**NO_LEARNING, "lm_head.weight.normal_(std=0.001)": "lm_head.weight.normal_(std=1.0)"})
            worse = await agent.launch("no learning, large random output weights")
            await agent.finish(worse["run_id"])
            verdict = (await agent.call("read_metrics", run_id=worse["run_id"]))["verdict"]
            assert verdict["verdict"] == "worse" and verdict["delta"] > verdict["threshold"] > 0
            refusal = await agent.refused("keep_experiment", run_id=worse["run_id"])
            assert "is worse than the best" in refusal and f"{verdict['delta']:+.6f}" in refusal
            forced = await agent.call("keep_experiment", run_id=worse["run_id"], force=True, note="to see it recorded")
            assert forced["forced"] and forced["best_run_id"] == "r0001"
            listed = await agent.call("list_experiments")
            assert [(r["run_id"], r["forced"]) for r in listed["experiments"]] == [("r0004", True), ("r0001", False)]

    try:
        anyio.run(story)
    finally:
        kill_leftover_runs(workspace)
