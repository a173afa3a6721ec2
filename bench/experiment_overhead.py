"""Per-experiment overhead on the `cpu` profile: where the wall time beyond the budget goes.

Launches real runs through the experiment engine (the same path launch_training takes: snapshot,
queue, the supervisor, training and evaluation each in its sandbox) and splits each run's wall time,
launch -> recorded result, into the parts of its critical path (bench/run_report.py OVERHEAD_PARTS):
bookkeeping, supervisor start, data verify, sandbox start, interpreter + import torch, model build,
export, the uncounted warm-up, training past the budget, hand-back, exit, hand-off, evaluator start,
evaluation compute, summary.

    python bench/experiment_overhead.py [--budget 60] [--runs 3] [--queued 3]

The first run in a fresh cache also builds the corpus and tokenizer; it is reported on its own line
and left out of the means. With --queued N, N more runs are then launched at once, as an agent that
queues ideas does: each starts held behind the one before (set up and imported while that one is
evaluated), and the slot's time per experiment is the interval between consecutive results. The load average is printed before and after: on a shared machine
compare only runs made at the same load.
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from run_report import overhead_parts, overhead_table, run_files  # beside this script

from autoresearch_mcp.sandbox.config import WorkspaceConfig
from autoresearch_mcp.sandbox.engine import ExperimentEngine
from autoresearch_mcp.sandbox.runstore import RunRecord
from autoresearch_mcp.tools.setup import init_workspace


def finished(engine: ExperimentEngine, record: RunRecord) -> RunRecord:
    """The run's record once it has succeeded (the bench stops if it did not)."""
    while not (record := engine.store.get(record.id)).finished:
        engine.wait(record.id, 5)
    if record.status != "succeeded":
        raise SystemExit(f"{record.id} {record.status}: {record.error}; see {engine.run_dir(record.id) / 'log.txt'}")
    return record


def run_once(engine: ExperimentEngine, budget: float) -> dict[str, float]:
    """One launch, waited for; its overhead parts, wall time, throughput and val_bpb."""
    launched = time.time()
    record = finished(engine, engine.launch(f"overhead bench, {budget:.0f} s budget", budget_seconds=budget))
    summary, stats = run_files(engine.run_dir(record.id))
    parts = overhead_parts(summary, stats, launched, record.finished_at)
    events = summary["timings"]["events"]
    exported = EXPORTED_ALONGSIDE.findall((engine.run_dir(record.id) / "log.txt").read_text(errors="replace"))
    return {
        **parts,
        "evaluator start, overlapped": events["evaluator_ready"] - events["evaluator_process_started"],
        "export, overlapped": float(exported[-1]) if exported else 0.0,
        "wall": record.finished_at - launched,
        "tok_per_s": summary["total_tokens_M"] * 1e6 / summary["training_seconds"],
        "steps": summary["num_steps"],
        "val_bpb": summary["val_bpb"],
    }


def run_queued(engine: ExperimentEngine, budget: float, count: int) -> list[dict[str, float]]:
    """`count` runs launched at once on the one slot; for each after the first, the interval from the
    result before it to its own (the slot's time per experiment), the time it trained, and how long it
    was held (set up and imported) before it could start."""
    launched = [engine.launch(f"overhead bench, queued {n + 1}", budget_seconds=budget) for n in range(count)]
    records = [finished(engine, record) for record in launched]
    intervals = []
    for before, record in itertools.pairwise(records):
        summary, _ = run_files(engine.run_dir(record.id))
        assert before.finished_at is not None and record.finished_at is not None
        intervals.append(
            {
                "interval": record.finished_at - before.finished_at,
                "trained": summary["training_seconds"],
                "held": summary["timings"]["held"],
            }
        )
    return intervals


def queued_table(intervals: list[dict[str, float]], budget: float) -> str:
    """The slot's time per experiment, queued runs back to back: mean interval, and its fixed cost."""

    def mean(key: str) -> float:
        return statistics.mean(interval[key] for interval in intervals)

    fixed = mean("interval") - mean("trained")
    return "\n".join(
        [
            "| queued back to back (result to result) | seconds | % of budget |",
            "| --- | ---: | ---: |",
            f"| time per experiment | {mean('interval'):.2f} | |",
            f"| **fixed cost (interval - time trained)** | **{fixed:.2f}** | **{100 * fixed / budget:.1f}** |",
            f"| interval - budget | {mean('interval') - budget:.2f} | {100 * (mean('interval') - budget) / budget:.1f} |",
            f"| held: set up and imported while the run before was evaluated | {mean('held'):.2f} | |",
        ]
    )


EXPORTED_ALONGSIDE = re.compile(r"exported \S+ at \(\d+, \d+\) in ([\d.]+) s \(in a process of its own")


def load() -> str:
    return "/".join(f"{value:.2f}" for value in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=float, default=60.0)
    parser.add_argument("--runs", type=int, default=3, help="steady-state runs after the first")
    parser.add_argument("--queued", type=int, default=0, help="then this many runs launched at once (0: none)")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="overhead-bench-"))
    workspace = init_workspace(scratch / "ws", WorkspaceConfig(profile="cpu", devices="cpu"))
    print(f"load average (1/5/15 min) before: {load()}", flush=True)
    with ExperimentEngine(workspace) as engine:
        first = run_once(engine, args.budget)
        steady = []
        for number in range(args.runs):
            steady.append(run_once(engine, args.budget))
            print(f"run {number + 1}: wall {steady[-1]['wall']:.1f} s, load {load()}", flush=True)
        queued = run_queued(engine, args.budget, args.queued) if args.queued > 1 else []
    shutil.rmtree(scratch, ignore_errors=True)

    def mean(key: str) -> float:
        return statistics.mean(run[key] for run in steady)

    print(f"\ncpu profile, {args.budget:g} s budget, mean of {args.runs} runs after a warm-up run\n")
    print(overhead_table(steady, args.budget))
    walls = ", ".join(f"{run['wall'] - args.budget:.2f}" for run in steady)
    print(f"| wall, launch -> recorded | {mean('wall'):.2f} | |")
    print(f"| first run in a fresh cache (builds corpus + tokenizer): wall | {first['wall']:.1f} | |")
    print(f"\nwall - budget per run: {walls} s; load average after: {load()}")
    print(f"training: {mean('tok_per_s'):,.0f} tok/s, {mean('steps'):.0f} steps; val_bpb {mean('val_bpb'):.4f}")
    print(
        f"done alongside training, off the critical path: the evaluator's start {mean('evaluator start, overlapped'):.2f} s "
        f"(interpreter, import torch, tokenizer, validation split), the export {mean('export, overlapped'):.2f} s "
        "(in its own process)"
    )

    if queued:
        print(f"\n{args.queued} runs queued at once; the {len(queued)} after the first:\n")
        print(queued_table(queued, args.budget))
        intervals = ", ".join(f"{interval['interval']:.2f}" for interval in queued)
        print(f"intervals: {intervals} s; load average after: {load()}")


if __name__ == "__main__":
    main()
