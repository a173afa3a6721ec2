"""results.tsv: the original autoresearch's record of experiments, derived from the run store.

One row per finished run in launch order. The original's columns come first (commit, val_bpb,
memory_gb, status, description, in its formats), then what research validity adds: the run id,
the experiment it counts toward, that experiment's verdict and its delta against the best.

status is `keep` or `discard` once the run's experiment is decided, `pending` before that,
`crash` for any run that produced no val_bpb (crashed, killed, timed out, lost), and `noise`,
`repeat` or `validation` for the runs that re-measure an experiment's code (so counting `keep`
rows counts kept ideas). Runs without a val_bpb read 0.000000 and 0.0 GB, as in the original.
A run made without a sandbox (the workspace opted out) has `[unisolated]` before its description.
"""

from __future__ import annotations

from collections.abc import Sequence

from autoresearch_mcp.sandbox.isolation import NONE
from autoresearch_mcp.sandbox.research import measured_bpb
from autoresearch_mcp.sandbox.runstore import ACTIVE_STATUSES, NoiseFloor, RunRecord, RunStore
from autoresearch_mcp.tools.leaderboard import build_board

RESULTS_FILE = "results.tsv"
COLUMNS = ("commit", "val_bpb", "memory_gb", "status", "description", "run", "experiment", "verdict", "delta_vs_best")


def render_results_tsv(records: Sequence[RunRecord], floors: Sequence[NoiseFloor], k: float) -> str:
    rows = {row.run_id: row for row in build_board(records, floors, k).rows}
    decisions = {record.id: record.decision for record in records}
    lines = ["\t".join(COLUMNS)]
    for record in records:
        if record.status in ACTIVE_STATUSES:
            continue
        value = measured_bpb(record)
        memory = (record.summary or {}).get("peak_memory_mb")
        memory_gb = memory / 1024 if value is not None and isinstance(memory, (int, float)) else 0.0
        if value is None:
            status = "crash"
        elif record.kind == "experiment":
            status = decisions[record.id] or "pending"
        else:
            status = record.kind
        row = rows.get(record.experiment)
        row = row if row and record.id in row.run_ids else None  # runs at another scale are not in the row
        cells = (
            record.commit[:7],
            f"{value or 0.0:.6f}",
            f"{memory_gb:.1f}",
            status,
            ("[unisolated] " if record.isolation == NONE else "")
            + " ".join(record.description.split()),  # no tabs/newlines
            record.id,
            record.experiment,
            (row.verdict or "") if row else "",
            f"{row.delta_vs_best:+.6f}" if row and row.delta_vs_best is not None else "",
        )
        lines.append("\t".join(cells))
    return "\n".join(lines) + "\n"


def results_tsv(store: RunStore, k: float) -> str:
    """The table for the runs in `store`, verdicts with the threshold factor `k` (config noise_k)."""
    return render_results_tsv(store.list(), store.floors(), k)
