"""The fixed side of training: the one module train.py imports from the harness.

    run = harness.start()                        # context, seeding, device, tokenizer
    batches = run.train_batches(rows)
    while not run.done:
        lr_mult = schedule(run.progress)
        ...forward/backward on next(batches), optimizer step with lr * lr_mult...
        run.log_step(loss, lr_mult, tokens)      # clock, metrics.jsonl, NaN fast-fail
    run.hand_back(model)                         # weights + config for the evaluator

The budget is enforced here: the clock counts wall time from the end of the first few steps
(ten on CUDA, for compilation and warm-up; one elsewhere), `done` turns true when the budget is
spent, and `train_batches` stops yielding then. A loop that ignores both is killed by the
runner once the budget plus an allowance has passed, and the run counts as crashed.

Everything recorded here (steps, tokens/s, MFU) comes from inside the agent's process and is
informational. The metric, val_bpb, is computed afterwards by evaluate.py in its own process.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import resource
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from autoresearch_mcp.nanochat import contract
from autoresearch_mcp.nanochat import summary as files
from autoresearch_mcp.nanochat.loader import train_batches as _train_batches
from autoresearch_mcp.nanochat.profiles import Profile, peak_bf16_flops, resolve_profile
from autoresearch_mcp.nanochat.tokenizer import Tokenizer

# Above this the run has diverged; the original fails fast at the same threshold.
EXPLODING_LOSS = 100.0
PRINT_INTERVAL_SECONDS = 1.0


def detect_device(forced: str | None = None) -> torch.device:
    """The forced device if given, else the best available: cuda > mps > cpu."""
    if forced:
        return torch.device(forced)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def peak_flops(device: torch.device) -> float | None:
    """Dense bf16 peak FLOP/s of a known GPU; None where unknown (CPU, MPS, other cards)."""
    if device.type != "cuda":
        return None
    return peak_bf16_flops(torch.cuda.get_device_name(device))


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process: the CUDA allocator's high-water mark, else peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _required_env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise RuntimeError(
            f"{name} is not set: train.py runs under the harness; start it with "
            "`python -m autoresearch_mcp.nanochat.run --snapshot DIR --run-dir DIR --profile P`"
        )
    return value


class Run:
    """One training run's context, budget clock and metric log."""

    def __init__(self) -> None:
        self.run_dir = Path(_required_env(contract.ENV_RUN_DIR))
        self.snapshot = Path(_required_env(contract.ENV_SNAPSHOT))
        self.profile: Profile = resolve_profile(_required_env(contract.ENV_PROFILE))
        self.budget_seconds = float(_required_env(contract.ENV_BUDGET))
        self.seed = int(_required_env(contract.ENV_SEED))
        # How much larger than the profile's model to train: 1, or more in a scale-up check
        # (validate_experiment), whose budget the server has already multiplied.
        self.scale = float(os.environ.get(contract.ENV_SCALE) or 1.0)
        self.device = detect_device(os.environ.get(contract.ENV_DEVICE))
        self._train_dir = Path(_required_env(contract.ENV_TRAIN_DIR))
        self.tokenizer = Tokenizer.load(Path(_required_env(contract.ENV_TOKENIZER_DIR)))
        self.vocab_size: int = self.tokenizer.vocab_size
        self.bos_id: int = self.tokenizer.bos_id
        self.seq_len: int = self.profile.seq_len
        self.peak_flops = peak_flops(self.device)
        self._uncounted_steps = (
            files.UNCOUNTED_STEPS_CUDA if self.device.type == "cuda" else files.UNCOUNTED_STEPS_OTHER
        )
        self.flops_per_token: float | None = None

        self.step = 0
        self.total_tokens = 0
        self._counted_tokens = 0
        self._clock_start: float | None = None  # wall time when the budget clock began counting
        self._counted_seconds = 0.0
        self._created = time.time()
        self._last_step_end = time.perf_counter()
        self._last_print = 0.0
        self._metrics = (self.run_dir / contract.METRICS).open("w", encoding="utf-8")
        self._seed_everything()

    def _seed_everything(self) -> None:
        random.seed(self.seed)
        torch.manual_seed(self.seed)  # seeds CUDA and MPS generators too

    # ---- the budget clock -------------------------------------------------------------

    @property
    def training_seconds(self) -> float:
        """Wall time counted against the budget, as of the end of the last step.

        Sampled only at step ends, so `progress` is constant within a step and `done` never
        turns true halfway through a step's gradient accumulation.
        """
        return self._counted_seconds

    @property
    def progress(self) -> float:
        """Fraction of the budget spent, 0..1: the input to the learning-rate schedule."""
        return min(1.0, self.training_seconds / self.budget_seconds)

    @property
    def done(self) -> bool:
        return self.training_seconds >= self.budget_seconds

    def _maybe_start_clock(self) -> None:
        warm_up_over = self.step >= self._uncounted_steps
        warm_up_too_long = time.time() - self._created >= files.MAX_UNCOUNTED_SECONDS
        if warm_up_over or warm_up_too_long:
            self._clock_start = time.time()

    # ---- data ----------------------------------------------------------------------------

    def train_batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(inputs, targets) of shape (batch_size, seq_len) on the device, until the budget is spent."""
        batches = _train_batches(self._train_dir, batch_size, self.seq_len, self.bos_id, self.device, self.seed)
        for batch in batches:
            if self.done:
                return
            yield batch

    # ---- metrics -------------------------------------------------------------------------

    def set_flops_per_token(self, flops: float) -> None:
        """Training FLOPs per token (forward + backward), for MFU."""
        self.flops_per_token = flops

    def log_step(self, loss: torch.Tensor | float, lr_mult: float, tokens: int) -> None:
        """End one optimizer step: advance the clock, append to metrics.jsonl, fail fast on NaN."""
        loss_value = float(loss)  # synchronizes the device, so the step time below is real
        now = time.perf_counter()
        step_seconds = max(now - self._last_step_end, 1e-9)
        self._last_step_end = now
        self.step += 1
        self.total_tokens += tokens
        if self._clock_start is None:
            self._maybe_start_clock()  # counting begins at the end of the last uncounted step
        else:
            self._counted_tokens += tokens
            self._counted_seconds = time.time() - self._clock_start

        tok_per_s = tokens / step_seconds
        record = {
            "step": self.step,
            "loss": loss_value if math.isfinite(loss_value) else None,
            "lr_mult": lr_mult,
            "tok_per_s": round(tok_per_s, 1),
            "mfu": self._mfu_percent(tok_per_s),
            "elapsed": round(self.training_seconds, 3),
            "progress": round(self.progress, 5),
        }
        self._metrics.write(json.dumps(record) + "\n")
        self._metrics.flush()
        self._print_step(record)
        if not math.isfinite(loss_value) or loss_value > EXPLODING_LOSS:
            print(
                f"fast-fail: loss is {loss_value} at step {self.step}; training diverged "
                "(lower the learning rates or check the last change)",
                flush=True,
            )
            raise SystemExit(contract.RunExit.FAST_FAILED)

    def _mfu_percent(self, tok_per_s: float) -> float | None:
        if self.peak_flops is None or self.flops_per_token is None:
            return None
        return round(100 * tok_per_s * self.flops_per_token / self.peak_flops, 2)

    def _print_step(self, record: dict) -> None:
        now = time.perf_counter()
        if self.step > self._uncounted_steps and now - self._last_print < PRINT_INTERVAL_SECONDS:
            return
        self._last_print = now
        loss = "nan" if record["loss"] is None else f"{record['loss']:.4f}"
        mfu = "" if record["mfu"] is None else f" | mfu {record['mfu']:.1f}%"
        print(
            f"step {self.step:05d} | loss {loss} | lr_mult {record['lr_mult']:.3f} | "
            f"{record['tok_per_s']:,.0f} tok/s{mfu} | "
            f"{record['elapsed']:.1f}/{self.budget_seconds:.0f}s",
            flush=True,
        )

    # ---- hand-back -------------------------------------------------------------------

    def hand_back(self, model: torch.nn.Module) -> None:
        """Save the trained model for the evaluator: weights, class names, config, snapshot."""
        model = getattr(model, "_orig_mod", model)  # unwrap torch.compile
        config = getattr(model, "config", None)
        if not dataclasses.is_dataclass(config) or isinstance(config, type):
            raise TypeError(
                "hand_back(model) needs model.config to be a dataclass instance, so the evaluator "
                "can rebuild the model as GPT(GPTConfig(**config))"
            )
        checkpoint = {
            "model_class": type(model).__name__,
            "config_class": type(config).__name__,
            "config": dataclasses.asdict(config),
            "snapshot": str(self.snapshot),
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        }
        model_path = self.run_dir / contract.MODEL
        tmp = model_path.with_name(f".{model_path.name}.tmp")
        torch.save(checkpoint, tmp)
        os.replace(tmp, model_path)
        files.write_json_atomic(self.run_dir / contract.TRAIN_STATS, self._stats())
        self._metrics.close()
        print(f"handed back {type(model).__name__} after {self.step} steps", flush=True)

    def _stats(self) -> dict:
        counted = self.training_seconds
        mfu = None
        if self.peak_flops and self.flops_per_token and counted > 0:
            mfu = 100 * self._counted_tokens * self.flops_per_token / counted / self.peak_flops
        return {
            "training_seconds": counted,
            "clock_start_unix": self._clock_start,
            "num_steps": self.step,
            "total_tokens": self.total_tokens,
            "mfu_percent": mfu,
            "peak_memory_mb": peak_memory_mb(self.device),
            "device": str(self.device),
        }


def start() -> Run:
    """The run context for this training process (reads the runner's environment, seeds RNGs)."""
    return Run()
