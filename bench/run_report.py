"""A table of one finished run: throughput, MFU, memory, the result, and where the wall time went.

    python bench/run_report.py RUN_DIR

Reads the run directory's summary.json, out/metrics.jsonl and handback/train_stats.json (no torch,
no package imports beyond the standard library), so it runs wherever the run did. Used by
cpu_run.py and gpu_check.sh.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

PHASES = {
    "training": "training (counted, to the deadline)",
    "startup": "start-up (imports, model, compile, warm-up)",
    "data": "data (prepare / load)",
    "held": "sandbox start, imports (held: the wait for the slot)",
    "handback": "hand-back (save, exit)",
    "eval": "evaluation (own sandbox)",
    "other": "other (supervisor: verifying data, moving files)",
}


# The fixed cost of a run, part by part along its critical path (launch -> recorded result): each part
# is the time from the event before it to its own, so the parts add up to the wall time minus the budget.
# One of them is training: every run trains to the supervisor's deadline (budget + start-up allowance
# from its start, once torch is imported), so what start-up leaves of the allowance is trained past the budget; the fixed cost
# is the rest, the wall time minus the time trained. Work done alongside (the export in its own process,
# the evaluator's start) shows only where waited for.
TRAINED_PAST_BUDGET = "training past the budget (what start-up left of the allowance)"
OVERHEAD_PARTS = (
    "bookkeeping: launch -> supervisor (snapshot, queue, process start)",
    "supervisor start (interpreter, imports)",
    "data verify",
    "sandbox start (bwrap, exec)",
    "interpreter + import torch",
    "waiting for the start (held: the slot's run being evaluated)",
    "model build (harness, tokenizer, model)",
    "export before the clock",
    "uncounted warm-up step(s)",
    TRAINED_PAST_BUDGET,
    "hand-back (check, weights)",
    "training process exit",
    "hand-off (move hand-back, verify data, signal)",
    "evaluator start not overlapped (read hand-back)",
    "evaluation compute",
    "evaluator exit, summary",
    "bookkeeping: summary -> recorded",
)


def run_files(run_dir: Path) -> tuple[dict, dict]:
    """(summary.json, the training side's train_stats.json) of a finished run."""
    summary = json.loads((run_dir / "summary.json").read_text())
    stats = json.loads((run_dir / "handback" / "train_stats.json").read_text())
    return summary, stats


def overhead_parts(
    summary: dict, stats: dict, launched: float | None = None, recorded: float | None = None
) -> dict[str, float]:
    """Seconds per OVERHEAD_PARTS entry (the bookkeeping parts only where the engine's launch and
    record times are given)."""
    events = summary["timings"]["events"]
    budget = summary["budget_seconds"]
    model_built = stats["model_built_unix"] or stats["clock_start_unix"]
    export_before = min(stats.get("export_before_clock_seconds", stats["export_seconds"]) or 0.0,
                        stats["clock_start_unix"] - model_built)  # fmt: skip
    go = events.get("go_sent") or events["evaluator_spawned"]  # the evaluator waits, or starts then
    started = max(events["training_started"], stats["imported_unix"])
    loaded = events["evaluator_loaded"]
    seconds = [
        None if launched is None else events["supervisor_process"] - launched,
        events["supervisor_main"] - events["supervisor_process"],
        events["data_ready"] - events["supervisor_main"],
        stats["process_started_unix"] - events["data_ready"],
        stats["imported_unix"] - stats["process_started_unix"],
        started - stats["imported_unix"],
        model_built - started,
        export_before,
        stats["clock_start_unix"] - model_built - export_before,
        stats["training_ended_unix"] - stats["clock_start_unix"] - budget,
        stats["handed_back_unix"] - stats["training_ended_unix"],
        events["training_exited"] - stats["handed_back_unix"],
        go - events["training_exited"],
        loaded - go,
        events["evaluator_scored"] - loaded,
        events["summary"] - events["evaluator_scored"],
        None if recorded is None else recorded - events["summary"],
    ]
    return {part: value for part, value in zip(OVERHEAD_PARTS, seconds, strict=True) if value is not None}


def overhead_table(runs: list[dict[str, float]], budget: float) -> str:
    """A markdown table of the parts' mean over `runs`, in seconds and % of the budget: the fixed cost
    (every part but training past the budget), then that training, then their sum, wall - budget."""
    rows = ["| part | seconds | % of budget |", "| --- | ---: | ---: |"]
    means = {}
    for part in OVERHEAD_PARTS:
        values = [run[part] for run in runs if part in run]
        if values:
            means[part] = statistics.mean(values)
            if part != TRAINED_PAST_BUDGET:
                rows.append(f"| {part} | {means[part]:.2f} | {100 * means[part] / budget:.1f} |")
    fixed = sum(mean for part, mean in means.items() if part != TRAINED_PAST_BUDGET)
    past = means.get(TRAINED_PAST_BUDGET, 0.0)
    rows.append(f"| **fixed cost (wall - time trained)** | **{fixed:.2f}** | **{100 * fixed / budget:.1f}** |")
    rows.append(f"| {TRAINED_PAST_BUDGET} | {past:.2f} | {100 * past / budget:.1f} |")
    rows.append(f"| wall - budget | {fixed + past:.2f} | {100 * (fixed + past) / budget:.1f} |")
    return "\n".join(rows)


def load_summary(run_dir: Path) -> dict:
    """summary.json; for a run that failed after training, what the training side reported."""
    if (run_dir / "summary.json").exists():
        return json.loads((run_dir / "summary.json").read_text())
    stats = json.loads(next(run_dir.glob("*/train_stats.json")).read_text())
    return {
        **stats,
        "profile": "?", "val_bpb": None, "num_params_M": None, "depth": None, "timings": {},
        "total_tokens_M": stats["total_tokens"] / 1e6,
    }  # fmt: skip


def report_rows(run_dir: Path) -> list[tuple[str, str]]:
    summary = load_summary(run_dir)
    steps = [json.loads(line) for line in (run_dir / "out" / "metrics.jsonl").read_text().splitlines()]
    counted = [s for s in steps if s["elapsed"] > 0]  # after the uncounted warm-up steps
    tok_per_s = statistics.median(s["tok_per_s"] for s in counted) if counted else None
    step_mfu = [s["mfu"] for s in counted if s["mfu"] is not None]
    timings = summary["timings"]

    def maybe(value, fmt: str) -> str:
        return "n/a" if value is None else fmt.format(value)

    rows = [
        ("profile / device", f"{summary['profile']} / {summary['device']}"),
        ("tokens/s (median counted step)", maybe(tok_per_s, "{:,.0f}")),
        ("MFU (whole budget / median step)", f"{maybe(summary['mfu_percent'], '{:.1f}%')} / "
         f"{maybe(statistics.median(step_mfu) if step_mfu else None, '{:.1f}%')}"),
        ("peak memory", maybe(summary["peak_memory_mb"], "{:,.0f} MB")),
        ("steps / tokens", f"{summary['num_steps']} / {summary['total_tokens_M']:.1f} M"),
        ("parameters / depth", f"{maybe(summary['num_params_M'], '{:.1f}')} M / {summary['depth']}"),
        ("val_bpb", maybe(summary["val_bpb"], "{:.4f}")),
        ("isolation", summary.get("isolation", "?")),
    ]  # fmt: skip
    if not timings:  # the run failed before the summary: no phase timings
        return rows
    rows.append(("wall time", f"{timings['total']:.1f} s"))
    for key, label in PHASES.items():
        seconds = timings.get(key, 0.0)
        rows.append((f"  {label}", f"{seconds:6.1f} s {100 * seconds / timings['total']:5.1f}%"))
    return rows


def format_rows(rows: list[tuple[str, str]]) -> str:
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {value}" for label, value in rows)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python bench/run_report.py RUN_DIR")
    print(format_rows(report_rows(Path(sys.argv[1]))))
    if (Path(sys.argv[1]) / "summary.json").exists():
        summary, stats = run_files(Path(sys.argv[1]))
        print(f"\nwhere the fixed cost goes (supervisor start -> summary, {summary['budget_seconds']:g} s budget)")
        print(overhead_table([overhead_parts(summary, stats)], summary["budget_seconds"]))
