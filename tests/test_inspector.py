"""The loop driven by the official MCP Inspector CLI (the TypeScript SDK, the client stack of
Claude Desktop and most IDEs) against the real `autoresearch-mcp serve` process.

Over stdio, each Inspector invocation starts the server, makes one request and stops it, as
a person trying the server by hand would: tools/list, read_file, edit_file, launch_training,
training_status with the longest wait its schema allows until the run ends, read_metrics.
TypeScript clients give up on a request after 60 s, so every call must answer well before.
Over HTTP: the bearer header works, and without it the Inspector shows our 401's advice.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from autoresearch_mcp.nanochat.data import PreparedData
from autoresearch_mcp.sandbox.config import WorkspaceConfig
from autoresearch_mcp.sandbox.runstore import ACTIVE_STATUSES
from autoresearch_mcp.tests.cli_process import clean_env, cli_path, run_cli, start_http_server, stop_process
from autoresearch_mcp.tests.inspector import Inspector, cache_dir, install, installed
from autoresearch_mcp.tools.setup import init_workspace

ANSWER_WITHIN_S = 55  # TypeScript clients time out at 60 s
INSPECTOR_TIMEOUT_S = 120  # far past the client's own 60 s: a hang shows as the Inspector's error
LOOP_TOOLS = {"read_file", "edit_file", "launch_training", "training_status", "read_metrics"}


@pytest.fixture(scope="module")
def inspector() -> Inspector:
    found = installed(cache_dir())
    if found is not None:
        return found
    if shutil.which("npm") is None:
        pytest.skip(
            "npm is not installed: this test installs the official MCP Inspector and a Node >= 22.19 for it "
            "from the npm registry (`python -m autoresearch_mcp.tests.inspector`, which .ci/run does)"
        )
    return install(cache_dir())


@pytest.fixture
def workspace(tmp_path: Path, prepared_cpu_data: PreparedData, cpu_data_dir: Path) -> Path:
    config = WorkspaceConfig(profile="cpu", data_dir=str(cpu_data_dir))
    return init_workspace(tmp_path / "ws", config).root


class InspectorCli:
    """Runs the Inspector CLI with a home folder of its own (it keeps a catalog and secrets there)."""

    def __init__(self, inspector: Inspector, home: Path):
        self.inspector = inspector
        self.env = clean_env(HOME=str(home), MCP_INSPECTOR_SECRET_STORE="memory")

    def run(self, *arguments: str) -> tuple[subprocess.CompletedProcess[str], float]:
        """One invocation, and how long it took."""
        started = time.monotonic()
        done = subprocess.run(
            self.inspector.command("--format", "json", *arguments),
            capture_output=True,
            text=True,
            timeout=INSPECTOR_TIMEOUT_S,
            env=self.env,
            stdin=subprocess.DEVNULL,
        )
        return done, time.monotonic() - started

    def request(self, *arguments: str) -> tuple[dict[str, Any], float]:
        """The result of one successful request, and how long the invocation took."""
        done, seconds = self.run(*arguments)
        assert done.returncode == 0, f"Inspector exited with {done.returncode}:\n{done.stdout}\n{done.stderr[-3000:]}"
        return json.loads(done.stdout)["result"], seconds


class StdioSession:
    """Requests to `autoresearch-mcp serve --workspace W`, started by the Inspector for each one."""

    def __init__(self, cli: InspectorCli, workspace: Path):
        self.cli = cli
        self.server = ["--", cli_path(), "serve", "--workspace", str(workspace)]

    def list_tools(self) -> tuple[dict[str, Any], float]:
        return self.cli.request("--method", "tools/list", *self.server)

    def call(self, tool: str, **arguments: Any) -> tuple[dict[str, Any], float]:
        """A tool's result (not an error), and how long the invocation took."""
        result, seconds = self.cli.request(
            "--method", "tools/call", "--tool-name", tool, "--tool-args-json", json.dumps(arguments), *self.server
        )
        assert not result.get("isError"), f"{tool} failed: {result['content']}"
        return result, seconds


@pytest.mark.timeout(900)
def test_the_loop_through_the_inspector_cli(inspector: Inspector, workspace: Path, tmp_path: Path) -> None:
    session = StdioSession(InspectorCli(inspector, tmp_path / "home"), workspace)
    listed, listing_seconds = session.list_tools()
    tools = {tool["name"]: tool for tool in listed["tools"]}
    assert set(tools) >= LOOP_TOOLS
    max_wait = tools["training_status"]["inputSchema"]["properties"]["wait_seconds"]["maximum"]

    second_line = (workspace / "train.py").read_text().splitlines()[1]
    read, read_seconds = session.call("read_file", path="train.py", start_line=1, end_line=3)
    assert second_line in read["content"][0]["text"]

    edited = f"{second_line} Edited through the MCP Inspector."
    session.call("edit_file", path="train.py", old_text=second_line, new_text=edited)
    assert (workspace / "train.py").read_text().splitlines()[1] == edited

    # A budget longer than the longest wait, so one status call waits it out in full.
    budget = max_wait + 20
    launched, _ = session.call(
        "launch_training", description="docstring edited via the Inspector", budget_seconds=budget
    )
    run_id = launched["structuredContent"]["run_id"]
    status_seconds = []
    try:
        for _ in range(4 * math.ceil(budget / max_wait) + 10):
            status, seconds = session.call("training_status", run_id=run_id, wait_seconds=max_wait)
            status_seconds.append(seconds)
            run = status["structuredContent"]["runs"][0]
            if run["status"] not in ACTIVE_STATUSES:
                break
    finally:  # a failed call leaves the run going: stop it (refused, harmlessly, once it has ended)
        run_cli("call", "stop_training", f"run_id={run_id}", "--workspace", str(workspace))
    assert run["status"] == "succeeded", run

    metrics, _ = session.call("read_metrics", run_id=run_id)
    assert 0 < metrics["structuredContent"]["summary"]["val_bpb"] < 20

    # The cost of an invocation that does not wait: Node, the server's start, the handshake.
    startup = min(listing_seconds, read_seconds)
    longest = max(status_seconds) - startup
    assert longest < ANSWER_WITHIN_S, f"training_status(wait_seconds={max_wait}) answered after {longest:.0f} s"
    assert longest > 0.8 * max_wait, f"no status call waited its {max_wait} s out: {status_seconds}"


@pytest.mark.timeout(300)
def test_http_takes_the_bearer_header_and_explains_a_401(inspector: Inspector, workspace: Path, tmp_path: Path) -> None:
    process, url, token = start_http_server(workspace, tmp_path / "stderr.txt", clean_env())
    assert token is not None
    cli = InspectorCli(inspector, tmp_path / "home")
    try:
        with_token, _ = cli.request(
            "--transport", "http", url, "--header", f"Authorization: Bearer {token}", "--method", "tools/list"
        )
        # --stored-auth-only: what a person sees, without the interactive OAuth a terminal would offer.
        without, _ = cli.run("--transport", "http", url, "--stored-auth-only", "--method", "tools/list")
    finally:
        stop_process(process)
    assert {tool["name"] for tool in with_token["tools"]} >= LOOP_TOOLS
    assert without.returncode != 0
    assert "401" in without.stdout + without.stderr
    assert "Authorization: Bearer <token>" in without.stdout + without.stderr
