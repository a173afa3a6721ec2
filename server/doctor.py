"""`autoresearch-mcp doctor`: is this machine ready? One line per check, with what to do.

torch is probed in a subprocess: the server process never imports it, and doctor should
see exactly what a training run will see.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from autoresearch_mcp.nanochat.errors import UserError

Status = Literal["ok", "warn", "FAIL"]
TORCH_INSTALL_HINT = "pip install torch==2.13.0 (CPU), or the CUDA build for your GPU from https://pytorch.org"
TORCH_PROBE = """
import json, torch
cuda = torch.cuda.is_available()
print(json.dumps({
    "version": torch.__version__,
    "built_cuda": torch.version.cuda,
    "cuda": cuda,
    "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
    "mps": bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()),
}))
"""
TORCH_PROBE_TIMEOUT_S = 120


@dataclass(frozen=True)
class Finding:
    check: str
    status: Status  # FAIL only for what training cannot do without
    detail: str


def run_checks(workspace_root: Path, *, created_on_first_use: bool) -> list[Finding]:
    """Every check, in a fixed order; none of them raises.

    `created_on_first_use`: `serve` would create a missing `workspace_root` (the per-user default).
    """
    torch_info, torch_error = _probe_torch()
    gpu_names, nvml_finding = _check_nvml()
    return [
        _check_python(),
        _torch_finding(torch_info, torch_error),
        _cuda_finding(torch_info, gpu_names),
        nvml_finding,
        _check_git(),
        _check_workspace(workspace_root, created_on_first_use),
        _check_isolation(workspace_root),
        _check_limits(),
        _check_data(),
    ]


def render(findings: list[Finding]) -> str:
    width = max(len(f.check) for f in findings)
    return "\n".join(f"{f.status:<5} {f.check:<{width}}  {f.detail}" for f in findings)


def _check_python() -> Finding:
    version = ".".join(map(str, sys.version_info[:3]))
    return Finding("python", "ok", f"{version} ({sys.executable})")


def _probe_torch() -> tuple[dict | None, str | None]:
    try:
        probe = subprocess.run(
            [sys.executable, "-c", TORCH_PROBE], capture_output=True, text=True, timeout=TORCH_PROBE_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        return None, f"`import torch` took over {TORCH_PROBE_TIMEOUT_S} s; check the installation"
    if probe.returncode != 0:
        last_line = (probe.stderr.strip().splitlines() or ["unknown error"])[-1]
        return None, last_line
    return json.loads(probe.stdout.strip().splitlines()[-1]), None


def _torch_finding(info: dict | None, error: str | None) -> Finding:
    if info is None:
        return Finding("torch", "FAIL", f"cannot import torch ({error}); install it: {TORCH_INSTALL_HINT}")
    build = f"CUDA {info['built_cuda']} build" if info["built_cuda"] else "CPU build"
    return Finding("torch", "ok", f"{info['version']} ({build})")


def _cuda_finding(info: dict | None, gpu_names: list[str]) -> Finding:
    if info is None:
        return Finding("cuda", "warn", "unknown until torch imports")
    if info["cuda"]:
        return Finding("cuda", "ok", f"{len(info['devices'])} device(s): {', '.join(info['devices'])}")
    if gpu_names and not info["built_cuda"]:
        return Finding(
            "cuda",
            "warn",
            f"an NVIDIA GPU is present ({gpu_names[0]}) but torch is a CPU build; install a CUDA build: {TORCH_INSTALL_HINT}",
        )
    if gpu_names:
        return Finding(
            "cuda",
            "warn",
            f"torch was built for CUDA {info['built_cuda']} but sees no GPU; check the NVIDIA driver version against it",
        )
    fallback = "Apple MPS" if info["mps"] else "the CPU"
    return Finding(
        "cuda",
        "ok",
        f"no CUDA device; runs use {fallback} with the cpu profile (fine for trying it out, slow for research)",
    )


def _check_nvml() -> tuple[list[str], Finding]:
    try:
        import pynvml
    except ImportError:
        return [], Finding("nvml", "warn", "nvidia-ml-py is missing; reinstall autoresearch-mcp (it is a dependency)")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return [], Finding("nvml", "ok", f"no NVIDIA driver ({exc}); gpu_status reports CPU, memory and disk only")
    try:
        driver = pynvml.nvmlSystemGetDriverVersion()
        count = pynvml.nvmlDeviceGetCount()
        names = [_text(pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(i))) for i in range(count)]
    finally:
        pynvml.nvmlShutdown()
    return names, Finding("nvml", "ok", f"driver {_text(driver)}, {count} GPU(s)")


def _check_git() -> Finding:
    executable = shutil.which("git")
    if executable is None:
        return Finding(
            "git",
            "FAIL",
            "git is not on PATH; install it (e.g. `apt install git`, `brew install git`): every experiment is a git commit",
        )
    version = subprocess.run([executable, "--version"], capture_output=True, text=True).stdout.strip()
    return Finding("git", "ok", version.removeprefix("git version "))


def _check_isolation(root: Path) -> Finding:
    """The sandbox runs get here, or why there is none; and whether this workspace opted out."""
    from autoresearch_mcp.sandbox.config import WorkspaceConfig
    from autoresearch_mcp.sandbox.isolation import NONE, availability
    from autoresearch_mcp.sandbox.workspace import STATE_DIR

    try:
        opted_out = WorkspaceConfig.load(root / STATE_DIR / "config.toml").isolation == NONE
    except UserError:
        opted_out = False  # the workspace check reports the broken config
    available = availability()
    if opted_out:
        return Finding(
            "isolation",
            "warn",
            f'none: this workspace opted out (isolation = "none"), so train.py can reach everything you can and every '
            f"run is recorded as unisolated; here the sandbox would be {available.describe()}",
        )
    if not available.available:
        return Finding("isolation", "FAIL", f"{available.describe()}; launches are refused. Fix: {available.fix}")
    return Finding("isolation", "ok", available.describe())


def _check_limits() -> Finding:
    """Who enforces a run's memory and process limits: the kernel (a cgroup), or the watchdog alone."""
    from autoresearch_mcp.sandbox import cgroups

    found = cgroups.parents()
    if isinstance(found, str):
        return Finding(
            "limits",
            "warn",
            f"enforced by the supervisor's watchdog only (no cgroup: {found}): it counts resident memory, the "
            "sandbox's /tmp and /dev/shm, memfds, processes and threads, but not every kind of shared memory. "
            "Fix: run the server as root, or in a cgroup v2 subtree with the memory and pids controllers delegated",
        )
    return Finding("limits", "ok", f"memory and processes enforced by the kernel: {found.describe()}")


def _check_workspace(root: Path, created_on_first_use: bool) -> Finding:
    from autoresearch_mcp.sandbox.history import open_history
    from autoresearch_mcp.sandbox.workspace import STATE_DIR, Workspace

    if not root.exists() and created_on_first_use:
        return Finding(
            "workspace",
            "ok",
            f"{root} does not exist yet; `serve` creates it on first use (or run `autoresearch-mcp init {root}`)",
        )
    if not root.exists():
        return Finding("workspace", "warn", f"no workspace at {root}; create one with `autoresearch-mcp init {root}`")
    if not root.is_dir():
        return Finding("workspace", "FAIL", f"{root} is a file, not a workspace folder")
    if not (root / STATE_DIR).is_dir():
        return Finding(
            "workspace",
            "FAIL",
            f"{root} exists but is not a workspace (no {STATE_DIR}/); pass --workspace with an empty or new directory",
        )
    try:
        workspace = Workspace(root)
        open_history(workspace.root)
    except UserError as exc:
        return Finding("workspace", "FAIL", str(exc))
    missing = [name for name in workspace.config.editable if not (workspace.root / name).is_file()]
    if missing:
        return Finding(
            "workspace",
            "warn",
            f"{workspace.root}: editable file(s) missing: {', '.join(missing)}; restore them with the reset_workspace tool",
        )
    return Finding(
        "workspace",
        "ok",
        f"{workspace.root} (profile {workspace.config.profile}, editable: {workspace.editable_list()})",
    )


def _check_data() -> Finding:
    from autoresearch_mcp.nanochat.download import climbmix_dir
    from autoresearch_mcp.nanochat.profiles import default_data_dir

    cache = default_data_dir()
    prepared = list(cache.glob("*/manifest.json"))
    shards = list(climbmix_dir(cache).glob("shard_*.parquet"))
    if not prepared and not shards:
        return Finding(
            "data",
            "ok",
            f"nothing prepared in {cache} yet; the cpu profile builds its corpus offline on the first run, "
            "GPU profiles need `autoresearch-mcp prepare` first",
        )
    size_mb = sum(p.stat().st_size for p in cache.rglob("*") if p.is_file()) / 1e6
    return Finding(
        "data",
        "ok",
        f"{cache}: {len(prepared)} prepared data set(s), {len(shards)} ClimbMix shard(s), {size_mb:,.0f} MB",
    )


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
