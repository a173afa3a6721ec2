"""The fixed side of training: the one module train.py imports from the harness.

    run = harness.start()                        # context, seeding, device, tokenizer
    model = GPT(config).to(run.device)
    run.export(model)                            # trace forward(idx) -> logits now (handback.py)
    batches = run.train_batches(rows)
    while not run.done:
        lr_mult = schedule(run.progress)
        ...forward/backward on next(batches), optimizer step with lr * lr_mult...
        run.log_step(loss, lr_mult, tokens)      # clock, metrics.jsonl, NaN fast-fail
    run.hand_back(model)                         # the weights, for the evaluator

Every run trains up to the same deadline: the supervisor's, budget + a start-up allowance from the
moment it let train.py start, by its clock (contract.ENV_DEADLINE). Start-up comes out of the allowance, so a run
that starts faster trains longer, and a clock of the run's own buys it nothing: an honest run already
trains to the end of the window. `done` turns true, at a step's end, once the next step, as long as the
recent ones, would end past the deadline (or the supervisor has asked for the hand-back there), and
`train_batches` stops yielding then. The supervisor stops a run that has not handed back shortly after
the deadline. `progress` (for the learning-rate schedule) counts from the end of the first few steps
(ten on CUDA, for compilation and warm-up; one elsewhere) to the deadline.

The model reaches the evaluator as data (handback.py): a graph exported from the model right
after it is built (the graph does not depend on the weights, so a model that cannot be scored
fails in seconds, and the export is not paid after training), and the trained weights. If the
model changed since, hand_back exports it again.

Everything recorded here (steps, tokens/s, MFU) comes from inside the agent's process and is
informational. The metric, val_bpb, is computed afterwards by evaluate.py in its own process.
"""

from __future__ import annotations

import ctypes
import gc
import json
import math
import os
import platform
import random
import resource
import statistics
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import torch

from autoresearch_mcp.nanochat import contract, handback
from autoresearch_mcp.nanochat import summary as files
from autoresearch_mcp.nanochat.loader import train_batches as _train_batches
from autoresearch_mcp.nanochat.profiles import Profile, eval_batch_shape, peak_bf16_flops, resolve_profile
from autoresearch_mcp.nanochat.tokenizer import Tokenizer

# When the interpreter started and when torch and the harness were imported: where start-up time goes.
PROCESS_STARTED_UNIX = files.process_started_unix()
IMPORTED_UNIX = time.time()
# The training process waits this long at hand_back for an export process (launch.py) that has not
# finished, then exports the model itself (about a second on the cpu profile). The export process
# starts after the first step: only a run shorter than its export ends before it has finished.
EXPORT_WAIT_SECONDS = 0.25


class ExportProcess:
    """The process launch.py started beside the training process to run train.py up to run.export(model)
    and export that model once released: its exit code, read from a pipe on a thread of the training
    process."""

    def __init__(self, status: int, release: int) -> None:
        self._status = status
        self._release = release
        self._ended = threading.Event()
        threading.Thread(target=self._watch, name="export-process", daemon=True).start()

    @property
    def released(self) -> bool:
        return self._release < 0

    def release(self) -> None:
        """Let it start (it waits so as not to slow the uncounted warm-up: launch.py)."""
        if not self.released:
            os.close(self._release)
            self._release = -1

    def _watch(self) -> None:
        said = os.read(self._status, 1)  # b"" if it ended without saying how (killed)
        os.close(self._status)
        self._ended.set()
        if said == bytes([contract.EXPORT_REFUSED]):
            print("training stopped: the model cannot be handed back (the export process said why above)", flush=True)
            os._exit(1)

    def wait(self, timeout: float) -> bool:
        """True once it has ended, False if it is still running after `timeout` seconds."""
        return self._ended.wait(timeout)


# From launch.py (contract.ENV_EXPORT): in the training process, the export process beside it; in the
# export process, the pipe it reports its exit code on.
_export_process: ExportProcess | None = None
_export_status: int | None = None


def _exporting() -> bool:
    return _export_status is not None


def _take_export_role(role: str | None) -> None:
    """As launch.py set it (contract.ENV_EXPORT): "train:STATUS:RELEASE", the training process, whose
    export process reports on pipe STATUS once released through RELEASE; "export:STATUS", the export
    process, which reports on STATUS: its run.export(model) (or run.hand_back(model)) writes the program
    into out/export/ and ends the process, and nothing trains or writes metrics."""
    global _export_process, _export_status
    if role is None:
        return
    kind, _, fds = role.partition(":")
    if kind == "train":
        status, _, release = fds.partition(":")
        _export_process = ExportProcess(int(status), int(release))
    elif kind == "export":
        _export_status = int(fds)


def end_export_process(code: int) -> None:
    """End the export process, telling the training process `code` (0: done; a program is written if it
    got that far)."""
    status = _export_status
    assert status is not None
    sys.stdout.flush()
    sys.stderr.flush()
    os.write(status, bytes([code]))
    os._exit(code)


# Set once the supervisor has asked for the hand-back (contract.ENV_HANDBACK_FD): the run's deadline
# has passed, whatever the clock above says; `done` turns true.
_handback_asked = threading.Event()
_handing_back = threading.Event()  # set once run.hand_back(model) is called


def _listen_for_handback_request(fd: str | None) -> None:
    """Watch the pipe the supervisor closes at the deadline, on a thread (a step costs nothing)."""
    if fd is None:
        return

    def listen() -> None:
        os.read(int(fd), 1)  # returns when the supervisor closes its end (or writes)
        _handback_asked.set()
        if not _exporting() and not _handing_back.is_set():
            print("the run's deadline has passed (budget + start-up allowance): handing back now", flush=True)

    threading.Thread(target=listen, name="handback-request", daemon=True).start()


# Above this the run has diverged; the original fails fast at the same threshold.
EXPLODING_LOSS = 100.0
PRINT_INTERVAL_SECONDS = 1.0
# The median of the last few counted steps predicts the next one's duration (one slow step, e.g. a
# checkpoint or a hiccup of a shared machine, does not stop the run early).
RECENT_STEPS = 5
# hand_back keeps the graph exported before training if, with the trained weights, it gives the
# trained model's logits to within this fraction of their largest magnitude (at least 1): rounding
# differs a little between eager and decomposed code (TF32 matmuls on CUDA, rms_norm written out).
SAME_FUNCTION_TOLERANCE = 1e-3
CHECKED_ROWS = 2


# glibc's malloc gives every block of 32 MB or more its own mapping and unmaps it when freed, so each
# large tensor (a cpu batch's logits are 67 MB) is fresh memory that the kernel faults in and zeroes
# page by page. That was half the time of a cpu forward pass and 40% of a training step
# (bench/freed_memory.py). Served from the heap, and not trimmed back to the kernel below
# TRIM_THRESHOLD_BYTES, freed blocks are reused by later tensors. The cost: the process keeps its peak memory.
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # mallopt's parameters (malloc.h)
TRIM_THRESHOLD_BYTES = 2**30


def reuse_freed_memory() -> None:
    """Have this process's malloc keep freed memory for reuse (glibc only; elsewhere nothing changes)."""
    if platform.libc_ver()[0] != "glibc":
        return
    libc = ctypes.CDLL(None)
    libc.mallopt(_M_MMAP_MAX, 0)  # glibc still maps what the heap cannot grow to hold
    libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)


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
            "`python -m autoresearch_mcp.sandbox.supervisor --run-dir DIR --profile P` (DIR/snapshot holds train.py)"
        )
    return value


class Run:
    """One training run's context, clock and metric log."""

    def __init__(self) -> None:
        self.run_dir = Path(_required_env(contract.ENV_RUN_DIR))
        self.snapshot = Path(_required_env(contract.ENV_SNAPSHOT))
        self.profile: Profile = resolve_profile(_required_env(contract.ENV_PROFILE))
        self.budget_seconds = float(_required_env(contract.ENV_BUDGET))  # the launch's; the deadline includes it
        self._deadline = float(_required_env(contract.ENV_DEADLINE))
        self.seed = int(_required_env(contract.ENV_SEED))
        self.device = detect_device(os.environ.get(contract.ENV_DEVICE))
        self._train_dir = Path(_required_env(contract.ENV_TRAIN_DIR))
        self.tokenizer = Tokenizer.load(Path(_required_env(contract.ENV_TOKENIZER_DIR)))
        self.vocab_size: int = self.tokenizer.vocab_size
        self.bos_id: int = self.tokenizer.bos_id
        self.seq_len: int = self.profile.seq_len
        # How much larger than the profile's model to train, for scale-up checks (the template
        # multiplies its depth by it); 1 normally.
        self.scale: float = _scale(os.environ.get(contract.ENV_SCALE))
        # (rows, seq_len) of every batch the evaluator scores on this device: the export's shape.
        self.eval_shape: tuple[int, int] = eval_batch_shape(self.profile, self.device.type)
        self.peak_flops = peak_flops(self.device)
        self._uncounted_steps = (
            files.UNCOUNTED_STEPS_CUDA if self.device.type == "cuda" else files.UNCOUNTED_STEPS_OTHER
        )
        self.flops_per_token: float | None = None

        self.step = 0
        self.total_tokens = 0
        self._counted_tokens = 0
        self._clock_start: float | None = None  # wall time when the clock began counting
        self._step_over: bool | None = None  # _last_step_over() as decided for this step (None: not yet)
        self._counted_seconds = 0.0
        self._created = time.time()
        self._last_step_end = time.perf_counter()
        self._last_print = 0.0
        self._recent_step_seconds: deque[float] = deque(maxlen=RECENT_STEPS)
        self._exported: handback.Exported | None = None
        self._export_seconds = 0.0
        self._model_built: float | None = None  # when run.export(model) was called
        self._training_ended: float | None = None  # when run.hand_back(model) was called
        self._depth: int | None = None
        self._export_before_clock = 0.0
        metrics = os.devnull if _exporting() else self.run_dir / contract.METRICS
        self._metrics = open(metrics, "w", encoding="utf-8")  # noqa: SIM115 (closed at hand_back)
        self._seed_everything()

    def _seed_everything(self) -> None:
        random.seed(self.seed)
        torch.manual_seed(self.seed)  # seeds CUDA and MPS generators too

    # ---- the clock -------------------------------------------------------------------

    @property
    def training_seconds(self) -> float:
        """Wall time trained since the warm-up, as of the end of the last step.

        Sampled only at step ends, so `progress` is constant within a step.
        """
        return self._counted_seconds

    @property
    def progress(self) -> float:
        """Fraction of the training window spent, 0..1 (1 once done): the input to the learning-rate
        schedule. The window runs from the end of the warm-up to the deadline."""
        if self.done:
            return 1.0
        window = self._window_seconds()
        if window is None:
            return 0.0
        return min(1.0, self.training_seconds / window) if window > 0 else 1.0

    def _window_seconds(self) -> float | None:
        """Seconds from the end of the warm-up to the deadline; None while the warm-up lasts."""
        return None if self._clock_start is None else self._deadline - self._clock_start

    @property
    def done(self) -> bool:
        """True once the next step, as long as the recent ones, would end past the deadline, or once the
        supervisor has asked for the hand-back: a run stops up to one step short of its deadline rather
        than running over it."""
        return _exporting() or _handback_asked.is_set() or self._last_step_over()

    def _last_step_over(self) -> bool:
        """Whether the step ahead is one too many (past the deadline, or the hand-back asked for), decided
        once per step: train_batches stops on it, so never halfway through a step's gradient accumulation."""
        if self._step_over is None:
            expected_step = statistics.median(self._recent_step_seconds) if self._recent_step_seconds else 0.0
            self._step_over = _handback_asked.is_set() or time.time() + expected_step > self._deadline
            if self._step_over and self.step == 0:
                print(
                    "the deadline passed before the first step: start-up took the whole window (budget + start-up "
                    "allowance), so the model is handed back untrained; give the run a larger budget",
                    flush=True,
                )
        return self._step_over

    def _maybe_start_clock(self) -> None:
        warm_up_over = self.step >= self._uncounted_steps
        warm_up_too_long = time.time() - self._created >= files.MAX_UNCOUNTED_SECONDS
        if warm_up_over or warm_up_too_long:
            self._clock_start = time.time()

    # ---- data ----------------------------------------------------------------------------

    def train_batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(inputs, targets) of shape (batch_size, seq_len) on the device, until the run is done."""
        if _exporting():
            return
        batches = _train_batches(self._train_dir, batch_size, self.seq_len, self.bos_id, self.device, self.seed)
        for batch in batches:
            if self._last_step_over():
                return
            yield batch

    # ---- metrics -------------------------------------------------------------------------

    def set_flops_per_token(self, flops: float) -> None:
        """Training FLOPs per token (forward + backward), for MFU."""
        self.flops_per_token = flops

    def log_step(self, loss: torch.Tensor | float, lr_mult: float, tokens: int) -> None:
        """End one optimizer step: advance the clock, append to metrics.jsonl, fail fast on NaN."""
        if _exporting():  # a loop of train.py's own: nothing to export from here
            end_export_process(0)
        loss_value = float(loss)  # synchronizes the device, so the step time below is real
        now = time.perf_counter()
        step_seconds = max(now - self._last_step_end, 1e-9)
        self._last_step_end = now
        self.step += 1
        self._step_over = None  # a new step: whether it is one too many is decided afresh
        self.total_tokens += tokens
        if _export_process is not None:
            _export_process.release()  # the first step is over: the export competes with counted steps only
        if self._clock_start is None:
            self._maybe_start_clock()  # counting begins at the end of the last uncounted step
        else:
            self._counted_tokens += tokens
            self._counted_seconds = time.time() - self._clock_start
            self._recent_step_seconds.append(step_seconds)

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
            f"{record['elapsed']:.1f}/{self._window_text()}s",
            flush=True,
        )

    def _window_text(self) -> str:
        """The training window's seconds once it is known (the warm-up over), else the budget's."""
        window = self._window_seconds()
        return f"{self.budget_seconds if window is None else window:.0f}"

    # ---- hand-back -------------------------------------------------------------------

    def export(self, model: torch.nn.Module) -> None:
        """Trace model.forward at the batch shape the evaluator scores (run.eval_shape), as the graph
        hand_back gives the evaluator. Call it right after building the model: a model the evaluator
        cannot score (handback.RULES) fails in seconds, with the reason, and only the weights are left
        to write after training. Under launch.py the export process does it, from its own model of the
        same config, while this one trains. torch.compile'd models are exported uncompiled."""
        self._model_built = time.time()
        if _export_process is not None:
            return  # the export process is exporting the same model, alongside training
        self._export(getattr(model, "_orig_mod", model))
        if _exporting():
            end_export_process(0)
        self._export_before_clock = self._export_seconds

    def _export(self, module: torch.nn.Module) -> handback.Exported:
        started = time.perf_counter()
        self._exported = handback.export(module, self.eval_shape, self.device, self.vocab_size)
        if _exporting():
            handback.write_export(self._exported, self.run_dir / contract.EXPORT_DIR)
        else:
            handback.write_program(self._exported, self.run_dir)
        self._export_seconds += time.perf_counter() - started
        alongside = " (in a process of its own, alongside training)" if _exporting() else ""
        print(
            f"exported {type(module).__name__}.forward at {self.eval_shape} in {self._export_seconds:.1f} s{alongside}",
            flush=True,
        )
        return self._exported

    def hand_back(self, model: torch.nn.Module) -> None:
        """Hand the trained model to the evaluator: the graph from run.export(model) (exported again
        now if it was not, or if the model has changed since), and the trained weights."""
        self._training_ended = time.time()
        _handing_back.set()
        started = time.perf_counter()
        module = getattr(model, "_orig_mod", model)
        if _exporting():  # train.py never called run.export(model): export it now, untrained
            self._export(module)
            end_export_process(0)
        if self._exported is None and _export_process is not None and _export_process.released:
            self._exported = self._program_of_export_process()  # else no step was logged: it never started
        tensors = self._tensors_if_unchanged(module)
        if tensors is None:
            tensors = handback.program_tensors(self._export(module), module)
        handback.write_weights(tensors, self.run_dir)
        self._depth = _depth(module)
        files.write_json_atomic(self.run_dir / contract.TRAIN_STATS, self._stats())
        self._metrics.close()
        # The process ends soon: spare it a garbage collection over the ~300k objects torch.export's
        # imports created, which the interpreter would otherwise run at exit (1-2 s on two cores).
        gc.freeze()
        print(
            f"handed back {type(module).__name__} after {self.step} steps ({time.perf_counter() - started:.1f} s)",
            flush=True,
        )

    def _program_of_export_process(self) -> handback.Exported | None:
        """The program the export process wrote, once it has ended; None if it wrote none (it failed,
        or train.py never reached run.export(model) there) or did not end in EXPORT_WAIT_SECONDS."""
        assert _export_process is not None
        if not _export_process.wait(EXPORT_WAIT_SECONDS):
            print("the export process has not finished (it starts after the first step); exporting here", flush=True)
            return None
        exported = handback.read_export(
            self.run_dir / contract.EXPORT_DIR, self.eval_shape, self.vocab_size, self.device
        )
        if exported is not None:  # the hand-back's program, unless the model changed since
            os.replace(self.run_dir / contract.EXPORT_DIR / contract.PROGRAM, self.run_dir / contract.PROGRAM)
        return exported

    def _tensors_if_unchanged(self, module: torch.nn.Module) -> dict[str, torch.Tensor] | None:
        """The exported program's tensors from `module`, if that program still computes what `module`
        does (same tensors, same logits); None if there is no program yet or the model has changed."""
        if self._exported is None:
            return None
        try:
            tensors = handback.program_tensors(self._exported, module)
        except (AttributeError, KeyError, ValueError) as error:
            print(f"the model changed since run.export(model) ({error}); exporting it again", flush=True)
            return None
        generator = torch.Generator(self.device).manual_seed(0)
        idx = torch.randint(0, self.vocab_size, self.eval_shape, device=self.device, generator=generator)
        was_training = module.training
        module.eval()
        try:
            with torch.no_grad():
                # The program runs only at the scored shape; the model needs only a couple of its rows.
                exported = self._exported.program(tensors, idx)[:CHECKED_ROWS].float()
                expected = module(idx[:CHECKED_ROWS]).float()
        finally:
            module.train(was_training)
        difference = (expected - exported).abs().max().item()
        if not difference <= SAME_FUNCTION_TOLERANCE * max(expected.abs().max().item(), 1.0):
            print(
                f"the model computes other logits than the graph run.export(model) traced (by up to {difference:.3g}): "
                "something forward depends on changed during training; exporting it again",
                flush=True,
            )
            return None
        return tensors

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
            "depth": self._depth,
            "export_seconds": self._export_seconds,
            "export_before_clock_seconds": self._export_before_clock,
            # When each part of start-up and hand-back ended (wall clock), for the overhead breakdown.
            "process_started_unix": PROCESS_STARTED_UNIX,
            "imported_unix": IMPORTED_UNIX,
            "model_built_unix": self._model_built,
            "training_ended_unix": self._training_ended,
            "handed_back_unix": time.time(),
        }


def _scale(text: str | None) -> float:
    try:
        scale = float(text) if text else 1.0
    except ValueError:
        scale = math.nan
    if not scale >= 1:
        raise RuntimeError(f"{contract.ENV_SCALE}={text!r}: the model scale must be a number >= 1")
    return scale


def _depth(model: torch.nn.Module) -> int | None:
    """The model's depth as its config names it (depth, n_layer or num_layers), if it has one."""
    config = getattr(model, "config", None)
    depth = next((getattr(config, key) for key in ("depth", "n_layer", "num_layers") if hasattr(config, key)), None)
    return depth if isinstance(depth, int) else None


def start() -> Run:
    """The run context for this training process (reads the runner's environment, seeds RNGs)."""
    _take_export_role(os.environ.pop(contract.ENV_EXPORT, None))
    _listen_for_handback_request(os.environ.pop(contract.ENV_HANDBACK_FD, None))
    reuse_freed_memory()
    return Run()
