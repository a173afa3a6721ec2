"""One `cpu` profile run of the template train.py, end to end, as the runner starts it (the
supervisor: training and evaluation each in its sandbox).

Prints throughput, the result, and where the wall time went: the training budget versus
start-up (interpreter, torch, model, first step), data, hand-back, evaluation and the rest.

    python bench/cpu_run.py [--budget 60] [--data-dir DIR] [--keep DIR]

The first run on a machine also builds the cpu data (tokenizer and shards) under the data
cache; that shows as `data`. Run it twice to see the steady state.
"""

from __future__ import annotations

import argparse
import math
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from run_report import format_rows, report_rows  # beside this script

from autoresearch_mcp.nanochat import summary as files
from autoresearch_mcp.nanochat.data import prepare_data
from autoresearch_mcp.nanochat.profiles import PROFILES, default_data_dir

TEMPLATE = Path(files.__file__).parent / "template" / "train.py"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget", type=float, default=PROFILES["cpu"].budget_seconds)
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--keep", type=Path, help="keep the run directory here instead of a temp folder")
    parser.add_argument("--isolation", choices=["bubblewrap", "none"], default="bubblewrap")
    args = parser.parse_args()
    data_dir = (args.data_dir or default_data_dir()).resolve()

    work = Path(tempfile.mkdtemp(prefix="cpu-run-bench-"))
    run_dir = args.keep or work / "run"
    (run_dir / "snapshot").mkdir(parents=True)
    shutil.copy(TEMPLATE, run_dir / "snapshot" / "train.py")
    command = [
        sys.executable, "-m", "autoresearch_mcp.sandbox.supervisor",
        "--run-dir", str(run_dir), "--profile", "cpu", "--budget", str(args.budget),
        "--device", "cpu", "--data-dir", str(data_dir), "--isolation", args.isolation,
    ]  # fmt: skip
    print(f"running {args.budget:.0f} s cpu profile run in {run_dir} ...", flush=True)
    started = time.time()
    result = subprocess.run(command, cwd=run_dir, capture_output=True, text=True)
    wall = time.time() - started
    if result.returncode != 0:
        print(result.stdout[-4000:], result.stderr[-4000:], sep="\n")
        print(f"run failed with exit code {result.returncode}")
        return 1

    data = prepare_data(PROFILES["cpu"], data_dir)
    uniform = math.log2(data.vocab_size) * (data.train_tokens + data.val_tokens) / data.text_bytes
    rows = report_rows(run_dir)
    rows.insert(7, ("val_bpb of uniform predictions", f"{uniform:.4f}"))
    print(f"\ncpu profile, budget {args.budget:.0f} s ({wall:.1f} s with the runner's interpreter start)")
    print(format_rows(rows))
    if not args.keep:
        shutil.rmtree(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
