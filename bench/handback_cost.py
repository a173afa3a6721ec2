"""What handing the model back as data costs on the cpu profile: the export, the hand-back, the
training process's exit, and the evaluator, for the template's cpu model.

    python bench/handback_cost.py [--runs 3] [--data-dir DIR]

Every figure comes from fresh processes (first-use imports count, as they do in a run), median over
--runs. The training side runs as train.py does under the harness: harness.start(), the template's
model, run.export(model) right after it is built, run.hand_back(model) (its untrained weights: the
cost does not depend on their values). The evaluator runs as run.py starts it; its parts are timed
again in-process: reading the hand-back, the scored forward passes, the causality check's passes.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from run_report import format_rows  # beside this script

from autoresearch_mcp.nanochat import contract
from autoresearch_mcp.nanochat import summary as files
from autoresearch_mcp.nanochat.data import prepare_data
from autoresearch_mcp.nanochat.profiles import PROFILES, default_data_dir

TEMPLATE = Path(files.__file__).parent / "template" / "train.py"


def training_side() -> dict[str, float]:
    """In a child: the template's model exported and handed back, as train.py does it."""
    started = time.perf_counter()
    import torch

    from autoresearch_mcp.nanochat import harness

    imported = time.perf_counter()
    spec = importlib.util.spec_from_file_location("template_train", TEMPLATE)
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    run = harness.start()
    model = train.GPT(train.model_config(run)).to(run.device)
    built = time.perf_counter()
    run.export(model)
    exported = time.perf_counter()
    run.hand_back(model)
    handed_back = time.perf_counter()
    return {
        "import torch + harness": imported - started,
        "run.export(model)": exported - built,
        "run.hand_back(model)": handed_back - exported,
        "parameters (M)": sum(p.numel() for p in model.parameters()) / 1e6,
        "torch threads": torch.get_num_threads(),
        "ended": time.time(),
    }


def evaluator_parts(handback_dir: Path, val_dir: Path, tokenizer_dir: Path) -> dict[str, float]:
    """In a child: the evaluator's steps, timed one by one."""
    started = time.perf_counter()
    import random

    import torch

    from autoresearch_mcp.nanochat import evaluate, handback, loader, profiles, tokenizer

    imported = time.perf_counter()
    profile, device = PROFILES["cpu"], torch.device("cpu")
    tok = tokenizer.Tokenizer.load(tokenizer_dir)
    shape = profiles.eval_batch_shape(profile, device.type)
    program, weights = handback.load(handback_dir, shape, tok.vocab_size, device)
    loaded = time.perf_counter()
    batches = list(loader.val_batches(val_dir, *shape, tok.bos_id, device, profile.eval_tokens))
    token_bytes = torch.as_tensor(tok.token_bytes(), dtype=torch.int64)
    with torch.inference_mode():
        scoring_started = time.perf_counter()
        logits = [program(weights, inputs) for inputs, _ in batches]
        for output, (_, targets) in zip(logits, batches, strict=True):
            evaluate.score(output.float(), targets, token_bytes)
        scored = time.perf_counter()
        causality = evaluate.CausalityCheck(shape[0], len(batches), shape[1], random.Random())
        for number, ((inputs, _), output) in enumerate(zip(batches, logits, strict=True)):
            causality.check(lambda idx: program(weights, idx), number, inputs, output.float())
        checked = time.perf_counter()
    passes = f"{len(batches)} batches x {causality.cuts.size(1)} passes, {causality.pairs} cuts"
    return {
        "import torch + evaluator": imported - started,
        "read the hand-back": loaded - imported,
        f"score {len(batches)} batches of {shape[0]}x{shape[1]}": scored - scoring_started,
        f"causality check ({passes})": checked - scored,
    }


def child(function: str, *args: str) -> dict[str, float]:
    """Run one of the functions above in a fresh interpreter; its result and when it exited."""
    code = f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import handback_cost as b; "
    code += f"print(json.dumps(b.{function}(*map(b.Path, sys.argv[1:]))))"
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=False)
    exited = time.time()
    if result.returncode != 0:
        raise SystemExit(f"{function} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return {**json.loads(result.stdout.strip().splitlines()[-1]), "exited": exited}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--data-dir", type=Path, default=None)
    args = parser.parse_args()
    data = prepare_data(PROFILES["cpu"], (args.data_dir or default_data_dir()).resolve())
    work = Path(tempfile.mkdtemp(prefix="handback-cost-"))
    env = {
        contract.ENV_RUN_DIR: work, contract.ENV_SNAPSHOT: work, contract.ENV_PROFILE: "cpu",
        contract.ENV_BUDGET: 60, contract.ENV_DEADLINE: time.time() + 60, contract.ENV_SEED: 0, contract.ENV_DEVICE: "cpu",
        contract.ENV_TRAIN_DIR: data.train_dir, contract.ENV_TOKENIZER_DIR: data.tokenizer_dir,
    }  # fmt: skip
    os.environ.update({name: str(value) for name, value in env.items()})
    rows: dict[str, list[float]] = {}
    for _ in range(args.runs):
        training = child("training_side")
        training["process exit after hand_back"] = training.pop("exited") - training.pop("ended")
        started = time.time()
        out = work / "eval.json"
        command = [sys.executable, "-m", "autoresearch_mcp.nanochat.evaluate", "--handback", str(work)]
        command += ["--profile", "cpu", "--val-dir", str(data.val_dir), "--tokenizer-dir", str(data.tokenizer_dir)]
        subprocess.run([*command, "--out", str(out), "--device", "cpu"], check=True, capture_output=True)
        evaluator = {"evaluator process (wall)": time.time() - started}
        parts = child("evaluator_parts", str(work), str(data.val_dir), str(data.tokenizer_dir))
        parts.pop("exited")
        for name, value in {**training, **evaluator, **parts}.items():
            rows.setdefault(name, []).append(value)
    program = (work / contract.PROGRAM).stat().st_size
    weights = (work / contract.WEIGHTS).stat().st_size
    print(f"cpu profile template, {args.runs} runs (median); program.json {program:,} B, weights {weights:,} B")
    print(format_rows([(name, f"{statistics.median(values):.2f}") for name, values in rows.items()]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
