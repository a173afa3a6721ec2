"""What the machine has: NVIDIA GPUs through NVML (nvidia-ml-py), CPU, memory and disk through psutil.

Nothing here raises because a GPU, a driver or a sensor is missing: a machine without NVIDIA
GPUs gets `GpuReport(available=False, reason=...)`, and a sensor a card does not support
reads as None. NVML is initialised per query and shut down again, so a driver that appears
or disappears while the server runs is seen on the next call.
"""

from __future__ import annotations

import concurrent.futures
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TypeVar

import psutil
import pynvml
from pydantic import BaseModel

T = TypeVar("T")
MIB = 1024 * 1024


class GpuProcess(BaseModel):
    pid: int
    name: str | None  # None when the process is gone or belongs to another user
    gpu_memory_mb: float | None


class GpuInfo(BaseModel):
    index: int  # NVML index (PCI bus order); CUDA_VISIBLE_DEVICES=<index> pins a run to it
    name: str
    uuid: str | None
    utilization_percent: int | None
    memory_used_mb: float | None
    memory_total_mb: float | None
    temperature_c: int | None
    power_w: float | None
    power_limit_w: float | None
    processes: list[GpuProcess]


class GpuReport(BaseModel):
    available: bool
    reason: str | None  # why there is no GPU list, when `available` is False
    driver_version: str | None
    gpus: list[GpuInfo]


class HostInfo(BaseModel):
    cpu_count: int | None
    cpu_percent: float
    load_average: tuple[float, float, float] | None
    ram_used_gb: float
    ram_total_gb: float
    ram_available_gb: float
    disk_path: str
    disk_free_gb: float
    disk_total_gb: float


NVML_TIMEOUT_SECONDS = 10.0
_query_lock = threading.Lock()
_last_query: Future[GpuReport] | None = None  # the newest query, which may not have come back


def query_gpus(timeout: float = NVML_TIMEOUT_SECONDS) -> GpuReport:
    """Every NVIDIA GPU NVML sees, or a structured reason why there are none.

    NVML runs on a thread of its own: a hung driver makes this answer "no GPU" after
    `timeout` seconds instead of blocking the caller, and later calls wait on that same
    query rather than piling up new ones behind it.
    """
    global _last_query
    with _query_lock:
        if _last_query is None or _last_query.done():
            _last_query = _on_own_thread(_query_nvml)
        query = _last_query
    try:
        return query.result(timeout)
    except concurrent.futures.TimeoutError:
        reason = f"NVML did not answer within {timeout:g} s (a hung NVIDIA driver?); `nvidia-smi` shows whether the driver responds"
        return GpuReport(available=False, reason=reason, driver_version=None, gpus=[])


def _on_own_thread(call: Callable[[], T]) -> Future[T]:
    """`call()` on a daemon thread (one that never answers must not hold up the process's exit)."""
    future: Future[T] = Future()

    def run() -> None:
        try:
            future.set_result(call())
        except BaseException as error:
            future.set_exception(error)

    threading.Thread(target=run, name="autoresearch-nvml", daemon=True).start()
    return future


def _query_nvml() -> GpuReport:
    try:
        with _nvml():
            gpus = [_gpu_info(index) for index in range(pynvml.nvmlDeviceGetCount())]
            driver = _optional(pynvml.nvmlSystemGetDriverVersion)
    except pynvml.NVMLError as error:
        return GpuReport(available=False, reason=_no_gpu_reason(error), driver_version=None, gpus=[])
    if not gpus:
        return GpuReport(
            available=False, reason="the NVIDIA driver is loaded but reports no GPUs", driver_version=driver, gpus=[]
        )
    return GpuReport(available=True, reason=None, driver_version=driver, gpus=gpus)


def visible_gpu_count() -> int:
    """How many NVIDIA GPUs NVML sees; 0 without a driver or GPU (the engine then runs on CPU)."""
    try:
        with _nvml():
            return int(pynvml.nvmlDeviceGetCount())
    except pynvml.NVMLError:
        return 0


# The first interval=None reading is always 0.0; take it now so later ones mean something.
psutil.cpu_percent(interval=None)


def query_host(disk_path: Path) -> HostInfo:
    """CPU load, RAM and free disk where the workspace lives."""
    memory = psutil.virtual_memory()
    disk = psutil.disk_usage(os.fspath(disk_path))
    try:
        load = os.getloadavg()
    except (AttributeError, OSError):  # not on every platform
        load = None
    return HostInfo(
        cpu_count=psutil.cpu_count(),
        # Utilization since the previous call (primed at import), so a call never sleeps to sample.
        cpu_percent=psutil.cpu_percent(interval=None),
        load_average=load,
        ram_used_gb=_gb(memory.total - memory.available),
        ram_total_gb=_gb(memory.total),
        ram_available_gb=_gb(memory.available),
        disk_path=os.fspath(disk_path),
        disk_free_gb=_gb(disk.free),
        disk_total_gb=_gb(disk.total),
    )


@contextmanager
def _nvml() -> Iterator[None]:
    pynvml.nvmlInit()
    try:
        yield
    finally:
        with suppress(pynvml.NVMLError):
            pynvml.nvmlShutdown()


def _gpu_info(index: int) -> GpuInfo:
    handle = pynvml.nvmlDeviceGetHandleByIndex(index)
    memory = _optional(pynvml.nvmlDeviceGetMemoryInfo, handle)
    utilization = _optional(pynvml.nvmlDeviceGetUtilizationRates, handle)
    power_mw = _optional(pynvml.nvmlDeviceGetPowerUsage, handle)
    limit_mw = _optional(pynvml.nvmlDeviceGetEnforcedPowerLimit, handle)
    return GpuInfo(
        index=index,
        name=_text(pynvml.nvmlDeviceGetName(handle)) or f"GPU {index}",
        uuid=_text(_optional(pynvml.nvmlDeviceGetUUID, handle)),
        utilization_percent=utilization.gpu if utilization is not None else None,
        memory_used_mb=memory.used / MIB if memory is not None else None,
        memory_total_mb=memory.total / MIB if memory is not None else None,
        temperature_c=_optional(pynvml.nvmlDeviceGetTemperature, handle, pynvml.NVML_TEMPERATURE_GPU),
        power_w=power_mw / 1000 if power_mw is not None else None,
        power_limit_w=limit_mw / 1000 if limit_mw is not None else None,
        processes=_gpu_processes(handle),
    )


def _gpu_processes(handle: object) -> list[GpuProcess]:
    running = _optional(pynvml.nvmlDeviceGetComputeRunningProcesses, handle) or []
    return [
        GpuProcess(
            pid=process.pid,
            name=_process_name(process.pid),
            # None where NVML may not see per-process memory (e.g. another user's process).
            gpu_memory_mb=process.usedGpuMemory / MIB if process.usedGpuMemory is not None else None,
        )
        for process in running
    ]


def _process_name(pid: int) -> str | None:
    try:
        return psutil.Process(pid).name()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


def _optional(query: Callable[..., T], *args: object) -> T | None:
    """A sensor reading, or None where this GPU or driver does not provide it."""
    try:
        return query(*args)
    except pynvml.NVMLError:
        return None


def _no_gpu_reason(error: pynvml.NVMLError) -> str:
    if isinstance(error, pynvml.NVMLError_LibraryNotFound):
        return "no NVIDIA GPU: the NVIDIA driver library (libnvidia-ml) is not installed; runs use the CPU"
    if isinstance(error, pynvml.NVMLError_DriverNotLoaded):
        return "no NVIDIA GPU: the NVIDIA driver is not loaded; runs use the CPU"
    return f"no NVIDIA GPU usable: NVML failed ({error}); runs use the CPU"


def _text(value: str | bytes | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def _gb(n_bytes: float) -> float:
    return round(n_bytes / 1024**3, 2)
