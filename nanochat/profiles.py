"""Profiles: what makes runs comparable on a kind of hardware.

A profile fixes sequence length, vocabulary, evaluation size, time budget and data, so
that two experiments under the same profile measure the same thing. The template
train.py picks model size and batch for the profile; the agent may change those.

This module is imported by the MCP server process, which never imports torch: hardware
is detected through NVML (nvidia-ml-py) only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from autoresearch_mcp.nanochat.errors import UserError


@dataclass(frozen=True)
class Profile:
    name: str
    seq_len: int
    vocab_size: int  # including the BOS special token
    budget_seconds: float
    eval_tokens: int  # validation tokens the trusted evaluation scores
    # "builtin" (offline stdlib corpus), "climbmix" (hub shards fetched by
    # `autoresearch-mcp prepare`), or a path to local parquet/jsonl/txt files.
    data_source: str
    tokenizer_train_chars: int  # text the BPE trainer sees, at most
    climbmix_train_shards: int = 0  # how many ClimbMix shards `prepare` downloads for training
    max_corpus_chars: int | None = None  # cap on the text used at all; for tests and smoke runs
    # The smallest noise floor a verdict uses: the seed-to-seed standard deviation of val_bpb that the
    # template train.py measured at the default budget. A floor measured on the agent's code counts for
    # no less: code that pins its own seed measures 0, and keeps would then gate on seed luck.
    min_noise_std: float = 0.0
    description: str = ""


PROFILES: dict[str, Profile] = {
    profile.name: profile
    for profile in (
        Profile(
            name="h100",
            seq_len=2048,
            vocab_size=8192,
            budget_seconds=300.0,
            # As the original (40 x 524288): a 50M-parameter model scores it in well under
            # a minute on one H100 (forward only, about 2e15 FLOP).
            eval_tokens=40 * 524288,
            data_source="climbmix",
            tokenizer_train_chars=1_000_000_000,
            climbmix_train_shards=10,
            # Not measured here yet: the original loop's run-to-run spread on one H100 ("a few 1e-4").
            # Measure: python bench/noise_floor.py --profile h100 --seeds 10 (on the GPU machine).
            min_noise_std=2e-4,
            description="one Hopper-class GPU; comparable to autoresearch (seq 2048, vocab 8192, ClimbMix)",
        ),
        Profile(
            name="gpu",
            seq_len=1024,
            vocab_size=8192,
            budget_seconds=300.0,
            eval_tokens=8 * 524288,
            data_source="climbmix",
            tokenizer_train_chars=1_000_000_000,
            climbmix_train_shards=4,
            # Not measured yet: h100's, doubled (a smaller model, a fifth of the eval tokens).
            # Measure: python bench/noise_floor.py --profile gpu --seeds 10 (on the GPU machine).
            min_noise_std=4e-4,
            description="smaller NVIDIA GPUs (consumer and datacenter cards below Hopper)",
        ),
        Profile(
            name="cpu",
            seq_len=256,
            vocab_size=2048,
            budget_seconds=60.0,
            # 128 rows of 256: a couple of seconds for a small model on two cores.
            eval_tokens=32768,
            data_source="builtin",
            tokenizer_train_chars=20_000_000,
            # The template's spread on a quiet 2-core x86_64 machine: python bench/noise_floor.py --budget 60
            # --seeds 4, twice (8 runs, 198-212 steps in 60 s; bench/RESULTS.md). Under load the spread is far
            # larger (0.17-0.25: 15 to 62 steps); a floor measured then counts for itself. Measured before
            # steps got 1.6x faster (harness.reuse_freed_memory: ~334 steps in 60 s), not again since.
            min_noise_std=0.021,
            description="laptops, CI and Apple MPS machines; offline, on the built-in corpus",
        ),
    )
}

# Tokens per evaluation forward pass, by device type: large enough to keep the device busy, small
# enough that the (rows, seq_len, vocab) fp32 logits fit comfortably.
EVAL_BATCH_TOKENS = {"cuda": 2**17, "mps": 2**14, "cpu": 2**13}


def min_noise_std(profile_name: str) -> float:
    """The smallest noise floor verdicts use for the profile called `profile_name` (0 if unknown)."""
    profile = PROFILES.get(profile_name)
    return profile.min_noise_std if profile else 0.0


def eval_batch_shape(profile: Profile, device_type: str) -> tuple[int, int]:
    """(rows, seq_len) of every batch the evaluator scores on this kind of device.

    The model is exported at exactly this shape (the harness calls this too), so the graph that is
    scored is the graph that is checked. Rows: about EVAL_BATCH_TOKENS, at least 2 (so the causality
    check can change other rows), and dividing eval_tokens where possible, so that exactly the
    profile's eval tokens are scored.
    """
    seq_len = profile.seq_len
    rows = max(2, EVAL_BATCH_TOKENS[device_type] // seq_len)
    divisors = [r for r in range(rows, 1, -1) if profile.eval_tokens % (r * seq_len) == 0]
    return (divisors[0] if divisors else rows), seq_len


# Dense bf16 tensor-core peaks (no sparsity), matched as substrings of the NVML/torch device
# name, most specific first. Only what is published; None for anything else.
_PEAK_BF16_FLOPS = (
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),
    ("H200", 989e12),
    ("H800", 989e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L40", 181e12),
    ("L4", 121e12),
    ("A10", 125e12),
    ("RTX 4090", 165e12),
    ("RTX 3090", 71e12),
)

# GPUs the autoresearch-comparable profile is meant for.
_HOPPER_CLASS = ("H100", "H200", "H800", "GH200", "B100", "B200", "GB200")


def peak_bf16_flops(device_name: str) -> float | None:
    """Peak dense bf16 FLOP/s of a GPU by name (for MFU), or None where not known."""
    for marker, flops in _PEAK_BF16_FLOPS:
        if marker in device_name:
            return flops
    return None


def nvidia_gpu_names() -> list[str]:
    """Names of the NVIDIA GPUs NVML sees; empty without a driver (or without nvidia-ml-py)."""
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return []
    try:
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        names = [pynvml.nvmlDeviceGetName(handle) for handle in handles]
    finally:
        pynvml.nvmlShutdown()
    return [name.decode() if isinstance(name, bytes) else name for name in names]


def profile_for_gpus(gpu_names: list[str]) -> Profile:
    """The profile `auto` means for these NVIDIA GPUs (no GPU, including Apple MPS: `cpu`)."""
    if not gpu_names:
        return PROFILES["cpu"]
    if any(marker in gpu_names[0] for marker in _HOPPER_CLASS):
        return PROFILES["h100"]
    return PROFILES["gpu"]


def resolve_profile(name: str) -> Profile:
    """The profile called `name`; "auto" picks by the hardware NVML reports."""
    if name == "auto":
        return profile_for_gpus(nvidia_gpu_names())
    try:
        return PROFILES[name]
    except KeyError:
        known = ", ".join(["auto", *PROFILES])
        raise UserError(f"unknown profile {name!r}; choose one of: {known}") from None


def default_data_dir() -> Path:
    """Per-user cache for corpora, tokenizers and token shards.

    $AUTORESEARCH_MCP_CACHE if set, else $XDG_CACHE_HOME/autoresearch-mcp, else
    ~/.cache/autoresearch-mcp.
    """
    override = os.environ.get("AUTORESEARCH_MCP_CACHE")
    if override:
        return Path(override).expanduser()
    cache_home = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache_home).expanduser() / "autoresearch-mcp"
