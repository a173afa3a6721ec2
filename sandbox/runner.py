"""One training run as an operating-system process, from start to a recorded outcome.

A run is the trusted supervisor (`python -m autoresearch_mcp.sandbox.supervisor ...`) started
in its own session, so that it and everything it spawns can be signalled as a whole. It gets
no stdin, a scrubbed environment pinned to its device slot, and a log file for stdout and
stderr. It runs train.py and the evaluator each in a sandbox, owns every per-phase limit,
reports how far it got in the run dir's `phase` file and its result in `summary.json`. The
runner owns only stopping a run and one backstop against a supervisor that hangs.

Everything under the run's out/ folder was written by the agent's code: read it only through
the helpers here (sandbox/untrusted.py), never by opening a path.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import psutil

from autoresearch_mcp.nanochat import contract
from autoresearch_mcp.nanochat.contract import Phase, RunExit
from autoresearch_mcp.sandbox import limits, untrusted
from autoresearch_mcp.sandbox.isolation import BUBBLEWRAP
from autoresearch_mcp.sandbox.runstore import RunRecord

HARNESS_MODULE = "autoresearch_mcp.sandbox.supervisor"
HOST_SLOT = "cpu"  # the slot that is not a CUDA device
CUDA_PREFIX = "cuda:"


TRACEBACK_HEADER = "Traceback (most recent call last):"
LOG_TAIL_BYTES = 256 * 1024  # a traceback is near the end; never read a huge log whole
SUMMARY_BYTES = 1024**2

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
    workspace: Path | None = None  # hidden from the sandboxes
    compile_cache: Path | None = None  # torch.compile's caches, kept across the workspace's runs
    isolation: str = BUBBLEWRAP
    memory_limit_gb: float | None = None
    process_limit: int | None = None
    scale: float = 1.0  # model size and budget multiplier (validation runs); train.py reads it as run.scale
    python: str = sys.executable  # the interpreter that runs the supervisor (a cluster's nodes have their own)
    # The supervisor (pid, creation time) of the run before this one on its slot, still being evaluated:
    # this one sets up and imports now, and trains once that one has ended (Scheduler: a held start).
    after: tuple[int, float] | None = None

    @property
    def snapshot_dir(self) -> Path:
        return self.run_dir / contract.SNAPSHOT_DIR


CommandFactory = Callable[[RunSpec], list[str]]


def harness_command(spec: RunSpec) -> list[str]:
    """The supervisor, run by the server's own interpreter (so it finds the package).

    The host slot passes no --device: the harness then uses Apple MPS where there is one,
    else the CPU (CUDA is hidden from it either way).
    """
    command = [
        spec.python, "-m", HARNESS_MODULE,
        "--run-dir", str(spec.run_dir),
        "--profile", spec.profile,
        "--budget", f"{spec.budget_seconds:g}",
        "--seed", str(spec.seed),
        "--isolation", spec.isolation,
        "--scale", f"{spec.scale:g}",
    ]  # fmt: skip
    optional = {
        "--device": "cuda" if spec.slot.startswith(CUDA_PREFIX) else None,
        "--workspace": spec.workspace,
        "--compile-cache": spec.compile_cache,
        "--data-dir": spec.data_dir,
        "--data-source": spec.data_source,
        "--memory-limit-gb": spec.memory_limit_gb,
        "--process-limit": spec.process_limit,
    }
    for flag, value in optional.items():
        if value is not None:
            command += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
    if spec.after is not None:
        command += ["--after-pid", str(spec.after[0]), "--after-started", repr(spec.after[1])]
    return command


def run_environment(
    slot: str, server_env: Mapping[str, str] = os.environ, host_threads: int | None = None
) -> dict[str, str]:
    """The scrubbed environment of a run on `slot`, pinned to that slot's GPU (or to none). A host
    slot gets `host_threads` CPU threads (its share of the cores) unless the server's environment sets
    OMP_NUM_THREADS: runs that share the cores each with a thread per core wait on each other, and
    run several times slower."""
    env = {k: v for k, v in server_env.items() if k in PASSED_VARIABLES or k.startswith(PASSED_PREFIXES)}
    if host_threads is not None and not slot.startswith(CUDA_PREFIX) and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(host_threads)
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
    """The runner's own limits: the grace of a stop, and one backstop against a hung supervisor.

    The supervisor owns each phase's limit and stops its run itself, saying which limit it hit.
    The backstop is every phase at its limit plus slack (sandbox/limits.py), counted from the
    start: a supervisor still alive then is killed and the run recorded as timed out.
    """

    backstop_override_seconds: float | None = None  # tests: a short backstop whatever the budget
    kill_grace_seconds: float = limits.KILL_GRACE_SECONDS  # between SIGTERM and SIGKILL

    def backstop(self, budget_seconds: float) -> float:
        if self.backstop_override_seconds is not None:
            return self.backstop_override_seconds
        return limits.backstop_seconds(budget_seconds)

    def deadline(self, record: RunRecord) -> float | None:
        """When a running run is killed as timed out (epoch seconds); None before it starts."""
        if record.started_at is None:
            return None
        return record.started_at + self.backstop(record.budget_seconds)

    def describe(self, record: RunRecord) -> str:
        """Which limit a timed-out run ran past, in words."""
        return (
            f"the run's supervisor was still running {self.backstop(record.budget_seconds):g} s after it started "
            f"(every phase at its limit, plus slack; it was in phase {record.phase or Phase.SETUP.value})"
        )


@dataclass(frozen=True)
class Exit:
    code: int | None  # None: the process was not our child (re-adopted), so its status is unknown
    lost: str | None = None  # why the end could not be seen (a cluster job that vanished), when that is known


class RunHandle(Protocol):
    """What the scheduler holds of a started run: a local process group (RunProcess), or a job on a
    cluster (sandbox/ray_cluster.py). Neither call blocks for long: the scheduler polls under its lock."""

    @property
    def pid(self) -> int | None: ...  # the leader's pid, where the run is a local process

    @property
    def create_time(self) -> float | None: ...

    def poll(self) -> Exit | None:
        """How the run ended, or None while it runs."""

    def signal_group(self, sig: signal.Signals) -> None:
        """SIGTERM: begin stopping the run; SIGKILL: make sure every process of it is gone."""

    def group_alive(self) -> bool:
        """Whether any process of the run may still exist."""


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
        workspace: Path | None = None,
        compile_cache: Path | None = None,
        isolation: str = BUBBLEWRAP,
        memory_limit_gb: float | None = None,
        process_limit: int | None = None,
        host_threads: int | None = None,
        limits: Limits = Limits(),
    ):
        self.runs_root = runs_root
        self.command = command
        self.data_dir = data_dir
        self.data_source = data_source
        self.workspace = workspace
        self.compile_cache = compile_cache
        self.isolation = isolation
        self.memory_limit_gb = memory_limit_gb
        self.process_limit = process_limit
        self.host_threads = host_threads  # CPU threads of a run on a host slot (None: torch's default)
        self.limits = limits

    def run_dir(self, run_id: str) -> Path:
        return self.runs_root / run_id

    # Whether a run may be started on a slot whose run is still being evaluated, to train once it ends.
    holds_starts = True

    def start(self, record: RunRecord, slot: str, after: RunHandle | None = None) -> RunHandle:
        """Start `record`'s supervisor on `slot`; with `after` (the run on the slot, being evaluated), it
        sets up and imports now and trains once that one has ended."""
        spec = self.spec(record, slot)
        if after is not None and after.pid is not None and after.create_time is not None:
            spec = replace(spec, after=(after.pid, after.create_time))
        if not spec.snapshot_dir.is_dir():
            raise FileNotFoundError(f"the run's code snapshot {spec.snapshot_dir} is missing")
        # The run folder, not the snapshot, is the supervisor's working directory: `python -m` puts
        # the working directory first on the import path, and the trusted supervisor must never
        # import a module the agent wrote (a json.py beside train.py). The run cannot write there.
        return RunProcess.start(
            self.command(spec),
            spec.run_dir,
            spec.run_dir / contract.LOG,
            run_environment(slot, host_threads=self.host_threads),
        )

    def adopt(self, record: RunRecord) -> RunHandle | None:
        """A running run a previous server started, if it is still going."""
        return RunProcess.adopt(record.pid, record.pid_create_time or 0.0) if record.pid else None

    def spec(self, record: RunRecord, slot: str) -> RunSpec:
        return RunSpec(
            run_id=record.id,
            run_dir=self.run_dir(record.id),
            profile=record.profile,
            budget_seconds=record.budget_seconds,
            seed=record.seed,
            slot=slot,
            data_dir=self.data_dir,
            data_source=self.data_source,
            workspace=self.workspace,
            compile_cache=self.compile_cache,
            isolation=self.isolation,
            memory_limit_gb=self.memory_limit_gb,
            process_limit=self.process_limit,
            scale=record.scale,
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
    return untrusted.read_json_object(run_dir / contract.SUMMARY, SUMMARY_BYTES)


def read_log_tail(run_dir: Path, limit: int = LOG_TAIL_BYTES) -> str:
    return read_tail(run_dir / contract.LOG, limit)


def read_tail(path: Path, limit: int) -> str:
    """The last `limit` bytes of a file that may still be being written, as text ("" if there is
    none, or it is not a regular file)."""
    return untrusted.read_text(path, limit, tail=True)


def metrics_path(run_dir: Path) -> Path:
    """The run's step metrics, written by train.py (untrusted: read with read_tail only)."""
    return run_dir / contract.OUT_DIR / contract.METRICS


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


def failure_message(log_text: str) -> str | None:
    """Why the supervisor failed the run: its last line that starts with contract.FAILURE_MARK."""
    found = re.findall(f"^{re.escape(contract.FAILURE_MARK)}(.+)$", log_text, re.MULTILINE)
    return found[-1].strip() if found else None


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
        return _unknown_exit_outcome(run_dir, summary, exit.lost)
    log_tail = read_log_tail(run_dir)
    cause = "; ".join(filter(None, (failure_message(log_tail), exception_line(log_tail)))) or None
    if exit.code == 0:
        reason = f"exit 0 without a readable {contract.SUMMARY}"
    elif exit.code < 0:
        name = signal.Signals(-exit.code).name if -exit.code in signal.valid_signals() else str(-exit.code)
        reason = f"killed by signal {name}" + (" (possibly out of memory)" if exit.code == -signal.SIGKILL else "")
    else:
        known = exit.code in RunExit.__members__.values()
        reason = f"exit {exit.code}" + (f" ({RunExit(exit.code).meaning})" if known else "")
    status = "timed_out" if exit.code == RunExit.TIMED_OUT else "crashed"
    return {"status": status, "summary": summary, "exit_code": exit.code, "error": _joined(reason, cause)}


def _unknown_exit_outcome(run_dir: Path, summary: dict[str, Any] | None, lost: str | None) -> dict[str, Any]:
    """A run ended whose exit code we could not see (re-adopted, or a cluster job): only its run dir
    tells how, and `lost` why its end went unseen, where that is known."""
    if summary is not None:
        return {"status": "succeeded", "summary": summary, "exit_code": None, "error": None}
    state = read_phase(run_dir)
    phase = state[0] if state else None
    cause = exception_line(read_log_tail(run_dir))
    unknown = lost or "exit code unknown: the run outlived a server restart"
    if phase == Phase.FAILED:
        reason = f"the harness reported a failure ({unknown})"
        return {"status": "crashed", "summary": None, "exit_code": None, "error": _joined(reason, cause)}
    reason = f"the process ended without a summary in phase {phase or 'unknown'} ({unknown})"
    return {"status": "lost", "summary": None, "exit_code": None, "error": _joined(reason, cause)}


def _joined(reason: str, cause: str | None) -> str:
    return f"{reason}: {_one_line(cause)}" if cause else reason


def _one_line(text: str, limit: int = 500) -> str:
    text = re.sub(r"\s+", " ", text).strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"
