"""GPU and host status: NVML faked at the nvidia-ml-py boundary only, and the real call path where a GPU exists."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pynvml
import pytest

from autoresearch_mcp.sandbox import gpus

MIB = 1024 * 1024


def _real_nvml_works() -> bool:
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return False
    try:
        return pynvml.nvmlDeviceGetCount() > 0
    finally:
        pynvml.nvmlShutdown()


class FakeNvml:
    """Two GPUs as nvidia-ml-py would report them; the second cannot read its power draw."""

    def __init__(self, processes: dict[int, list[int]]):
        self.processes = processes  # GPU index -> pids
        self.initialised = 0

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        for name in (
            "nvmlInit",
            "nvmlShutdown",
            "nvmlDeviceGetCount",
            "nvmlDeviceGetHandleByIndex",
            "nvmlDeviceGetName",
            "nvmlDeviceGetUUID",
            "nvmlDeviceGetMemoryInfo",
            "nvmlDeviceGetUtilizationRates",
            "nvmlDeviceGetTemperature",
            "nvmlDeviceGetPowerUsage",
            "nvmlDeviceGetEnforcedPowerLimit",
            "nvmlDeviceGetComputeRunningProcesses",
            "nvmlSystemGetDriverVersion",
        ):
            monkeypatch.setattr(pynvml, name, getattr(self, name))

    def nvmlInit(self) -> None:
        self.initialised += 1

    def nvmlShutdown(self) -> None:
        self.initialised -= 1

    def nvmlDeviceGetCount(self) -> int:
        return 2

    def nvmlDeviceGetHandleByIndex(self, index: int) -> SimpleNamespace:
        assert self.initialised == 1, "queried outside nvmlInit/nvmlShutdown"
        return SimpleNamespace(index=index)

    def nvmlDeviceGetName(self, handle: SimpleNamespace) -> str:
        return ["NVIDIA H100 80GB HBM3", "NVIDIA GeForce RTX 4090"][handle.index]

    def nvmlDeviceGetUUID(self, handle: SimpleNamespace) -> str:
        return f"GPU-0000-{handle.index}"

    def nvmlDeviceGetMemoryInfo(self, handle: SimpleNamespace) -> SimpleNamespace:
        return SimpleNamespace(used=(1 + handle.index) * 1024 * MIB, total=80 * 1024 * MIB, free=0)

    def nvmlDeviceGetUtilizationRates(self, handle: SimpleNamespace) -> SimpleNamespace:
        return SimpleNamespace(gpu=[97, 3][handle.index], memory=40)

    def nvmlDeviceGetTemperature(self, handle: SimpleNamespace, sensor: int) -> int:
        assert sensor == pynvml.NVML_TEMPERATURE_GPU
        return 60 + handle.index

    def nvmlDeviceGetPowerUsage(self, handle: SimpleNamespace) -> int:
        if handle.index == 1:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return 650_000  # milliwatts

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: SimpleNamespace) -> int:
        return 700_000

    def nvmlDeviceGetComputeRunningProcesses(self, handle: SimpleNamespace) -> list[SimpleNamespace]:
        return [SimpleNamespace(pid=pid, usedGpuMemory=512 * MIB) for pid in self.processes.get(handle.index, [])]

    def nvmlSystemGetDriverVersion(self) -> str:
        return "550.54.15"


def test_two_gpus_with_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeNvml({0: [os.getpid()]})
    fake.install(monkeypatch)

    report = gpus.query_gpus()

    assert report.available and report.reason is None and report.driver_version == "550.54.15"
    first, second = report.gpus
    assert (first.index, first.name, first.utilization_percent, first.temperature_c) == (
        0,
        "NVIDIA H100 80GB HBM3",
        97,
        60,
    )
    assert (first.memory_used_mb, first.memory_total_mb) == (1024, 80 * 1024)
    assert (first.power_w, first.power_limit_w) == (650, 700)
    assert [(p.pid, p.gpu_memory_mb) for p in first.processes] == [(os.getpid(), 512)]
    assert first.processes[0].name  # psutil found this very process
    assert second.name == "NVIDIA GeForce RTX 4090" and second.processes == []
    assert second.power_w is None, "a sensor the card does not support reads as None, not an error"
    assert fake.initialised == 0, "NVML is shut down after each query"
    assert gpus.visible_gpu_count() == 2


def test_a_hung_driver_costs_one_timeout_not_a_hung_call(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeNvml({})
    fake.install(monkeypatch)
    answers = threading.Event()
    calls = []

    def hung_init() -> None:
        calls.append(1)
        answers.wait(30)  # a driver that does not answer, until the test lets it
        fake.nvmlInit()

    monkeypatch.setattr(pynvml, "nvmlInit", hung_init)
    started = time.monotonic()
    first = gpus.query_gpus(timeout=0.2)
    assert not first.available and "NVML did not answer within 0.2 s" in first.reason
    assert "nvidia-smi" in first.reason
    second = gpus.query_gpus(timeout=0.2)
    assert second.reason == first.reason and len(calls) == 1, "the second call waits on the same query"
    assert time.monotonic() - started < 10
    answers.set()
    assert gpus.query_gpus(timeout=10).available, "once the driver answers, so does the query"


def test_process_that_ended_has_no_name(monkeypatch: pytest.MonkeyPatch) -> None:
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    FakeNvml({1: [ended.pid]}).install(monkeypatch)

    (process,) = gpus.query_gpus().gpus[1].processes

    assert process.pid == ended.pid and process.name is None


@pytest.mark.parametrize(
    ("error", "cause"),
    [
        (pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, "not installed"),
        (pynvml.NVML_ERROR_DRIVER_NOT_LOADED, "not loaded"),
        (pynvml.NVML_ERROR_UNKNOWN, "NVML failed"),
    ],
)
def test_no_driver_is_an_answer_not_an_error(monkeypatch: pytest.MonkeyPatch, error: int, cause: str) -> None:
    def init_fails() -> None:
        raise pynvml.NVMLError(error)  # nvidia-ml-py turns the code into its subclass

    monkeypatch.setattr(pynvml, "nvmlInit", init_fails)

    report = gpus.query_gpus()

    assert not report.available and report.gpus == [] and report.driver_version is None
    assert report.reason.startswith("no NVIDIA GPU") and cause in report.reason
    assert gpus.visible_gpu_count() == 0


def test_driver_without_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeNvml({})
    fake.install(monkeypatch)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetCount", lambda: 0)

    report = gpus.query_gpus()

    assert not report.available and "no GPUs" in report.reason


def test_host_status(tmp_path: Path) -> None:
    host = gpus.query_host(tmp_path)

    assert host.cpu_count and host.cpu_count >= 1
    assert 0 < host.ram_available_gb <= host.ram_total_gb
    assert 0 < host.disk_free_gb <= host.disk_total_gb and host.disk_path == str(tmp_path)


@pytest.mark.skipif(not _real_nvml_works(), reason="needs an NVIDIA GPU and driver")
def test_real_nvml() -> None:
    report = gpus.query_gpus()

    assert report.available and report.driver_version
    assert len(report.gpus) == gpus.visible_gpu_count() >= 1
    for gpu in report.gpus:
        assert gpu.name and gpu.memory_total_mb and gpu.memory_total_mb > 0
        assert gpu.memory_used_mb is not None and 0 <= gpu.memory_used_mb <= gpu.memory_total_mb
