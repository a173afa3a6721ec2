"""Real runs through Ray on this machine's GPUs, end to end: one check for the GPU machine.

The server's own path with `[cluster] address = "local"`: the engine starts a one-node Ray head
(Ray finds the GPUs), each run becomes a Ray job holding one GPU, and on the node the real
supervisor trains the template in bubblewrap with only that GPU bound and evaluates it in a
second sandbox; the summary, step metrics and log come back into the run store. With --runs N
on N GPUs the runs go at once, each on its own GPU. Prints, per run, where it ran, its result
and the overhead Ray added; the head is stopped at the end.

    python bench/ray_gpu_check.py [--profile gpu|h100] [--budget 60] [--runs 1]   on a CUDA machine, with the [ray] extra
    python bench/ray_gpu_check.py --dry-run [--budget 10]                          here: the cpu profile, the same path

Data: the profile on the built-in corpus, prepared first in this machine's cache (the node's).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from ray_throughput import job_reports, overhead  # beside this script
from run_report import format_rows

from autoresearch_mcp.nanochat.data import prepare_data
from autoresearch_mcp.nanochat.profiles import PROFILES, default_data_dir
from autoresearch_mcp.sandbox.config import ClusterConfig, WorkspaceConfig
from autoresearch_mcp.sandbox.engine import ExperimentEngine
from autoresearch_mcp.tools.setup import init_workspace


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="gpu", choices=["gpu", "h100"])
    parser.add_argument("--budget", type=float, default=None, help="training seconds (default: 60, dry run 10)")
    parser.add_argument("--runs", type=int, default=1, help="runs at once (one GPU each)")
    parser.add_argument("--dry-run", action="store_true", help="the cpu profile, on a machine without a GPU")
    args = parser.parse_args()
    profile = "cpu" if args.dry_run else args.profile
    budget = args.budget or (10.0 if args.dry_run else 60.0)

    prepare_data(PROFILES[profile], default_data_dir(), "builtin")
    scratch = Path(tempfile.mkdtemp(prefix="ray-gpu-check-"))
    config = WorkspaceConfig(
        profile=profile, data_source="builtin", cluster=ClusterConfig(backend="ray", address="local")
    )
    workspace = init_workspace(scratch / "ws", config)
    engine = ExperimentEngine(workspace)
    try:
        engine.start()  # starts the local head
        assert engine.cluster is not None and engine.cluster.head is not None, "the local head did not start"
        print(f"Ray head {engine.cluster.address}: {len(engine.slots)} slot(s) for {profile} runs")
        ids = [engine.launch(f"ray gpu check {n}", budget_seconds=budget, seed=n).id for n in range(args.runs)]
        while engine.wait(None, 10):
            pass
        for run_id in ids:
            print()
            print(format_rows(rows(engine, run_id)))
    finally:
        engine.shutdown()  # nothing runs now: the head is stopped
        shutil.rmtree(scratch, ignore_errors=True)


def rows(engine: ExperimentEngine, run_id: str) -> list[tuple[str, str]]:
    record = engine.store.get(run_id)
    log = (engine.run_dir(run_id) / "log.txt").read_text(encoding="utf-8", errors="replace")
    placed = next((line for line in log.splitlines() if "running on node" in line), "(no placement reported)")
    summary = record.summary or {}
    timings = summary.get("timings") or {}
    assert engine.cluster is not None
    submit, store = overhead(record, job_reports(engine.cluster.client(), engine.cluster.job_id(run_id)))
    return [
        ("run", f"{run_id}: {record.status}" + (f" ({record.error})" if record.error else "")),
        ("where", placed.replace("[autoresearch-mcp] ", "")),
        ("val_bpb", f"{summary['val_bpb']:.4f}" if "val_bpb" in summary else "-"),
        ("device, isolation", f"{summary.get('device', '-')}, {summary.get('isolation', '-')}"),
        ("tokens (M), MFU %", f"{summary.get('total_tokens_M') or 0:.1f}, {summary.get('mfu_percent') or '-'}"),
        ("peak memory MB", f"{summary.get('peak_memory_mb') or '-'}"),
        ("phases s", ", ".join(f"{k} {v:.1f}" for k, v in timings.items())),
        ("submit -> start s", f"{submit:.2f}"),
        ("end -> store s", f"{store:.2f}"),
    ]


if __name__ == "__main__":
    main()
