"""Tool-call latency over real stdio: our tools vs the bare SDK floor vs the Node reference server.

Each server runs as a subprocess and is driven by the SDK's client exactly as an agent's
host would drive it. Prints p50/p95 per operation and the ratio to the bare-SDK floor.

    python bench/tool_latency.py [--calls 500] [--node-dir DIR]

The Node reference filesystem server is taken from DIR/node_modules (install it with
`npm install @modelcontextprotocol/server-filesystem` in DIR); without it that row is skipped.
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
from mcp import Client, StdioServerParameters

from autoresearch_mcp.tools.setup import init_workspace

HERE = Path(__file__).resolve().parent
MARKER_A = "# latency-bench marker A\n"
MARKER_B = "# latency-bench marker B\n"


async def time_calls(client: Client, calls: int, make_call: Callable[[int], Awaitable[object]]) -> list[float]:
    for i in range(20):  # warm-up: imports, caches, first-call paths
        await make_call(i)
    samples = []
    for i in range(calls):
        start = time.perf_counter()
        result = await make_call(i)
        samples.append((time.perf_counter() - start) * 1000)
        if getattr(result, "is_error", False):
            raise RuntimeError(f"tool call failed during the benchmark: {result.content}")
    return samples


class MarkerSwaps:
    """(old, new) for the next edit of one file: its first line flips between the markers, so
    every edit applies, whichever tool made the previous one and however many calls there were."""

    def __init__(self) -> None:
        self.count = itertools.count()

    def __call__(self) -> tuple[str, str]:
        return (MARKER_A, MARKER_B) if next(self.count) % 2 == 0 else (MARKER_B, MARKER_A)


def toggle_diff(old: str, new: str) -> str:
    return f"--- a/train.py\n+++ b/train.py\n@@ -1,1 +1,1 @@\n-{old}+{new}"


async def bench_ours(calls: int, workspace: Path) -> dict[str, list[float]]:
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "autoresearch_mcp.server", "serve", "--workspace", str(workspace)]
    )
    results = {}
    swap = MarkerSwaps()
    async with Client(params) as client:

        def edit(_i: int):
            old, new = swap()
            return client.call_tool("edit_file", {"path": "train.py", "old_text": old, "new_text": new})

        operations = {
            "read_file": lambda i: client.call_tool("read_file", {"path": "train.py"}),
            "edit_file": edit,
            "apply_diff": lambda _i: client.call_tool("apply_diff", {"diff": toggle_diff(*swap())}),
            "list_experiments": lambda i: client.call_tool("list_experiments", {}),
            "gpu_status": lambda i: client.call_tool("gpu_status", {}),
        }
        for name, op in operations.items():
            results[name] = await time_calls(client, calls, op)
    return results


async def bench_bare(calls: int, payload: str) -> dict[str, list[float]]:
    """The floor: a trivial call, and the same call carrying a train.py-sized payload."""
    params = StdioServerParameters(command=sys.executable, args=[str(HERE / "bare_server.py")])
    async with Client(params) as client:
        return {
            "echo": await time_calls(client, calls, lambda i: client.call_tool("echo", {"text": "x"})),
            f"echo {len(payload) // 1024} KB": await time_calls(
                client, calls, lambda i: client.call_tool("echo", {"text": payload})
            ),
        }


async def bench_node(calls: int, node_dir: Path, root: Path) -> dict[str, list[float]]:
    entry = node_dir / "node_modules" / ".bin" / "mcp-server-filesystem"
    params = StdioServerParameters(command=str(entry), args=[str(root)])
    target = str(root / "train.py")
    swap = MarkerSwaps()
    async with Client(params) as client:

        def edit(_i: int):
            old, new = swap()
            return client.call_tool("edit_file", {"path": target, "edits": [{"oldText": old, "newText": new}]})

        return {
            "read_file": await time_calls(
                client, calls, lambda i: client.call_tool("read_text_file", {"path": target})
            ),
            "edit_file": await time_calls(client, calls, edit),
        }


def p(samples: list[float], q: float) -> float:
    return statistics.quantiles(samples, n=100)[int(q) - 1]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--node-dir", type=Path, default=None)
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="latency-bench-"))
    workspace = init_workspace(scratch / "ws").root
    source = (workspace / "train.py").read_text()
    (workspace / "train.py").write_text(MARKER_A + source)
    node_root = scratch / "node"
    node_root.mkdir()
    (node_root / "train.py").write_text(MARKER_A + source)

    bare = await bench_bare(args.calls, MARKER_A + source)
    ours = await bench_ours(args.calls, workspace)
    node = await bench_node(args.calls, args.node_dir, node_root) if args.node_dir else {}
    shutil.rmtree(scratch, ignore_errors=True)

    floor_p50 = statistics.median(bare["echo"])
    print(f"{args.calls} calls each over stdio; ratio = p50 / bare-SDK echo p50 ({floor_p50:.2f} ms)\n")
    print("| server | tool | p50 ms | p95 ms | ratio to SDK floor |")
    print("| --- | --- | ---: | ---: | ---: |")
    for label, rows in (("bare MCPServer", bare), ("autoresearch-mcp", ours), ("node server-filesystem", node)):
        for tool, samples in rows.items():
            median = statistics.median(samples)
            print(f"| {label} | {tool} | {median:.2f} | {p(samples, 95):.2f} | {median / floor_p50:.2f} |")


if __name__ == "__main__":
    anyio.run(main)
