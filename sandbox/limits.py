"""Every limit of a run, defined once: time per phase, and what the training sandbox may use.

The supervisor owns them all (it stops its own run and says which limit was hit). The runner
owns only one backstop, derived from the same numbers, against a supervisor that hangs itself.
No torch and no psutil here: the server and the supervisor import it at start-up.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

GB = 1024**3

# ---- time ---------------------------------------------------------------------------------
SETUP_SECONDS = 1800.0  # data and tokenizer: minutes on a first run, then a second
# The training sandbox's first process imports torch and the harness before train.py may start: seconds,
# minutes at worst on a cold, slow disk.
IMPORT_SECONDS = 300.0
# The training sandbox's deadline, kept by the supervisor from the moment it lets train.py start (the
# imports done, and the run before it on its slot ended): the budget plus a start-up allowance for what
# precedes training (model build, compilation, the warm-up steps). The harness trains every run up to it (contract.ENV_DEADLINE), so
# all runs of one budget get the same window by our clock: start-up comes out of the allowance (a run
# that starts faster trains longer; one that starts slower, less), and no clock of the run's own can buy
# time, since an honest run already uses the whole window. At the deadline the supervisor asks for the
# hand-back; a run that has not handed back within the grace is stopped. So no run trains more than
# the grace beyond the window, whatever train.py does before or around the harness.
# CPU (and MPS): about twice the cpu template's start-up once torch and torch._dynamo are imported (model
# build, optimizers, the first step: 0.4 s on an idle 2-core machine, bench/experiment_overhead.py), so
# that the template trains about its budget, a little more on an idle machine.
STARTUP_ALLOWANCE_CPU_SECONDS = 1.0
# CUDA: torch.compile in the ten warm-up steps; the h100 template took ~44 s from cold on an H100.
STARTUP_ALLOWANCE_CUDA_SECONDS = 45.0
# Saving the weights takes well under a second (0.3 s with the process's exit on the cpu profile);
# exporting the model again, if it changed after run.export(model), seconds. An honest run hands
# back at its deadline, so the grace must hold that on a loaded machine, and it is the most a run can
# train past the window.
HANDBACK_GRACE_CPU_SECONDS = 5.0
HANDBACK_GRACE_CUDA_SECONDS = 15.0
EVALUATION_SECONDS = 900.0
# The runner's backstop gives a supervisor this much beyond the sum of its phases (verifying
# data, moving files, writing the summary) before it is taken to hang.
SUPERVISOR_SLACK_SECONDS = 120.0
KILL_GRACE_SECONDS = 5.0  # between SIGTERM and SIGKILL, for a stop
# A run is started held behind the one its slot is evaluating only where this much memory is free: its
# training sandbox imports torch meanwhile (about half a GB; it touches no GPU before its start).
HELD_START_MEMORY_BYTES = 2 * GB


def startup_allowance(device: str) -> float:
    """The start-up allowance of a run on `device` ("cuda", "mps" or "cpu")."""
    return STARTUP_ALLOWANCE_CUDA_SECONDS if device == "cuda" else STARTUP_ALLOWANCE_CPU_SECONDS


def handback_grace(device: str) -> float:
    """How long after its deadline a run on `device` may take to hand back before it is stopped."""
    return HANDBACK_GRACE_CUDA_SECONDS if device == "cuda" else HANDBACK_GRACE_CPU_SECONDS


def handback_deadline(budget_seconds: float, device: str) -> float:
    """Seconds after its start at which the training sandbox is asked to hand back its model."""
    return budget_seconds + startup_allowance(device)


def training_seconds(budget_seconds: float, device: str) -> float:
    """Seconds after its start at which the training sandbox is stopped."""
    return handback_deadline(budget_seconds, device) + handback_grace(device)


def backstop_seconds(budget_seconds: float) -> float:
    """How long a supervisor may live at all: every phase at its limit (waiting for the run before it on
    its slot as long as that one's evaluation may take), plus slack."""
    training = training_seconds(budget_seconds, "cuda")  # the longest allowance: the runner does not know the device
    waiting = IMPORT_SECONDS + EVALUATION_SECONDS + SUPERVISOR_SLACK_SECONDS
    return SETUP_SECONDS + waiting + training + EVALUATION_SECONDS + SUPERVISOR_SLACK_SECONDS


# ---- what a training sandbox may use -------------------------------------------------------


@dataclass(frozen=True)
class ResourceLimits:
    """Watched by the supervisor a few times a second; the first one crossed ends the run."""

    memory_bytes: int  # resident memory of every process in the sandbox, and its in-memory /tmp, added up
    processes: int  # processes and threads in the sandbox (tasks)
    output_bytes: int  # everything written to the run's out/ folder (and its largest file)
    log_bytes: int  # what the run may print to log.txt; the rest is dropped, not stored
    tmp_bytes: int  # the sandbox's private /tmp (and /dev/shm), in memory


# torch.compile's cache, kept across the workspace's training runs (supervisor --compile-cache): a run
# may fill it up to these, and one that starts with it over half of either finds it emptied.
COMPILE_CACHE_BYTES = 16 * GB
COMPILE_CACHE_ENTRIES = 100_000
COMPILE_CACHE_WATCH_SECONDS = 5.0  # how often its size is counted while a run trains (a walk of it)

# Processes and threads together (a cgroup's pids.max counts both): a CUDA run's OpenMP threads, torch.compile's
# worker pool and data-loader workers, each with threads of their own, fit well within.
DEFAULT_PROCESSES = 4096
DEFAULT_OUTPUT_BYTES = 20 * GB
# ...and no more than this share of the free space on the run folder's disk at the start: what a run
# writes into out/ stays there until the run ends (then all but metrics.jsonl is removed).
OUTPUT_SHARE_OF_FREE_DISK = 0.5
DEFAULT_LOG_BYTES = 64 * 1024**2
DEFAULT_TMP_BYTES = 2 * GB  # each of /tmp and /dev/shm; what is stored there counts as memory


def default_memory_bytes() -> int:
    """Three quarters of the machine's memory: the server and the system keep the rest."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):  # not every platform names these
        total = 16 * GB
    return int(total * 0.75)


def resource_limits(
    memory_limit_gb: float | None = None, process_limit: int | None = None, free_disk_bytes: int | None = None
) -> ResourceLimits:
    """The limits of a run: the workspace's settings where it has them, else the defaults; the output
    limit capped by the free space of the disk the run writes to (`free_disk_bytes`, where known)."""
    output_bytes = DEFAULT_OUTPUT_BYTES
    if free_disk_bytes is not None:
        output_bytes = min(output_bytes, int(free_disk_bytes * OUTPUT_SHARE_OF_FREE_DISK))
    return ResourceLimits(
        memory_bytes=int(memory_limit_gb * GB) if memory_limit_gb is not None else default_memory_bytes(),
        processes=process_limit if process_limit is not None else DEFAULT_PROCESSES,
        output_bytes=output_bytes,
        log_bytes=DEFAULT_LOG_BYTES,
        tmp_bytes=DEFAULT_TMP_BYTES,
    )
