"""gpu_status: what the GPUs are doing, which run holds each, and the host's CPU, RAM and disk."""

from __future__ import annotations

import os

import psutil
from pydantic import BaseModel, Field

from autoresearch_mcp.sandbox.engine import ExperimentEngine
from autoresearch_mcp.sandbox.gpus import GpuInfo, GpuProcess, HostInfo, query_gpus, query_host
from autoresearch_mcp.sandbox.runstore import RunRecord


class GpuProcessStatus(GpuProcess):
    run_id: str | None = Field(description="the experiment this process belongs to, if any")


class GpuStatus(GpuInfo):
    processes: list[GpuProcessStatus]  # type: ignore[assignment]  # narrowed: each process names its run
    run_id: str | None = Field(description="the running experiment assigned to this GPU, if any")


class MachineStatus(BaseModel):
    nvidia_gpu: bool
    message: str
    driver_version: str | None
    gpus: list[GpuStatus]
    host: HostInfo
    running: dict[str, str] = Field(description="device -> run id, for every running experiment (including on CPU)")


def gpu_status(engine: ExperimentEngine) -> MachineStatus:
    """Per-GPU utilization, memory, temperature, power and processes (with the experiment each
    belongs to), plus CPU, RAM and disk. On a machine without NVIDIA GPUs, says so and why."""
    report = query_gpus()
    running = engine.store.list(["running"])
    by_device = {record.device: record.id for record in running if record.device}
    gpus = [
        GpuStatus(
            **gpu.model_dump(exclude={"processes"}),
            processes=[
                GpuProcessStatus(**p.model_dump(), run_id=_run_of_process(p.pid, running)) for p in gpu.processes
            ],
            run_id=by_device.get(f"cuda:{gpu.index}"),
        )
        for gpu in report.gpus
    ]
    if report.available:
        busy = sum(1 for gpu in gpus if gpu.run_id)
        message = f"{len(gpus)} NVIDIA GPU(s), {busy} running an experiment"
    else:
        message = report.reason or "no NVIDIA GPU"
    return MachineStatus(
        nvidia_gpu=report.available,
        message=message,
        driver_version=report.driver_version,
        gpus=gpus,
        host=query_host(engine.workspace.root),
        running=by_device,
    )


def _run_of_process(pid: int, running: list[RunRecord]) -> str | None:
    """The run whose harness process `pid` descends from, or whose process group it is in
    (a descendant whose parent died has no ancestry left, but keeps its group)."""
    leaders = {record.pid: record.id for record in running if record.pid is not None}
    try:
        process = psutil.Process(pid)
        lineage = [process.pid, *(parent.pid for parent in process.parents())]
        group = os.getpgid(pid)
    except (psutil.Error, ProcessLookupError, PermissionError):
        return None
    return next((leaders[p] for p in lineage if p in leaders), leaders.get(group))
