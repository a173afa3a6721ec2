"""Trusted evaluation: val_bpb of a handed-back model, in a process of its own.

The run supervisor starts this in its own sandbox once training has logged its first step:

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

where special tokens count 0 bytes and are left out of both sums. Exit 0 with the result in --out,
or RunExit.EVAL_FAILED with the reason on stderr.

Causality (CausalityCheck). Every scored batch is run again, perturbed: its rows shuffled, each cut at
its own point c (the tokens from c on replaced; c = 0 replaces the row whole), and every kept
position's logits compared with the scored ones. A black-box check can only be statistical: a peek at
the token after position p shows only in a row cut right after p. So the cuts cover every position
equally often, at least CUTS_PER_POSITION = 2 times per evaluation (extra passes where the eval has
fewer rows), in an order drawn from the OS's randomness: a peek at the same position in every row is
always caught, and one at a fraction f of each row's positions, wherever it falls, passes with
probability about (1 - f)^N, where N is the number of (row, cut) pairs:

    profile   scored rows x passes = N   one position per row (f = 1/seq_len) passes with
    h100      10,240 x 1 = 10,240        e^-5 (0.7%), a peek worth ~5e-4 bpb
    gpu        4,096 x 1 =  4,096        e^-4 (1.8%)
    cpu          128 x 4 =    512        e^-2 (14%), a peek worth ~7e-3 bpb

Larger peeks are caught surely (ten positions per row on cpu: e^-20). The cost is one more forward
per scored batch (four on cpu, whose evaluation has few rows).
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
from autoresearch_mcp.nanochat.harness import PROCESS_STARTED_UNIX, detect_device, reuse_freed_memory

# Every scored batch is also checked for causality: it is run again, perturbed, causality_passes(...)
# times, each row cut at its own point. A peek at the token after position p shows only
# in a row cut right after p, so the evaluation cuts rows at every position at least CUTS_PER_POSITION
# times: a model that peeks at a fraction f of the positions of each row passes with probability at
# most about (1 - f)^N, where N = cuts_per_evaluation(...) (module docstring).
CUTS_PER_POSITION = 2
# A causal model's logits do not move at all when later tokens change (the kernels compute each row
# and position the same way whatever the rest of the batch holds). A leak below this moves a
# token's loss by at most twice as much: under 1e-4 bits per byte, below any difference worth keeping.
CAUSALITY_TOLERANCE = 1e-4

Forward = Callable[[torch.Tensor], torch.Tensor]


class EvaluationRefused(Exception):
    """The model cannot be measured honestly; the message says why."""


def causality_passes(rows: int, batches: int, seq_len: int) -> int:
    """Perturbed forwards per scored batch: one, or as many as it takes to cut rows at every position
    CUTS_PER_POSITION times where the evaluation has fewer rows than that."""
    return max(1, math.ceil(CUTS_PER_POSITION * seq_len / (rows * batches)))


def cuts_per_evaluation(rows: int, batches: int, seq_len: int) -> int:
    """N: the (row, cut) pairs one evaluation checks, one per row of every perturbed forward."""
    return rows * batches * causality_passes(rows, batches, seq_len)


def cut_points(rows: int, batches: int, seq_len: int, generator: torch.Generator) -> torch.Tensor:
    """Where each row of each perturbed forward is cut, as (batches, passes, rows): every position
    0 .. seq_len-1 equally often over the evaluation (the rest at random), in an order drawn from
    `generator`. A row cut at c keeps idx[:c] (0: the row is replaced whole)."""
    pairs = cuts_per_evaluation(rows, batches, seq_len)
    rounds, rest = divmod(pairs, seq_len)
    cuts = torch.cat([torch.arange(seq_len).repeat(rounds), torch.randperm(seq_len, generator=generator)[:rest]])
    return cuts[torch.randperm(pairs, generator=generator)].view(batches, -1, rows)


def check_causal(
    forward: Forward, inputs: torch.Tensor, logits: torch.Tensor, cuts: torch.Tensor, generator: torch.Generator
) -> float:
    """Refuse a model whose logits at position t depend on anything but idx[row, :t+1]; return the
    largest change it saw (0 for a causal model: it is logged, for the record).

    One perturbed forward per row of `cuts` (passes, rows): each shuffles the rows of `inputs` and
    keeps each one up to its cut, replacing every later token by a different one; a kept row's logits
    before its cut must not move. Later tokens, the row's neighbours, its place in the batch and the
    content of other rows all change, so a peek at any of them shows. The batch has the scored shape
    and its unperturbed logits are the scored ones, so a model cannot tell a checked batch from a
    scored one; the cuts and shuffles come from randomness the training process never saw.
    """
    rows, seq_len = inputs.shape
    vocab_size = logits.size(-1)
    positions = torch.arange(seq_len, device=inputs.device)
    largest = 0.0
    for pass_cuts in cuts:
        order = torch.randperm(rows, generator=generator).to(inputs.device)  # row i comes from row order[i]
        shift = torch.randint(1, vocab_size, inputs.shape, generator=generator).to(inputs.device)
        cut = pass_cuts.to(inputs.device)
        kept = positions[None, :] < cut[:, None]
        shuffled = inputs[order]
        perturbed = torch.where(kept, shuffled, (shuffled + shift) % vocab_size)  # every later token changed
        change = (forward(perturbed).float() - logits[order]).abs_().amax(dim=-1)
        change = torch.where(kept, change, 0.0)
        leak = change.max().item()
        if not leak <= CAUSALITY_TOLERANCE:  # NaN counts as a leak
            row, position = divmod(int(change.nan_to_num(math.inf).argmax().item()), seq_len)
            raise EvaluationRefused(
                f"the model is not causal: its logits at position {position} of a scored row changed by "
                f"{leak:.3g} when only the tokens from position {int(cut[row])} on, and the other rows of the "
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


class CausalityCheck:
    """The causality check of one evaluation: where each perturbed forward cuts its rows (drawn
    before the first batch is scored), and the largest change it has seen so far."""

    def __init__(self, rows: int, batches: int, seq_len: int, rng: random.Random) -> None:
        self.generator = torch.Generator().manual_seed(rng.getrandbits(63))
        self.cuts = cut_points(rows, batches, seq_len, self.generator)
        self.largest_change = 0.0

    @property
    def pairs(self) -> int:
        """N: the (row, cut) pairs it checks."""
        return self.cuts.numel()

    def check(self, forward: Forward, number: int, inputs: torch.Tensor, logits: torch.Tensor) -> None:
        """Check scored batch `number` (`inputs`, and the `logits` it scored); EvaluationRefused if it leaks."""
        change = check_causal(forward, inputs, logits, self.cuts[number], self.generator)
        self.largest_change = max(self.largest_change, change)


def bits_per_byte(
    forward: Forward,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    token_bytes: torch.Tensor,
    causality: CausalityCheck | None,
) -> float:
    """val_bpb of `forward` over `batches`, each batch checked by `causality` as it is scored (None:
    scored unchecked, for tests and benchmarks)."""
    vocab_size = token_bytes.numel()
    total_nats = torch.zeros((), dtype=torch.float64, device=token_bytes.device)
    total_bytes = torch.zeros((), dtype=torch.int64, device=token_bytes.device)
    for number, (inputs, targets) in enumerate(batches):
        logits = forward(inputs).float()
        if logits.shape != (*inputs.shape, vocab_size):  # the program's own metadata said otherwise
            raise EvaluationRefused(f"the model returned logits of shape {tuple(logits.shape)}")
        if causality is not None:
            causality.check(forward, number, inputs, logits)
        nats, nbytes = score(logits, targets, token_bytes)
        total_nats += nats
        total_bytes += nbytes
    scored_nats, scored_bytes = total_nats.item(), total_bytes.item()
    if scored_bytes == 0:
        raise EvaluationRefused("the validation split scored no bytes; re-run `prepare`")
    val_bpb = scored_nats / (math.log(2) * scored_bytes)
    if not math.isfinite(val_bpb):
        raise EvaluationRefused(f"val_bpb is {val_bpb}: the model's logits are not finite")
    return val_bpb


@dataclass
class Setting:
    """Everything the evaluation needs but the model: read before the hand-back exists, so that a
    waiting evaluator has it ready when training ends."""

    device: torch.device
    vocab_size: int
    token_bytes: torch.Tensor
    shape: tuple[int, int]  # (rows, seq_len) of every scored batch
    batches: list[tuple[torch.Tensor, torch.Tensor]]  # the pinned validation split, on the device
    imported_unix: float
    ready_unix: float


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
    return Setting(device, tok.vocab_size, token_bytes, (rows, seq_len), batches, imported_unix, time.time())


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
    rows, seq_len = setting.shape
    # Where the causality check cuts each batch's rows is decided here, from the OS's randomness.
    causality = CausalityCheck(rows, count, seq_len, random.SystemRandom())
    cuda = setting.device.type == "cuda"
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()
    with torch.inference_mode(), autocast:
        forward = functools.partial(program, weights)
        val_bpb = bits_per_byte(forward, setting.batches, setting.token_bytes, causality)
    return {
        "val_bpb": val_bpb,
        "eval_tokens": count * rows * seq_len,
        "num_params": program.num_parameters,
        "device": str(setting.device),
        "causality_cuts": causality.pairs,
        "causality_largest_change": causality.largest_change,
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
    reuse_freed_memory()
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
        f"val_bpb: {result['val_bpb']:.6f} ({result['eval_tokens']} tokens; causality checked at "
        f"{result['causality_cuts']} (row, cut) pairs over every scored batch, largest change "
        f"{result['causality_largest_change']:.2g})",
        flush=True,
    )
    # The answer is written and flushed: end now, sparing the interpreter's shutdown (torch's teardown,
    # a collection over every object its imports made) between the answer and the recorded result.
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
