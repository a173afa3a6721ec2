"""A train.py that tries to fake its metric never changes the recorded val_bpb: it is either
refused (exit 6, with the reason) or measured exactly as the untouched template measures the
same weights.

(a) fake output and planted result files, (b) monkeypatching the harness or torch, (c) shrinking
the evaluation, (d) a model that sees the tokens it predicts.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autoresearch_mcp.nanochat import contract
from autoresearch_mcp.nanochat.data import PreparedData
from autoresearch_mcp.tests.nanochat_runs import (
    evaluate,
    handed_back,
    honest_val_bpb,
    log_of,
    make_snapshot,
    run,
    summary_of,
)

FAKE = 0.0001
# Tampering that only happens when the evaluator imports train.py, so training itself is honest.
WHEN_EVALUATED = 'if __name__ != "__main__":\n'


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, prepared_cpu_data: PreparedData, cpu_data_dir: Path):
    """(model.pt of a short honest run, its honest val_bpb)."""
    scratch = tmp_path_factory.mktemp("trained")
    result = run(make_snapshot(scratch / "snapshot"), scratch / "run", cpu_data_dir, budget=1)
    assert result.returncode == 0, log_of(result)
    model = handed_back(scratch / "run")
    return model, honest_val_bpb(model, prepared_cpu_data, scratch)


def evaluate_tampered(tmp_path: Path, model: Path, data: PreparedData, code: str, replacements=()):
    snapshot = make_snapshot(tmp_path / "snapshot", replacements, prepend=code)
    out = tmp_path / "eval.json"
    return evaluate(snapshot, model, data, out), out


# ---- (a) printing or writing a fake result ----------------------------------------------------

PLANT_FAKES = f"""
    import json
    for name in ("summary.json", "eval.json"):
        (run.run_dir / name).write_text(json.dumps({{"val_bpb": {FAKE}}}))
    print("---\\nval_bpb:          {FAKE:.6f}", flush=True)
    run.hand_back(model)
"""
# In the evaluator process: rewrite its output file as it exits.
FAKE_AT_EXIT = f"""import atexit, json, sys
if __name__ != "__main__" and "--out" in sys.argv:
    _out = sys.argv[sys.argv.index("--out") + 1]
    atexit.register(lambda: open(_out, "w").write(json.dumps({{"val_bpb": {FAKE}, "eval_tokens": 1}})))
"""


def test_fake_printed_and_written_results_are_not_recorded(
    tmp_path: Path, prepared_cpu_data: PreparedData, cpu_data_dir: Path
) -> None:
    snapshot = make_snapshot(tmp_path / "snapshot", [("    run.hand_back(model)\n", PLANT_FAKES)], prepend=FAKE_AT_EXIT)
    result = run(snapshot, tmp_path / "run", cpu_data_dir, budget=1)

    assert result.returncode == 0, log_of(result)
    assert f"val_bpb:          {FAKE:.6f}" in result.stdout  # the fake was printed...
    recorded = summary_of(tmp_path / "run")["val_bpb"]
    assert recorded != FAKE  # ...but not recorded
    assert recorded == honest_val_bpb(handed_back(tmp_path / "run"), prepared_cpu_data, tmp_path)
    printed = result.stdout.rsplit("\n---\n", 1)[1]
    assert f"val_bpb:          {recorded:.6f}" in printed


def test_fake_result_of_a_failed_run_is_removed(tmp_path: Path, cpu_data_dir: Path) -> None:
    plant_and_crash = PLANT_FAKES.replace("run.hand_back(model)", "raise SystemExit(1)")
    snapshot = make_snapshot(tmp_path / "snapshot", [("    run.hand_back(model)\n", plant_and_crash)])
    result = run(snapshot, tmp_path / "run", cpu_data_dir, budget=0.5)

    assert result.returncode == 4
    assert not (tmp_path / "run" / contract.SUMMARY).exists()
    assert not (tmp_path / "run" / contract.EVAL_RESULT).exists()


# ---- (b) monkeypatching the measurement -------------------------------------------------------

PATCHES = {
    "torch.nn.functional.cross_entropy": "    import torch.nn.functional\n"
    "    torch.nn.functional.cross_entropy = lambda *a, **k: torch.zeros(())\n",
    "torch.Tensor.sum": "    import torch\n    torch.Tensor.sum = lambda self, *a, **k: torch.zeros(())\n",
    "torch.nn.functional.cross_entropy (in place)": "    import torch.nn.functional\n"
    "    torch.nn.functional.cross_entropy.__code__ = (lambda *a, **k: None).__code__\n",
    "autoresearch_mcp.nanochat.loader.val_batches": "    from autoresearch_mcp.nanochat import loader\n"
    "    _real = loader.val_batches\n"
    "    loader.val_batches = lambda d, b, s, bos, dev, n: _real(d, b, s, bos, dev, 2048)\n",
    "__main__.bits_per_byte": "    import sys\n    sys.modules['__main__'].bits_per_byte = lambda *a: (0.0001, 32768)\n",
}


@pytest.mark.parametrize("target", PATCHES)
def test_monkeypatching_at_import_time_is_refused(
    target: str, tmp_path: Path, trained, prepared_cpu_data: PreparedData
) -> None:
    model, _ = trained
    result, out = evaluate_tampered(tmp_path, model, prepared_cpu_data, WHEN_EVALUATED + PATCHES[target])

    assert result.returncode == 6, log_of(result)
    refusal = result.stderr.split("evaluation refused: train.py replaced ", 1)[1].split(" at import time")[0]
    assert target.split(" ")[0] in refusal.split(", ")
    assert not out.exists()


def test_monkeypatching_during_the_forward_pass_is_refused(
    tmp_path: Path, trained, prepared_cpu_data: PreparedData
) -> None:
    model, _ = trained
    patch_in_forward = "        F.cross_entropy = lambda *a, **k: torch.zeros(())\n        B, T = idx.shape\n"
    result, out = evaluate_tampered(
        tmp_path, model, prepared_cpu_data, "", [("        B, T = idx.shape\n", patch_in_forward)]
    )

    assert result.returncode == 6, log_of(result)
    assert "train.py replaced torch.nn.functional.cross_entropy during evaluation" in result.stderr


def test_patching_a_copy_of_the_evaluator_module_changes_nothing(
    tmp_path: Path, trained, prepared_cpu_data: PreparedData
) -> None:
    model, honest = trained
    code = WHEN_EVALUATED + (
        "    from autoresearch_mcp.nanochat import evaluate\n    evaluate.bits_per_byte = lambda *a: (0.0001, 32768)\n"
    )
    result, out = evaluate_tampered(tmp_path, model, prepared_cpu_data, code)

    assert result.returncode == 0, log_of(result)
    assert json.loads(out.read_text())["val_bpb"] == honest


# ---- (c) shrinking the evaluation ------------------------------------------------------------

SHRINK_EVAL = WHEN_EVALUATED + (
    "    import dataclasses, os\n"
    "    from autoresearch_mcp.nanochat import profiles\n"
    "    object.__setattr__(profiles.PROFILES['cpu'], 'eval_tokens', 256)\n"
    "    profiles.PROFILES['cpu'] = dataclasses.replace(profiles.PROFILES['cpu'], eval_tokens=256)\n"
    "    os.environ['AUTORESEARCH_EVAL_TOKENS'] = '256'\n"
)


def test_shrinking_the_eval_changes_nothing(tmp_path: Path, trained, prepared_cpu_data: PreparedData) -> None:
    model, honest = trained
    result, out = evaluate_tampered(tmp_path, model, prepared_cpu_data, SHRINK_EVAL)

    assert result.returncode == 0, log_of(result)
    scored = json.loads(out.read_text())
    assert scored["eval_tokens"] == 32768
    assert scored["val_bpb"] == honest


# ---- (d) a model that sees the future ---------------------------------------------------------


def test_non_causal_model_is_refused(tmp_path: Path, trained, prepared_cpu_data: PreparedData) -> None:
    model, _ = trained
    bidirectional = ("is_causal=True", "is_causal=False")
    result, out = evaluate_tampered(tmp_path, model, prepared_cpu_data, "", [bidirectional])

    assert result.returncode == 6, log_of(result)
    assert "evaluation refused: the model is not causal" in result.stderr
    assert not out.exists()
