"""The run entry point: prepare data, train (the snapshot's train.py), evaluate, summarize.

    python -m autoresearch_mcp.nanochat.run --snapshot DIR --run-dir DIR --profile P
        [--budget S] [--seed N] [--device cpu|cuda|mps] [--data-dir DIR] [--data-source SRC]

Training and evaluation each run in a subprocess of their own; this process only moves files
and streams their output, so its stdout is the run log. It writes `phase` as the run moves on
and, after evaluation, `summary.json` from the evaluator's result (never from anything the
training process wrote), then prints the summary as `key: value` lines after `---`.

Exit codes, phases and file names: contract.py.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoresearch_mcp.nanochat import contract
from autoresearch_mcp.nanochat import summary as files
from autoresearch_mcp.nanochat.contract import Phase, RunExit
from autoresearch_mcp.nanochat.data import PreparedData, prepare_data
from autoresearch_mcp.nanochat.errors import UserError
from autoresearch_mcp.nanochat.profiles import Profile, default_data_dir, resolve_profile

EVAL_TIMEOUT_SECONDS = 900.0
# Tells the training process where the cache is, and so where the validation split lives.
HIDDEN_FROM_TRAINING = ("AUTORESEARCH_MCP_CACHE",)


class RunFailed(Exception):
    def __init__(self, exit_code: RunExit, message: str) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class Timings:
    """Wall-clock seconds per phase, so a benchmark can say where the overhead goes."""

    started: float = field(default_factory=time.time)
    phases: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, float]:
        total = time.time() - self.started
        other = total - sum(self.phases.values())
        return {**{k: round(v, 3) for k, v in self.phases.items()}, "other": round(other, 3), "total": round(total, 3)}


# ---- subprocesses ----------------------------------------------------------------------------


def _child_setup() -> None:
    # Own process group, so leftovers can be killed as a group after the child exits; and on
    # Linux the child dies with us, so killing this process never strands a GPU-holding child.
    os.setpgrp()
    if sys.platform.startswith("linux"):
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def run_streamed(command: list[str], cwd: Path, env: dict[str, str], timeout: float) -> int | None:
    """Run `command`, copying its output to our stdout line by line; None if it timed out."""
    process = subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        bufsize=1,
        preexec_fn=_child_setup,
    )

    def pump() -> None:
        for line in process.stdout or ():  # a pipe, as asked for above
            sys.stdout.write(line)
            sys.stdout.flush()

    pumper = threading.Thread(target=pump, daemon=True)
    pumper.start()
    try:
        return_code: int | None = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return_code = None
    finally:
        # Whatever the child left behind in its group (workers, a stray background process).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        pumper.join(timeout=5)
    return return_code


# ---- the phases ------------------------------------------------------------------------------


def set_phase(run_dir: Path, phase: Phase) -> None:
    files.write_atomic(run_dir / contract.PHASE, phase.value + "\n")


def remove_outputs(run_dir: Path, names: tuple[str, ...]) -> None:
    """Only the harness writes these: remove any copies something else left in the run dir."""
    for name in names:
        (run_dir / name).unlink(missing_ok=True)


def prepare(profile: Profile, data_dir: Path, source: str | None) -> PreparedData:
    try:
        return prepare_data(profile, data_dir, source)
    except UserError as error:
        raise RunFailed(RunExit.SETUP_FAILED, f"setup failed: {error}") from None
    except Exception as error:
        raise RunFailed(
            RunExit.SETUP_FAILED,
            f"setup failed: preparing the {profile.name} data in {data_dir} raised {type(error).__name__}: {error}",
        ) from error


def training_env(args: argparse.Namespace, budget: float, data: PreparedData) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in HIDDEN_FROM_TRAINING}
    env.update(
        {
            contract.ENV_RUN_DIR: str(args.run_dir),
            contract.ENV_SNAPSHOT: str(args.snapshot),
            contract.ENV_PROFILE: args.profile_name,
            contract.ENV_BUDGET: repr(budget),
            contract.ENV_SEED: str(args.seed),
            contract.ENV_SCALE: repr(args.scale),
            contract.ENV_TRAIN_DIR: str(data.train_dir),
            contract.ENV_TOKENIZER_DIR: str(data.tokenizer_dir),
            "PYTHONUNBUFFERED": "1",
        }
    )
    if args.device:
        env[contract.ENV_DEVICE] = args.device
    else:
        env.pop(contract.ENV_DEVICE, None)
    return env


def val_fingerprint(val_dir: Path) -> list[tuple[str, int, int]]:
    """Name, size and mtime of every validation file: a cheap check that training left it alone."""
    stats = {path: path.stat() for path in val_dir.rglob("*") if path.is_file()}
    return sorted((str(path.relative_to(val_dir)), stat.st_size, stat.st_mtime_ns) for path, stat in stats.items())


def train(args: argparse.Namespace, budget: float, data: PreparedData) -> None:
    timeout = budget + files.TRAINING_ALLOWANCE_SECONDS
    return_code = run_streamed(
        [sys.executable, str(args.snapshot / "train.py")],
        cwd=args.snapshot,
        env=training_env(args, budget, data),
        timeout=timeout,
    )
    if return_code is None:
        raise RunFailed(
            RunExit.TRAIN_CRASHED,
            f"train.py was still running {timeout:.0f} s after it started (budget {budget:.0f} s plus "
            "allowance) and was stopped; the training loop must end when run.done is true",
        )
    if return_code == RunExit.FAST_FAILED:
        raise RunFailed(RunExit.FAST_FAILED, "training fast-failed: the loss was NaN or exploding (see above)")
    if return_code < 0:
        raise RunFailed(RunExit.TRAIN_CRASHED, f"train.py was killed by signal {-return_code}")
    if return_code != 0:
        raise RunFailed(RunExit.TRAIN_CRASHED, f"train.py crashed with exit code {return_code}; its traceback is above")
    if not (args.run_dir / contract.MODEL).is_file() or not (args.run_dir / contract.TRAIN_STATS).is_file():
        raise RunFailed(
            RunExit.NO_MODEL,
            "train.py finished without handing back a model; call run.hand_back(model) at the end",
        )


def evaluate(args: argparse.Namespace, data: PreparedData) -> dict[str, Any]:
    # A private folder that did not exist while training ran: the evaluator's cwd and output,
    # so nothing the training process left behind can be read as the result or shadow a module.
    with tempfile.TemporaryDirectory(prefix="autoresearch-eval-") as private:
        out = Path(private) / contract.EVAL_RESULT
        command = [
            sys.executable, "-m", "autoresearch_mcp.nanochat.evaluate",
            "--snapshot", str(args.snapshot),
            "--model", str(args.run_dir / contract.MODEL),
            "--profile", args.profile_name,
            "--val-dir", str(data.val_dir),
            "--tokenizer-dir", str(data.tokenizer_dir),
            "--out", str(out),
        ]  # fmt: skip
        if args.device:
            command += ["--device", args.device]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        return_code = run_streamed(command, cwd=Path(private), env=env, timeout=EVAL_TIMEOUT_SECONDS)
        result = files.read_json(out) if return_code == 0 else None
    if return_code is None:
        raise RunFailed(
            RunExit.EVAL_FAILED, f"evaluation took longer than {EVAL_TIMEOUT_SECONDS:.0f} s and was stopped"
        )
    if result is None:
        raise RunFailed(RunExit.EVAL_FAILED, "evaluation failed or was refused (the reason is above)")
    return result


def _number(data: dict[str, Any], key: str) -> float | None:
    value = data.get(key)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def build_summary(
    args: argparse.Namespace, budget: float, result: dict[str, Any], stats: dict[str, Any], timings: Timings
) -> dict[str, Any]:
    """The recorded result: val_bpb and model size from the evaluator, the rest as reported."""
    total_tokens = _number(stats, "total_tokens")
    num_steps = _number(stats, "num_steps")
    return {
        "val_bpb": result["val_bpb"],
        "training_seconds": _number(stats, "training_seconds"),
        "total_seconds": time.time() - timings.started,
        "peak_memory_mb": _number(stats, "peak_memory_mb"),
        "mfu_percent": _number(stats, "mfu_percent"),
        "total_tokens_M": None if total_tokens is None else total_tokens / 1e6,
        "num_steps": None if num_steps is None else int(num_steps),
        "num_params_M": result["num_params"] / 1e6,
        "depth": result["depth"],
        "profile": args.profile_name,
        "device": result["device"],
        "seed": args.seed,
        "budget_seconds": budget,
        "eval_tokens": result["eval_tokens"],
        "timings": timings.as_dict(),
    }


def execute(args: argparse.Namespace, profile: Profile, timings: Timings) -> dict[str, Any]:
    budget = args.budget if args.budget is not None else profile.budget_seconds
    set_phase(args.run_dir, Phase.SETUP)
    phase_start = time.time()
    data = prepare(profile, args.data_dir, args.data_source)
    timings.phases["data"] = time.time() - phase_start

    set_phase(args.run_dir, Phase.TRAINING)
    val_before = val_fingerprint(data.val_dir)
    spawned = time.time()
    train(args, budget, data)
    train_wall = time.time() - spawned
    stats = files.read_json(args.run_dir / contract.TRAIN_STATS) or {}
    remove_outputs(args.run_dir, contract.RESULTS)
    if val_fingerprint(data.val_dir) != val_before:
        raise RunFailed(
            RunExit.EVAL_FAILED, f"evaluation refused: the validation data in {data.val_dir} changed during training"
        )
    # startup: imports, model build and the uncounted warm-up steps; handback: saving and exit.
    clock_start = _number(stats, "clock_start_unix")
    startup = min(train_wall, clock_start - spawned) if clock_start else train_wall
    training = min(train_wall - startup, _number(stats, "training_seconds") or 0.0)
    timings.phases.update(startup=startup, training=training, handback=train_wall - startup - training)

    set_phase(args.run_dir, Phase.EVALUATING)
    phase_start = time.time()
    result = evaluate(args, data)
    timings.phases["eval"] = time.time() - phase_start
    return build_summary(args, budget, result, stats, timings)


# ---- command line ----------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, Profile]:
    parser = argparse.ArgumentParser(
        prog="python -m autoresearch_mcp.nanochat.run", description="Train a snapshot's train.py, then evaluate it."
    )
    parser.add_argument("--snapshot", type=Path, required=True, help="folder holding the train.py to run")
    parser.add_argument("--run-dir", type=Path, required=True, help="where phase, metrics and summary go")
    parser.add_argument("--profile", required=True, help="h100, gpu, cpu or auto")
    parser.add_argument("--budget", type=float, help="training seconds (default: the profile's)")
    parser.add_argument("--seed", type=int, default=contract.DEFAULT_SEED)
    parser.add_argument("--scale", type=float, default=1.0, help="model size multiplier for train.py (run.scale)")
    parser.add_argument("--device", choices=["cpu", "cuda", "mps"], help="default: cuda > mps > cpu")
    parser.add_argument("--data-dir", type=Path, default=None, help="data cache (default: the per-user cache)")
    parser.add_argument(
        "--data-source", help="override the profile's data: builtin, climbmix, or local parquet/jsonl/txt files"
    )
    args = parser.parse_args(argv)
    args.snapshot = args.snapshot.resolve()
    args.run_dir = args.run_dir.resolve()
    args.data_dir = (args.data_dir or default_data_dir()).expanduser().resolve()
    if not (args.snapshot / "train.py").is_file():
        parser.error(f"--snapshot {args.snapshot} has no train.py; give the folder that holds it")
    if args.budget is not None and not args.budget > 0:
        parser.error(f"--budget must be a positive number of seconds, got {args.budget}")
    if not 0 < args.scale <= 100:
        parser.error(f"--scale must be a number above 0 and at most 100, got {args.scale}")
    try:
        profile = resolve_profile(args.profile)
    except UserError as error:
        parser.error(str(error))
    args.profile_name = profile.name
    return args, profile


def _stop(signum: int, frame: object) -> None:
    # Unwinds through run_streamed's cleanup, which kills the child's process group.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    timings = Timings()
    signal.signal(signal.SIGTERM, _stop)
    args, profile = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    args.run_dir.mkdir(parents=True, exist_ok=True)
    remove_outputs(args.run_dir, contract.RESERVED_OUTPUTS)
    try:
        result = execute(args, profile, timings)
    except RunFailed as failure:
        sys.stdout.flush()
        print(failure, file=sys.stderr, flush=True)
        remove_outputs(args.run_dir, contract.RESULTS)
        set_phase(args.run_dir, Phase.FAILED)
        return failure.exit_code
    files.write_json_atomic(args.run_dir / contract.SUMMARY, result)
    set_phase(args.run_dir, Phase.DONE)
    print("---")
    print(files.format_summary(result), flush=True)
    return RunExit.OK


if __name__ == "__main__":
    sys.exit(main())
