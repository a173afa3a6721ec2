"""A stand-in for the harness entry point, for tests about process control.

It takes the harness's command line and keeps its file protocol (docs/contracts.md: `phase`,
`summary.json`, exit codes), but instead of training it runs the snapshot's train.py as a
child process, so a test decides what a run does by what it writes into train.py: sleep,
raise, ignore SIGTERM, spawn grandchildren. train.py reports its "val_bpb" by writing the
file `val_bpb.txt` in its working directory (the snapshot), may make the "evaluation" last a while
(EVALUATION_SECONDS_FILE), and may log training steps as
JSON lines to the file named by $STAND_IN_METRICS (where the real harness writes them). It
finds the run's seed and scale in the environment, as the real harness gives them
(contract.ENV_SEED, contract.ENV_SCALE).

Run as a script: `python stand_in_harness.py --snapshot ... --run-dir ...`. From the package
it imports only the run contract (which imports nothing), so it starts as fast as Python does.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from autoresearch_mcp.nanochat.contract import ENV_SCALE, ENV_SEED, METRICS, OUT_DIR, PHASE, SUMMARY, Phase, RunExit

HERE = Path(__file__).resolve()
ENVIRONMENT_MARK = "stand-in environment: "  # the log line that shows what the run inherited
METRICS_ENV = "STAND_IN_METRICS"
EVALUATION_SECONDS_FILE = "evaluation_seconds.txt"  # train.py may write how long its evaluation takes


def command(spec) -> list[str]:
    """The engine's `command` factory that runs this stand-in instead of the harness."""
    return [
        sys.executable,
        str(HERE),
        "--snapshot",
        str(spec.snapshot_dir),
        "--run-dir",
        str(spec.run_dir),
        "--budget",
        str(spec.budget_seconds),
        "--seed",
        str(spec.seed),
        "--scale",
        str(spec.scale),
    ] + ([] if spec.after is None else ["--after-pid", str(spec.after[0]), "--after-started", repr(spec.after[1])])


def _set_phase(run_dir: Path, phase: Phase) -> None:
    partial = run_dir / f".{PHASE}.tmp"
    partial.write_text(phase.value + "\n", encoding="utf-8")
    os.replace(partial, run_dir / PHASE)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--snapshot", type=Path, required=True)
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--budget", type=float, required=True)
    parser.add_argument("--seed", required=True)
    parser.add_argument("--scale", required=True)
    parser.add_argument("--after-pid", type=int)
    parser.add_argument("--after-started", type=float)
    args = parser.parse_args()
    args.snapshot, args.run_dir = args.snapshot.resolve(), args.run_dir.resolve()  # as the supervisor does
    _set_phase(args.run_dir, Phase.SETUP)
    print(ENVIRONMENT_MARK + json.dumps(dict(os.environ)), flush=True)
    if args.after_pid is not None:  # started held behind the slot's run: train once it has ended
        from autoresearch_mcp.sandbox.supervisor import wait_for_slot

        _set_phase(args.run_dir, Phase.WAITING)
        wait_for_slot(args.after_pid, args.after_started)
    _set_phase(args.run_dir, Phase.TRAINING)
    started = time.time()
    (args.run_dir / OUT_DIR).mkdir(exist_ok=True)
    context = {METRICS_ENV: str(args.run_dir / OUT_DIR / METRICS), ENV_SEED: args.seed, ENV_SCALE: args.scale}
    code = subprocess.call([sys.executable, "train.py"], cwd=args.snapshot, env={**os.environ, **context})
    if code != 0:
        _set_phase(args.run_dir, Phase.FAILED)
        print(f"stand-in harness: train.py exited with {code}", flush=True)
        return RunExit.TRAIN_CRASHED
    _set_phase(args.run_dir, Phase.EVALUATING)
    evaluation = args.snapshot / EVALUATION_SECONDS_FILE
    time.sleep(float(evaluation.read_text()) if evaluation.exists() else 0.0)
    val_bpb = float((args.snapshot / "val_bpb.txt").read_text())
    summary = {"val_bpb": val_bpb, "training_seconds": time.time() - started, "peak_memory_mb": 10.0}
    (args.run_dir / SUMMARY).write_text(json.dumps(summary), encoding="utf-8")
    _set_phase(args.run_dir, Phase.DONE)
    return RunExit.OK


if __name__ == "__main__":
    sys.exit(main())
