"""gpu_status: what the GPUs are doing, which run holds each, and the host's CPU, RAM and disk."""

from __future__ import annotations

import os

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
            processes=[GpuProcessStatus(**p.model_dump(), run_id=_run_of_process(p.pid, running)) for p in gpu.processes],
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
    """Each run is started as the leader of its own process group; its children share the group."""
    try:
        group = os.getpgid(pid)
    except (ProcessLookupError, PermissionError):
        return None
    return next((record.id for record in running if record.pid == group), None)
