"""gpu_status: what the GPUs are doing, which run holds each, and the host's CPU, RAM and disk."""

from __future__ import annotations

import os

import psutil
from pydantic import BaseModel, Field

from autoresearch_mcp.sandbox.cluster import ClusterReport
from autoresearch_mcp.sandbox.engine import ExperimentEngine
from autoresearch_mcp.sandbox.gpus import GpuInfo, GpuProcess, HostInfo, query_gpus, query_host
from autoresearch_mcp.sandbox.runstore import RunRecord
from autoresearch_mcp.tools.text import table


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
    cluster: ClusterReport | None = Field(
        default=None, description="the Ray cluster runs go to ([cluster] in the config): its nodes, GPUs, placements"
    )

    def text(self) -> str:
        driver = f" (driver {self.driver_version})" if self.driver_version else ""
        lines = _cluster_lines(self.cluster) if self.cluster else []
        lines.append(("this machine: " if self.cluster else "") + self.message + driver)
        if self.gpus:
            rows = [["gpu", "name", "util", "memory GB", "temp", "power W", "run"]]
            rows += [_gpu_row(gpu) for gpu in self.gpus]
            lines.append(table(rows, right=[2, 3, 4, 5]))
            for gpu in self.gpus:
                lines += [f"  gpu {gpu.index}: {_process_line(process)}" for process in gpu.processes]
        host = self.host
        load = f" (load {' '.join(f'{x:.1f}' for x in host.load_average)})" if host.load_average else ""
        lines.append(
            f"host: {host.cpu_count or '?'} CPUs at {host.cpu_percent:.0f}%{load}; RAM {host.ram_used_gb:.1f} of "
            f"{host.ram_total_gb:.1f} GB used ({host.ram_available_gb:.1f} available); disk {host.disk_free_gb:.1f} of "
            f"{host.disk_total_gb:.1f} GB free at {host.disk_path}"
        )
        if self.running:
            where = self.cluster.placements if self.cluster else {}
            lines.append(
                "running: "
                + ", ".join(
                    f"{run} on {device}" + (f" ({where[run]})" if run in where else "")
                    for device, run in self.running.items()
                )
            )
        return "\n".join(lines)


def _cluster_lines(cluster: ClusterReport) -> list[str]:
    if not cluster.reachable:
        return [f"Ray cluster at {cluster.address}: not answering ({cluster.reason})"]
    alive = [node for node in cluster.nodes if node.alive]
    busy = sum(1 for gpu in cluster.gpus if gpu.run_id)
    cpus = sum(node.cpus for node in alive)
    lines = [
        f"Ray cluster at {cluster.address}: {len(alive)} node(s) alive, {cpus:g} CPUs, {len(cluster.gpus)} GPU(s), "
        f"{busy} running an experiment"
    ]
    if cluster.gpus:
        names = {node.ip: node.name if node.name == node.ip else f"{node.name} ({node.ip})" for node in cluster.nodes}
        rows = [["node", "gpu", "run"]]
        rows += [[names.get(gpu.node, gpu.node), str(gpu.index), gpu.run_id or ""] for gpu in cluster.gpus]
        lines.append(table(rows, right=[1]))
    return lines


def gpu_status(engine: ExperimentEngine) -> MachineStatus:
    """Every NVIDIA GPU's state and processes, each tied to its experiment, and the host's resources."""
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
        cluster=engine.cluster.report(running) if engine.cluster is not None else None,
    )


def _gpu_row(gpu: GpuStatus) -> list[str]:
    def amount(value: float | None, scale: float = 1.0) -> str:
        return "?" if value is None else f"{value / scale:.1f}"

    return [
        str(gpu.index),
        gpu.name,
        "?" if gpu.utilization_percent is None else f"{gpu.utilization_percent}%",
        f"{amount(gpu.memory_used_mb, 1024)}/{amount(gpu.memory_total_mb, 1024)}",
        "?" if gpu.temperature_c is None else f"{gpu.temperature_c}C",
        f"{amount(gpu.power_w)}/{amount(gpu.power_limit_w)}",
        gpu.run_id or "",
    ]


def _process_line(process: GpuProcessStatus) -> str:
    memory = f", {process.gpu_memory_mb / 1024:.1f} GB" if process.gpu_memory_mb is not None else ""
    run = f", {process.run_id}" if process.run_id else ""
    return f"pid {process.pid} {process.name or '(another user)'}{memory}{run}"


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
