"""The trusted run supervisor: prepare the data, train in a sandbox, evaluate in another, record.

    python -m autoresearch_mcp.sandbox.supervisor --run-dir DIR --profile P --workspace DIR
        [--budget S] [--seed N] [--device cpu|cuda|mps] [--data-dir DIR] [--data-source SRC]
        [--isolation bubblewrap|none] [--memory-limit-gb G] [--process-limit N]
        [--after-pid PID --after-started T]

The runner starts this, outside any sandbox; its stdout is the run log. It

1. prepares the data (trusted: it writes the cache) and verifies every file against the sha256
   it was prepared with;
2. starts the training sandbox, which sees, read-only, the Python environment, the harness
   package, its snapshot, the train split and the tokenizer, and writes only the run's out/
   folder (plus a private /tmp); no network, its own PID namespace. Its first process (launch.py)
   imports torch and the harness and waits; once the run before it on its slot has ended (--after-pid,
   when the scheduler started this one while that one was being evaluated), the supervisor sends the
   deadline, and from then the snapshot's train.py trains up to it;
3. once that sandbox is gone, moves the hand-back files from out/ to handback/ (regular
   files only), and runs the evaluator in a second sandbox that sees handback/, the
   validation split and the tokenizer, read-only, and writes only a private result folder;
4. writes summary.json from the evaluator's result, where no sandbox ever looked.

It owns every limit of its run (sandbox/limits.py): each phase's time, and what the training
sandbox may use (memory, processes, output, log), watched a few times a second; crossing one
ends the run with a message that names the limit. With `--isolation none` (the workspace's
opt-out) the same steps run without a sandbox and the summary says so.

Exit codes, phases and file names: nanochat/contract.py.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import functools
import logging
import os
import resource
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from autoresearch_mcp.nanochat import contract, corpus
from autoresearch_mcp.nanochat import summary as files
from autoresearch_mcp.nanochat.contract import Phase, RunExit
from autoresearch_mcp.nanochat.data import PreparedData, prepare_data, verify
from autoresearch_mcp.nanochat.errors import UserError
from autoresearch_mcp.nanochat.profiles import Profile, default_data_dir, resolve_profile
from autoresearch_mcp.sandbox import cgroups, isolation, limits, untrusted
from autoresearch_mcp.sandbox.isolation import SandboxPlan
from autoresearch_mcp.sandbox.limits import GB, ResourceLimits

# Where things appear inside a sandbox: fixed, so nothing a run sees names a host path of ours.
SANDBOX_ROOT = "/autoresearch"
IN_SNAPSHOT = f"{SANDBOX_ROOT}/snapshot"
IN_OUT = f"{SANDBOX_ROOT}/out"
IN_TRAIN = f"{SANDBOX_ROOT}/data/train"
IN_VAL = f"{SANDBOX_ROOT}/data/val"
IN_TOKENIZER = f"{SANDBOX_ROOT}/data/tokenizer"
IN_HANDBACK = f"{SANDBOX_ROOT}/handback"
IN_RESULT = f"{SANDBOX_ROOT}/result"
IN_CACHE = f"{SANDBOX_ROOT}/cache"  # torch.compile's caches (training only)
# Settings a sandbox inherits by value (never a path).
INHERITED_VALUES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "TZ", "LANG", "LANGUAGE", "CUDA_DEVICE_ORDER")
WATCH_SECONDS = 0.2  # how often the limits are checked
SLOT_POLL_SECONDS = 0.02  # how often a run queued behind another on its slot looks whether that one ended
SANDBOX_HELPERS = 2  # bwrap, and bwrap as the sandbox's init: not the run's own processes
PRIVATE_DIRS = ("/tmp", "/dev/shm")  # in-memory folders of each sandbox's own
PR_SET_PDEATHSIG = 1
PUMP_CHUNK_BYTES = 64 * 1024
OUTPUT_ENTRIES_LIMIT = 10_000  # files in out/ counted before the run counts as over its limit
# A file's blocks exceed its size by a block's rounding and, for a large one, its extent tree: allocation
# beyond this is space held past the file's end, counted as disk used.
ALLOCATION_ROUNDING_BYTES = 2**20
RESULT_BYTES = 1024**2  # the evaluator's answer and train_stats.json are small JSON objects
EVAL_OUTPUT_BYTES = 16 * 1024**2
# Tells the training process where the cache is, and so where the validation split lives.
HIDDEN_FROM_TRAINING = ("AUTORESEARCH_MCP_CACHE",)
# The evaluator's own timings (unix seconds) copied into the summary's events.
EVALUATOR_EVENTS = ("process_started_unix", "imported_unix", "ready_unix", "go_unix", "loaded_unix", "scored_unix")


class RunFailed(Exception):
    def __init__(self, exit_code: RunExit, message: str) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class Timings:
    """Wall-clock seconds per phase, and when each step of the run happened (unix seconds), so a
    benchmark can say where the overhead goes."""

    started: float = field(default_factory=time.time)
    phases: dict[str, float] = field(default_factory=dict)
    events: dict[str, float] = field(default_factory=dict)

    def mark(self, event: str) -> None:
        self.events[event] = time.time()

    def as_dict(self) -> dict[str, Any]:
        total = time.time() - self.started
        other = total - sum(self.phases.values())
        self.mark("summary")
        return {
            **{k: round(v, 3) for k, v in self.phases.items()},
            "other": round(other, 3),
            "total": round(total, 3),
            "events": {k: round(v, 3) for k, v in self.events.items()},
        }


@dataclass(frozen=True)
class RunPaths:
    """The run folder's parts (contract.py), as the supervisor sees them."""

    run_dir: Path

    @property
    def snapshot(self) -> Path:
        return self.run_dir / contract.SNAPSHOT_DIR

    @property
    def out(self) -> Path:
        return self.run_dir / contract.OUT_DIR

    @property
    def handback(self) -> Path:
        return self.run_dir / contract.HANDBACK_DIR


# ---- a contained process, watched --------------------------------------------------------------


class _Pump(threading.Thread):
    """Copies a child's output into our stdout (the run log), up to `limit` bytes."""

    # Whether the log's last copied byte left a line open: a process killed mid-line (a fork bomb's
    # children) leaves one, and our own messages must start a line of their own to be found.
    line_open = False

    def __init__(self, source: Any, limit: int) -> None:
        super().__init__(daemon=True)
        self.source = source
        self.limit = limit
        self.copied = 0

    def run(self) -> None:
        sink = sys.stdout.buffer
        while chunk := self.source.read1(PUMP_CHUNK_BYTES):
            if self.copied < self.limit:
                kept = chunk[: self.limit - self.copied]
                sink.write(kept)
                sink.flush()
                _Pump.line_open = not kept.endswith(b"\n")
            self.copied += len(chunk)


@dataclass(frozen=True)
class Contained:
    """How to start one sandboxed (or, opted out, plainly started) process."""

    argv: list[str]
    env: dict[str, str]
    cwd: Path
    helpers: int  # processes of the sandbox itself (bwrap and its init), not counted as the run's
    output_dir: Path  # the one folder it writes
    limits: ResourceLimits
    seconds: float  # its time limit
    what: str  # "training", "evaluation": how messages name it
    cache_dir: Path | None = None  # the compile cache it may write, watched every COMPILE_CACHE_WATCH_SECONDS
    # Training: seconds after its start (Started.timed_from) at which the hand-back is asked for (its
    # `seconds` then count from the start too, not from when it is watched).
    handback_after: float | None = None


@dataclass
class Started:
    """A contained process on its way, its output copied to the log."""

    job: Contained
    process: subprocess.Popen[bytes]
    pump: _Pump
    group: cgroups.Group | None  # its cgroup, where the kernel enforces its memory and task limits
    # Where its time limits count from: its spawn; for training, the start sent (begin_training).
    timed_from: float = field(default_factory=time.monotonic)
    handback_request: int = -1  # our end of the pipe closed to ask for the hand-back (training only)
    start_socket: socket.socket | None = None  # training: launch.py's, where its start is sent

    def ask_for_handback(self) -> None:
        if self.handback_request >= 0:
            os.close(self.handback_request)
            self.handback_request = -1


def start_contained(job: Contained, pass_fds: tuple[int, ...] = ()) -> Started:
    """Start `job` (given only the descriptors in `pass_fds` besides its output), in a cgroup of its
    own where the machine lets us make one."""
    made = cgroups.make_group(job.what, job.limits.memory_bytes, job.limits.processes + job.helpers)
    group = made if isinstance(made, cgroups.Group) else None
    if isinstance(made, str):
        _note_watchdog_only(made)
    try:
        process = subprocess.Popen(
            job.argv,
            cwd=job.cwd,
            env=job.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            pass_fds=pass_fds,
            preexec_fn=_limit_self(job.limits, group),
        )
    except BaseException:
        if group is not None:
            group.remove()
        raise
    pump = _Pump(process.stdout, job.limits.log_bytes)
    pump.start()
    return Started(job, process, pump, group)


@functools.cache
def _note_watchdog_only(reason: str) -> None:
    print(f"note: no cgroup for the sandboxes ({reason}); their limits are enforced by the watchdog only", flush=True)


def finish_contained(started: Started, while_running: Callable[[], None] | None = None) -> int:
    """Watch a started job to its end (its time limit counted from now); its exit code. `while_running`,
    if given, is called at every check of its limits.

    Crossing a limit kills everything it started and raises RunFailed naming the limit.
    """
    try:
        failure = _watch(started, while_running)
    finally:
        stop_contained(started)
    if failure is not None:
        raise failure
    return started.process.returncode


def stop_contained(started: Started) -> None:
    """Kill the job and everything it started; wait for its output to be copied."""
    _kill_tree(started.process)
    if started.group is not None:
        started.group.remove()
    started.ask_for_handback()  # nothing is left to ask: our end of the pipe is closed
    if started.start_socket is not None:
        started.start_socket.close()
    started.pump.join(timeout=5)


def run_contained(job: Contained) -> int:
    """Run `job` to its end, copying its output to the log; its exit code (see finish_contained)."""
    return finish_contained(start_contained(job))


def _limit_self(held: ResourceLimits, group: cgroups.Group | None) -> Callable[[], None]:
    """What runs in the child before exec: its cgroup, no core dumps, no file larger than the output
    limit, its own process group (opted out, the group is killed as a whole), and death with us."""
    processes = None
    if os.getuid() != 0:
        # RLIMIT_NPROC counts all of this user's processes (and never binds root), so the
        # bound is what the user runs now plus the run's share.
        mine = sum(1 for p in psutil.process_iter(["uids"]) if p.info["uids"] and p.info["uids"].real == os.getuid())
        processes = mine + held.processes

    def apply() -> None:
        if group is not None:
            group.join()
        os.setpgrp()
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_FSIZE, (held.output_bytes, held.output_bytes))
        if processes is not None:
            resource.setrlimit(resource.RLIMIT_NPROC, (processes, processes))
        if sys.platform.startswith("linux"):
            ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)

    return apply


def _watch(started: Started, while_running: Callable[[], None] | None) -> RunFailed | None:
    """Wait for the started job, checking its limits; the first limit crossed, or None."""
    process, job = started.process, started.job
    clock_start = started.timed_from if job.handback_after is not None else time.monotonic()
    deadline = clock_start + job.seconds
    next_cache_count = time.monotonic() + limits.COMPILE_CACHE_WATCH_SECONDS
    root = psutil.Process(process.pid)
    while True:
        try:
            process.wait(timeout=WATCH_SECONDS)
            return _over_kernel_limit(started)  # a process the kernel stopped at a limit ends it too
        except subprocess.TimeoutExpired:
            pass
        if while_running is not None:
            while_running()
        now = time.monotonic()
        if job.handback_after is not None and now > clock_start + job.handback_after and started.handback_request >= 0:
            print(
                f"note: {job.what} reached its deadline ({job.handback_after:.0f} s after it started: the budget "
                "plus the start-up allowance); the hand-back was asked for",
                flush=True,
            )
            started.ask_for_handback()
        if now > deadline:
            return RunFailed(RunExit.TIMED_OUT, _overran(job))
        kernel_stopped = _over_kernel_limit(started)
        if kernel_stopped is not None:
            return kernel_stopped
        violation = _over_limit(root, started.pump, job, with_kernel_limits=started.group is not None)
        if violation is None and job.cache_dir is not None and now > next_cache_count:
            next_cache_count = now + limits.COMPILE_CACHE_WATCH_SECONDS
            violation = compile_cache_over_limit(job.cache_dir, job.what)
        if violation is not None:
            return RunFailed(RunExit.OVER_LIMIT, f"{violation}; the run was stopped")


def _overran(job: Contained) -> str:
    if job.handback_after is None:
        return f"{job.what} was still running {job.seconds:.0f} s after it started and was stopped"
    return (
        f"{job.what} did not hand back its model within {job.seconds - job.handback_after:.0f} s of its deadline "
        f"({job.handback_after:.0f} s after it started: the budget plus the start-up allowance) and was stopped; "
        "train.py must end its loop when run.done turns true and call run.hand_back(model)"
    )


def _over_kernel_limit(started: Started) -> RunFailed | None:
    """The limit the kernel enforced on the job's cgroup, if it had to."""
    group, held, what = started.group, started.job.limits, started.job.what
    if group is None:
        return None
    if group.oom_killed():
        peak = max(group.memory_peak() or 0, held.memory_bytes)
        return RunFailed(
            RunExit.OVER_LIMIT,
            f"{what} used {peak / GB:.2f} GB of memory, over its limit of {held.memory_bytes / GB:.2f} GB "
            "(memory_limit_gb in .autoresearch/config.toml); the kernel stopped it and the run was stopped",
        )
    if group.tasks_refused():
        return RunFailed(
            RunExit.OVER_LIMIT,
            f"{what} tried to run more processes and threads than its limit allows, over its limit of "
            f"{held.processes} (process_limit in .autoresearch/config.toml); the run was stopped",
        )
    return None


def _over_limit(root: psutil.Process, pump: _Pump, job: Contained, with_kernel_limits: bool) -> str | None:
    """The first limit the watchdog sees crossed. The output counts the disk out/'s files hold (blocks
    allocated past a file's end too) and the files the run deleted but keeps open. Memory is the
    processes' resident memory, the files in the in-memory /tmp and /dev/shm, and, without a cgroup
    (`with_kernel_limits` false), memfds. Resident sets count a page that forked processes share once per
    process, so over the limit they are counted again by proportional share (Pss: each page once in all,
    slower to read), and a run that forks workers is not stopped for memory it does not use. The sum is
    kept under a cgroup too: memory the kernel does not charge to the group (a driver's pinned pages) is
    resident all the same."""
    held = job.limits
    tree = _tree(root)
    tasks = sum(_threads(process) for process in tree) - job.helpers
    if tasks > held.processes:
        return (
            f"{job.what} ran {tasks} processes and threads, over its limit of {held.processes} "
            "(process_limit in .autoresearch/config.toml)"
        )
    held_open = _held_open(tree, job.output_dir)
    # Files in the sandbox's in-memory /tmp and /dev/shm are memory too, though no process's RSS.
    memory = sum(_tmpfs_used(root, job.helpers, path) for path in PRIVATE_DIRS)
    if not with_kernel_limits:
        memory += held_open.memfd_bytes
    resident = sum(_rss(process) for process in tree)
    if memory + resident > held.memory_bytes:
        resident = sum(_pss(process) for process in tree)
    memory += resident
    if memory > held.memory_bytes:
        return (
            f"{job.what} used {memory / GB:.2f} GB of memory, over its limit of {held.memory_bytes / GB:.2f} GB "
            "(memory_limit_gb in .autoresearch/config.toml)"
        )
    if pump.copied > held.log_bytes:
        return f"{job.what} printed more than {held.log_bytes / 1024**2:.0f} MB; print less (the log keeps the start)"
    in_folder = _folder_size(job.output_dir, OUTPUT_ENTRIES_LIMIT)
    if in_folder is None:
        return (
            f"{job.what} wrote more than {OUTPUT_ENTRIES_LIMIT} files into its output folder, "
            "or made part of it unreadable"
        )
    written = in_folder + held_open.unlinked_bytes
    if written > held.output_bytes:
        unlinked = held_open.unlinked_bytes
        kept_open = f" ({unlinked / GB:.2f} GB of it in files it deleted but keeps open)" if unlinked else ""
        return (
            f"{job.what} wrote {written / GB:.2f} GB into its output folder{kept_open}, over its limit of "
            f"{held.output_bytes / GB:.2f} GB (the lesser of {limits.DEFAULT_OUTPUT_BYTES / GB:.0f} GB and "
            f"{limits.OUTPUT_SHARE_OF_FREE_DISK:.0%} of the disk's free space when the run started)"
        )
    return None


def compile_cache_over_limit(cache_dir: Path, what: str) -> str | None:
    held = _folder_size(cache_dir, limits.COMPILE_CACHE_ENTRIES)
    if held is None or held > limits.COMPILE_CACHE_BYTES:
        return (
            f"{what} filled the compile cache past its limit ({limits.COMPILE_CACHE_BYTES / GB:.0f} GB or "
            f"{limits.COMPILE_CACHE_ENTRIES:,} files); the next run starts with it emptied"
        )
    return None


def _tree(root: psutil.Process) -> list[psutil.Process]:
    try:
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def _rss(process: psutil.Process) -> int:
    try:
        return process.memory_info().rss
    except psutil.Error:
        return 0


def _pss(process: psutil.Process) -> int:
    """Its proportional set size: each resident page divided among the processes that share it."""
    try:
        return process.memory_full_info().pss
    except psutil.Error:
        return 0


def _threads(process: psutil.Process) -> int:
    try:
        return process.num_threads()
    except psutil.Error:
        return 0


@dataclass
class HeldOpen:
    """What the processes hold only through their open files, each file counted once: in no resident
    set (until mapped), and in no folder the watchdog walks."""

    memfd_bytes: int  # memory in memfds
    unlinked_bytes: int  # disk in files they removed from their folders but keep open


def _held_open(tree: list[psutil.Process], output_dir: Path) -> HeldOpen:
    """The memfds the processes hold open, and the files on the output folder's disk they hold open
    after unlinking them (which no folder walk finds, however many there are)."""
    try:
        disk = os.stat(output_dir).st_dev
    except OSError:
        disk = None
    memfds: dict[tuple[int, int], int] = {}
    unlinked: dict[tuple[int, int], int] = {}
    for process in tree:
        folder = f"/proc/{process.pid}/fd"
        try:
            names = os.listdir(folder)
        except OSError:
            continue
        for name in names:
            try:
                target = os.readlink(f"{folder}/{name}")
                if not target.endswith(" (deleted)"):  # a memfd is always one
                    continue
                info = os.stat(f"{folder}/{name}")
            except OSError:
                continue
            if target.startswith("/memfd:"):
                memfds[(info.st_dev, info.st_ino)] = info.st_size
            elif stat.S_ISREG(info.st_mode) and info.st_dev == disk:
                unlinked[(info.st_dev, info.st_ino)] = _disk_bytes(info)
    return HeldOpen(sum(memfds.values()), sum(unlinked.values()))


def _disk_bytes(info: os.stat_result) -> int:
    """Bytes a file holds on disk: its size, or its allocated blocks where they exceed it by more than
    rounding (space allocated past its end, as fallocate's KEEP_SIZE does, shows in no size)."""
    allocated = info.st_blocks * 512
    return allocated if allocated > info.st_size + ALLOCATION_ROUNDING_BYTES else info.st_size


def _tmpfs_used(root: psutil.Process, helpers: int, path: str) -> int:
    """Bytes stored in a private tmpfs of the sandbox, seen through the root of its init (bwrap's
    one child); 0 opted out."""
    if helpers == 0:
        return 0
    try:
        info = os.statvfs(f"/proc/{root.children()[0].pid}/root{path}")
    except (psutil.Error, IndexError, OSError):
        return 0
    return (info.f_blocks - info.f_bfree) * info.f_frsize


def _folder_size(folder: Path, entries_limit: int) -> int | None:
    """Disk bytes of everything under `folder` (links not followed); None past `entries_limit` entries,
    or where a folder in it cannot be read (what is in there cannot be counted).

    Walked through folder descriptors (os.fwalk), never joined paths: a tree the run nested deeper
    than PATH_MAX, one folder at a time, is counted like any other (a joined path fails there).
    """
    total, seen = 0, 0
    try:
        for _, folders, files, descriptor in os.fwalk(folder, onerror=_unless_removed):
            seen += len(folders) + len(files)
            if seen > entries_limit:
                return None
            for name in files:
                with contextlib.suppress(FileNotFoundError):  # removed meanwhile
                    total += _disk_bytes(os.stat(name, dir_fd=descriptor, follow_symlinks=False))
    except FileNotFoundError:  # the folder itself is gone: nothing in it to count
        return total
    except OSError:
        return None
    return total


def _unless_removed(error: OSError) -> None:
    if not isinstance(error, FileNotFoundError):
        raise error


def _kill_tree(process: subprocess.Popen[bytes]) -> None:
    """Kill the process and everything it started. In a sandbox, killing bwrap takes down its
    PID namespace (setsid and double-forked processes included); opted out, the group and every
    descendant that left it."""
    strays: list[psutil.Process] = []
    with contextlib.suppress(psutil.Error):
        strays = psutil.Process(process.pid).children(recursive=True)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    for stray in strays:
        with contextlib.suppress(psutil.Error):
            stray.kill()
    process.wait()


# ---- the phases ----------------------------------------------------------------------------


def set_phase(run_dir: Path, phase: Phase) -> None:
    files.write_atomic(run_dir / contract.PHASE, phase.value + "\n")


def prepare(args: argparse.Namespace, profile: Profile) -> tuple[PreparedData, str]:
    """The run's data, verified against its pinned sha256, and its data id."""
    watchdog = threading.Timer(limits.SETUP_SECONDS, _setup_overran, args=(args.run_dir,))
    watchdog.daemon = True
    watchdog.start()
    try:
        data = prepare_data(profile, args.data_dir, args.data_source)
        return data, verify(data.root)
    except UserError as error:
        raise RunFailed(RunExit.SETUP_FAILED, f"setup failed: {error}") from None
    except Exception as error:
        raise RunFailed(
            RunExit.SETUP_FAILED,
            f"setup failed: preparing the {profile.name} data in {args.data_dir} raised {type(error).__name__}: {error}",
        ) from error
    finally:
        watchdog.cancel()


def _setup_overran(run_dir: Path) -> None:
    print(f"setup was still running after {limits.SETUP_SECONDS:.0f} s and was stopped", flush=True)
    set_phase(run_dir, Phase.FAILED)
    os._exit(RunExit.TIMED_OUT)


def fresh_folder(path: Path) -> None:
    """An empty folder at `path`, whatever was there (a run is started again after a restart)."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        remove_tree(path)
    path.mkdir()


def compile_cache_env(folder: str) -> dict[str, str]:
    """torch.compile's caches (inductor's FX graphs and kernels, AOTAutograd's, Triton's) in `folder`."""
    return {
        "TORCHINDUCTOR_CACHE_DIR": f"{folder}/inductor",
        "TRITON_CACHE_DIR": f"{folder}/triton",
        "TORCHINDUCTOR_FX_GRAPH_CACHE": "1",
        "TORCHINDUCTOR_AUTOGRAD_CACHE": "1",
    }


def ready_compile_cache(folder: Path) -> None:
    """The workspace's compile cache, created if missing, and emptied if it holds more than half of
    what a run may fill it to (sandbox/limits.py): a run starts with room to fill."""
    held = _folder_size(folder, limits.COMPILE_CACHE_ENTRIES // 2) if folder.is_dir() else 0
    if held is None or held > limits.COMPILE_CACHE_BYTES // 2:
        print(f"note: the compile cache was over half its limit and was emptied ({folder})", flush=True)
        remove_tree(folder)
    folder.mkdir(parents=True, exist_ok=True)


def remove_tree(folder: Path) -> None:
    """Remove `folder` and everything in it, also what a run made unreadable or unwritable (its own
    folders, chmod 000); links are removed, never followed."""
    pending = [folder]
    while pending:
        current = pending.pop()
        with contextlib.suppress(OSError):
            os.chmod(current, stat.S_IRWXU)
            pending.extend(Path(e.path) for e in os.scandir(current) if e.is_dir(follow_symlinks=False))
    shutil.rmtree(folder, ignore_errors=True)


@dataclass(frozen=True)
class SlotGpu:
    """The GPU of the run's slot, as NVML identifies it."""

    minor: int  # of its device node, /dev/nvidiaN
    pinned: str  # what CUDA_VISIBLE_DEVICES names it by in the sandbox: its UUID, else the slot's entry


def slot_gpu() -> SlotGpu:
    """The slot's GPU (CUDA_VISIBLE_DEVICES, set by the runner); refused where NVML cannot identify it:
    a sandbox given every GPU's device node would leave CUDA_VISIBLE_DEVICES as the only fence, and
    train.py can change that."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    identity = isolation.gpu_identity(visible) if visible else None
    if identity is None:
        said = f"CUDA_VISIBLE_DEVICES={visible}" if visible else "no CUDA_VISIBLE_DEVICES was given"
        raise RunFailed(
            RunExit.SANDBOX_FAILED,
            f"cannot sandbox the run on its GPU: NVML could not identify the slot's GPU ({said}), so the sandbox "
            "cannot be limited to that GPU's device node; check that the NVIDIA driver and nvidia-ml-py work "
            "(`autoresearch-mcp doctor`), or run on the CPU",
        )
    minor, uuid = identity
    return SlotGpu(minor, uuid or visible)  # a UUID names the same GPU however many the sandbox sees


class Sandboxes:
    """The two sandboxes of a run (or, opted out, plain processes with the same layout)."""

    def __init__(self, args: argparse.Namespace, data: PreparedData, paths: RunPaths) -> None:
        self.args = args
        self.data = data
        self.paths = paths
        self.isolated = args.isolation == isolation.BUBBLEWRAP
        free_disk = shutil.disk_usage(paths.out).free
        self.limits = limits.resource_limits(args.memory_limit_gb, args.process_limit, free_disk)
        self.compile_cache = args.compile_cache
        # What the start-up allowance is for: the device asked for, else the profile's kind of device.
        self.device_type = args.device or ("cpu" if args.profile_name == "cpu" else "cuda")
        self.gpu = slot_gpu() if self.isolated and args.device == "cuda" else None
        # What no sandbox may see, even where it lies inside a folder that is bound: the records, the data
        # cache, and every copy of the built-in validation split's text (in the Python installs it binds).
        self.forbidden = [p for p in (args.workspace, args.data_dir, Path.home(), data.root) if p is not None]
        self.forbidden += corpus.validation_sources()

    def training(self, budget: float, handback_fd: int, start_fd: int) -> Contained:
        """The snapshot's train.py: the train split and tokenizer read-only, out/ writable; it is told its
        deadline on the socket `start_fd` (contract.ENV_START_FD), and asked for the hand-back by the
        closing of the pipe whose reading end is `handback_fd`."""
        read_only = {
            IN_SNAPSHOT: self.paths.snapshot,
            IN_TRAIN: self.data.train_dir,
            IN_TOKENIZER: self.data.tokenizer_dir,
        }
        writable = {IN_OUT: self.paths.out}
        if self.compile_cache is not None:
            writable[IN_CACHE] = self.compile_cache
        where = self._where({**read_only, **writable})
        env = {
            **(compile_cache_env(where(IN_CACHE)) if self.compile_cache is not None else {}),
            contract.ENV_PROFILE: self.args.profile_name,
            contract.ENV_BUDGET: repr(budget),
            contract.ENV_SEED: str(self.args.seed),
            contract.ENV_SCALE: repr(self.args.scale),
            **({contract.ENV_DEVICE: self.args.device} if self.args.device else {}),
            contract.ENV_RUN_DIR: where(IN_OUT),
            contract.ENV_SNAPSHOT: where(IN_SNAPSHOT),
            contract.ENV_TRAIN_DIR: where(IN_TRAIN),
            contract.ENV_TOKENIZER_DIR: where(IN_TOKENIZER),
            contract.ENV_HANDBACK_FD: str(handback_fd),
            contract.ENV_START_FD: str(start_fd),
        }
        # launch.py imports torch, waits for its start and runs train.py, exporting the model in a second
        # process. It starts in the sandbox's empty /tmp, so that no module of the snapshot's is imported
        # before the start (launch.py).
        argv = [sys.executable, "-m", "autoresearch_mcp.nanochat.launch", f"{where(IN_SNAPSHOT)}/train.py"]
        if not self.isolated:
            inherited = {
                k: v for k, v in os.environ.items() if k not in HIDDEN_FROM_TRAINING and k != contract.ENV_DEVICE
            }
            return self._training_job(argv, {**inherited, **env}, budget, helpers=0)
        plan = self._sandbox(PRIVATE_DIRS[0], read_only, writable)
        plan.env.update(env)
        return self._training_job(plan.argv(self.args.bwrap, argv), {}, budget, helpers=SANDBOX_HELPERS)

    def evaluation(self, result_dir: Path, wait_fd: int) -> Contained:
        """The evaluator (harness code) on the hand-back, the validation split and the tokenizer;
        it prepares, then waits for contract.EVALUATE_GO on the pipe `wait_fd` before it reads the hand-back."""
        read_only = {
            IN_HANDBACK: self.paths.handback,
            IN_VAL: self.data.val_dir,
            IN_TOKENIZER: self.data.tokenizer_dir,
        }
        where = self._where({**read_only, IN_RESULT: result_dir})
        argv = [
            sys.executable, "-m", "autoresearch_mcp.nanochat.evaluate",
            "--handback", where(IN_HANDBACK),
            "--profile", self.args.profile_name,
            "--val-dir", where(IN_VAL),
            "--tokenizer-dir", where(IN_TOKENIZER),
            "--out", f"{where(IN_RESULT)}/{contract.EVAL_RESULT}",
            "--wait-fd", str(wait_fd),
        ] + (["--device", self.args.device] if self.args.device else [])  # fmt: skip
        if not self.isolated:
            return self._evaluation_job(argv, {**os.environ, "PYTHONUNBUFFERED": "1"}, result_dir, helpers=0)
        plan = self._sandbox(IN_RESULT, read_only, {IN_RESULT: result_dir})
        return self._evaluation_job(plan.argv(self.args.bwrap, argv), {}, result_dir, helpers=SANDBOX_HELPERS)

    def _where(self, host_paths: dict[str, Path]) -> Callable[[str], str]:
        """How a process names a folder: its in-sandbox path, or (opted out) the host's."""
        if self.isolated:
            return lambda inside: inside
        return lambda inside: str(host_paths[inside])

    def _sandbox(self, cwd: str, read_only: dict[str, Path], writable: dict[str, Path]) -> SandboxPlan:
        plan = self._plan(cwd)
        for inside, host in read_only.items():
            plan.read_only(host, inside)
        for inside, host in writable.items():
            plan.writable(host, inside)
        plan.hide(self.forbidden)
        return plan

    def _plan(self, cwd: str) -> SandboxPlan:
        """What both sandboxes share: the system, Python, the harness, a private /tmp, the GPU."""
        plan = SandboxPlan(cwd=cwd)
        plan.add_system()
        plan.add_python()
        for path in PRIVATE_DIRS:
            plan.private(path, self.limits.tmp_bytes)
        plan.env.update({name: os.environ[name] for name in INHERITED_VALUES if name in os.environ})
        plan.env.update({name: value for name, value in os.environ.items() if name.startswith("LC_")})
        plan.env.update(
            {
                "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
                "HOME": "/tmp",
                "TMPDIR": "/tmp",
                "PYTHONUNBUFFERED": "1",
                "PYTHONDONTWRITEBYTECODE": "1",
                "PYTHONNOUSERSITE": "1",
                "CUDA_VISIBLE_DEVICES": "",
            }
        )
        self._add_library_path(plan)
        if self.gpu is not None:
            self._add_gpu(plan, self.gpu)
        return plan

    def _add_library_path(self, plan: SandboxPlan) -> None:
        """Libraries found through LD_LIBRARY_PATH (a CUDA install outside /usr), read-only."""
        folders = [Path(p) for p in os.environ.get("LD_LIBRARY_PATH", "").split(":") if p and Path(p).is_dir()]
        for folder in folders:
            plan.read_only(folder.resolve(), str(folder))
        if folders:
            plan.env["LD_LIBRARY_PATH"] = ":".join(map(str, folders))

    @staticmethod
    def _add_gpu(plan: SandboxPlan, gpu: SlotGpu) -> None:
        """The slot's GPU only: its device node and the driver's control nodes; /sys read-only."""
        for node in isolation.gpu_nodes(gpu.minor):
            plan.device(node)
        plan.read_only(Path("/sys"))
        plan.env["CUDA_VISIBLE_DEVICES"] = gpu.pinned

    def _training_job(self, argv: list[str], env: dict[str, str], budget: float, helpers: int) -> Contained:
        return Contained(
            argv,
            env,
            self.paths.snapshot,
            helpers,
            self.paths.out,
            self.limits,
            limits.training_seconds(budget, self.device_type),
            "training",
            self.compile_cache,
            handback_after=limits.handback_deadline(budget, self.device_type),
        )

    def _evaluation_job(self, argv: list[str], env: dict[str, str], result_dir: Path, helpers: int) -> Contained:
        held = dataclasses.replace(self.limits, output_bytes=EVAL_OUTPUT_BYTES)
        return Contained(argv, env, result_dir, helpers, result_dir, held, limits.EVALUATION_SECONDS, "evaluation")


def start_training(training_job: Callable[[int, int], Contained]) -> Started:
    """Start the training job `training_job(handback_fd, start_fd)`, given the reading end of the pipe we
    close to ask for its hand-back (at its deadline: finish_contained), and its end of the socket its
    start is sent on (begin_training)."""
    asked, ask = os.pipe()
    ours, theirs = socket.socketpair()
    try:
        training = start_contained(training_job(asked, theirs.fileno()), pass_fds=(asked, theirs.fileno()))
    except BaseException:
        os.close(ask)
        ours.close()
        raise
    finally:
        os.close(asked)
        theirs.close()
    training.handback_request = ask
    training.start_socket = ours
    return training


def begin_training(training: Started, after: tuple[int, float] | None, run_dir: Path) -> None:
    """Let train.py start once the sandbox has imported torch and the harness and the run `after` (pid,
    creation time) has ended: send it its deadline (the job's handback_after from now), from which its
    time limits count. RunFailed if the sandbox ends or hangs before."""
    assert training.start_socket is not None and training.job.handback_after is not None
    training.start_socket.settimeout(limits.IMPORT_SECONDS)
    try:
        ready = training.start_socket.recv(len(contract.START_READY))
    except TimeoutError:
        raise RunFailed(
            RunExit.TIMED_OUT,
            f"the training sandbox had not imported torch {limits.IMPORT_SECONDS:.0f} s after it started; check "
            "the Python environment (`autoresearch-mcp doctor`) and the machine's load, then launch again",
        ) from None
    if ready != contract.START_READY:
        raise _ended_before_start(training)
    if after is not None:
        set_phase(run_dir, Phase.WAITING)
        wait_for_slot(*after)
    set_phase(run_dir, Phase.TRAINING)
    training.timed_from = time.monotonic()
    try:
        training.start_socket.sendall(f"{time.time() + training.job.handback_after!r}\n".encode())
    except OSError:  # it ended while it waited (killed, out of memory): nothing of the run's ran
        raise _ended_before_start(training) from None


def _ended_before_start(training: Started) -> RunFailed:
    """The failure of a training sandbox that ended before its start, with how it ended."""
    how = ""
    with contextlib.suppress(subprocess.TimeoutExpired):
        return_code = training.process.wait(timeout=5)
        how = f" ({_killed_by(return_code) or f'exit code {return_code}'}; the reason is above)"
    return RunFailed(RunExit.SANDBOX_FAILED, f"the training sandbox ended before train.py started{how}")


def wait_for_slot(pid: int, created: float) -> None:
    """Wait until the run before this one on its slot (its supervisor: `pid`, created at `created`)
    has ended; RunFailed if it is still running after its evaluation's limit."""
    try:
        before = psutil.Process(pid)
        if abs(before.create_time() - created) >= 0.01:
            return  # the pid was reused: that run ended long ago
        patience = limits.EVALUATION_SECONDS + limits.SUPERVISOR_SLACK_SECONDS
        give_up = time.monotonic() + patience
        while before.status() != psutil.STATUS_ZOMBIE:  # ended, not yet reaped by the server
            if time.monotonic() > give_up:
                raise RunFailed(
                    RunExit.TIMED_OUT,
                    f"the run before this one on its slot (supervisor pid {pid}) was still running after "
                    f"{patience:.0f} s; stop it (stop_training) and launch this one again",
                )
            time.sleep(SLOT_POLL_SECONDS)
    except psutil.NoSuchProcess:
        return


def finish_training(training: Started, while_running: Callable[[], None]) -> None:
    return_code = finish_contained(training, while_running)
    if return_code == RunExit.FAST_FAILED:
        raise RunFailed(RunExit.FAST_FAILED, "training fast-failed: the loss was NaN or exploding (see above)")
    if (killed := _killed_by(return_code)) is not None:
        raise RunFailed(RunExit.TRAIN_CRASHED, f"train.py was {killed}")
    if return_code != 0:
        raise RunFailed(RunExit.TRAIN_CRASHED, f"train.py crashed with exit code {return_code}; its traceback is above")


def _killed_by(return_code: int) -> str | None:
    """ "killed by signal X" if `return_code` says a signal ended the process (negative as Popen gives it,
    128 + N as bwrap passes it on), with the likely cause of a SIGKILL nobody of ours sent."""
    if 0 <= return_code <= 128:
        return None
    number = -return_code if return_code < 0 else return_code - 128
    try:
        name = signal.Signals(number).name
    except ValueError:
        name = str(number)
    return f"killed by signal {name}" + (" (possibly out of memory)" if number == signal.SIGKILL else "")


def move_handback(paths: RunPaths) -> None:
    """Move the hand-back files out of out/ into the (empty) handback/, now that nothing runs in the
    training sandbox.

    Only regular files with a single link are taken (a symlink, FIFO or hard link planted in
    out/ is refused); the sizes were bounded while training ran.
    """
    for name in contract.HANDBACK_FILES:
        source = paths.out / name
        try:
            info = os.lstat(source)
        except FileNotFoundError:
            raise RunFailed(
                RunExit.NO_MODEL,
                f"train.py finished without handing back a model ({name} is missing); call run.hand_back(model) at the end",
            ) from None
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
            raise RunFailed(
                RunExit.NO_MODEL,
                f"{name} in the run's output folder is not a regular file (a link, pipe or folder); "
                "only run.hand_back(model) writes it",
            )
        try:
            os.rename(source, paths.handback / name)
        except OSError as error:  # e.g. train.py took away the permissions on out/
            raise RunFailed(RunExit.NO_MODEL, f"could not take {name} from the run's output folder: {error}") from None


def clear_out(paths: RunPaths) -> None:
    """Remove everything the run left in out/ but metrics.jsonl (read later, as data), now that nothing
    runs in the training sandbox: what a run writes there does not outlive it."""
    with contextlib.suppress(OSError):
        os.chmod(paths.out, stat.S_IRWXU)  # the run may have taken away our way in
    try:
        entries = list(os.scandir(paths.out))
    except OSError:  # not a folder we can read (the run replaced it?): start afresh
        fresh_folder(paths.out)
        return
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            remove_tree(Path(entry.path))
        elif entry.name != contract.METRICS:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)


class WaitingEvaluator:
    """The evaluation sandbox, started while training runs so that its imports and data loading happen
    meanwhile. It waits on a pipe whose writing end only this supervisor holds (no sandbox inherits
    it), and reads the hand-back once told GO, after the training sandbox is gone.

    It starts once training has logged its first step (`first_step_sign`, out/metrics.jsonl, has a
    line): beside the uncounted warm-up, on a machine whose cores training fills, its `import torch`
    made that step several times slower. The run can only hasten or delay the start of its own
    evaluator by writing that file or not (at the latest it starts at GO), never change what it does."""

    def __init__(self, sandboxes: Sandboxes, first_step_sign: Path) -> None:
        self._sandboxes = sandboxes
        self._first_step_sign = first_step_sign
        # A private folder that no other process sees: the evaluator's only writable place.
        self._private = tempfile.TemporaryDirectory(prefix="autoresearch-eval-")
        self.result_dir = Path(self._private.name)
        self._started: Started | None = None
        self._go = -1

    def __enter__(self) -> WaitingEvaluator:
        return self

    def __exit__(self, *exc: object) -> None:
        """Whatever happened: no evaluator left, no pipe, no private folder."""
        self._close_go()
        if self._started is not None:
            stop_contained(self._started)
        self._private.cleanup()

    def _close_go(self) -> None:
        if self._go >= 0:
            os.close(self._go)
            self._go = -1

    def start_after_first_step(self) -> None:
        """Start it if training has logged a step (called while training runs)."""
        if self._started is None and _has_content(self._first_step_sign):
            self._start()

    def _start(self) -> Started:
        wait_fd, self._go = os.pipe()
        try:
            self._started = start_contained(self._sandboxes.evaluation(self.result_dir, wait_fd), pass_fds=(wait_fd,))
        finally:
            os.close(wait_fd)
        return self._started

    def evaluate(self) -> dict[str, Any]:
        """Tell it GO (starting it first if training never logged a step), watch it (its time limit
        counted from now), and take its result."""
        started = self._started or self._start()
        # BrokenPipeError: it ended early (it failed to start); its exit code and the log say why.
        with contextlib.suppress(BrokenPipeError):
            os.write(self._go, contract.EVALUATE_GO)
        self._close_go()
        return_code = finish_contained(started)
        result = untrusted.read_json_object(self.result_dir / contract.EVAL_RESULT, RESULT_BYTES)
        if return_code != 0 or result is None or not isinstance(result.get("val_bpb"), float):
            killed = _killed_by(return_code)
            why = f"the evaluator was {killed}" if killed else "the reason is above"
            raise RunFailed(RunExit.EVAL_FAILED, f"evaluation failed or was refused ({why})")
        return result


def _has_content(path: Path) -> bool:
    """Whether `path` is there and not empty (a link is not followed: its own size counts)."""
    try:
        return os.lstat(path).st_size > 0
    except OSError:
        return False


def _number(data: dict[str, Any], key: str) -> float | None:
    value = data.get(key)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    try:
        return float(value)
    except OverflowError:  # an int too large for a float: train_stats.json is written by the agent's process
        return None


def _count(data: dict[str, Any], key: str) -> int | None:
    value = _number(data, key)
    return int(value) if value is not None and value.is_integer() else None


def build_summary(
    args: argparse.Namespace,
    budget: float,
    result: dict[str, Any],
    stats: dict[str, Any],
    timings: Timings,
    data_id: str,
) -> dict[str, Any]:
    """The recorded result: val_bpb and model size from the evaluator, the training sandbox's wall time
    from our clock, the rest (files.REPORTED_BY_RUN) as train.py reported it."""
    total_tokens = _number(stats, "total_tokens")
    return {
        "val_bpb": result["val_bpb"],
        "training_seconds": _number(stats, "training_seconds"),
        "training_wall_seconds": round(timings.events["training_exited"] - timings.events["training_started"], 3),
        "total_seconds": time.time() - timings.started,
        "peak_memory_mb": _number(stats, "peak_memory_mb"),
        "mfu_percent": _number(stats, "mfu_percent"),
        "total_tokens_M": None if total_tokens is None else total_tokens / 1e6,
        "num_steps": _count(stats, "num_steps"),
        "num_params_M": result["num_params"] / 1e6,
        "depth": _count(stats, "depth"),
        "profile": args.profile_name,
        "device": result["device"],
        "seed": args.seed,
        "budget_seconds": budget,
        "eval_tokens": result["eval_tokens"],
        "isolation": args.isolation,
        "data_id": data_id,
        "reported_by_run": list(files.REPORTED_BY_RUN),
        "timings": timings.as_dict(),
    }


def execute(args: argparse.Namespace, profile: Profile, timings: Timings) -> dict[str, Any]:
    budget = args.budget if args.budget is not None else profile.budget_seconds
    paths = RunPaths(args.run_dir)
    set_phase(args.run_dir, Phase.SETUP)
    phase_start = time.time()
    data, data_id = prepare(args, profile)
    fresh_folder(paths.out)
    fresh_folder(paths.handback)
    if args.compile_cache is not None:
        ready_compile_cache(args.compile_cache)
    sandboxes = Sandboxes(args, data, paths)
    timings.phases["data"] = time.time() - phase_start
    timings.mark("data_ready")

    timings.mark("training_spawned")
    training = start_training(functools.partial(sandboxes.training, budget))
    try:
        begin_training(training, args.after, args.run_dir)
    except BaseException:
        stop_contained(training)
        raise
    timings.mark("training_started")
    timings.phases["held"] = timings.events["training_started"] - timings.events["training_spawned"]
    with WaitingEvaluator(sandboxes, paths.out / contract.METRICS) as evaluator:
        try:
            finish_training(training, while_running=evaluator.start_after_first_step)
            timings.mark("training_exited")
            move_handback(paths)
        finally:
            clear_out(paths)
        timings.mark("handback_moved")
        stats = untrusted.read_json_object(paths.handback / contract.TRAIN_STATS, RESULT_BYTES) or {}
        timings.phases.update(
            training_phases(stats, timings.events["training_started"], timings.events["training_exited"])
        )

        set_phase(args.run_dir, Phase.EVALUATING)
        phase_start = time.time()
        try:
            verify(data.root)  # nothing outside the sandbox changed the data while training ran
        except UserError as error:
            raise RunFailed(RunExit.EVAL_FAILED, f"evaluation refused: {error}") from None
        timings.mark("go_sent")
        result = evaluator.evaluate()
    timings.mark("evaluator_exited")
    timings.phases["eval"] = time.time() - phase_start
    timings.events.update(
        {f"evaluator_{key[:-5]}": result[key] for key in EVALUATOR_EVENTS if isinstance(result.get(key), float)}
    )
    return build_summary(args, budget, result, stats, timings, data_id)


def training_phases(stats: dict[str, Any], started: float, ended: float) -> dict[str, float]:
    """startup (model build, the uncounted warm-up steps), training (counted) and handback (saving and
    exit): the training sandbox's wall time from its start split by what train.py reported."""
    wall = ended - started
    clock_start = _number(stats, "clock_start_unix")
    startup = min(wall, max(0.0, clock_start - started)) if clock_start else wall
    training = min(wall - startup, max(0.0, _number(stats, "training_seconds") or 0.0))
    return {"startup": startup, "training": training, "handback": wall - startup - training}


# ---- command line ----------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, Profile]:
    parser = argparse.ArgumentParser(
        prog="python -m autoresearch_mcp.sandbox.supervisor",
        description="Train a run's snapshot in a sandbox, evaluate it in another, record the result.",
    )
    parser.add_argument("--run-dir", type=Path, required=True, help="the run folder (holds snapshot/)")
    parser.add_argument("--profile", required=True, help="h100, gpu, cpu or auto")
    parser.add_argument("--workspace", type=Path, help="the workspace, hidden from both sandboxes")
    parser.add_argument(
        "--compile-cache", type=Path, help="torch.compile's cache folder, shared by the workspace's training runs"
    )
    parser.add_argument("--budget", type=float, help="training seconds (default: the profile's)")
    parser.add_argument("--seed", type=int, default=contract.DEFAULT_SEED)
    parser.add_argument("--scale", type=float, default=1.0, help="model size multiplier for train.py (run.scale, >= 1)")
    parser.add_argument("--device", choices=["cpu", "cuda", "mps"], help="default: cuda > mps > cpu")
    parser.add_argument("--data-dir", type=Path, default=None, help="data cache (default: the per-user cache)")
    parser.add_argument(
        "--data-source", help="override the profile's data: builtin, climbmix, or local parquet/jsonl/txt files"
    )
    parser.add_argument("--isolation", choices=isolation.ISOLATION_CHOICES, default=isolation.BUBBLEWRAP)
    parser.add_argument("--memory-limit-gb", type=float, help="memory of the training sandbox (default: 3/4 of RAM)")
    parser.add_argument("--process-limit", type=int, help="processes in the training sandbox")
    parser.add_argument(
        "--after-pid", type=int, help="the supervisor of the run before this one on its slot: train once it has ended"
    )
    parser.add_argument("--after-started", type=float, help="when that supervisor started (its creation time)")
    args = parser.parse_args(argv)
    args.run_dir = args.run_dir.resolve()
    args.workspace = args.workspace.resolve() if args.workspace else None
    args.compile_cache = args.compile_cache.resolve() if args.compile_cache else None
    args.data_dir = (args.data_dir or default_data_dir()).expanduser().resolve()
    if not (args.run_dir / contract.SNAPSHOT_DIR / "train.py").is_file():
        parser.error(f"--run-dir {args.run_dir} has no {contract.SNAPSHOT_DIR}/train.py")
    if not 1 <= args.scale <= 100:
        parser.error(f"--scale must be a number from 1 to 100, got {args.scale}")
    if args.budget is not None and not args.budget > 0:
        parser.error(f"--budget must be a positive number of seconds, got {args.budget}")
    if (args.after_pid is None) != (args.after_started is None):
        parser.error("--after-pid and --after-started go together")
    args.after = None if args.after_pid is None else (args.after_pid, args.after_started)
    try:
        profile = resolve_profile(args.profile)
    except UserError as error:
        parser.error(str(error))
    args.profile_name = profile.name
    return args, profile


def check_isolation(args: argparse.Namespace) -> None:
    """Refuse to run unsandboxed unless the workspace opted out."""
    args.bwrap = None
    if args.isolation == isolation.NONE:
        print('note: this run is not isolated (isolation = "none"): train.py can reach everything', flush=True)
        return
    available = isolation.availability()
    if not available.available:
        raise RunFailed(RunExit.SANDBOX_FAILED, f"cannot sandbox the run: {available.reason}; {available.fix}")
    args.bwrap = available.bwrap


def _stop(signum: int, frame: object) -> None:
    # Unwinds through run_contained's cleanup, which kills the sandbox.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    timings = Timings()
    timings.events["supervisor_process"] = files.process_started_unix() or timings.started
    timings.mark("supervisor_main")
    signal.signal(signal.SIGTERM, _stop)
    args, profile = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    (args.run_dir / contract.SUMMARY).unlink(missing_ok=True)  # a run started again records afresh
    cgroups.remove_stale()  # of supervisors that ended without removing theirs (killed, a restart)
    try:
        check_isolation(args)
        result = execute(args, profile, timings)
    except RunFailed as failure:
        sys.stdout.flush()
        opened = "\n" if _Pump.line_open else ""  # the mark is read at a line's start (runner.failure_message)
        print(f"{opened}{contract.FAILURE_MARK}{failure}", file=sys.stderr, flush=True)
        set_phase(args.run_dir, Phase.FAILED)
        return failure.exit_code
    files.write_json_atomic(args.run_dir / contract.SUMMARY, result)
    set_phase(args.run_dir, Phase.DONE)
    print("---")
    print(files.format_summary(result), flush=True)
    return RunExit.OK


if __name__ == "__main__":
    sys.exit(main())
