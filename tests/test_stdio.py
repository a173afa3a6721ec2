"""`autoresearch-mcp serve` as a real subprocess over stdio, as Claude Desktop runs it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import anyio
import psutil
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client

from autoresearch_mcp.tests.cli_process import clean_env, cli_path
from autoresearch_mcp.tools.setup import init_workspace

PROTOCOL_VERSION = "2025-06-18"
REPLY_TIMEOUT_S = 60


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    return init_workspace(tmp_path / "ws").root


@pytest.mark.timeout(120)
def test_sdk_stdio_client_lists_and_calls_tools(workspace: Path, tmp_path: Path) -> None:
    stderr_path = tmp_path / "stderr.txt"

    async def session() -> tuple[set[str], Any]:
        params = StdioServerParameters(
            command=cli_path(), args=["serve", "--workspace", str(workspace)], env=clean_env()
        )
        with stderr_path.open("w") as stderr:
            async with Client(stdio_client(params, errlog=stderr), read_timeout_seconds=REPLY_TIMEOUT_S) as client:
                tools = {tool.name for tool in (await client.list_tools()).tools}
                return tools, await client.call_tool("read_file", {"path": "program.md"})

    tools, result = anyio.run(session)

    assert {"read_file", "list_files", "launch_training", "gpu_status"} <= tools
    assert not result.is_error
    first_line = (workspace / "program.md").read_text().splitlines()[0]
    assert first_line in result.structured_content["text"]
    started = f"serving {workspace} over stdio"
    assert started in stderr_path.read_text()
    assert started in (workspace / ".autoresearch" / "server.log").read_text()


class StdioSession:
    """A raw JSON-RPC conversation with a server process, line by line, as a host has it."""

    def __init__(self, process: subprocess.Popen[str]):
        self.process = process
        self.stdout_lines: list[str] = []
        self._next_id = 0

    def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        self._next_id += 1
        self.notify(method, params, id=self._next_id)
        while True:
            line = self.process.stdout.readline()
            assert line, f"server closed stdout while {method} was pending"
            self.stdout_lines.append(line)
            message = json.loads(line)
            if message.get("id") == self._next_id:
                return message

    def notify(self, method: str, params: dict[str, Any], **extra: Any) -> None:
        self.process.stdin.write(json.dumps({"jsonrpc": "2.0", "method": method, "params": params, **extra}) + "\n")
        self.process.stdin.flush()


@pytest.mark.timeout(120)
def test_stdout_carries_only_protocol_and_torch_is_never_loaded(workspace: Path, tmp_path: Path) -> None:
    """Every argument-free read-only tool is called; stdout must hold nothing but JSON-RPC,
    and the server process must not have mapped torch (training runs in subprocesses)."""
    with (tmp_path / "stderr.txt").open("w") as stderr:
        process = subprocess.Popen(
            [cli_path(), "serve", "--workspace", str(workspace)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=clean_env(),
        )
    try:
        session = StdioSession(process)
        init = session.request(
            "initialize",
            {
                "protocolVersion": PROTOCOL_VERSION,
                "capabilities": {},
                "clientInfo": {"name": "test", "version": "0"},
            },
        )
        assert init["result"]["serverInfo"]["name"] == "autoresearch"
        session.notify("notifications/initialized", {})
        tools = session.request("tools/list", {})["result"]["tools"]
        argument_free_readers = [
            tool["name"]
            for tool in tools
            if tool.get("annotations", {}).get("readOnlyHint") and not tool["inputSchema"].get("required")
        ]
        assert "list_files" in argument_free_readers
        for name in argument_free_readers:
            reply = session.request("tools/call", {"name": name, "arguments": {}})
            assert "result" in reply, f"{name}: {reply}"
        refused = session.request("tools/call", {"name": "read_file", "arguments": {"path": "/etc/passwd"}})
        assert refused["result"]["isError"]

        if hasattr(psutil.Process, "memory_maps"):  # not on macOS
            mapped = {region.path for region in psutil.Process(process.pid).memory_maps()}
            assert not [path for path in mapped if "torch" in Path(path).parts or "libtorch" in path]
    finally:
        process.stdin.close()  # EOF on stdin is how a host ends a stdio session
        exit_code = process.wait(timeout=REPLY_TIMEOUT_S)
        rest = process.stdout.read()
        process.stdout.close()

    assert exit_code == 0
    for line in session.stdout_lines + rest.splitlines(keepends=True):
        assert json.loads(line)["jsonrpc"] == "2.0", f"non-protocol output on stdout: {line!r}"
