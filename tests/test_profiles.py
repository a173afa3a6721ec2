import subprocess
import sys

import pynvml
import pytest

from autoresearch_mcp.nanochat import profiles
from autoresearch_mcp.nanochat.errors import UserError
from autoresearch_mcp.nanochat.profiles import PROFILES, default_data_dir, peak_bf16_flops, resolve_profile


def test_profiles_fix_what_makes_runs_comparable():
    h100, gpu, cpu = PROFILES["h100"], PROFILES["gpu"], PROFILES["cpu"]
    assert (h100.seq_len, h100.vocab_size, h100.budget_seconds, h100.eval_tokens) == (2048, 8192, 300, 40 * 524288)
    assert h100.data_source == gpu.data_source == "climbmix"
    assert (cpu.budget_seconds, cpu.data_source) == (60, "builtin")
    assert cpu.seq_len < gpu.seq_len <= h100.seq_len and cpu.vocab_size < h100.vocab_size
    for profile in PROFILES.values():
        assert profile.eval_tokens % profile.seq_len == 0  # whole rows, whatever the eval batch


def test_named_profiles_resolve_and_unknown_names_are_refused():
    assert resolve_profile("cpu") is PROFILES["cpu"]
    with pytest.raises(UserError, match="unknown profile 'tpu'.*auto, h100, gpu, cpu"):
        resolve_profile("tpu")


class FakeNvml:
    """NVML as a machine with the given GPUs (or no driver at all) would answer."""

    def __init__(self, monkeypatch, names, driver=True):
        self.names = names
        monkeypatch.setattr(pynvml, "nvmlInit", self.init if driver else self.no_driver)
        monkeypatch.setattr(pynvml, "nvmlShutdown", lambda: None)
        monkeypatch.setattr(pynvml, "nvmlDeviceGetCount", lambda: len(names))
        monkeypatch.setattr(pynvml, "nvmlDeviceGetHandleByIndex", lambda i: i)
        monkeypatch.setattr(pynvml, "nvmlDeviceGetName", lambda i: names[i])

    def init(self):
        pass

    def no_driver(self):
        raise pynvml.NVMLError(pynvml.NVML_ERROR_DRIVER_NOT_LOADED)


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        (["NVIDIA H100 80GB HBM3"], "h100"),
        ([b"NVIDIA H200", b"NVIDIA H200"], "h100"),  # older nvidia-ml-py returns bytes
        (["NVIDIA GeForce RTX 4090"], "gpu"),
        (["NVIDIA A100-SXM4-40GB"], "gpu"),
        ([], "cpu"),
    ],
)
def test_auto_picks_the_profile_by_gpu(monkeypatch, names, expected):
    FakeNvml(monkeypatch, names)
    assert resolve_profile("auto").name == expected


def test_auto_without_an_nvidia_driver_is_cpu(monkeypatch):
    FakeNvml(monkeypatch, [], driver=False)
    assert profiles.nvidia_gpu_names() == []
    assert resolve_profile("auto") is PROFILES["cpu"]


@pytest.mark.parametrize(
    ("name", "flops"),
    [
        ("NVIDIA H100 80GB HBM3", 989e12),
        ("NVIDIA H100 PCIe", 756e12),
        ("NVIDIA A100-SXM4-80GB", 312e12),
        ("NVIDIA L40S", 362e12),
        ("NVIDIA L4", 121e12),
        ("Tesla T4", None),
        ("cpu", None),
    ],
)
def test_peak_flops_is_known_for_published_gpus_only(name, flops):
    assert peak_bf16_flops(name) == flops


def test_data_dir_is_per_user_and_overridable(monkeypatch, tmp_path):
    monkeypatch.delenv("AUTORESEARCH_MCP_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_data_dir() == tmp_path / "xdg" / "autoresearch-mcp"
    monkeypatch.setenv("AUTORESEARCH_MCP_CACHE", str(tmp_path / "mine"))
    assert default_data_dir() == tmp_path / "mine"


def test_server_side_modules_do_not_import_torch():
    modules = ["profiles", "corpus", "tokenizer", "download", "data"]
    code = (
        "".join(f"import autoresearch_mcp.nanochat.{m}\n" for m in modules)
        + "import sys\nprint('torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "False"
