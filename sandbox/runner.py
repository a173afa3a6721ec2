"""One training run as an operating-system process, from start to a recorded outcome.

A run is the harness entry point (`python -m autoresearch_mcp.nanochat.run ...`) started in
its own session, so that it and everything it spawns (the agent's train.py, the evaluator)
share one process group that can be signalled as a whole. It gets no stdin, a scrubbed
environment pinned to its device slot, and a log file for stdout and stderr. The harness
reports how far it got in the run dir's `phase` file and its result in `summary.json`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from autoresearch_mcp.nanochat import contract
from autoresearch_mcp.nanochat.contract import Phase, RunExit
from autoresearch_mcp.sandbox.runstore import RunRecord

HARNESS_MODULE = "autoresearch_mcp.nanochat.run"
HOST_SLOT = "cpu"  # the slot that is not a CUDA device
CUDA_PREFIX = "cuda:"


TRACEBACK_HEADER = "Traceback (most recent call last):"
LOG_TAIL_BYTES = 256 * 1024  # a traceback is near the end; never read a huge log whole

# Variables a run inherits from the server: enough for the same interpreter to find its
# packages, libraries, caches and locale; nothing else (no tokens, keys or agent settings).
PASSED_VARIABLES = frozenset(
    {
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "LANG",
        "LANGUAGE",
        "TZ",
        "TMPDIR",
        "TEMP",
        "TMP",
        "VIRTUAL_ENV",
        "CONDA_PREFIX",
        "PYTHONPATH",
        "PYTHONHOME",
        "LD_LIBRARY_PATH",
        "CUDA_HOME",
        "CUDA_PATH",
        "XDG_CACHE_HOME",
        "HF_HOME",
        "HF_HUB_CACHE",
        "HF_HUB_OFFLINE",
        "TORCHINDUCTOR_CACHE_DIR",
        "TRITON_CACHE_DIR",
        "AUTORESEARCH_MCP_CACHE",
        "OMP_NUM_THREADS",
        "MKL_NUM_THREADS",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
    }
)
PASSED_PREFIXES = ("LC_",)


@dataclass(frozen=True)
class RunSpec:
    """What one run is started with."""

    run_id: str
    run_dir: Path
    profile: str
    budget_seconds: float
    seed: int
    slot: str
    data_dir: Path | None
    data_source: str | None = None
    scale: float = 1.0  # model size and budget multiplier (validation runs); train.py reads it as run.scale

    @property
    def snapshot_dir(self) -> Path:
        return self.run_dir / contract.SNAPSHOT_DIR


CommandFactory = Callable[[RunSpec], list[str]]


def harness_command(spec: RunSpec) -> list[str]:
    """The harness entry point, run by the server's own interpreter (so it finds the package).

    The host slot passes no --device: the harness then uses Apple MPS where there is one,
    else the CPU (CUDA is hidden from it either way).
    """
    command = [
        sys.executable,
        "-m",
        HARNESS_MODULE,
        "--snapshot",
        str(spec.snapshot_dir),
        "--run-dir",
        str(spec.run_dir),
        "--profile",
        spec.profile,
        "--budget",
        f"{spec.budget_seconds:g}",
        "--seed",
        str(spec.seed),
        "--scale",
        f"{spec.scale:g}",
    ]
    if spec.slot.startswith(CUDA_PREFIX):
        command += ["--device", "cuda"]
    if spec.data_dir is not None:
        command += ["--data-dir", str(spec.data_dir)]
    if spec.data_source is not None:
        command += ["--data-source", spec.data_source]
    return command


def run_environment(slot: str, server_env: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The scrubbed environment of a run on `slot`, pinned to that slot's GPU (or to none)."""
    env = {k: v for k, v in server_env.items() if k in PASSED_VARIABLES or k.startswith(PASSED_PREFIXES)}
    env["PYTHONUNBUFFERED"] = "1"  # the log must show a crash as it happens
    # NVML numbers GPUs in PCI order; CUDA's default order can differ.
    env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    env["CUDA_VISIBLE_DEVICES"] = _visible_device(slot, server_env.get("CUDA_VISIBLE_DEVICES"))
    return env


def _visible_device(slot: str, server_visible: str | None) -> str:
    if not slot.startswith(CUDA_PREFIX):
        return ""
    index = int(slot[len(CUDA_PREFIX) :])
    # If the server itself was limited to some GPUs, slot cuda:i is the i-th of those.
    if server_visible:
        allowed = [entry.strip() for entry in server_visible.split(",") if entry.strip()]
        if index < len(allowed):
            return allowed[index]
    return str(index)


@dataclass(frozen=True)
class Limits:
    """The hard wall-clock limits of a run: each phase the harness reports gets its own.

    The clock restarts whenever the phase changes, so a first run that spends minutes
    building the tokenizer is not charged for it in training. Each limit sits above the
    harness's own timeout for that phase (nanochat/summary.py, nanochat/run.py): the harness
    should end an overrunning step itself and report why; these limits catch a harness or
    train.py that hangs past that.
    """

    setup_seconds: float = 1800.0  # data and tokenizer: minutes on a first run
    # Training: budget + allowance, for start-up, uncounted warm-up steps and the hand-back
    # (the harness allows 240 s; the original killed 5-minute runs at 10 minutes).
    min_allowance_seconds: float = 300.0
    allowance_fraction: float = 0.5
    evaluation_seconds: float = 960.0  # the harness stops evaluation at 900 s
    wind_down_seconds: float = 60.0  # after `done` or `failed`: writing the summary, exiting
    kill_grace_seconds: float = 5.0  # between SIGTERM and SIGKILL

    def allowance(self, budget_seconds: float) -> float:
        return max(self.min_allowance_seconds, self.allowance_fraction * budget_seconds)

    def phase_limit(self, phase: str | None, budget_seconds: float) -> float:
        if phase in (None, Phase.SETUP):
            return self.setup_seconds
        if phase == Phase.TRAINING:
            return budget_seconds + self.allowance(budget_seconds)
        if phase == Phase.EVALUATING:
            return self.evaluation_seconds
        return self.wind_down_seconds

    def deadline(self, record: RunRecord) -> float | None:
        """When a running run is killed as timed out (epoch seconds); None before it starts."""
        if record.started_at is None:
            return None
        entered = record.phase_started_at or record.started_at
        return entered + self.phase_limit(record.phase, record.budget_seconds)

    def describe(self, record: RunRecord) -> str:
        """Which limit a timed-out run ran past, in words."""
        limit = self.phase_limit(record.phase, record.budget_seconds)
        if record.phase == Phase.TRAINING:
            allowance = self.allowance(record.budget_seconds)
            return f"training ran past its limit of {limit:g} s ({record.budget_seconds:g} s budget + {allowance:g} s allowance)"
        return f"phase {record.phase or Phase.SETUP.value} ran past its limit of {limit:g} s"


@dataclass(frozen=True)
class Exit:
    code: int | None  # None: the process was not our child (re-adopted), so its status is unknown


class RunProcess:
    """The leader of a run's process group: started here, or re-adopted after a restart."""

    def __init__(self, pid: int, create_time: float, popen: subprocess.Popen[bytes] | None = None):
        self.pid = pid
        self.create_time = create_time
        self._popen = popen

    @classmethod
    def start(cls, command: list[str], cwd: Path, log_path: Path, env: dict[str, str]) -> RunProcess:
        with open(log_path, "ab") as log:
            popen = subprocess.Popen(
                command,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
        try:
            create_time = psutil.Process(popen.pid).create_time()
        except psutil.NoSuchProcess:  # already gone; poll() reports its exit code
            create_time = 0.0
        return cls(popen.pid, create_time, popen)

    @classmethod
    def adopt(cls, pid: int, create_time: float) -> RunProcess | None:
        """The process `pid` if it is still the one that was started (same creation time)."""
        try:
            process = psutil.Process(pid)
            alive = process.status() != psutil.STATUS_ZOMBIE and abs(process.create_time() - create_time) < 0.01
        except psutil.Error:
            return None
        return cls(pid, create_time) if alive else None

    def poll(self) -> Exit | None:
        """The leader's exit, or None while it runs."""
        if self._popen is not None:
            code = self._popen.poll()
            return None if code is None else Exit(code)
        if RunProcess.adopt(self.pid, self.create_time) is not None:
            return None
        return Exit(_reap_if_child(self.pid))

    def signal_group(self, sig: signal.Signals) -> None:
        """Send `sig` to the whole group, and to any descendant that left it."""
        strays: list[psutil.Process] = []
        if self.poll() is None:
            with contextlib.suppress(psutil.Error):
                strays = psutil.Process(self.pid).children(recursive=True)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)
        for process in strays:
            with contextlib.suppress(psutil.Error):
                process.send_signal(sig)

    def group_alive(self) -> bool:
        try:
            os.killpg(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # a member we may not signal still exists
            return True
        return True


def _reap_if_child(pid: int) -> int | None:
    """The exit code of `pid` if it is our own (unreaped) child, else None."""
    try:
        reaped, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return None
    return os.waitstatus_to_exitcode(status) if reaped else None


class Runner:
    """Starts runs: their folders under `runs_root`, their command, environment and limits."""

    def __init__(
        self,
        runs_root: Path,
        *,
        command: CommandFactory = harness_command,
        data_dir: Path | None = None,
        data_source: str | None = None,
        limits: Limits = Limits(),
    ):
        self.runs_root = runs_root
        self.command = command
        self.data_dir = data_dir
        self.data_source = data_source
        self.limits = limits

    def run_dir(self, run_id: str) -> Path:
        return self.runs_root / run_id

    def start(self, record: RunRecord, slot: str) -> RunProcess:
        spec = RunSpec(
            run_id=record.id,
            run_dir=self.run_dir(record.id),
            profile=record.profile,
            budget_seconds=record.budget_seconds,
            seed=record.seed,
            slot=slot,
            data_dir=self.data_dir,
            data_source=self.data_source,
            scale=record.scale,
        )
        if not spec.snapshot_dir.is_dir():
            raise FileNotFoundError(f"the run's code snapshot {spec.snapshot_dir} is missing")
        return RunProcess.start(
            self.command(spec), spec.snapshot_dir, spec.run_dir / contract.LOG, run_environment(slot)
        )


# ---- the run dir: phase, summary, outcome ----------------------------------------------


def read_phase(run_dir: Path) -> tuple[str, float] | None:
    """The harness's current phase and when it was entered (the file's mtime), if any."""
    path = run_dir / contract.PHASE
    try:
        phase = path.read_text(encoding="utf-8").strip()
        entered = path.stat().st_mtime
    except (FileNotFoundError, UnicodeDecodeError):
        return None
    return (phase, entered) if phase else None


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    try:
        summary = json.loads((run_dir / contract.SUMMARY).read_text(encoding="utf-8"))
    except (FileNotFoundError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return summary if isinstance(summary, dict) else None


def read_log_tail(run_dir: Path, limit: int = LOG_TAIL_BYTES) -> str:
    return read_tail(run_dir / contract.LOG, limit)


def read_tail(path: Path, limit: int) -> str:
    """The last `limit` bytes of a file that may still be being written, as text ("" if there is none)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(max(0, handle.seek(0, os.SEEK_END) - limit))
            return handle.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""


def last_traceback(log_text: str) -> str | None:
    """The last Python traceback in `log_text`, from its header to the exception line."""
    start = log_text.rfind(TRACEBACK_HEADER)
    if start < 0:
        return None
    lines = log_text[start:].splitlines()
    for end, line in enumerate(lines[1:], start=1):
        if line.strip() and not line[0].isspace():
            return "\n".join(lines[: end + 1])
    return "\n".join(lines)


def exception_line(log_text: str) -> str | None:
    """`ValueError: ...`: the line that names what went wrong in the last traceback."""
    traceback = last_traceback(log_text)
    if traceback is None:
        return None
    line = traceback.splitlines()[-1].strip()
    return None if line == TRACEBACK_HEADER else line


def outcome(run_dir: Path, exit: Exit) -> dict[str, Any]:
    """The record fields for a run whose process ended on its own."""
    summary = read_summary(run_dir)
    if exit.code == 0 and summary is not None:
        return {"status": "succeeded", "summary": summary, "exit_code": 0, "error": None}
    if exit.code is None:
        return _unknown_exit_outcome(run_dir, summary)
    cause = exception_line(read_log_tail(run_dir))
    if exit.code == 0:
        reason = f"exit 0 without a readable {contract.SUMMARY}"
    elif exit.code < 0:
        name = signal.Signals(-exit.code).name if -exit.code in signal.valid_signals() else str(-exit.code)
        reason = f"killed by signal {name}" + (" (possibly out of memory)" if exit.code == -signal.SIGKILL else "")
    else:
        known = exit.code in RunExit.__members__.values()
        reason = f"exit {exit.code}" + (f" ({RunExit(exit.code).meaning})" if known else "")
    return {"status": "crashed", "summary": summary, "exit_code": exit.code, "error": _joined(reason, cause)}


def _unknown_exit_outcome(run_dir: Path, summary: dict[str, Any] | None) -> dict[str, Any]:
    """A re-adopted run ended: only its run dir tells how."""
    if summary is not None:
        return {"status": "succeeded", "summary": summary, "exit_code": None, "error": None}
    state = read_phase(run_dir)
    phase = state[0] if state else None
    cause = exception_line(read_log_tail(run_dir))
    if phase == Phase.FAILED:
        reason = "the harness reported a failure (exit code unknown: the run outlived a server restart)"
        return {"status": "crashed", "summary": None, "exit_code": None, "error": _joined(reason, cause)}
    reason = f"the process ended without a summary in phase {phase or 'unknown'} (exit code unknown: the run outlived a server restart)"
    return {"status": "lost", "summary": None, "exit_code": None, "error": _joined(reason, cause)}


def _joined(reason: str, cause: str | None) -> str:
    return f"{reason}: {_one_line(cause)}" if cause else reason


def _one_line(text: str, limit: int = 500) -> str:
    text = re.sub(r"\s+", " ", text).strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"
