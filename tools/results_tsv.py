"""results.tsv: the original autoresearch's record of experiments, derived from the run store.

Columns as in the original (commit, val_bpb, memory_gb, status, description), one row per
finished run in launch order. status is `keep` or `discard` once decided, `crash` for any run
that produced no val_bpb (crashed, killed, timed out, lost), and `pending` for a succeeded
run still waiting for a decision. Runs without a val_bpb read 0.000000 and 0.0 GB, as in the
original. A run made without a sandbox (the workspace opted out) has `[unisolated]` before its
description.
"""

from __future__ import annotations

from collections.abc import Sequence

from autoresearch_mcp.sandbox.runstore import ACTIVE_STATUSES, RunStore
from autoresearch_mcp.tools.experiments import ExperimentRow, experiment_rows

RESULTS_FILE = "results.tsv"
COLUMNS = ("commit", "val_bpb", "memory_gb", "status", "description")


def render_results_tsv(rows: Sequence[ExperimentRow]) -> str:
    lines = ["\t".join(COLUMNS)]
    for row in rows:
        if row.status in ACTIVE_STATUSES:
            continue
        cells = (
            row.commit,
            f"{row.val_bpb or 0.0:.6f}",
            f"{row.memory_gb or 0.0:.1f}",
            "crash" if row.val_bpb is None else row.decision or "pending",
            ("[unisolated] " if row.unisolated else "") + " ".join(row.description.split()),  # no tabs or newlines
        )
        lines.append("\t".join(cells))
    return "\n".join(lines) + "\n"


def results_tsv(store: RunStore) -> str:
    return render_results_tsv(experiment_rows(store.list()))
