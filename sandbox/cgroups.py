"""Kernel limits on a sandbox: a cgroup with a memory and a task limit, where the machine lets us make one.

The supervisor's watchdog sees only what it counts: resident memory, the sandbox's in-memory folders,
memfds, processes and threads. Memory a run holds in other ways (SysV shared memory, pipes, kernel
objects) is in none of them, and the kernel's OOM killer, which cannot charge such memory to the run
either, may pick the server. A cgroup charges every page and every task of the processes in it, and the
kernel enforces its limits on the run alone: past memory.max it kills a process of the run, past
pids.max a fork or a new thread fails.

Where from: cgroup v2, if the controllers can be enabled below our own cgroup (a delegated subtree);
else cgroup v1, if the memory and pids hierarchies are mounted and writable by us (root on a host or
VM). Each sandbox gets a group named `<supervisor pid>-<what>` in an `autoresearch-mcp` folder below
our own cgroup; the supervisor removes it when the sandbox ends, and `remove_stale` removes the groups
of supervisors that are gone (a supervisor killed, a machine restarted). No torch and no psutil here.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

FOLDER = "autoresearch-mcp"  # ours, below our own cgroup
CONTROLLERS = ("memory", "pids")
REMOVE_TRIES = 50  # rmdir fails while the killed processes are still exiting
REMOVE_WAIT_SECONDS = 0.02


@dataclass(frozen=True)
class Files:
    """The names of one cgroup version's files."""

    memory_max: str
    swap_max: str | None
    oom_kills: tuple[str, str]  # file, key whose value counts the processes the kernel killed
    memory_peak: str
    tasks_refused: tuple[str, str]  # file, key counting forks refused at pids.max


V1 = Files(
    "memory.limit_in_bytes",
    None,
    ("memory.oom_control", "oom_kill"),
    "memory.max_usage_in_bytes",
    ("pids.events", "max"),
)
V2 = Files("memory.max", "memory.swap.max", ("memory.events", "oom_kill"), "memory.peak", ("pids.events", "max"))


@dataclass(frozen=True)
class Parents:
    """Where our groups are made: one folder per controller (v1), or one for both (v2)."""

    version: int
    memory: Path
    pids: Path

    @property
    def files(self) -> Files:
        return V2 if self.version == 2 else V1

    @property
    def folders(self) -> tuple[Path, ...]:
        return (self.memory,) if self.memory == self.pids else (self.memory, self.pids)

    def describe(self) -> str:
        how = "v2, a delegated subtree" if self.version == 2 else "v1, the memory and pids hierarchies"
        return f"cgroup {how} (under {self.memory})"


@functools.cache
def parents() -> Parents | str:
    """Where this process can make limited groups, or why it cannot (once per process)."""
    reasons = []
    for find in (_v2_parents, _v1_parents):
        try:
            return find()
        except OSError as error:
            reasons.append(f"{find.__doc__}: {error.strerror or error}")
    return "; ".join(reasons)


def _v2_parents() -> Parents:
    """cgroup v2"""
    mount = _mounts().get("cgroup2")
    own = _own_paths().get("")
    if mount is None or own is None:
        raise OSError(0, "not mounted")
    own_folder = mount / own.lstrip("/")
    if not set(CONTROLLERS) <= set((own_folder / "cgroup.controllers").read_text().split()):
        raise OSError(0, "the memory and pids controllers are not delegated to our cgroup")
    enable = " ".join(f"+{name}" for name in CONTROLLERS)
    if not set(CONTROLLERS) <= set((own_folder / "cgroup.subtree_control").read_text().split()):
        (own_folder / "cgroup.subtree_control").write_text(enable)  # EBUSY where our own cgroup has processes
    folder = _make_folder(own_folder)
    (folder / "cgroup.subtree_control").write_text(enable)
    return Parents(2, folder, folder)


def _v1_parents() -> Parents:
    """cgroup v1"""
    mounts, own = _mounts(), _own_paths()
    found = {}
    for name in CONTROLLERS:
        if name not in mounts or name not in own:
            raise OSError(0, f"no {name} hierarchy")
        found[name] = _make_folder(mounts[name] / own[name].lstrip("/"))
    return Parents(1, found["memory"], found["pids"])


def _make_folder(own: Path) -> Path:
    """Our folder below our own cgroup `own`, made if missing (OSError where we may not)."""
    folder = own / FOLDER
    with contextlib.suppress(FileExistsError):
        folder.mkdir()
    if not os.access(folder, os.W_OK):
        raise PermissionError(13, f"{folder} is not writable")
    return folder


def _mounts() -> dict[str, Path]:
    """Mount points of the cgroup hierarchies: "cgroup2", and each v1 controller by name."""
    found: dict[str, Path] = {}
    for line in Path("/proc/mounts").read_text().splitlines():
        _, where, kind, options, *_ = line.split()
        if kind == "cgroup2":
            found.setdefault("cgroup2", Path(where))
        elif kind == "cgroup":
            for option in options.split(","):
                found.setdefault(option, Path(where))
    return found


def _own_paths() -> dict[str, str]:
    """Our own cgroup per controller ("" for v2), from /proc/self/cgroup."""
    found: dict[str, str] = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for name in controllers.split(",") if controllers else [""]:
            found[name] = path
    return found


class Group:
    """One sandbox's cgroup, made with its limits; the sandbox's first process joins it before exec."""

    def __init__(self, where: Parents, name: str, memory_bytes: int, tasks: int) -> None:
        self.files = where.files
        self.memory = where.memory / name  # the same folder as `pids` in v2
        self.pids = where.pids / name
        self.folders = [folder / name for folder in where.folders]
        for folder in self.folders:
            folder.mkdir(exist_ok=True)
        try:
            self._write(self.memory / self.files.memory_max, memory_bytes)
            if self.files.swap_max is not None:  # memory pushed to swap is memory all the same
                with contextlib.suppress(OSError):
                    self._write(self.memory / self.files.swap_max, 0)
            self._write(self.pids / "pids.max", tasks)
        except OSError:
            self.remove()
            raise

    @staticmethod
    def _write(path: Path, value: int) -> None:
        path.write_text(str(value))

    def join(self) -> None:
        """Move the calling process into the group (in the child, before exec: all it starts is in it)."""
        for folder in self.folders:
            with open(folder / "cgroup.procs", "w") as procs:
                procs.write("0")

    def memory_peak(self) -> int | None:
        return _read_number(self.memory / self.files.memory_peak)

    def oom_killed(self) -> bool:
        """The kernel killed a process of the group for going over memory.max."""
        file, key = self.files.oom_kills
        return (_read_key(self.memory / file, key) or 0) > 0

    def tasks_refused(self) -> bool:
        """A fork or a new thread of the group failed at pids.max."""
        file, key = self.files.tasks_refused
        return (_read_key(self.pids / file, key) or 0) > 0

    def remove(self) -> None:
        """Kill whatever is left in the group, and remove it."""
        for folder in self.folders:
            _remove(folder)


def _read_number(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _read_key(path: Path, key: str) -> int | None:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        name, _, value = line.partition(" ")
        if name == key and value.strip().isdigit():
            return int(value)
    return None


def _remove(folder: Path) -> None:
    for _ in range(REMOVE_TRIES):
        try:
            pids = [int(pid) for pid in (folder / "cgroup.procs").read_text().split()]
        except FileNotFoundError:
            return
        except (OSError, ValueError):
            pids = []
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        try:
            folder.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:  # EBUSY: its processes are still exiting
            time.sleep(REMOVE_WAIT_SECONDS)


def make_group(what: str, memory_bytes: int, tasks: int) -> Group | str:
    """A group for one sandbox of this supervisor, limited to `memory_bytes` and `tasks` (processes
    and threads); or why there is none."""
    found = parents()
    if isinstance(found, str):
        return found
    try:
        return Group(found, f"{os.getpid()}-{what}", memory_bytes, tasks)
    except OSError as error:
        return f"cannot make a cgroup in {found.memory}: {error.strerror or error}"


def remove_stale() -> None:
    """Remove the groups of supervisors that are gone (their names start with the supervisor's pid)."""
    found = parents()
    if isinstance(found, str):
        return
    for parent in found.folders:
        with contextlib.suppress(OSError):
            for folder in parent.iterdir():
                owner = folder.name.partition("-")[0]
                if folder.is_dir() and owner.isdigit() and not _alive(int(owner)):
                    _remove(folder)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
