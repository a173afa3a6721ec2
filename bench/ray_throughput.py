"""Runs per hour on a Ray cluster with K GPU slots against one slot, and the per-run overhead Ray adds.

For each K: a fresh one-node Ray head with K logical GPUs, a workspace on the `gpu` profile whose
runs go to it, and ROUNDS x K short runs queued at once, each a new experiment (its own code, so
its own job package) whose train.py is the stand-in harness sleeping SECONDS (it uses no CPU:
what is measured is the scheduling around a run, not training). The wall time runs from the
first launch to the last summary in the run store. Per run, from the job's own reports:

    submit -> start   the scheduler hands the run to Ray (its record turns running) until the job's
                      wrapper runs on the node (Ray: the job supervisor actor, the runtime env,
                      our interpreter starting)
    end -> store      the wrapper reports the exit and summary until the run store has them

    python bench/ray_throughput.py [--seconds 30] [--rounds 3] [--slots 1 2 4 8]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from ray.job_submission import JobSubmissionClient

from autoresearch_mcp.nanochat.data import prepare_data
from autoresearch_mcp.nanochat.profiles import PROFILES
from autoresearch_mcp.sandbox.config import ClusterConfig, WorkspaceConfig
from autoresearch_mcp.sandbox.engine import ExperimentEngine
from autoresearch_mcp.sandbox.job_stream import ENDED, REPORT, STARTED
from autoresearch_mcp.sandbox.ray_head import start_head
from autoresearch_mcp.sandbox.runstore import RunRecord
from autoresearch_mcp.tests import stand_in_harness
from autoresearch_mcp.tools.setup import init_workspace


def train_py(seconds: float, n: int) -> str:
    return f"import time\ntime.sleep({seconds})  # idea {n}\nopen('val_bpb.txt', 'w').write('1.0')\n"


def job_reports(client: JobSubmissionClient, job_id: str) -> dict[str, dict]:
    """The wrapper's reports in a job's log, by kind (the last of each)."""
    found = {}
    for line in client.get_job_logs(job_id).split("\n"):
        if line.startswith(REPORT):
            report = json.loads(line[len(REPORT) :])
            found[report["report"]] = report
    return found


def drain(
    slots: int, runs: int, seconds: float, scratch: Path, cache: Path
) -> tuple[float, list[float], list[float], int]:
    env = {**os.environ, "AUTORESEARCH_MCP_CACHE": str(cache)}
    head = start_head(scratch / f"head-{slots}.log", num_cpus=2, num_gpus=slots, env=env)
    try:
        config = WorkspaceConfig(
            profile="gpu", data_source="builtin", cluster=ClusterConfig(backend="ray", address=head.address)
        )
        root = scratch / f"ws-{slots}"
        workspace = init_workspace(root, config)
        with ExperimentEngine(workspace, command=stand_in_harness.command) as engine:
            assert engine.slots == [f"ray:{i}" for i in range(slots)], engine.slots
            started = time.time()
            ids = []
            for n in range(runs):
                (root / "train.py").write_text(train_py(seconds, n))
                ids.append(engine.launch(f"idea {n}", budget_seconds=seconds).id)
            while engine.wait(None, 5):
                pass
            wall = time.time() - started
            records = [engine.store.get(run_id) for run_id in ids]
            assert engine.cluster is not None
            client = JobSubmissionClient(head.address)
            overheads = [overhead(r, job_reports(client, engine.cluster.job_id(r.id))) for r in records]
    finally:
        head.stop()
    succeeded = sum(1 for r in records if r.status == "succeeded")
    return wall, [o[0] for o in overheads], [o[1] for o in overheads], succeeded


def overhead(record: RunRecord, found: dict[str, dict]) -> tuple[float, float]:
    """Seconds from handing the run to Ray to its wrapper starting, and from its end report to the store."""
    assert record.started_at is not None and record.finished_at is not None
    return found[STARTED]["time"] - record.started_at, record.finished_at - found[ENDED]["time"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30.0, help="how long each run sleeps")
    parser.add_argument("--rounds", type=int, default=3, help="runs per slot")
    parser.add_argument("--slots", type=int, nargs="+", default=[1, 2, 4, 8])
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="ray-bench-"))
    cache = scratch / "cache"  # the node's own cache: the gpu profile on the built-in corpus
    prepare_data(PROFILES["gpu"], cache, "builtin")
    rows = [(k, *drain(k, args.rounds * k, args.seconds, scratch, cache)) for k in args.slots]
    shutil.rmtree(scratch, ignore_errors=True)

    print(f"{args.rounds} runs per slot, each sleeping {args.seconds:g} s (stand-in harness), gpu profile\n")
    print(
        "| GPU slots | runs | wall s | runs/hour | vs 1 slot | target | submit -> start s (median, max) | end -> store s (median, max) |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    base = None
    for k, wall, starts, ends, succeeded in rows:
        per_hour = 3600 * args.rounds * k / wall
        base = base or per_hour / k
        print(
            f"| {k} | {succeeded}/{args.rounds * k} | {wall:.0f} | {per_hour:.0f} | {per_hour / base:.2f} x | {0.95 * k:.2f} x | "
            f"{statistics.median(starts):.2f}, {max(starts):.2f} | {statistics.median(ends):.2f}, {max(ends):.2f} |"
        )


if __name__ == "__main__":
    main()
