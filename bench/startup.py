"""Start-up time and idle footprint of `autoresearch-mcp serve` (stdio), next to the bare SDK.

Claude Desktop starts every configured server when it opens, so `serve` must be light.
Each run launches the server as a host does, sends initialize, then tools/list, and times
launch -> first tools/list answer; then, once the server has sat idle for a moment, reads
its resident memory (RSS). The same for bench/bare_server.py (one trivial tool): the
floor set by Python and the MCP SDK themselves.

    python bench/startup.py [--runs 10] [--idle-seconds 1]

Targets: first tools/list within 1.5 s, idle RSS under 150 MB.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from autoresearch_mcp.tools.setup import init_workspace

HERE = Path(__file__).resolve().parent
TARGET_FIRST_LIST_S = 1.5
TARGET_IDLE_RSS_MB = 150
INITIALIZE = {
    "protocolVersion": "2025-06-18",
    "capabilities": {},
    "clientInfo": {"name": "startup-bench", "version": "0"},
}


@dataclass(frozen=True)
class Sample:
    initialize_s: float  # launch -> initialize answered
    first_list_s: float  # launch -> tools/list answered
    tools: int
    idle_rss_mb: float


def measure(command: list[str], idle_seconds: float) -> Sample:
    start = time.perf_counter()
    server = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        send(server, {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": INITIALIZE})
        receive(server, 1)
        initialized = time.perf_counter()
        send(server, {"jsonrpc": "2.0", "method": "notifications/initialized", "params": {}})
        send(server, {"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {}})
        tools = receive(server, 2)["result"]["tools"]
        listed = time.perf_counter()
        time.sleep(idle_seconds)
        rss = psutil.Process(server.pid).memory_info().rss / 2**20
    finally:
        server.stdin.close()
        server.wait(timeout=30)
    return Sample(initialized - start, listed - start, len(tools), rss)


def send(server: subprocess.Popen[str], message: dict) -> None:
    server.stdin.write(json.dumps(message) + "\n")
    server.stdin.flush()


def receive(server: subprocess.Popen[str], request_id: int) -> dict:
    while line := server.stdout.readline():
        message = json.loads(line)
        if message.get("id") == request_id:
            return message
    raise RuntimeError(f"server exited before answering request {request_id}")


def row(label: str, samples: list[Sample]) -> str:
    first = [s.first_list_s for s in samples]
    rss = [s.idle_rss_mb for s in samples]
    verdict = "yes" if max(first) <= TARGET_FIRST_LIST_S and max(rss) <= TARGET_IDLE_RSS_MB else "no"
    return (
        f"| {label} | {samples[0].tools} | {statistics.median(s.initialize_s for s in samples):.2f} "
        f"| {statistics.median(first):.2f} | {max(first):.2f} | {statistics.median(rss):.0f} | {max(rss):.0f} | {verdict} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--idle-seconds", type=float, default=1.0)
    args = parser.parse_args()

    cli = shutil.which("autoresearch-mcp", path=str(Path(sys.executable).parent)) or shutil.which("autoresearch-mcp")
    if cli is None:
        sys.exit("autoresearch-mcp is not installed; run `pip install -e .` first")
    scratch = Path(tempfile.mkdtemp(prefix="startup-bench-"))
    try:
        workspace = init_workspace(scratch / "ws").root
        commands = {
            "bare MCPServer (SDK floor)": [sys.executable, str(HERE / "bare_server.py")],
            "autoresearch-mcp serve": [cli, "serve", "--workspace", str(workspace)],
        }
        for command in commands.values():  # warm the OS file cache and bytecode caches once
            measure(command, 0)
        # Interleaved, so that load from other processes on the machine hits both alike.
        results: dict[str, list[Sample]] = {label: [] for label in commands}
        for _ in range(args.runs):
            for label, command in commands.items():
                results[label].append(measure(command, args.idle_seconds))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    print(
        f"{args.runs} launches each over stdio; RSS after {args.idle_seconds:g} s idle; "
        f"targets: first tools/list <= {TARGET_FIRST_LIST_S} s, idle RSS <= {TARGET_IDLE_RSS_MB} MB\n"
    )
    print(
        "| server | tools | initialize p50 s | first tools/list p50 s | max s | idle RSS p50 MB | max MB | within targets |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for label, samples in results.items():
        print(row(label, samples))


if __name__ == "__main__":
    main()
