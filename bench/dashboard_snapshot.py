"""What one dashboard poll costs: assembling the snapshot, and its size on the wire.

Builds a workspace whose run store holds N finished experiments (the store written directly,
as the engine would leave it) and two running runs whose metrics.jsonl holds S steps each,
then times `dashboard_data` (what GET /dashboard/api/snapshot and the app's tool call run)
and measures its JSON. Prints a table.

    python bench/dashboard_snapshot.py [--experiments 50 500] [--steps 5000] [--repeats 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from autoresearch_mcp.nanochat import contract
from autoresearch_mcp.sandbox.config import WorkspaceConfig
from autoresearch_mcp.sandbox.engine import DB_FILE, RUNS_DIR
from autoresearch_mcp.sandbox.history import BEST_BRANCH, open_history
from autoresearch_mcp.sandbox.runstore import RunStore
from autoresearch_mcp.tools.dashboard import WorkspaceReader, dashboard_data
from autoresearch_mcp.tools.setup import init_workspace


def build(root: Path, experiments: int, steps: int) -> None:
    workspace = init_workspace(root, WorkspaceConfig(profile="cpu", devices="cpu:2"))
    commit = open_history(root).commit(BEST_BRANCH).hexsha
    store = RunStore(workspace.state_dir / DB_FILE)
    for n in range(experiments + 2):
        record = store.create(
            commit=commit, parent_commit=commit, description=f"idea {n}", profile="cpu", budget_seconds=300, seed=n
        )
        run_dir = workspace.state_dir / RUNS_DIR / record.id
        run_dir.mkdir(parents=True)
        (run_dir / contract.LOG).write_text("step ...\n" * 2000, encoding="utf-8")
        running = n >= experiments
        history = [{"step": s, "loss": 4.0 / s, "progress": s / steps, "tok_per_s": 1e5} for s in range(1, steps + 1)]
        (run_dir / contract.METRICS).write_text("".join(json.dumps(p) + "\n" for p in history), encoding="utf-8")
        store.update(
            record.id,
            status="running" if running else "succeeded",
            device=f"cpu:{n - experiments}" if running else None,
            started_at=time.time() - 60,
            finished_at=None if running else time.time(),
            decision=None if running else ("keep" if n % 5 == 0 else "discard"),
            summary=None if running else {"val_bpb": 1.5 - n * 1e-4, "peak_memory_mb": 1000.0},
        )
    store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiments", type=int, nargs="+", default=[50, 500])
    parser.add_argument("--steps", type=int, default=5000, help="logged steps per running (and best) run")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    print("| experiments | steps per curve | snapshot p50 ms | max ms | JSON KB |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for count in args.experiments:
        with tempfile.TemporaryDirectory() as folder:
            build(Path(folder) / "ws", count, args.steps)
            reader = WorkspaceReader(Path(folder) / "ws")
            dashboard_data(reader)  # warm: store opened, NVML asked, diff cached
            times = []
            for _ in range(args.repeats):
                started = time.perf_counter()
                snapshot = dashboard_data(reader)
                times.append(1000 * (time.perf_counter() - started))
            size = len(snapshot.model_dump_json()) / 1024
            reader.close()
        print(f"| {count} | {args.steps} | {statistics.median(times):.1f} | {max(times):.1f} | {size:.0f} |")


if __name__ == "__main__":
    main()
