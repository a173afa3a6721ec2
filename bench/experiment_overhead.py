"""Per-experiment overhead on the `cpu` profile: where the wall time beyond the budget goes.

Launches real runs through the experiment engine (the same path launch_training takes) and
splits launch -> summary wall time into: bookkeeping (snapshot, queue, process start, the
engine noticing the exit), start-up (interpreters and imports), data/tokenizer, training
beyond the budget (the warm-up steps the clock does not count), hand-back, and evaluation.

    python bench/experiment_overhead.py [--budget 60] [--runs 2]

The first run in a fresh cache also builds the corpus and tokenizer; that one-off cost is
reported in its own row and left out of the steady-state figures.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from autoresearch_mcp.sandbox.config import WorkspaceConfig
from autoresearch_mcp.sandbox.engine import ExperimentEngine
from autoresearch_mcp.tools.setup import init_workspace

PARTS = ("bookkeeping", "startup", "data", "training beyond budget", "handback", "eval")


def run_once(engine: ExperimentEngine, budget: float) -> dict[str, float]:
    launched = time.time()
    record = engine.launch(f"overhead bench, {budget:.0f} s budget", budget_seconds=budget)
    while not (record := engine.store.get(record.id)).finished:
        engine.wait(record.id, 5)
    if record.status != "succeeded":
        raise SystemExit(f"{record.id} {record.status}: {record.error}; see {engine.run_dir(record.id) / 'log.txt'}")
    timings = record.summary["timings"]
    wall = record.finished_at - launched
    return {
        "wall": wall,
        "bookkeeping": wall - timings["total"],
        "startup": timings["startup"],
        "data": timings["data"],
        "training beyond budget": timings["training"] - budget,
        "handback": timings["handback"],
        "eval": timings["eval"],
        "tok_per_s": record.summary["total_tokens_M"] * 1e6 / timings["training"],
        "val_bpb": record.summary["val_bpb"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=float, default=60.0)
    parser.add_argument("--runs", type=int, default=2, help="steady-state runs after the first")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="overhead-bench-"))
    workspace = init_workspace(scratch / "ws", WorkspaceConfig(profile="cpu", devices="cpu"))
    with ExperimentEngine(workspace) as engine:
        first = run_once(engine, args.budget)
        steady = [run_once(engine, args.budget) for _ in range(args.runs)]
    shutil.rmtree(scratch, ignore_errors=True)

    def mean(key: str) -> float:
        return statistics.mean(run[key] for run in steady)

    overhead = mean("wall") - args.budget
    print(f"cpu profile, {args.budget:.0f} s budget, mean of {args.runs} runs after a warm-up run\n")
    print("| part | seconds | % of budget |")
    print("| --- | ---: | ---: |")
    for part in PARTS:
        print(f"| {part} | {mean(part):.1f} | {100 * mean(part) / args.budget:.1f} |")
    print(f"| **overhead (wall - budget)** | **{overhead:.1f}** | **{100 * overhead / args.budget:.1f}** |")
    print(f"| wall, launch -> summary | {mean('wall'):.1f} | |")
    print(f"| first run in a fresh cache (builds corpus + tokenizer): wall | {first['wall']:.1f} | |")
    print(f"\ntraining throughput {mean('tok_per_s'):,.0f} tok/s; val_bpb {mean('val_bpb'):.4f}")
    dominant = max(PARTS, key=mean)
    print(f"largest overhead part: {dominant} ({mean(dominant):.1f} s)")


if __name__ == "__main__":
    main()
