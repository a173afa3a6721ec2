"""Scheduler throughput on CPU: runs per hour with 1 device slot vs several.

Queues the same short runs on an engine with N cpu slots and measures the wall time from
the first launch to the last summary. On a CPU-only machine the slots share the cores, so
this shows the queueing and process overheads the scheduler hides, not a GPU-style speed-up.

    python bench/scheduler_throughput.py [--runs 6] [--budget 10] [--slots 1 2]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from autoresearch_mcp.sandbox.config import WorkspaceConfig
from autoresearch_mcp.sandbox.engine import ExperimentEngine
from autoresearch_mcp.tools.setup import init_workspace


def drain(slots: int, runs: int, budget: float, scratch: Path) -> tuple[float, int, float]:
    workspace = init_workspace(scratch / f"ws-{slots}", WorkspaceConfig(profile="cpu", devices="cpu"))
    with ExperimentEngine(workspace, slots=["cpu"] * slots) as engine:
        engine.launch("warm the data cache", budget_seconds=budget)  # not timed: first-run setup
        while engine.wait(None, 5):
            pass
        started = time.time()
        ids = [engine.launch(f"throughput run {i}", budget_seconds=budget).id for i in range(runs)]
        while engine.wait(None, 5):
            pass
        wall = time.time() - started
        records = [engine.store.get(run_id) for run_id in ids]
    done = [r for r in records if r.status == "succeeded"]
    # Slots that share the same cores share their speed: each run trains on fewer tokens.
    tokens = sum(r.summary["total_tokens_M"] for r in done) / max(len(done), 1)
    return wall, len(done), tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=6)
    parser.add_argument("--budget", type=float, default=10.0)
    parser.add_argument("--slots", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="throughput-bench-"))
    rows = [(slots, *drain(slots, args.runs, args.budget, scratch)) for slots in args.slots]
    shutil.rmtree(scratch, ignore_errors=True)

    base = rows[0][1]
    print(f"{args.runs} runs of {args.budget:.0f} s budget on the cpu profile\n")
    print("| slots | wall s | runs/hour | succeeded | speed-up vs 1 slot | training tokens per run (M) |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for slots, wall, succeeded, tokens in rows:
        print(
            f"| {slots} | {wall:.0f} | {3600 * args.runs / wall:.0f} | {succeeded}/{args.runs} | {base / wall:.2f} | {tokens:.3f} |"
        )


if __name__ == "__main__":
    main()
