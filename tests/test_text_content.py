"""What a text-only host shows its model: each tool's text content, through a real MCP client.

Hosts that ignore structuredContent pass `content[].text` to the model as is, so every tool's
text must read well on its own: numbered file lines, diffs as diffs, aligned tables, status in
a line or two with the next step, and never a JSON dump. Runs use the stand-in harness (what
train.py reports is what the run measures); with `-s` the test prints every answer, which is
how to read them as an agent would.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp.types import CallToolResult

from autoresearch_mcp.nanochat import contract
from autoresearch_mcp.nanochat.profiles import PROFILES
from autoresearch_mcp.sandbox.workspace import Workspace
from autoresearch_mcp.server.app import build_server
from autoresearch_mcp.tests import stand_in_harness
from autoresearch_mcp.tests.engine_helpers import new_workspace, train_script
from autoresearch_mcp.tools.experiments import MAX_WAIT_SECONDS

SLEEPS = "import time\ntime.sleep(600)\n"
CRASHES = "def forward(x):\n    return x / 0\nforward(1)\n"
STEPS = [
    {"step": s, "loss": 4.0 - s / 100, "progress": s / 200, "elapsed": s / 10, "tok_per_s": 123456.7}
    for s in (0, 100, 200)
]


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    return new_workspace(tmp_path / "ws", train_script(val_bpb=1.5))


class TextHost:
    """A client that, like a text-only host, keeps only the text of each answer."""

    def __init__(self, client: Client):
        self.client = client
        self.shown: list[str] = []

    async def text(self, tool: str, **arguments: Any) -> str:
        result = await self.client.call_tool(tool, arguments)
        assert not result.is_error, f"{tool} failed: {result.content[0].text}"
        return self.read(tool, arguments, result)

    def read(self, tool: str, arguments: dict[str, Any], result: CallToolResult) -> str:
        texts = [block.text for block in result.content if block.type == "text"]
        assert len(texts) == 1, f"{tool}: one text block, not {len(texts)}"
        text = texts[0]
        assert not _is_json(text), f"{tool} answers with a JSON dump:\n{text}"
        assert "\\n" not in text and '\\"' not in text, f"{tool}'s text is escaped:\n{text}"
        self.shown.append(f"=== {tool}({', '.join(f'{k}={v!r}' for k, v in arguments.items())})\n{text}")
        return text

    async def wait_until_finished(self, run_id: str) -> str:
        for _ in range(20):
            text = await self.text("training_status", run_id=run_id, wait_seconds=10)
            if f"{run_id} running" not in text and f"{run_id} queued" not in text:
                return text
        pytest.fail(f"{run_id} did not finish")


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def in_session(workspace: Workspace, story: Any) -> None:
    async def main() -> None:
        async with Client(build_server(workspace, command=stand_in_harness.command), raise_exceptions=True) as client:
            host = TextHost(client)
            try:
                await story(host)
            finally:
                print("\n\n".join(host.shown))

    anyio.run(main)


def test_the_file_tools_read_as_files_and_diffs(workspace: Workspace) -> None:
    async def story(host: TextHost) -> None:
        text = await host.text("read_file", path="train.py")
        lines = text.splitlines()
        assert lines[0] == "train.py (lines 1-4 of 4, editable)" and lines[1] == "1\timport time"

        listing = (await host.text("list_files")).splitlines()
        assert listing[0].startswith("3 files (1 editable)")
        row = next(line for line in listing if line.startswith("train.py "))
        assert row.endswith("editable")
        assert len({re.search(r"[\d,]+(?=\s|$)", line).end() for line in listing[1:]}) == 1, "sizes aligned"

        found = await host.text("search_files", pattern="val_bpb", path="train.py")
        assert found.splitlines() == ["train.py:4:open('val_bpb.txt', 'w').write('1.5')", "1 match in 1 file searched"]

        edited = await host.text("edit_file", path="train.py", old_text="1.5", new_text="1.4")
        assert edited.startswith(
            "changed train.py:\ndiff --git a/train.py b/train.py\n--- a/train.py\n+++ b/train.py\n@@ "
        )
        assert edited.endswith("\n-open('val_bpb.txt', 'w').write('1.5')\n+open('val_bpb.txt', 'w').write('1.4')")

        diff = edited.split("\n", 1)[1].replace("1.4", "1.3").replace("1.5", "1.4") + "\n"
        dry = await host.text("apply_diff", diff=diff, dry_run=True)
        assert dry.startswith("dry run, nothing written; it would change train.py:\ndiff --git a/train.py b/train.py\n")

        versus = await host.text("workspace_diff")
        assert (
            versus.startswith("working copy vs best (") and "1 file differs: train.py\ndiff --git a/train.py" in versus
        )

        reset = await host.text("reset_workspace")
        assert reset.startswith("reset to best (") and "restored train.py" in reset and "\n-open(" in reset
        assert (await host.text("reset_workspace")).startswith("nothing to reset")

    in_session(workspace, story)


def test_the_experiment_tools_read_as_status_lines_and_tables(workspace: Workspace) -> None:
    async def story(host: TextHost) -> None:
        assert await host.text("list_experiments") == (
            "no experiments yet; start with a baseline: launch_training('baseline')"
        )
        launched = await host.text("launch_training", description="baseline")
        assert launched.startswith("r0001 running on cpu: commit ")
        assert launched.endswith(f"next: training_status(run_id='r0001', wait_seconds={MAX_WAIT_SECONDS}) to follow it")

        status = await host.wait_until_finished("r0001")
        assert status.startswith("r0001 succeeded: val_bpb 1.500000, verdict: unknown, ") and "[baseline]" in status
        assert "next: keep_experiment('r0001') to make it the baseline" in status and len(status.splitlines()) <= 3

        write_metrics(workspace, "r0001")
        metrics = (await host.text("read_metrics", run_id="r0001")).splitlines()
        assert metrics[0] == "r0001 succeeded: val_bpb 1.500000 [baseline]"
        assert metrics[1] == "verdict: unknown: 1.500000; nothing kept yet: keeping it makes it the baseline"
        assert metrics[2].startswith("summary: training_seconds ")
        header, *rows = metrics[4:8]
        assert header.split() == ["step", "loss", "progress", "elapsed", "tok_per_s"]
        assert rows[-1].split() == ["200", "2", "1", "20", "123,457"] and len(set(map(len, [header, *rows]))) == 1

        kept = (await host.text("keep_experiment", run_id="r0001", note="baseline")).splitlines()
        assert kept[:2] == [
            "kept r0001 (val_bpb 1.500000); best: r0001 at 1.500000",
            "verdict: unknown: 1.500000; the baseline: nothing was kept before it",
        ]
        assert kept[2].startswith("next: the noise floor is being measured (r0002, r0003, r0004: the baseline")
        noise = await host.wait_until_finished("r0004")
        assert noise.startswith("r0004 succeeded: val_bpb 1.500000, verdict: unknown, noise of r0001, ")
        assert "next: a noise run of r0001: nothing to decide" in noise

        (workspace.root / "train.py").write_text(CRASHES, encoding="utf-8")
        await host.text("launch_training", description="divide by zero")
        crashed = await host.wait_until_finished("r0005")
        assert crashed.startswith("r0005 crashed: ") and "ZeroDivisionError" in crashed
        log = await host.text("read_log", run_id="r0005")
        assert log.startswith("r0005 crashed: exit 4") and "Traceback (most recent call last):" in log
        assert log.count("ZeroDivisionError: division by zero") == 2, "the log once, its error line once, no repeat"
        assert (await host.text("discard_experiment", run_id="r0005")).startswith("discarded r0005; best: r0001")

        board = (await host.text("list_experiments")).splitlines()
        # The stand-in scores every seed alike: the floor in force is the profile's minimum, and says why.
        minimum = PROFILES["cpu"].min_noise_std
        floor = (
            f"std {minimum:.6f} (the cpu profile's minimum; 4 runs of r0001 measured 0.000000, identical val_bpb "
            "with different seeds: the code ignores the run's seed (run.seed))"
        )
        assert board[0].startswith(f"2 experiments (5 runs); best r0001 1.500000; noise {floor}")
        assert board[1] == "ranked (cpu, 60 s, builtin):"
        assert board[2].split()[:5] == ["run", "status", "decision", "val_bpb", "n"]
        assert board[3].split()[:4] == ["r0005", "crashed", "discard", "-"]
        assert board[4].split()[:6] == ["r0001", "succeeded", "keep", "1.500000", "4", "+0.000000"]

        journal = (await host.text("research_summary")).splitlines()
        assert journal[:3] == [
            "Research journal: 2 experiments (5 runs) on cpu, 60 s, builtin.",
            'Best: r0001 1.500000 (mean of 4) (baseline) [top level, imports, DEPTH] "baseline"',
            f"Noise floor: {floor}; better means more than {2 * minimum:.6f} below the best",
        ]
        assert journal[-4:-1] == [
            f'  {name}: r0005 crashed "divide by zero"' for name in ("imports", "top level", "forward")
        ]

        compared = (await host.text("compare_experiments", run_a="r0001", run_b="r0005")).splitlines()
        assert compared[0].startswith("r0001 (") and " -> r0005 (" in compared[0]
        assert compared[1].split() == ["metric", "r0001", "r0005", "change"]
        assert "--- a/train.py" in compared and "+forward(1)" in compared

        gpus = (await host.text("gpu_status")).splitlines()
        assert len(gpus) <= 4 and any(line.startswith("host: ") for line in gpus)

        plot = await host.client.call_tool("plot_progress", {})
        assert plot.content[0].type == "image"
        summary = host.read("plot_progress", {}, plot)
        assert summary.startswith(
            "val_bpb per experiment: 2 finished experiments, 1 kept; best kept: r0001 at val_bpb 1.500000 [baseline]; "
            f"noise band +/- {2 * minimum:.6f} around the best."
        )

        (workspace.root / "train.py").write_text(SLEEPS, encoding="utf-8")
        await host.text("launch_training", description="sleeps")
        stopped = await host.text("stop_training", run_id="r0006")
        assert stopped.startswith("r0006 killed: ") and "stopped by stop_training" in stopped

    in_session(workspace, story)


def test_errors_are_one_plain_sentence(workspace: Workspace) -> None:
    async def story(host: TextHost) -> None:
        result = await host.client.call_tool("read_metrics", {"run_id": "r0042"})
        assert result.is_error and "no run 'r0042'" in result.content[0].text
        assert "\n" not in result.content[0].text and not _is_json(result.content[0].text)

    in_session(workspace, story)


def test_the_longest_allowed_wait_answers_within_50_seconds(workspace: Workspace) -> None:
    """The schema's largest wait_seconds on a run that does not change answers in time."""
    (workspace.root / "train.py").write_text(SLEEPS, encoding="utf-8")

    async def story(host: TextHost) -> None:
        tools = {tool.name: tool for tool in (await host.client.list_tools()).tools}
        largest = tools["training_status"].input_schema["properties"]["wait_seconds"]["maximum"]
        assert largest <= 45
        await host.text("launch_training", description="sleeps")
        await host.text("training_status", run_id="r0001", wait_seconds=5)  # past setup, into training
        started = time.monotonic()
        status = await host.text("training_status", run_id="r0001", wait_seconds=largest)
        answered = time.monotonic() - started
        assert largest - 1 < answered < 50, f"answered after {answered:.1f} s"
        assert "r0001 running (training)" in status and "no change yet" in status
        await host.text("stop_training", run_id="r0001")

    in_session(workspace, story)


def write_metrics(workspace: Workspace, run_id: str) -> None:
    """The step records the harness writes while training (the stand-in writes none)."""
    path = workspace.state_dir / "runs" / run_id / contract.OUT_DIR / contract.METRICS
    path.parent.mkdir(exist_ok=True)
    path.write_text("".join(json.dumps(step) + "\n" for step in STEPS), encoding="utf-8")
