"""The run entry point end to end on the cpu profile: real training and evaluation subprocesses,
a tiny model and budgets of a few seconds."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import time
from pathlib import Path
from types import ModuleType

import pytest
import torch

from autoresearch_mcp.nanochat import contract, handback, harness
from autoresearch_mcp.nanochat.data import PreparedData, prepare_data
from autoresearch_mcp.nanochat.profiles import PROFILES
from autoresearch_mcp.sandbox import limits, supervisor
from autoresearch_mcp.tests.nanochat_runs import (
    log_of,
    make_snapshot,
    run,
    set_run_context,
    summary_of,
    uniform_val_bpb,
    written,
)

SUMMARY_KEYS = {
    "val_bpb", "training_seconds", "total_seconds", "peak_memory_mb", "mfu_percent", "total_tokens_M",
    "num_steps", "num_params_M", "depth", "profile", "device", "seed", "timings",
}  # fmt: skip
# A fixed number of steps instead of the wall-clock budget, so two runs do the same work.
FIXED_STEPS = ("while not run.done:", "while run.step < 6:")
CPU = torch.device("cpu")


def import_train(snapshot: Path) -> ModuleType:
    """The snapshot's train.py as a module (its main guard holds), for its model and config."""
    spec = importlib.util.spec_from_file_location("snapshot_train", snapshot / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_run_learns_and_writes_a_complete_summary(
    tmp_path: Path, prepared_cpu_data: PreparedData, cpu_data_dir: Path
) -> None:
    run_dir = tmp_path / "run"
    result = run(make_snapshot(tmp_path / "snapshot"), run_dir, cpu_data_dir, budget=10)

    assert result.returncode == 0, log_of(result)
    summary = summary_of(run_dir)
    assert summary.keys() >= SUMMARY_KEYS
    assert math.isfinite(summary["val_bpb"])
    assert summary["val_bpb"] < 0.85 * uniform_val_bpb(prepared_cpu_data)
    assert summary["num_steps"] > 1 and summary["depth"] == 2 and summary["device"] == "cpu"
    assert summary["mfu_percent"] is None  # no known peak FLOP/s on a CPU
    assert {"data", "startup", "training", "eval", "total"} <= summary["timings"].keys()
    assert (run_dir / contract.PHASE).read_text().strip() == "done"

    steps = [json.loads(line) for line in written(run_dir).read_text().splitlines()]
    assert [s["step"] for s in steps] == list(range(1, summary["num_steps"] + 1))
    assert {"step", "loss", "lr_mult", "tok_per_s", "mfu", "elapsed", "progress"} <= steps[-1].keys()
    assert steps[-1]["progress"] == 1.0 and steps[-1]["lr_mult"] < 0.5  # warmed down by the end
    assert steps[-1]["loss"] < steps[0]["loss"]

    block = result.stdout.rsplit("\n---\n", 1)[1]
    printed = dict(line.split(":", 1) for line in block.strip().splitlines())
    assert float(printed["val_bpb"]) == pytest.approx(summary["val_bpb"], abs=1e-6)
    assert printed["profile"].strip() == "cpu"


def test_longer_budget_gives_lower_val_bpb(tmp_path: Path, prepared_cpu_data: PreparedData, cpu_data_dir: Path) -> None:
    snapshot = make_snapshot(tmp_path / "snapshot")
    short = run(snapshot, tmp_path / "short", cpu_data_dir, budget=0.5)
    long = run(snapshot, tmp_path / "long", cpu_data_dir, budget=8)

    assert short.returncode == 0 and long.returncode == 0, log_of(short) + log_of(long)
    assert summary_of(tmp_path / "long")["val_bpb"] < summary_of(tmp_path / "short")["val_bpb"] - 0.1


def test_same_seed_gives_same_val_bpb(tmp_path: Path, prepared_cpu_data: PreparedData, cpu_data_dir: Path) -> None:
    snapshot = make_snapshot(tmp_path / "snapshot", [FIXED_STEPS])
    results = [run(snapshot, tmp_path / name, cpu_data_dir, budget=300, seed=7) for name in ("a", "b")]

    assert all(r.returncode == 0 for r in results), "".join(map(log_of, results))
    a, b = (summary_of(tmp_path / name) for name in "ab")
    assert a["num_steps"] == b["num_steps"] == 6
    assert a["val_bpb"] == b["val_bpb"]


def test_scale_grows_the_template_s_model(tmp_path: Path, prepared_cpu_data: PreparedData, cpu_data_dir: Path) -> None:
    """--scale reaches train.py as run.scale; the template grows depth by sqrt(scale) (2 -> 3 at 2x)."""
    snapshot = make_snapshot(tmp_path / "snapshot", [("while not run.done:", "while run.step < 2:")])
    result = run(snapshot, tmp_path / "run", cpu_data_dir, budget=300, extra=["--scale", "2"])

    assert result.returncode == 0, log_of(result)
    assert summary_of(tmp_path / "run")["depth"] == 3


def test_crash_exits_4_with_the_traceback_in_the_log(tmp_path: Path, cpu_data_dir: Path) -> None:
    snapshot = make_snapshot(tmp_path / "snapshot", [("run.hand_back(model)", "raise ValueError('broken on purpose')")])
    result = run(snapshot, tmp_path / "run", cpu_data_dir, budget=0.5)

    assert result.returncode == 4
    assert "Traceback (most recent call last)" in result.stdout
    assert "ValueError: broken on purpose" in result.stdout
    assert "train.py crashed with exit code 1" in result.stderr
    assert (tmp_path / "run" / contract.PHASE).read_text().strip() == "failed"
    assert not (tmp_path / "run" / contract.SUMMARY).exists()


def test_nan_loss_fast_fails_with_exit_5(tmp_path: Path, cpu_data_dir: Path) -> None:
    snapshot = make_snapshot(
        tmp_path / "snapshot",
        [("loss = train_model(inputs, targets)", "loss = train_model(inputs, targets) * float('nan')")],
    )
    result = run(snapshot, tmp_path / "run", cpu_data_dir, budget=30)

    assert result.returncode == 5, log_of(result)
    assert "fast-fail: loss is nan at step 1" in result.stdout
    assert (tmp_path / "run" / contract.PHASE).read_text().strip() == "failed"


def test_no_model_handed_back_exits_7(tmp_path: Path, cpu_data_dir: Path) -> None:
    snapshot = make_snapshot(tmp_path / "snapshot", [("    run.hand_back(model)\n", "")])
    result = run(snapshot, tmp_path / "run", cpu_data_dir, budget=0.5)

    assert result.returncode == 7, log_of(result)
    assert "run.hand_back(model)" in result.stderr


def test_bad_arguments_exit_2(tmp_path: Path, cpu_data_dir: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    no_train_py = run(empty, tmp_path / "run", cpu_data_dir)
    unknown_profile = run(
        make_snapshot(tmp_path / "snapshot"), tmp_path / "run", cpu_data_dir, extra=["--profile", "tpu"]
    )

    assert no_train_py.returncode == 2 and "has no snapshot/train.py" in no_train_py.stderr
    assert unknown_profile.returncode == 2 and "unknown profile 'tpu'" in unknown_profile.stderr


def test_data_that_cannot_be_prepared_exits_3(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-corpus.txt"
    result = run(
        make_snapshot(tmp_path / "snapshot"), tmp_path / "run", tmp_path / "data", extra=["--data-source", str(missing)]
    )

    assert result.returncode == 3, log_of(result)
    assert result.stderr.startswith(contract.FAILURE_MARK + "setup failed:")
    assert (tmp_path / "run" / contract.PHASE).read_text().strip() == "failed"


def test_budget_clock_starts_after_the_warm_up_step_and_then_stops_the_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prepared_cpu_data: PreparedData
) -> None:
    set_run_context(monkeypatch, tmp_path / "run", tmp_path, prepared_cpu_data, budget=1e-6)
    run_context = harness.start()
    batches = run_context.train_batches(2)
    inputs, targets = next(batches)
    assert inputs.shape == targets.shape == (2, run_context.seq_len)

    run_context.log_step(5.0, lr_mult=1.0, tokens=inputs.numel())  # the uncounted first step
    assert (run_context.training_seconds, run_context.progress, run_context.done) == (0.0, 0.0, False)
    next(batches)
    run_context.log_step(4.0, lr_mult=1.0, tokens=inputs.numel())  # counted: the tiny budget is spent

    assert run_context.progress == 1.0 and run_context.done
    assert list(batches) == []
    records = [json.loads(line) for line in (tmp_path / "run" / contract.METRICS).read_text().splitlines()]
    assert [(r["step"], r["loss"], r["progress"]) for r in records] == [(1, 5.0, 0.0), (2, 4.0, 1.0)]


@pytest.mark.parametrize("loss", [float("nan"), float("inf"), 101.0])
def test_nan_or_exploding_loss_exits_with_the_fast_fail_code(
    loss: float, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prepared_cpu_data: PreparedData
) -> None:
    set_run_context(monkeypatch, tmp_path / "run", tmp_path, prepared_cpu_data, budget=60)
    with pytest.raises(SystemExit) as exit_info:
        harness.start().log_step(loss, lr_mult=1.0, tokens=1)
    assert exit_info.value.code == contract.RunExit.FAST_FAILED


def test_the_clock_stops_before_a_step_that_would_overrun_the_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prepared_cpu_data: PreparedData
) -> None:
    set_run_context(monkeypatch, tmp_path / "run", tmp_path, prepared_cpu_data, budget=1.0)
    run_context = harness.start()
    run_context.log_step(5.0, lr_mult=1.0, tokens=1)  # uncounted: the clock starts here
    counted = 0
    while not run_context.done:
        time.sleep(0.4)  # a step of at least 0.4 s: a third one would end past 1 s
        run_context.log_step(5.0, lr_mult=1.0, tokens=1)
        counted += 1

    assert counted <= 2 and run_context.training_seconds < run_context.budget_seconds
    assert run_context.progress == 1.0


def test_scale_grows_the_template_model_through_depth_and_width(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prepared_cpu_data: PreparedData
) -> None:
    train = import_train(make_snapshot(tmp_path / "snapshot"))
    set_run_context(monkeypatch, tmp_path / "run", tmp_path, prepared_cpu_data, budget=1)
    assert (harness.start().scale, train.model_config(harness.start()).depth) == (1.0, 2)

    monkeypatch.setenv(contract.ENV_SCALE, "2")
    config = train.model_config(harness.start())
    assert (config.depth, config.width) == (
        3,
        96,
    )  # depth x sqrt(2), rounded; width follows: aspect ratio 32 in the tiny model

    monkeypatch.setenv(contract.ENV_SCALE, "0.5")
    with pytest.raises(RuntimeError, match="AUTORESEARCH_SCALE='0.5': the model scale must be a number >= 1"):
        harness.start()


@pytest.fixture
def exported_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prepared_cpu_data: PreparedData
) -> tuple[harness.Run, torch.nn.Module]:
    """The tiny template model, built and exported under a run context in tmp_path/run."""
    train = import_train(make_snapshot(tmp_path / "snapshot"))
    set_run_context(monkeypatch, tmp_path / "run", tmp_path, prepared_cpu_data, budget=1)
    run_context = harness.start()
    model = train.GPT(train.model_config(run_context))
    run_context.export(model)
    return run_context, model


def test_hand_back_exports_again_when_the_model_changed_since_export(
    tmp_path: Path, exported_model, capsys: pytest.CaptureFixture
) -> None:
    run_context, model = exported_model
    with torch.no_grad():
        model.lm_head.weight.normal_()  # logits large enough for the cap to matter
    model.config.logit_softcap = 3.0  # forward reads it: the graph traced before has the old cap

    run_context.hand_back(model)

    assert "exporting it again" in capsys.readouterr().out
    program, weights = handback.load(tmp_path / "run", run_context.eval_shape, run_context.vocab_size, CPU)
    idx = torch.randint(0, run_context.vocab_size, run_context.eval_shape)
    with torch.no_grad():
        assert torch.allclose(program(weights, idx), model.eval()(idx), atol=1e-4)


def test_hand_back_keeps_the_early_export_of_an_unchanged_model(
    tmp_path: Path, exported_model, capsys: pytest.CaptureFixture
) -> None:
    run_context, model = exported_model
    with torch.no_grad():
        model.lm_head.weight.normal_()  # training changes weights, never the graph

    run_context.hand_back(model)

    out = capsys.readouterr().out  # what hand_back printed
    assert "handed back GPT" in out and "exported" not in out and "exporting it again" not in out
    program, weights = handback.load(tmp_path / "run", run_context.eval_shape, run_context.vocab_size, CPU)
    assert torch.equal(weights["lm_head.weight"], model.lm_head.weight)


def test_hand_back_exports_a_model_that_was_not_exported_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prepared_cpu_data: PreparedData, capsys: pytest.CaptureFixture
) -> None:
    train = import_train(make_snapshot(tmp_path / "snapshot"))
    set_run_context(monkeypatch, tmp_path / "run", tmp_path, prepared_cpu_data, budget=1)
    run_context = harness.start()
    model = train.GPT(train.model_config(run_context))

    run_context.hand_back(model)

    assert "exported GPT.forward" in capsys.readouterr().out
    program, weights = handback.load(tmp_path / "run", run_context.eval_shape, run_context.vocab_size, CPU)
    assert program.num_parameters == sum(p.numel() for p in model.parameters())


def test_changed_data_fails_the_run_before_training(tmp_path: Path, cpu_data_dir: Path) -> None:
    data_dir = tmp_path / "data"
    shutil.copytree(cpu_data_dir, data_dir)
    shard = next(data_dir.glob("*/val/shard_00000.npy"))
    before = shard.stat()
    content = shard.read_bytes()
    shard.write_bytes(content[:-1] + bytes([content[-1] ^ 0xFF]))  # same size, same mtime: only the hash knows
    os.utime(shard, ns=(before.st_atime_ns, before.st_mtime_ns))
    result = run(make_snapshot(tmp_path / "snapshot"), tmp_path / "run", data_dir, budget=0.5)

    assert result.returncode == contract.RunExit.SETUP_FAILED, log_of(result)
    assert "the cached data changed" in result.stderr and "run `autoresearch-mcp prepare` again" in result.stderr
    assert not (tmp_path / "run" / contract.OUT_DIR / contract.METRICS).exists()  # never trained


def test_an_opted_out_run_is_recorded_as_unisolated(tmp_path: Path, cpu_data_dir: Path) -> None:
    result = run(
        make_snapshot(tmp_path / "snapshot"), tmp_path / "run", cpu_data_dir, budget=0.5, extra=["--isolation", "none"]
    )

    assert result.returncode == 0, log_of(result)
    assert 'this run is not isolated (isolation = "none")' in result.stdout
    summary = summary_of(tmp_path / "run")
    assert summary["isolation"] == "none" and len(summary["data_id"]) == 16


# ---- the export process, the compile cache ---------------------------------------------------------

# forward branches on a value: eager runs it, torch.export cannot trace it (the evaluator could not score it).
BRANCH_ON_A_VALUE = (
    "        cos, sin = self.cos[:, :T], self.sin[:, :T]\n",
    "        if idx.sum() > 0:\n            idx = idx.clone()\n        cos, sin = self.cos[:, :T], self.sin[:, :T]\n",
)


# Training waits, before handing back, until the export process has written its program (it runs on idle
# CPU only, which a loaded machine may not have for it within the few steps these runs take).
AFTER_THE_EXPORT = (
    "    run.hand_back(model)\n",
    "    import pathlib, time\n"
    "    while not (pathlib.Path(run.run_dir) / 'export' / 'program.json').exists():\n"
    "        time.sleep(0.05)\n"
    "    run.hand_back(model)\n",
)


def test_the_model_is_exported_by_a_process_of_its_own_while_training_runs(tmp_path: Path, cpu_data_dir: Path) -> None:
    snapshot = make_snapshot(tmp_path / "snapshot", [FIXED_STEPS, AFTER_THE_EXPORT])
    result = run(snapshot, tmp_path / "run", cpu_data_dir, budget=30)

    assert result.returncode == 0, log_of(result)
    assert "exported GPT.forward at (32, 256)" in result.stdout and "alongside training" in result.stdout
    assert "exporting" not in result.stdout  # its program was handed back as it was: nothing exported again
    stats = json.loads((tmp_path / "run" / contract.HANDBACK_DIR / contract.TRAIN_STATS).read_text())
    assert stats["export_seconds"] == 0 and stats["num_steps"] == 6  # the training process exported nothing


def test_a_model_that_cannot_be_exported_stops_the_run_within_seconds(tmp_path: Path, cpu_data_dir: Path) -> None:
    started = time.monotonic()
    result = run(make_snapshot(tmp_path / "snapshot", [BRANCH_ON_A_VALUE]), tmp_path / "run", cpu_data_dir, budget=300)

    assert result.returncode == contract.RunExit.TRAIN_CRASHED, log_of(result)
    assert "torch.export could not trace GPT.forward" in result.stdout
    assert "training stopped: the model cannot be handed back" in result.stdout
    assert time.monotonic() - started < 150  # not the 300 s budget


def test_runs_share_the_compile_cache_and_only_training_sees_it(tmp_path: Path, cpu_data_dir: Path) -> None:
    cache = tmp_path / "compile-cache"
    probe = (
        "import os as _os, pathlib as _p\n"
        "_cache = _p.Path(_os.environ['TORCHINDUCTOR_CACHE_DIR'])\n"
        "print('the compile cache holds', sorted(p.name for p in _cache.glob('*')) if _cache.is_dir() else [])\n"
        "_cache.mkdir(parents=True, exist_ok=True)\n"
        "(_cache / 'from-an-earlier-run').write_text('compiled code')\n"
    )
    guarded = "if __name__ == '__main__':\n" + "".join(f"    {line}\n" for line in probe.splitlines())
    snapshot = make_snapshot(tmp_path / "snapshot", [FIXED_STEPS], prepend=guarded)
    first = run(snapshot, tmp_path / "first", cpu_data_dir, budget=30, extra=["--compile-cache", str(cache)])
    second = run(snapshot, tmp_path / "second", cpu_data_dir, budget=30, extra=["--compile-cache", str(cache)])

    assert first.returncode == 0 and second.returncode == 0, log_of(first) + log_of(second)
    assert "the compile cache holds ['from-an-earlier-run']" in second.stdout
    assert (cache / "inductor" / "from-an-earlier-run").read_text() == "compiled code"
    args, _ = supervisor.parse_args(
        ["--run-dir", str(tmp_path / "second"), "--profile", "cpu", "--compile-cache", str(cache)]
    )
    supervisor.check_isolation(args)
    data = prepare_data(PROFILES["cpu"], cpu_data_dir)
    sandboxes = supervisor.Sandboxes(args, data, supervisor.RunPaths(args.run_dir))
    training, evaluation = sandboxes.training(30), sandboxes.evaluation(tmp_path, 0)
    assert str(cache) in training.argv + list(training.env.values())
    assert not any(str(cache) in part for part in evaluation.argv + list(evaluation.env.values()))


def test_a_compile_cache_over_half_its_limit_is_emptied_before_a_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(limits, "COMPILE_CACHE_BYTES", 1000)
    cache = tmp_path / "compile-cache"
    (cache / "inductor" / "deep").mkdir(parents=True)
    (cache / "inductor" / "deep" / "kernel.so").write_bytes(b"x" * 400)
    supervisor.ready_compile_cache(cache)
    assert (cache / "inductor" / "deep" / "kernel.so").exists()  # under half: kept
    assert supervisor.compile_cache_over_limit(cache, "training") is None

    (cache / "inductor" / "more.so").write_bytes(b"x" * 700)
    assert "filled the compile cache past its limit" in supervisor.compile_cache_over_limit(cache, "training")
    supervisor.ready_compile_cache(cache)
    assert cache.is_dir() and not any(cache.iterdir())  # over half: emptied, ready for the next run
