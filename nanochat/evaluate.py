"""Trusted evaluation: val_bpb of a handed-back model, in a process of its own.

The run supervisor starts this in its own sandbox when training starts:

    python -m autoresearch_mcp.nanochat.evaluate --handback DIR --profile P --val-dir DIR
        --tokenizer-dir DIR --out eval.json [--device D] [--wait-fd FD]

With --wait-fd it imports torch, loads the tokenizer and the validation split onto the device while
training runs, then waits until the supervisor writes GO on that pipe, which only the supervisor
holds: by then the training sandbox is gone and the hand-back files are in DIR. Nothing but GO ever
comes through the pipe, and nothing from the run reaches this process before it reads DIR.

It runs no code from the workspace: it never imports or reads train.py. The model arrives as data
(handback.py): a graph of core ATen operators exported at the exact batch shape scored here, and
safetensors weights, both read strictly and checked (a pure, stateless forward(idx) -> logits) before
anything runs. The evaluator then scores the profile's eval tokens of the pinned validation split
with its own accounting:

    val_bpb = sum(cross-entropy in nats) / (ln 2 * sum(UTF-8 bytes of the target tokens))

where special tokens count 0 bytes and are left out of both sums. Some scored batches, picked at
random, are also checked for causality (check_causal). Exit 0 with the result in --out, or
RunExit.EVAL_FAILED with the reason on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import math
import os
import random
import sys
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from autoresearch_mcp.nanochat import handback, loader, profiles, summary, tokenizer
from autoresearch_mcp.nanochat.contract import EVALUATE_GO as GO
from autoresearch_mcp.nanochat.contract import RunExit
from autoresearch_mcp.nanochat.harness import PROCESS_STARTED_UNIX, detect_device

# Scored batches that are also checked for causality, picked at random; each is perturbed and run
# again CAUSALITY_PASSES times, every pass with new cut points (rows x passes x batches cuts in all).
CAUSALITY_BATCHES = 2
CAUSALITY_PASSES = 2
# A causal model's logits do not move at all when later tokens change (the kernels compute each row
# and position the same way whatever the rest of the batch holds). A leak below this moves a
# token's loss by at most twice as much: under 1e-4 bits per byte, below any difference worth keeping.
CAUSALITY_TOLERANCE = 1e-4

Forward = Callable[[torch.Tensor], torch.Tensor]


class EvaluationRefused(Exception):
    """The model cannot be measured honestly; the message says why."""


def check_causal(forward: Forward, inputs: torch.Tensor, logits: torch.Tensor, rng: random.Random) -> float:
    """Refuse a model whose logits at position t depend on anything but idx[row, :t+1]; return the
    largest change it saw (0 for a causal model: it is logged, for the record).

    Each pass shuffles the rows, replaces a quarter of them whole, and keeps each other one up to a
    cut point of its own, replacing every later token by a different one; a kept row's logits before
    its cut must not move. Later tokens, the row's neighbours, its place in the batch and the content
    of other rows all change, so a peek at any of them shows. The batch has the scored shape and its
    unperturbed logits are the scored ones, so a model cannot tell a checked batch from a scored one;
    the cuts come from a seed the training process never saw.
    """
    rows, seq_len = inputs.shape
    vocab_size = logits.size(-1)
    positions = torch.arange(seq_len, device=inputs.device)
    generator = torch.Generator().manual_seed(rng.getrandbits(63))
    largest = 0.0
    for _ in range(CAUSALITY_PASSES):
        order = torch.randperm(rows, generator=generator).to(inputs.device)  # row i comes from row order[i]
        cuts = torch.randint(1, seq_len, (rows,), generator=generator).to(inputs.device)
        shift = torch.randint(1, vocab_size, inputs.shape, generator=generator).to(inputs.device)
        kept = positions[None, :] < cuts[:, None]
        kept[torch.randperm(rows, generator=generator)[: rows // 4].to(inputs.device)] = False  # replaced whole
        shuffled = inputs[order]
        perturbed = torch.where(kept, shuffled, (shuffled + shift) % vocab_size)  # every later token changed
        change = torch.where(kept, (forward(perturbed).float() - logits[order]).abs().amax(dim=-1), 0.0)
        leak = change.max().item()
        if not leak <= CAUSALITY_TOLERANCE:  # NaN counts as a leak
            row, position = divmod(int(change.argmax().item()), seq_len)
            raise EvaluationRefused(
                f"the model is not causal: its logits at position {position} of a scored row changed by "
                f"{leak:.3g} when only the tokens from position {int(cuts[row])} on, and the other rows of the "
                "batch, changed; a language model may not see the tokens it predicts (logits at position t "
                "may depend only on idx[row, :t+1])"
            )
        largest = max(largest, leak)
    return largest


def score(logits: torch.Tensor, targets: torch.Tensor, token_bytes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(nats, bytes) of one batch's predictions; special tokens (0 bytes) are left out of both."""
    targets = targets.reshape(-1)
    nats = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets, ignore_index=-1, reduction="none")
    nbytes = torch.where(targets >= 0, token_bytes[targets.clamp(min=0)], 0)
    return torch.where(nbytes > 0, nats, 0.0).sum(dtype=torch.float64), nbytes.sum()


def bits_per_byte(
    forward: Forward,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    token_bytes: torch.Tensor,
    checked: set[int],
    rng: random.Random,
) -> tuple[float, float]:
    """(val_bpb over `batches`, the largest change the causality check saw), checking the batches
    numbered in `checked` for causality as they are scored."""
    vocab_size = token_bytes.numel()
    total_nats = torch.zeros((), dtype=torch.float64, device=token_bytes.device)
    total_bytes = torch.zeros((), dtype=torch.int64, device=token_bytes.device)
    largest_change = 0.0
    for number, (inputs, targets) in enumerate(batches):
        logits = forward(inputs).float()
        if logits.shape != (*inputs.shape, vocab_size):  # the program's own metadata said otherwise
            raise EvaluationRefused(f"the model returned logits of shape {tuple(logits.shape)}")
        if number in checked:
            largest_change = max(largest_change, check_causal(forward, inputs, logits, rng))
        nats, nbytes = score(logits, targets, token_bytes)
        total_nats += nats
        total_bytes += nbytes
    scored_nats, scored_bytes = total_nats.item(), total_bytes.item()
    if scored_bytes == 0:
        raise EvaluationRefused("the validation split scored no bytes; re-run `prepare`")
    val_bpb = scored_nats / (math.log(2) * scored_bytes)
    if not math.isfinite(val_bpb):
        raise EvaluationRefused(f"val_bpb is {val_bpb}: the model's logits are not finite")
    return val_bpb, largest_change


@dataclass
class Setting:
    """Everything the evaluation needs but the model: read before the hand-back exists, so that a
    waiting evaluator has it ready when training ends."""

    profile: profiles.Profile
    device: torch.device
    vocab_size: int
    token_bytes: torch.Tensor
    shape: tuple[int, int]  # (rows, seq_len) of every scored batch
    batches: list[tuple[torch.Tensor, torch.Tensor]]  # the pinned validation split, on the device
    imported_unix: float
    ready_unix: float = 0.0


def prepare(args: argparse.Namespace) -> Setting:
    imported_unix = time.time()
    profile = profiles.resolve_profile(args.profile)
    device = detect_device(args.device)
    tok = tokenizer.Tokenizer.load(args.tokenizer_dir)
    token_bytes = torch.as_tensor(tok.token_bytes(), dtype=torch.int64, device=device)
    rows, seq_len = profiles.eval_batch_shape(profile, device.type)
    batches = list(loader.val_batches(args.val_dir, rows, seq_len, tok.bos_id, device, profile.eval_tokens))
    if device.type == "cuda":  # the CUDA context and cuBLAS, set up now rather than on the first batch
        with torch.autocast("cuda", dtype=torch.bfloat16):
            torch.mm(token_bytes[:8, None].float(), token_bytes[None, :8].float())
        torch.cuda.synchronize(device)
    setting = Setting(profile, device, tok.vocab_size, token_bytes, (rows, seq_len), batches, imported_unix)
    setting.ready_unix = time.time()
    return setting


def wait_for_go(fd: int) -> bool:
    """Block until the supervisor writes GO on the pipe `fd` (the hand-back is in place, the training
    sandbox is gone); False if it closes the pipe without (the run failed: nothing to evaluate)."""
    said = b""
    while len(said) < len(GO):
        chunk = os.read(fd, len(GO) - len(said))
        if not chunk:
            break
        said += chunk
    os.close(fd)
    return said == GO


def evaluate(setting: Setting, handback_dir: Path) -> dict[str, Any]:
    started = time.perf_counter()
    go_unix = time.time()
    try:
        program, weights = handback.load(handback_dir, setting.shape, setting.vocab_size, setting.device)
    except handback.ProgramRefused as refusal:
        raise EvaluationRefused(f"{refusal}. {handback.RULES}.") from None
    loaded_unix = time.time()
    count = len(setting.batches)
    # Which batches are checked, and where they are cut, is decided here, from the OS's randomness.
    rng = random.SystemRandom()
    checked = set(rng.sample(range(count), min(CAUSALITY_BATCHES, count)))
    cuda = setting.device.type == "cuda"
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()
    with torch.inference_mode(), autocast:
        forward = functools.partial(program, weights)
        val_bpb, causality_change = bits_per_byte(forward, setting.batches, setting.token_bytes, checked, rng)
    rows, seq_len = setting.shape
    return {
        "val_bpb": val_bpb,
        "eval_tokens": count * rows * seq_len,
        "num_params": program.num_parameters,
        "device": str(setting.device),
        "causality_checked_batches": len(checked),
        "causality_largest_change": causality_change,
        "eval_seconds": time.perf_counter() - started,
        # Wall-clock times of the evaluator's parts, for the overhead breakdown.
        "process_started_unix": PROCESS_STARTED_UNIX,
        "imported_unix": setting.imported_unix,
        "ready_unix": setting.ready_unix,
        "go_unix": go_unix,
        "loaded_unix": loaded_unix,
        "scored_unix": time.time(),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--handback", type=Path, required=True, help="the folder holding the hand-back files")
    parser.add_argument("--profile", required=True)
    parser.add_argument("--val-dir", type=Path, required=True)
    parser.add_argument("--tokenizer-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="where the result JSON goes")
    parser.add_argument("--device", choices=["cpu", "cuda", "mps"])
    parser.add_argument(
        "--wait-fd",
        type=int,
        help="prepare, then wait until the supervisor writes GO on this pipe before reading the hand-back",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        setting = prepare(args)
        if args.wait_fd is not None and not wait_for_go(args.wait_fd):
            return  # the run ended without a hand-back
        result = evaluate(setting, args.handback)
    except EvaluationRefused as refusal:
        print(f"evaluation refused: {refusal}", file=sys.stderr, flush=True)
        os._exit(RunExit.EVAL_FAILED)
    except Exception:
        traceback.print_exc()
        print("evaluation failed: see the traceback above", file=sys.stderr, flush=True)
        os._exit(RunExit.EVAL_FAILED)
    summary.write_json_atomic(args.out, result)
    print(
        f"val_bpb: {result['val_bpb']:.6f} ({result['eval_tokens']} tokens; causality checked on "
        f"{result['causality_checked_batches']} scored batches, largest change {result['causality_largest_change']:.2g})",
        flush=True,
    )
    # The answer is written and flushed: end now, sparing the interpreter's shutdown (torch's teardown,
    # a collection over every object its imports made) between the answer and the recorded result.
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
