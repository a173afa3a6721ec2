"""The installed `autoresearch-mcp` command, run as a real subprocess by the CLI and transport tests."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

COMMAND_NAME = "autoresearch-mcp"


def cli_path() -> str:
    """The console script of the interpreter running the tests (the one pip installed with it)."""
    beside_python = shutil.which(COMMAND_NAME, path=str(Path(sys.executable).parent))
    found = beside_python or shutil.which(COMMAND_NAME)
    if found is None:
        pytest.fail(f"{COMMAND_NAME} is not installed for {sys.executable}; run `pip install -e '.[test]'` first")
    return found


def clean_env(**overrides: str) -> dict[str, str]:
    """This process's environment without our own settings, plus `overrides`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTORESEARCH_MCP_")}
    env.update(overrides)
    return env


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [cli_path(), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or clean_env(),
        stdin=subprocess.DEVNULL,
    )


def start_listening(
    args: list[str], stderr: Path, env: dict[str, str], timeout: float = 60
) -> tuple[subprocess.Popen[bytes], str]:
    """Start the command (a server on a socket) and return it, with what it printed on stderr, once it is up."""
    with stderr.open("w") as sink:
        process = subprocess.Popen(
            [cli_path(), *args], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=sink, env=env
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = stderr.read_text()
        if "Application startup complete" in text:
            return process, text
        if process.poll() is not None:
            pytest.fail(f"{' '.join(args[:1])} exited with {process.returncode}:\n{text}")
        time.sleep(0.1)
    process.kill()
    pytest.fail(f"{' '.join(args[:1])} did not start within {timeout} s:\n{stderr.read_text()}")


def stop_process(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def start_http_server(
    workspace: Path, stderr: Path, env: dict[str, str], *options: str
) -> tuple[subprocess.Popen[bytes], str, str | None]:
    """Start `serve --transport http --port 0`; the URL (and a generated token) are read off stderr."""
    args = ["serve", "--transport", "http", "--port", "0", "--workspace", str(workspace), *options]
    process, text = start_listening(args, stderr, env)
    url = re.search(r"serving MCP at (\S+)", text)
    token = re.search(r"bearer token: (\S+)  \(", text)
    return process, url.group(1), token.group(1) if token else None
