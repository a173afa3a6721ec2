"""What the OS sandbox costs: its start-up, and one whole `cpu` profile run with and without it.

    python bench/sandbox_cost.py [--budget 60] [--starts 10] [--data-dir DIR] [--skip-runs]

1. Start-up: `python -c pass` and `python -c "import torch"` started plainly and inside the
   training sandbox's view (bwrap, the same mounts and namespaces), median of --starts each,
   interleaved.
2. One run: the template train.py through the supervisor on the cpu profile, once with
   isolation "bubblewrap" and once with "none" (same code, same data, same seed), wall time
   from start to summary, and the phases the supervisor timed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from autoresearch_mcp.nanochat import contract
from autoresearch_mcp.nanochat import summary as files
from autoresearch_mcp.nanochat.data import prepare_data
from autoresearch_mcp.nanochat.profiles import PROFILES, default_data_dir
from autoresearch_mcp.sandbox.isolation import SandboxPlan, availability

TEMPLATE = Path(files.__file__).parent / "template" / "train.py"


def sandboxed(command: list[str]) -> list[str]:
    plan = SandboxPlan(cwd="/")
    plan.add_system()
    plan.add_python()
    plan.private("/tmp", 2**30)
    return plan.argv(availability().bwrap or "bwrap", command)


def median_seconds(command: list[str], starts: int) -> float:
    times = []
    for _ in range(starts):
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def startup_rows(starts: int) -> list[tuple[str, float, float]]:
    rows = []
    for label, code in (("python -c pass", "pass"), ('python -c "import torch"', "import torch")):
        plain = [sys.executable, "-c", code]
        median_seconds(plain, 1), median_seconds(sandboxed(plain), 1)  # warm the page cache
        rows.append((label, median_seconds(plain, starts), median_seconds(sandboxed(plain), starts)))
    return rows


def one_run(isolation: str, budget: float, data_dir: Path, work: Path) -> tuple[float, dict]:
    run_dir = work / isolation
    (run_dir / contract.SNAPSHOT_DIR).mkdir(parents=True)
    shutil.copy(TEMPLATE, run_dir / contract.SNAPSHOT_DIR / "train.py")
    command = [
        sys.executable, "-m", "autoresearch_mcp.sandbox.supervisor", "--run-dir", str(run_dir),
        "--profile", "cpu", "--budget", str(budget), "--device", "cpu", "--data-dir", str(data_dir),
        "--isolation", isolation,
    ]  # fmt: skip
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"the {isolation} run failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return wall, json.loads((run_dir / contract.SUMMARY).read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget", type=float, default=PROFILES["cpu"].budget_seconds)
    parser.add_argument("--starts", type=int, default=10)
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--skip-runs", action="store_true", help="only the start-up table")
    args = parser.parse_args()
    if not availability().available:
        sys.exit(availability().describe())
    print(f"sandbox: {availability().describe()}\n")

    print(f"start-up, median of {args.starts}")
    print("| command | plain s | in the sandbox s | sandbox adds s |\n| --- | ---: | ---: | ---: |")
    for label, plain, inside in startup_rows(args.starts):
        print(f"| {label} | {plain:.3f} | {inside:.3f} | {inside - plain:+.3f} |")
    if args.skip_runs:
        return 0

    data_dir = (args.data_dir or default_data_dir()).resolve()
    prepare_data(PROFILES["cpu"], data_dir)
    work = Path(tempfile.mkdtemp(prefix="sandbox-cost-"))
    try:
        runs = {isolation: one_run(isolation, args.budget, data_dir, work) for isolation in ("none", "bubblewrap")}
    finally:
        shutil.rmtree(work)
    phases = ["data", "startup", "training", "handback", "eval", "other"]
    print(f"\none cpu profile run, budget {args.budget:g} s, template train.py, seed {contract.DEFAULT_SEED}")
    print("| isolation | wall s | " + " | ".join(f"{p} s" for p in phases) + " | steps | val_bpb |")
    print("| --- | ---: | " + " | ".join("---:" for _ in phases) + " | ---: | ---: |")
    for isolation, (wall, summary) in runs.items():
        timings = summary["timings"]
        cells = " | ".join(f"{timings.get(p, 0.0):.2f}" for p in phases)
        print(f"| {isolation} | {wall:.2f} | {cells} | {summary['num_steps']} | {summary['val_bpb']:.4f} |")
    extra = runs["bubblewrap"][0] - runs["none"][0]
    print(f"\nwall: the sandbox adds {extra:+.2f} s per run ({100 * extra / args.budget:+.1f}% of the budget)")
    # Training runs for the budget either way; what the sandbox can add is in the other phases.
    fixed = {name: run[1]["timings"]["total"] - run[1]["timings"]["training"] for name, run in runs.items()}
    fixed_extra = fixed["bubblewrap"] - fixed["none"]
    print(
        f"fixed costs (all but the counted training): {fixed['none']:.2f} s plain, {fixed['bubblewrap']:.2f} s "
        f"sandboxed: {fixed_extra:+.2f} s ({100 * fixed_extra / args.budget:+.1f}% of the budget)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
