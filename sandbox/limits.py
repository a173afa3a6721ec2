"""Every limit of a run, defined once: time per phase, and what the training sandbox may use.

The supervisor owns them all (it stops its own run and says which limit was hit). The runner
owns only one backstop, derived from the same numbers, against a supervisor that hangs itself.
No torch and no psutil here: the server and the supervisor import it at start-up.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from autoresearch_mcp.nanochat.summary import MAX_UNCOUNTED_SECONDS

GB = 1024**3

# ---- time ---------------------------------------------------------------------------------
SETUP_SECONDS = 1800.0  # data and tokenizer: minutes on a first run, then a second
# Training may run past its budget by this much: start-up and imports, the uncounted warm-up
# steps (at most MAX_UNCOUNTED_SECONDS), the hand-back, and exiting.
TRAINING_ALLOWANCE_SECONDS = MAX_UNCOUNTED_SECONDS + 120.0
EVALUATION_SECONDS = 900.0
# The runner's backstop gives a supervisor this much beyond the sum of its phases (verifying
# data, moving files, writing the summary) before it is taken to hang.
SUPERVISOR_SLACK_SECONDS = 120.0
KILL_GRACE_SECONDS = 5.0  # between SIGTERM and SIGKILL, for a stop


def training_seconds(budget_seconds: float) -> float:
    return budget_seconds + TRAINING_ALLOWANCE_SECONDS


def backstop_seconds(budget_seconds: float) -> float:
    """How long a supervisor may live at all: every phase at its limit, plus slack."""
    return SETUP_SECONDS + training_seconds(budget_seconds) + EVALUATION_SECONDS + SUPERVISOR_SLACK_SECONDS


# ---- what a training sandbox may use -------------------------------------------------------


@dataclass(frozen=True)
class ResourceLimits:
    """Watched by the supervisor a few times a second; the first one crossed ends the run."""

    memory_bytes: int  # resident memory of every process in the sandbox, and its in-memory /tmp, added up
    processes: int  # processes (not threads) in the sandbox
    output_bytes: int  # everything written to the run's out/ folder (and its largest file)
    log_bytes: int  # what the run may print to log.txt; the rest is dropped, not stored
    tmp_bytes: int  # the sandbox's private /tmp (and /dev/shm), in memory


# torch.compile's cache, kept across the workspace's training runs (supervisor --compile-cache): a run
# may fill it up to these, and one that starts with it over half of either finds it emptied.
COMPILE_CACHE_BYTES = 16 * GB
COMPILE_CACHE_ENTRIES = 100_000
COMPILE_CACHE_WATCH_SECONDS = 5.0  # how often its size is counted while a run trains (a walk of it)

DEFAULT_PROCESSES = 512  # torch.compile's worker pool and data-loader workers fit well within
DEFAULT_OUTPUT_BYTES = 20 * GB
DEFAULT_LOG_BYTES = 64 * 1024**2
DEFAULT_TMP_BYTES = 2 * GB  # each of /tmp and /dev/shm; what is stored there counts as memory


def default_memory_bytes() -> int:
    """Three quarters of the machine's memory: the server and the system keep the rest."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):  # not every platform names these
        total = 16 * GB
    return int(total * 0.75)


def resource_limits(memory_limit_gb: float | None = None, process_limit: int | None = None) -> ResourceLimits:
    """The limits of a run: the workspace's settings where it has them, else the defaults."""
    return ResourceLimits(
        memory_bytes=int(memory_limit_gb * GB) if memory_limit_gb is not None else default_memory_bytes(),
        processes=process_limit if process_limit is not None else DEFAULT_PROCESSES,
        output_bytes=DEFAULT_OUTPUT_BYTES,
        log_bytes=DEFAULT_LOG_BYTES,
        tmp_bytes=DEFAULT_TMP_BYTES,
    )
