"""`autoresearch-mcp demo`: a scripted agent session, end to end, through the real protocol.

This is what an agent does, minus the thinking: it starts the server as a stdio subprocess
in a fresh workspace, measures a baseline and keeps it, which measures the noise floor (the
baseline again with other seeds), then tries a few ideas, each as a real unified diff to
train.py: launch, watch with progress, read the trusted val_bpb and its verdict against the
noise, keep only what beats the best beyond the noise, discard the rest. One idea is
deliberately broken, to show how a crash comes back. It ends with the leaderboard, the
research journal and the saved progress plot.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from mcp import Client, StdioServerParameters

from autoresearch_mcp.nanochat.profiles import resolve_profile
from autoresearch_mcp.sandbox.config import WorkspaceConfig
from autoresearch_mcp.server.cli import budget_seconds, refuse_non_directory
from autoresearch_mcp.tools.leaderboard import ExperimentList
from autoresearch_mcp.tools.research import Journal
from autoresearch_mcp.tools.setup import init_workspace

WATCH_SECONDS = 30  # one long-poll; progress arrives while it waits
NOISE_RUNS = 2  # the baseline's extra seeds: a floor from three runs keeps the demo short


@dataclass(frozen=True)
class Idea:
    description: str
    edit: Callable[[str], str]  # train.py before -> after


def replace(old: str, new: str) -> Callable[[str], str]:
    return lambda source: source.replace(old, new, 1)


def ideas_for(profile: str) -> tuple[Idea, ...]:
    """Three ideas an agent might try first; the shape change targets the profile's own model."""
    depth = re.compile(rf'^(DEPTH = {{.*"{profile}": )(\d+)', re.MULTILINE)
    return (
        Idea("double the Muon learning rate (MATRIX_LR 0.02 -> 0.04)", replace("MATRIX_LR = 0.02", "MATRIX_LR = 0.04")),
        Idea(
            "one layer shallower (and narrower): more steps in the same budget",
            lambda source: depth.sub(lambda m: f"{m[1]}{int(m[2]) - 1}", source, count=1),
        ),
        Idea(
            "typo in the MLP (a broken edit, on purpose)",
            replace("F.relu(self.c_fc(x)).square()", "F.relu(self.c_fc(x)).sqaure()"),
        ),
    )


class Session:
    """The agent's side of the conversation: tool calls and what it prints."""

    def __init__(self, client: Client, out: Any):
        self.client = client
        self.out = out

    async def call(self, tool: str, **arguments: Any) -> dict[str, Any]:
        result = await self.client.call_tool(tool, arguments)
        if result.is_error:
            raise RuntimeError(f"{tool} failed: {' '.join(b.text for b in result.content if b.type == 'text')}")
        return result.structured_content or {}

    async def read_train_py(self) -> str:
        numbered = (await self.call("read_file", path="train.py"))["text"]
        # read_file numbers each line as "<n>\t<line>"; an agent strips them to edit.
        return "".join(line.split("\t", 1)[1] + "\n" for line in numbered.splitlines())

    async def try_idea(self, idea: Idea) -> None:
        source = await self.read_train_py()
        changed = idea.edit(source)
        diff = "".join(
            difflib.unified_diff(source.splitlines(True), changed.splitlines(True), "a/train.py", "b/train.py")
        )
        await self.call("apply_diff", diff=diff)

    async def experiment(self, description: str) -> dict[str, Any]:
        launch = await self.call("launch_training", description=description)
        run_id = launch["run_id"]
        status = await self.watch(run_id)
        if status["status"] != "succeeded":
            log = await self.call("read_log", run_id=run_id, tail=20)
            self.say(f"  {run_id} {status['status']}: {log['error'] or 'see read_log'}")
            return status
        metrics = await self.call("read_metrics", run_id=run_id, last_n=5)
        summary = metrics["summary"]
        self.say(
            f"  {run_id} val_bpb {summary['val_bpb']:.4f}  ({summary['num_steps']} steps, {summary['training_seconds']:.0f} s training)"
        )
        return {**status, "val_bpb": summary["val_bpb"], "verdict": metrics["verdict"]}

    async def watch(self, run_id: str) -> dict[str, Any]:
        """Long-poll training_status until the run ends, showing its progress as it goes."""
        live = self.out.isatty()
        shown: set[str] = set()

        async def show(progress: float, total: float | None, message: str | None) -> None:
            line = f"  {message or ''}"
            if live:  # one line, rewritten in place
                self.out.write("\r" + line[:100].ljust(100))
                self.out.flush()
            elif message:  # in a log: one line per phase, not one per poll
                phase = " ".join(message.split()[:3])  # e.g. "r0002 running (training)"
                if phase not in shown:
                    shown.add(phase)
                    self.say(line)

        while True:
            result = await self.client.call_tool(
                "training_status", {"run_id": run_id, "wait_seconds": WATCH_SECONDS}, progress_callback=show
            )
            status = result.structured_content["runs"][0]
            if status["status"] not in ("queued", "running"):
                if live:
                    self.out.write("\r" + " " * 100 + "\r")
                return status
            await show(
                0, None, f"{run_id} {status['status']} ({status['phase']}) {100 * (status['progress'] or 0):.0f}%"
            )

    def say(self, line: str) -> None:
        print(line, file=self.out, flush=True)


async def run_demo(workspace: Path, profile: str, out: Any = sys.stdout) -> Path:
    """Drive one scripted session against a server subprocess; returns the plot's path."""
    server = StdioServerParameters(
        command=sys.executable, args=["-m", "autoresearch_mcp.server", "serve", "--workspace", str(workspace)]
    )
    async with Client(server) as client:
        agent = Session(client, out)
        agent.say(f"workspace: {workspace}")
        agent.say("baseline")
        baseline = await agent.experiment("baseline")
        if baseline["status"] != "succeeded":
            raise RuntimeError("the baseline did not train; run `autoresearch-mcp doctor`")
        kept = await agent.call("keep_experiment", run_id=baseline["run_id"], note="baseline")
        await measure_noise(agent, kept["noise_runs"])
        for idea in ideas_for(profile):
            agent.say(idea.description)
            await agent.try_idea(idea)
            result = await agent.experiment(idea.description)
            verdict = result.get("verdict")
            if verdict is not None:
                agent.say(f"  {verdict['verdict']}: {verdict['reason']}")
            if verdict is not None and verdict["verdict"] == "better":
                await agent.call("keep_experiment", run_id=result["run_id"], note="beats the best beyond the noise")
                agent.say(f"  kept: new best {result['val_bpb']:.4f}")
            else:
                await agent.call("discard_experiment", run_id=result["run_id"], note="not better beyond the noise")
                await agent.call("reset_workspace")
                agent.say("  discarded; train.py reset to best")
        board = ExperimentList.model_validate(await agent.call("list_experiments", sort="launch"))
        agent.say("\n" + board.text())
        journal = Journal.model_validate(await agent.call("research_summary"))
        agent.say("\n" + journal.text())
        await agent.call("plot_progress")  # it also saves the chart into the workspace, shown below
    path = workspace / ".autoresearch" / "progress.png"
    agent.say(f"progress plot: {path}")
    return path


async def measure_noise(agent: Session, noise_runs: list[str]) -> None:
    """Wait for the baseline's noise runs and show the floor they measured."""
    agent.say(f"noise floor: the baseline again with other seeds ({', '.join(noise_runs)})")
    for run_id in noise_runs:
        status = await agent.watch(run_id)
        if status["status"] != "succeeded":
            agent.say(f"  {run_id} {status['status']}: {status['error'] or 'see read_log'}")
    floor = (await agent.call("list_experiments", limit=1))["noise_floor"]
    if floor is None:
        agent.say("  no floor: fewer than two of the baseline's runs succeeded; every verdict stays unknown")
    else:
        agent.say(f"  std {floor['std']:.4f} over {floor['runs']} runs: a gain must exceed {floor['threshold']:.4f}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workspace", type=Path, help="workspace to create (default: a fresh temporary one)")
    parser.add_argument(
        "--budget", type=budget_seconds, default=40.0, help="training seconds per experiment (default 40)"
    )
    parser.add_argument(
        "--profile", default="auto", help="profile: auto (GPU if there is one, else cpu), cpu, gpu, h100"
    )


def main(args: argparse.Namespace) -> int:
    if args.workspace is not None:
        refuse_non_directory(args.workspace)
    root = args.workspace or Path(tempfile.mkdtemp(prefix="autoresearch-demo-")) / "workspace"
    profile = resolve_profile(args.profile).name
    # The built-in corpus needs no download, so the demo runs offline on any profile.
    config = WorkspaceConfig(profile=profile, budget_seconds=args.budget, data_source="builtin", noise_runs=NOISE_RUNS)
    init_workspace(root, config)
    anyio.run(run_demo, root, profile)
    return 0
