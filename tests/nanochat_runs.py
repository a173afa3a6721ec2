"""Helpers for tests that train and evaluate real (tiny) models through the run entry point."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import pytest

from autoresearch_mcp.nanochat import contract
from autoresearch_mcp.nanochat import summary as files
from autoresearch_mcp.nanochat.data import PreparedData

TEMPLATE = Path(files.__file__).parent / "template" / "train.py"
# The template's cpu model shrunk to width 64 (two heads of 32) and 2,048 tokens per step: small
# enough that a step takes tens of milliseconds on one shared core.
TINY_MODEL = [
    ("ASPECT_RATIO = 64", "ASPECT_RATIO = 32"),
    ('ROWS = {"h100": 64, "gpu": 16, "cpu": 16}', 'ROWS = {"h100": 64, "gpu": 16, "cpu": 8}'),
    (
        'BATCH_TOKENS = {"h100": 2**19, "gpu": 2**17, "cpu": 2**12}',
        'BATCH_TOKENS = {"h100": 2**19, "gpu": 2**17, "cpu": 2**11}',
    ),
]
RUN_TIMEOUT = 300
# One thread per process: on a shared machine several OpenMP threads per run make each step
# many times slower (threads wait on each other), and one thread keeps CPU runs bit-reproducible.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def make_snapshot(
    directory: Path, replacements: Iterable[tuple[str, str]] = (), prepend: str = "", append: str = ""
) -> Path:
    """A snapshot folder holding the template train.py, shrunk to TINY_MODEL and edited."""
    text = TEMPLATE.read_text(encoding="utf-8")
    for old, new in [*TINY_MODEL, *replacements]:
        assert old in text, f"the template no longer contains {old!r}"
        text = text.replace(old, new)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "train.py").write_text(prepend + text + append, encoding="utf-8")
    return directory


def run(
    snapshot: Path, run_dir: Path, data_dir: Path, budget: float = 2.0, seed: int = 42, extra: Iterable[str] = ()
) -> subprocess.CompletedProcess[str]:
    """One run of the supervisor on the cpu profile, as the runner starts it, on a copy of `snapshot`
    placed in the run folder (where the server exports it)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    shutil.copytree(snapshot, run_dir / contract.SNAPSHOT_DIR, dirs_exist_ok=True)
    command = [
        sys.executable, "-m", "autoresearch_mcp.sandbox.supervisor",
        "--run-dir", str(run_dir), "--profile", "cpu",
        "--budget", str(budget), "--seed", str(seed), "--device", "cpu", "--data-dir", str(data_dir),
        *extra,
    ]  # fmt: skip
    return subprocess.run(command, cwd=run_dir, env=ENV, capture_output=True, text=True, timeout=RUN_TIMEOUT)


def handed_back(run_dir: Path, name: str = contract.WEIGHTS) -> Path:
    """A hand-back file of a finished run (the supervisor moved it out of out/)."""
    return run_dir / contract.HANDBACK_DIR / name


def written(run_dir: Path, name: str = contract.METRICS) -> Path:
    """A file the training process wrote into the run's out/ folder."""
    return run_dir / contract.OUT_DIR / name


def evaluate(handback: Path, data: PreparedData, out: Path) -> subprocess.CompletedProcess[str]:
    """The evaluator on its own, as run.py starts it, on the hand-back files in `handback`."""
    command = [
        sys.executable, "-m", "autoresearch_mcp.nanochat.evaluate",
        "--handback", str(handback), "--profile", "cpu",
        "--val-dir", str(data.val_dir), "--tokenizer-dir", str(data.tokenizer_dir),
        "--out", str(out), "--device", "cpu",
    ]  # fmt: skip
    return subprocess.run(command, cwd=out.parent, env=ENV, capture_output=True, text=True, timeout=RUN_TIMEOUT)


def summary_of(run_dir: Path) -> dict:
    return json.loads((run_dir / contract.SUMMARY).read_text())


def uniform_val_bpb(data: PreparedData) -> float:
    """bits per byte of predicting every token with probability 1 / vocab_size."""
    text_bytes_per_token = data.text_bytes / (data.train_tokens + data.val_tokens)
    return math.log2(data.vocab_size) / text_bytes_per_token


def log_of(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout + result.stderr


def set_run_context(
    monkeypatch: pytest.MonkeyPatch, run_dir: Path, snapshot: Path, data: PreparedData, budget: float
) -> None:
    """The environment run.py gives a training process, for calling harness.start() in a test."""
    run_dir.mkdir(parents=True, exist_ok=True)
    for name, value in {
        contract.ENV_RUN_DIR: run_dir, contract.ENV_SNAPSHOT: snapshot, contract.ENV_PROFILE: "cpu",
        contract.ENV_BUDGET: budget, contract.ENV_DEADLINE: time.time() + budget, contract.ENV_SEED: 0,
        contract.ENV_DEVICE: "cpu", contract.ENV_TRAIN_DIR: data.train_dir, contract.ENV_TOKENIZER_DIR: data.tokenizer_dir,
    }.items():  # fmt: skip
        monkeypatch.setenv(name, str(value))
