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
    "training": "training (counted budget)",
    "startup": "start-up (imports, model, compile, warm-up)",
    "data": "data (prepare / load)",
    "handback": "hand-back (save, exit)",
    "eval": "evaluation (own sandbox)",
    "other": "other (supervisor: verifying data, moving files)",
}


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
