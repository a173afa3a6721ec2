"""The hand-back on a GPU, in one process: the template's model for a profile exported as the harness
exports it, then read back and run as the evaluator runs it, with the checks the evaluator relies on.

    python bench/export_check.py                     on a CUDA machine: the h100 profile's model
    python bench/export_check.py --profile cpu       here, on CPU (a dry run of the same path)

Prints a table: export time, the program's operators outside core ATen (expected: SDPA only), the
program's logits against the model's (both under the evaluator's autocast on CUDA), the largest
change the causality check sees on an honest model (expected: 0; the evaluator refuses above
evaluate.CAUSALITY_TOLERANCE), and one forward pass of each at the scored shape. No data needed:
the input is random tokens, the weights are the freshly built model's.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import random
import sys
import time
from collections import Counter
from pathlib import Path

import torch
from run_report import format_rows  # beside this script

from autoresearch_mcp.nanochat import evaluate, handback
from autoresearch_mcp.nanochat import summary as files
from autoresearch_mcp.nanochat.profiles import PROFILES, eval_batch_shape

TEMPLATE = Path(files.__file__).parent / "template" / "train.py"


class TemplateRun:
    """What the template's model_config reads from harness.Run, without a training context."""

    def __init__(self, profile: str, vocab_size: int) -> None:
        self.profile = PROFILES[profile]
        self.vocab_size = vocab_size
        self.seq_len = self.profile.seq_len
        self.scale = 1.0


def timed(function, device: torch.device) -> tuple[object, float]:
    started = time.perf_counter()
    result = function()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return result, time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="h100", choices=sorted(PROFILES))
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    profile = PROFILES[args.profile]
    shape = eval_batch_shape(profile, device.type)
    spec = importlib.util.spec_from_file_location("template_train", TEMPLATE)
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    torch.set_float32_matmul_precision("high")  # as the template trains
    model = train.GPT(train.model_config(TemplateRun(args.profile, profile.vocab_size))).to(device)
    with torch.no_grad():
        model.lm_head.weight.normal_(std=0.02)  # logits of a trained model's size, not the init's near-zeros

    exported, export_seconds = timed(lambda: handback.export(model, shape, device, profile.vocab_size), device)
    program = handback.Program.parse(exported.data, shape, profile.vocab_size, device.type)
    tensors = handback.program_tensors(exported, model)
    non_core = Counter(str(call.op) for call in program.calls if torch.Tag.core not in call.op.tags)

    idx = torch.randint(0, profile.vocab_size, shape, device=device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    with torch.inference_mode(), autocast:
        program(tensors, idx)  # warm-up
        model.eval()(idx)
        logits, program_seconds = timed(lambda: program(tensors, idx).float(), device)
        expected, eager_seconds = timed(lambda: model(idx).float(), device)
        causality = evaluate.CausalityCheck(shape[0], 1, shape[1], random.Random(0))  # one batch: the most passes
        causality.check(lambda batch: program(tensors, batch), 0, idx, logits)
    rows = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "profile / scored shape": f"{args.profile} / {shape}",
        "parameters (M)": f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}",
        "export (first in process), s": f"{export_seconds:.2f}",
        "program.json (bytes)": f"{len(exported.data):,}",
        "operator calls / outside core ATen": f"{len(program.calls)} / {json.dumps(dict(non_core))}",
        "program vs model logits (max abs diff)": f"{(logits - expected).abs().max().item():.3g}",
        "largest logit": f"{expected.abs().max().item():.3g}",
        "causality check, largest change (honest)": (
            f"{causality.largest_change:.3g} over {causality.pairs} cuts (refused above {evaluate.CAUSALITY_TOLERANCE:g})"
        ),
        "forward at the scored shape: program / eager, s": f"{program_seconds:.3f} / {eager_seconds:.3f}",
    }
    print(format_rows(list(rows.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
