"""Trusted evaluation: val_bpb of a handed-back model, in a process of its own.

run.py starts this after the training process has exited:

    python -m autoresearch_mcp.nanochat.evaluate --snapshot DIR --model model.pt --profile P
        --val-dir DIR --tokenizer-dir DIR --out eval.json [--device D]

It imports the snapshot's train.py as a module (never as __main__) for the model class, rebuilds
the model from the handed-back config, loads the weights and scores the profile's eval tokens of
the pinned validation split with its own accounting:

    val_bpb = sum(cross-entropy in nats) / (ln 2 * sum(UTF-8 bytes of the target tokens))

where special tokens count 0 bytes and are left out of both sums. Everything the number depends
on (the eval size, the data, the loss and byte accounting) is fixed before the agent's module is
imported; the functions it relies on are fingerprinted first and checked afterwards, and a model
that looks at future tokens is refused. Exit 0 with the result in --out, or RunExit.EVAL_FAILED with
the reason on stderr.
"""

from __future__ import annotations

import argparse
import builtins
import contextlib
import dataclasses
import importlib.util
import itertools
import json
import math
import os
import sys
import time
import traceback
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from autoresearch_mcp.nanochat import loader, profiles, summary, tokenizer
from autoresearch_mcp.nanochat.contract import RunExit
from autoresearch_mcp.nanochat.harness import detect_device

SNAPSHOT_MODULE = "autoresearch_snapshot_train"
# Rows per forward pass, as tokens: large enough to keep the device busy, small enough that
# the (rows, seq_len, vocab) fp32 logits fit comfortably.
EVAL_BATCH_TOKENS = {"cuda": 2**17, "mps": 2**14, "cpu": 2**13}
# A causal model's early logits do not move at all when later tokens change; allow float noise.
CAUSALITY_TOLERANCE = 1e-3

# Bound before train.py is imported, so a later rebinding of the module attribute cannot reach
# the accounting below (and the fingerprint catches a rebinding of these names).
_cross_entropy = F.cross_entropy
_val_batches = loader.val_batches


class EvaluationRefused(Exception):
    """The model or the code around it cannot be measured honestly; the message says why."""


# ---- tamper detection -------------------------------------------------------------------


def _guarded_namespaces() -> dict[str, Any]:
    """What the measurement runs on: torch's functions and tensor methods, and the harness."""
    return {
        "torch": torch,
        "torch.nn.functional": F,
        "torch._C._nn": torch._C._nn,
        "torch.Tensor": torch.Tensor,
        "torch._C.TensorBase": torch._C.TensorBase,
        "torch.nn.Module": nn.Module,
        "builtins": builtins,
        "math": math,
        "json": json,
        "os": os,
        __name__: sys.modules[__name__],
        loader.__name__: loader,
        profiles.__name__: profiles,
        summary.__name__: summary,
        tokenizer.__name__: tokenizer,
        "Tokenizer": tokenizer.Tokenizer,
    }


def _attributes(namespace: Any) -> dict[str, Any]:
    """A module's own attributes; a class's attributes as lookup resolves them, inherited ones
    included (statically, through the MRO), so that shadowing an inherited method shows."""
    if not isinstance(namespace, type):
        return dict(vars(namespace))
    resolved: dict[str, Any] = {}
    for klass in reversed(namespace.__mro__):
        resolved.update(vars(klass))
    return resolved


def _identity(value: Any) -> tuple[int, int]:
    # A function can be changed in place through its __code__, so that counts as a change too.
    return id(value), id(getattr(value, "__code__", None))


@dataclasses.dataclass
class Fingerprint:
    """Identities of every attribute of the guarded namespaces at one moment."""

    identities: dict[str, tuple[int, int]]
    # Holding the values keeps their ids from being reused by new objects.
    values: list[Any]

    @classmethod
    def take(cls) -> Fingerprint:
        identities, values = {}, []
        for prefix, namespace in _guarded_namespaces().items():
            for name, value in _attributes(namespace).items():
                identities[f"{prefix}.{name}"] = _identity(value)
                values.append(value)
        return cls(identities, values)

    def changes_since(self, earlier: Fingerprint) -> list[str]:
        return sorted(name for name, identity in earlier.identities.items() if self.identities.get(name) != identity)


def check_untouched(before: Fingerprint, when: str) -> None:
    changed = Fingerprint.take().changes_since(before)
    if changed:
        shown = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
        raise EvaluationRefused(
            f"train.py replaced {shown} {when}; the harness's and torch's functions must stay "
            "as they are (change the model, not the measurement)"
        )


# ---- the agent's model --------------------------------------------------------------------


def import_snapshot(train_py: Path) -> ModuleType:
    """The snapshot's train.py as a module named SNAPSHOT_MODULE, so its main guard holds."""
    spec = importlib.util.spec_from_file_location(SNAPSHOT_MODULE, train_py)
    if spec is None or spec.loader is None:
        raise EvaluationRefused(f"cannot import {train_py}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[SNAPSHOT_MODULE] = module  # dataclasses look their module up here
    # Appended, not prepended: sibling files may be imported, but never shadow installed modules.
    sys.path.append(str(train_py.parent))
    spec.loader.exec_module(module)
    return module


def build_model(module: ModuleType, checkpoint: dict[str, Any]) -> nn.Module:
    """GPT(GPTConfig(**config)) from the snapshot's classes, with the handed-back weights."""
    model_class = getattr(module, checkpoint["model_class"], None)
    config_class = getattr(module, checkpoint["config_class"], None)
    if not (isinstance(model_class, type) and issubclass(model_class, nn.Module)):
        raise EvaluationRefused(f"train.py has no model class {checkpoint['model_class']!r}")
    if not (isinstance(config_class, type) and dataclasses.is_dataclass(config_class)):
        raise EvaluationRefused(f"train.py has no config dataclass {checkpoint['config_class']!r}")
    model = model_class(config_class(**checkpoint["config"]))
    model.load_state_dict(checkpoint["state_dict"], strict=True)
    return model


def depth_of(config: dict[str, Any]) -> int | None:
    return next((config[key] for key in ("depth", "n_layer", "num_layers") if key in config), None)


# ---- measurement ---------------------------------------------------------------------------


def _logits(model: nn.Module, idx: torch.Tensor, vocab_size: int) -> torch.Tensor:
    logits = model(idx)
    expected = (*idx.shape, vocab_size)
    if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != expected:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise EvaluationRefused(f"model(idx) must return logits of shape (B, T, vocab_size) = {expected}, got {shape}")
    return logits.float()


def check_causal(model: nn.Module, inputs: torch.Tensor, vocab_size: int) -> None:
    """Refuse a model whose early logits change when later tokens (or later rows) change."""
    half = inputs.size(1) // 2
    generator = torch.Generator().manual_seed(0)
    shift = torch.randint(1, vocab_size, inputs.shape, generator=generator).to(inputs.device)
    changed_tokens = (inputs + shift) % vocab_size  # every token replaced by a different one
    perturbed = inputs.clone()
    perturbed[0, half:] = changed_tokens[0, half:]  # the future of row 0...
    perturbed[1:] = changed_tokens[1:]  # ...and every other row, in case rows see each other
    clean, changed = _logits(model, inputs, vocab_size), _logits(model, perturbed, vocab_size)
    leak = (clean[0, :half] - changed[0, :half]).abs().max().item()
    signal = (clean[0, half:] - changed[0, half:]).abs().max().item()
    if leak > CAUSALITY_TOLERANCE * max(signal, 1e-3):
        raise EvaluationRefused(
            f"the model is not causal: logits for the first {half} positions changed by {leak:.3g} "
            "when only later tokens changed; a language model may not see the tokens it predicts"
        )


def bits_per_byte(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    token_bytes: torch.Tensor,
) -> tuple[float, int]:
    """(val_bpb, tokens scored) over `batches`; special tokens (0 bytes) are left out."""
    vocab_size = token_bytes.numel()
    total_nats = torch.zeros((), dtype=torch.float64, device=token_bytes.device)
    total_bytes = torch.zeros((), dtype=torch.int64, device=token_bytes.device)
    tokens = 0
    for inputs, targets in batches:
        logits = _logits(model, inputs, vocab_size)
        targets = targets.reshape(-1)
        nats = _cross_entropy(logits.reshape(-1, vocab_size), targets, ignore_index=-1, reduction="none")
        nbytes = torch.where(targets >= 0, token_bytes[targets.clamp(min=0)], 0)
        total_nats += torch.where(nbytes > 0, nats, 0.0).sum(dtype=torch.float64)
        total_bytes += nbytes.sum()
        tokens += targets.numel()
    scored_nats, scored_bytes = total_nats.item(), total_bytes.item()
    if scored_bytes == 0:
        raise EvaluationRefused("the validation split scored no bytes; re-run `prepare`")
    val_bpb = scored_nats / (math.log(2) * scored_bytes)
    if not math.isfinite(val_bpb):
        raise EvaluationRefused(f"val_bpb is {val_bpb}: the model's logits are not finite")
    return val_bpb, tokens


def eval_rows(eval_tokens: int, seq_len: int, batch_tokens: int) -> int:
    """Rows per batch: about batch_tokens, at least 2 (for the causality check), and dividing
    eval_tokens where possible, so that exactly the profile's eval tokens are scored."""
    rows = max(2, batch_tokens // seq_len)
    divisors = [r for r in range(rows, 1, -1) if eval_tokens % (r * seq_len) == 0]
    return divisors[0] if divisors else rows


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """Everything fixed first (profile, data, accounting), then the agent's code, then the score."""
    started = time.perf_counter()
    profile = profiles.resolve_profile(args.profile)
    eval_tokens, seq_len = profile.eval_tokens, profile.seq_len
    device = detect_device(args.device)
    tok = tokenizer.Tokenizer.load(args.tokenizer_dir)
    vocab_size, bos_id = tok.vocab_size, tok.bos_id
    token_bytes = torch.as_tensor(tok.token_bytes(), dtype=torch.int64, device=device)
    rows = eval_rows(eval_tokens, seq_len, EVAL_BATCH_TOKENS[device.type])
    checkpoint = torch.load(args.model, map_location="cpu", weights_only=True)
    fingerprint = Fingerprint.take()

    module = import_snapshot(args.snapshot / "train.py")
    check_untouched(fingerprint, "at import time")
    model = build_model(module, checkpoint).to(device).eval()
    check_untouched(fingerprint, "while building the model")

    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    with torch.no_grad(), autocast:
        batches = iter(_val_batches(args.val_dir, rows, seq_len, bos_id, device, eval_tokens))
        first = next(batches)
        check_causal(model, first[0][:2], vocab_size)  # two rows: later positions and another row
        val_bpb, tokens = bits_per_byte(model, itertools.chain([first], batches), token_bytes)
    check_untouched(fingerprint, "during evaluation")
    expected = math.ceil(eval_tokens / (rows * seq_len)) * rows * seq_len
    if tokens != expected:
        raise EvaluationRefused(f"scored {tokens} validation tokens instead of {expected}")
    return {
        "val_bpb": val_bpb,
        "eval_tokens": tokens,
        "num_params": sum(p.numel() for p in model.parameters()),
        "depth": depth_of(checkpoint["config"]),
        "device": str(device),
        "eval_seconds": time.perf_counter() - started,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--snapshot", type=Path, required=True, help="folder holding train.py")
    parser.add_argument("--model", type=Path, required=True, help="the handed-back model.pt")
    parser.add_argument("--profile", required=True)
    parser.add_argument("--val-dir", type=Path, required=True)
    parser.add_argument("--tokenizer-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="where the result JSON goes")
    parser.add_argument("--device", choices=["cpu", "cuda", "mps"])
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        result = evaluate(args)
    except EvaluationRefused as refusal:
        print(f"evaluation refused: {refusal}", file=sys.stderr, flush=True)
        os._exit(RunExit.EVAL_FAILED)
    except BaseException:  # the agent's code can raise anything, SystemExit included
        traceback.print_exc()
        print("evaluation failed: see the traceback above", file=sys.stderr, flush=True)
        os._exit(RunExit.EVAL_FAILED)
    summary.write_json_atomic(args.out, result)
    print(f"val_bpb: {result['val_bpb']:.6f} ({result['eval_tokens']} tokens)", flush=True)
    sys.stderr.flush()
    # Leave at once: exit hooks or threads the agent's module may have set up never run after
    # the result is written.
    os._exit(0)


if __name__ == "__main__":
    main()
