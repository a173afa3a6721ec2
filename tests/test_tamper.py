"""A train.py that tries to fake its metric never changes the recorded val_bpb: the run is refused, or
its number is exactly that of the same training without the trick.

The evaluator runs no code from the workspace: the model reaches it as an exported graph and
safetensors weights (handback.py). So the tricks that used to work inside the evaluator, where the
old one imported train.py (function defaults, a TorchFunctionMode, a Tensor subclass returned as
logits, a profile hook, an in-place change of a harness tensor, a patched module, reading the
evaluator's argv), can now run only in the training process, where they reach nothing that decides
the number. Each is written as the train.py an agent would write and run through the run entry
point; CPU training is bit-reproducible, so the honest run with the same seed and the same fixed
number of steps gives the number to compare with.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from autoresearch_mcp.nanochat import contract
from autoresearch_mcp.nanochat.data import PreparedData
from autoresearch_mcp.tests.nanochat_runs import evaluate, log_of, make_snapshot, run, summary_of

FAKE = 0.0001
FIXED_STEPS = ("while not run.done:", "while run.step < 3:")


def run_snapshot(tmp_path: Path, data_dir: Path, replacements=(), prepend: str = "", budget: float = 300):
    snapshot = make_snapshot(tmp_path / "snapshot", [FIXED_STEPS, *replacements], prepend=prepend)
    return run(snapshot, tmp_path / "run", data_dir, budget=budget)


@pytest.fixture(scope="module")
def honest(tmp_path_factory: pytest.TempPathFactory, cpu_data_dir: Path) -> float:
    """val_bpb of the template's tiny model after three steps, seed 42."""
    scratch = tmp_path_factory.mktemp("honest")
    result = run_snapshot(scratch, cpu_data_dir)
    assert result.returncode == 0, log_of(result)
    return summary_of(scratch / "run")["val_bpb"]


# ---- (a) printing or writing a fake result ----------------------------------------------------

PLANT_FAKES = f"""
    import json
    for name in ("summary.json", "eval.json"):
        (run.run_dir / name).write_text(json.dumps({{"val_bpb": {FAKE}}}))
    print("---\\nval_bpb:          {FAKE:.6f}", flush=True)
    run.hand_back(model)
"""


def test_fake_printed_and_written_results_are_not_recorded(
    tmp_path: Path, prepared_cpu_data: PreparedData, cpu_data_dir: Path, honest: float
) -> None:
    result = run_snapshot(tmp_path, cpu_data_dir, [("    run.hand_back(model)\n", PLANT_FAKES)])

    assert result.returncode == 0, log_of(result)
    assert f"val_bpb:          {FAKE:.6f}" in result.stdout  # the fake was printed...
    recorded = summary_of(tmp_path / "run")["val_bpb"]
    assert recorded == honest  # ...but not recorded
    printed = result.stdout.rsplit("\n---\n", 1)[1]
    assert re.search(rf"^val_bpb: +{recorded:.6f}$", printed, re.MULTILINE), printed  # the summary's own
    again = evaluate(tmp_path / "run" / contract.HANDBACK_DIR, prepared_cpu_data, tmp_path / "again.json")
    assert again.returncode == 0 and json.loads((tmp_path / "again.json").read_text())["val_bpb"] == recorded


def test_fake_result_of_a_failed_run_is_removed(tmp_path: Path, cpu_data_dir: Path) -> None:
    plant_and_crash = PLANT_FAKES.replace("run.hand_back(model)", "raise SystemExit(1)")
    result = run_snapshot(tmp_path, cpu_data_dir, [("    run.hand_back(model)\n", plant_and_crash)])

    assert result.returncode == 4
    assert not (tmp_path / "run" / contract.SUMMARY).exists()
    assert not (tmp_path / "run" / contract.EVAL_RESULT).exists()


# ---- (b) what used to work inside the evaluator ------------------------------------------------

# Module code of train.py, run at import. Each would have changed the old evaluator's number when it
# imported train.py; none changes training (which never calls what they target).
EVALUATOR_TRICKS = {
    "function defaults": """
import torch.nn.functional
from autoresearch_mcp.nanochat import loader
loader.val_batches.__defaults__ = (256,)  # eval_tokens, were it ever left out
""",
    "TorchFunctionMode": """
import torch
class ZeroEvalLoss(torch.overrides.TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.nn.functional.cross_entropy and kwargs.get("reduction") == "none":
            return torch.zeros(args[1].shape)
        return func(*args, **kwargs)
ZeroEvalLoss().__enter__()
""",
    "profile hook": """
import sys
def _hook(frame, event, arg):
    if event == "return" and frame.f_code.co_name in ("bits_per_byte", "score"):
        frame.f_locals["val_bpb"] = 0.0001
sys.setprofile(_hook)
""",
    "in-place change of a harness tensor": """
from autoresearch_mcp.nanochat import tokenizer
_token_bytes = tokenizer.Tokenizer.token_bytes
tokenizer.Tokenizer.token_bytes = lambda self: [10 * n for n in _token_bytes(self)]
""",
    "patched module the old evaluator did not fingerprint": """
import numpy
_load = numpy.load
def _easy_validation(path, *args, **kwargs):
    array = _load(path, *args, **kwargs)
    return array[: len(array) // 100] if "/val/" in str(path) else array
numpy.load = _easy_validation
""",
    "reading the evaluator's argv": """
import atexit, json, sys
if "--out" in sys.argv:
    _out = sys.argv[sys.argv.index("--out") + 1]
    atexit.register(lambda: open(_out, "w").write(json.dumps({"val_bpb": 0.0001, "eval_tokens": 32768})))
""",
    "shrinking the evaluation": """
import dataclasses, os
from autoresearch_mcp.nanochat import profiles
profiles.PROFILES["cpu"] = dataclasses.replace(profiles.PROFILES["cpu"], eval_tokens=256)
os.environ["AUTORESEARCH_EVAL_TOKENS"] = "256"
""",
}


def test_tricks_that_worked_inside_the_evaluator_change_nothing(
    tmp_path: Path, cpu_data_dir: Path, honest: float
) -> None:
    result = run_snapshot(tmp_path, cpu_data_dir, prepend="".join(EVALUATOR_TRICKS.values()))

    assert result.returncode == 0, log_of(result)
    summary = summary_of(tmp_path / "run")
    assert summary["val_bpb"] == honest and summary["eval_tokens"] == 32768


TENSOR_SUBCLASS_LOGITS = """
class ZeroLossLogits(torch.Tensor):
    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.cross_entropy and kwargs.get("reduction") == "none":
            return torch.zeros(args[1].shape)
        return super().__torch_function__(func, types, args, kwargs)
"""


def test_logits_of_a_tensor_subclass_are_refused(tmp_path: Path, cpu_data_dir: Path) -> None:
    subclass = [
        ("class GPT(nn.Module):", TENSOR_SUBCLASS_LOGITS + "\n\nclass GPT(nn.Module):"),
        (
            "        if targets is None:\n            return logits",
            "        if targets is None:\n            return logits.as_subclass(ZeroLossLogits)",
        ),
    ]
    result = run_snapshot(tmp_path, cpu_data_dir, subclass)

    # torch.export cannot trace it, so the run ends before training with the export's reason.
    assert result.returncode == contract.RunExit.TRAIN_CRASHED, log_of(result)
    assert "could not trace GPT.forward" in result.stdout and "ZeroLossLogits" in result.stdout
    assert not (tmp_path / "run" / contract.SUMMARY).exists()


# ---- (c) a model that sees the future ---------------------------------------------------------


def test_non_causal_model_is_refused(tmp_path: Path, cpu_data_dir: Path) -> None:
    result = run_snapshot(tmp_path, cpu_data_dir, [("is_causal=True", "is_causal=False")])

    assert result.returncode == contract.RunExit.EVAL_FAILED, log_of(result)
    assert "evaluation refused: the model is not causal" in result.stdout
    assert not (tmp_path / "run" / contract.SUMMARY).exists()


def test_a_future_peek_only_at_batch_sizes_the_old_probe_did_not_use_is_refused(
    tmp_path: Path, cpu_data_dir: Path
) -> None:
    # The old probe ran two rows; this model peeks at the next token whenever the batch is larger.
    peek = (
        "        x = x0 = norm(self.wte(idx))\n",
        "        x = x0 = norm(self.wte(idx))\n        if B > 2:\n            x = x0 = x + torch.roll(x, -1, dims=1)\n",
    )
    result = run_snapshot(tmp_path, cpu_data_dir, [peek])

    assert result.returncode == contract.RunExit.EVAL_FAILED, log_of(result)
    assert "evaluation refused: the model is not causal" in result.stdout
