"""The sandboxes' limits where the watchdog cannot see: a cgroup's memory.max and pids.max (the kernel
enforces them), and, without a cgroup, the watchdog counting threads and memfds. Real processes."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from autoresearch_mcp.nanochat.contract import RunExit
from autoresearch_mcp.sandbox import cgroups, limits, supervisor

needs_cgroup = pytest.mark.skipif(isinstance(cgroups.parents(), str), reason=f"no cgroup here: {cgroups.parents()}")

MEMFD_HOARD = """
import os, time
fd = os.memfd_create("hoard")
for _ in range(8):  # 512 MB in no resident set and no folder
    os.write(fd, b"x" * (64 * 2**20))
time.sleep(30)
"""
THREADS = """
import threading, time
threading.stack_size(256 * 1024)
for _ in range(100):
    threading.Thread(target=time.sleep, args=(30,), daemon=True).start()
time.sleep(30)
"""


def job(tmp_path: Path, code: str) -> supervisor.Contained:
    held = limits.resource_limits(memory_limit_gb=0.25, process_limit=40)
    return supervisor.Contained(
        [sys.executable, "-c", code], dict(os.environ), tmp_path, 0, tmp_path, held, 60.0, "training"
    )


def stopped_for(contained: supervisor.Contained) -> supervisor.RunFailed:
    with pytest.raises(supervisor.RunFailed) as failure:
        supervisor.run_contained(contained)
    assert failure.value.exit_code == RunExit.OVER_LIMIT
    return failure.value


@pytest.fixture(params=["cgroup", "watchdog only"])
def enforcer(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "cgroup" and isinstance(cgroups.parents(), str):
        pytest.skip(f"no cgroup here: {cgroups.parents()}")
    if request.param == "watchdog only":  # as on a machine that gives us no cgroup
        monkeypatch.setattr(cgroups, "make_group", lambda *_: "none here")
    return request.param


def test_memory_held_in_a_memfd_counts_against_the_memory_limit(tmp_path: Path, enforcer: str) -> None:
    failure = stopped_for(job(tmp_path, MEMFD_HOARD))
    assert "GB of memory, over its limit of 0.25 GB (memory_limit_gb" in str(failure)


def test_threads_count_against_the_process_limit(tmp_path: Path, enforcer: str) -> None:
    failure = stopped_for(job(tmp_path, THREADS))
    assert "over its limit of 40 (process_limit" in str(failure)


@needs_cgroup
def test_a_sandbox_s_group_is_removed_when_it_ends_and_stale_groups_at_start(tmp_path: Path) -> None:
    started = supervisor.start_contained(job(tmp_path, "import time; time.sleep(30)"))
    assert started.group is not None and all(folder.is_dir() for folder in started.group.folders)
    supervisor.stop_contained(started)
    assert not any(folder.exists() for folder in started.group.folders)

    found = cgroups.parents()
    assert not isinstance(found, str)
    gone = 2**22 + 1  # above any pid_max: no process has it
    stale = [folder / f"{gone}-training" for folder in found.folders]
    for folder in stale:
        folder.mkdir()
    cgroups.remove_stale()
    assert not any(folder.exists() for folder in stale)
