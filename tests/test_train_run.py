"""The run entry point end to end on the cpu profile: real training and evaluation subprocesses,
a tiny model and budgets of a few seconds."""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import importlib.util
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import ModuleType

import psutil
import pytest
import torch

from autoresearch_mcp.nanochat import contract, handback, harness
from autoresearch_mcp.nanochat.data import PreparedData, prepare_data
from autoresearch_mcp.nanochat.profiles import PROFILES
from autoresearch_mcp.sandbox import isolation, limits, supervisor
from autoresearch_mcp.tests.engine_helpers import until
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
    "val_bpb", "training_seconds", "training_wall_seconds", "reported_by_run", "total_seconds", "peak_memory_mb", "mfu_percent", "total_tokens_M",
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
    # The supervisor's own clock: spawn to exit, the budget and start-up within the allowance.
    assert summary["training_seconds"] < summary["training_wall_seconds"] < limits.training_seconds(10, "cpu")
    assert "training_wall_seconds" not in summary["reported_by_run"] and "num_steps" in summary["reported_by_run"]
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


def test_the_clock_counts_after_the_warm_up_step_and_the_batches_stop_at_the_deadline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prepared_cpu_data: PreparedData
) -> None:
    set_run_context(monkeypatch, tmp_path / "run", tmp_path, prepared_cpu_data, budget=1.0)  # deadline: 1 s from now
    run_context = harness.start()
    batches = run_context.train_batches(2)
    inputs, targets = next(batches)
    assert inputs.shape == targets.shape == (2, run_context.seq_len)

    run_context.log_step(5.0, lr_mult=1.0, tokens=inputs.numel())  # the uncounted first step
    assert (run_context.training_seconds, run_context.progress, run_context.done) == (0.0, 0.0, False)
    next(batches)
    time.sleep(1.1)  # the deadline passes halfway through this step: its batches keep coming
    next(batches)
    run_context.log_step(4.0, lr_mult=1.0, tokens=inputs.numel())  # counted, and past the deadline

    assert run_context.progress == 1.0 and run_context.done
    assert list(batches) == []
    records = [json.loads(line) for line in (tmp_path / "run" / contract.METRICS).read_text().splitlines()]
    assert [(r["step"], r["loss"], r["progress"]) for r in records] == [(1, 5.0, 0.0), (2, 4.0, 1.0)]


def test_a_run_whose_deadline_passed_before_its_first_step_trains_none_and_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prepared_cpu_data: PreparedData, capsys: pytest.CaptureFixture
) -> None:
    set_run_context(monkeypatch, tmp_path / "run", tmp_path, prepared_cpu_data, budget=-1.0)  # start-up took it all
    run_context = harness.start()
    assert run_context.done and list(run_context.train_batches(2)) == []
    assert "before the first step" in capsys.readouterr().out


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


def test_changed_data_fails_the_run_before_training(
    tmp_path: Path, cpu_data_dir: Path, prepared_cpu_data: PreparedData
) -> None:
    data_dir = tmp_path / "data"
    shutil.copytree(cpu_data_dir, data_dir)
    # The run's own shard: the cache may also hold data an older version of the code prepared.
    shard = data_dir / prepared_cpu_data.val_dir.relative_to(cpu_data_dir) / "shard_00000.npy"
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


# Training waits, before handing back, until the export process has written its program (it starts after
# the first step, and a loaded machine may not finish it within the few steps these runs take).
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


# Before its first step, training waits long enough for an export process started with it to have
# exported on an idle machine, and says whether it did.
LOOK_FOR_THE_EXPORT_BEFORE_THE_FIRST_STEP = (
    "    run.export(model)\n",
    "    run.export(model)\n"
    "    import pathlib, time\n"
    "    time.sleep(4)\n"
    "    print('exported before the first step:', (pathlib.Path(run.run_dir) / 'export').exists(), flush=True)\n",
)


def test_the_export_process_and_the_evaluator_wait_for_the_first_step(tmp_path: Path, cpu_data_dir: Path) -> None:
    """Neither slows the uncounted warm-up: the export process starts once training has logged a step, and
    so does the evaluator."""
    snapshot = make_snapshot(tmp_path / "snapshot", [FIXED_STEPS, LOOK_FOR_THE_EXPORT_BEFORE_THE_FIRST_STEP])
    result = run(snapshot, tmp_path / "run", cpu_data_dir, budget=30)

    assert result.returncode == 0, log_of(result)
    assert "exported before the first step: False" in result.stdout
    stats = json.loads((tmp_path / "run" / contract.HANDBACK_DIR / contract.TRAIN_STATS).read_text())
    events = summary_of(tmp_path / "run")["timings"]["events"]
    assert events["evaluator_process_started"] > stats["clock_start_unix"]  # the first step's end, on cpu


def test_a_run_that_logs_no_step_exports_itself_and_is_still_evaluated(tmp_path: Path, cpu_data_dir: Path) -> None:
    snapshot = make_snapshot(tmp_path / "snapshot", [("    while not run.done:\n", "    while False:\n")])
    result = run(snapshot, tmp_path / "run", cpu_data_dir, budget=30)

    assert result.returncode == 0, log_of(result)
    assert "exported GPT.forward at (32, 256)" in result.stdout and "alongside training" not in result.stdout
    events = summary_of(tmp_path / "run")["timings"]["events"]
    assert events["evaluator_process_started"] >= events["training_exited"]  # started at GO: no step to wait for
    assert summary_of(tmp_path / "run")["num_steps"] == 0


def test_freed_memory_is_reused_instead_of_faulted_in_again() -> None:
    """After reuse_freed_memory, large tensors reuse freed memory: ten rounds of two 64 MB tensors cost at
    most one new block of page faults, against 20 blocks before (each large tensor was new memory the
    kernel faulted in and zeroed page by page). In a fresh process: the policy is the process's."""
    code = (
        "import resource, torch\n"
        "from autoresearch_mcp.nanochat import harness\n"
        "def faults():\n"
        "    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "    for _ in range(10):\n"
        "        x = torch.ones(2**24)\n"
        "        y = x * 2\n"
        "        del x, y\n"
        "    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before\n"
        "faults()\n"
        "plain = faults()\n"
        "harness.reuse_freed_memory()\n"
        "faults()\n"
        "print(plain, faults())\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    plain, kept = map(int, result.stdout.split())
    assert kept < plain / 10, (plain, kept)


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
    training, evaluation = sandboxes.training(30, 0, 0), sandboxes.evaluation(tmp_path, 0)
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


FALLOC_FL_KEEP_SIZE = 1


def allocate_past_the_end(path: Path, size: int) -> None:
    """`size` bytes of disk for `path`, left at size 0: fallocate's KEEP_SIZE (as a hostile run can)."""
    libc = ctypes.CDLL(None, use_errno=True)
    with open(path, "wb") as file:
        if libc.fallocate(file.fileno(), FALLOC_FL_KEEP_SIZE, ctypes.c_long(0), ctypes.c_long(size)) != 0:
            pytest.skip(f"fallocate: {os.strerror(ctypes.get_errno())}")
    assert path.stat().st_size == 0


def test_disk_allocated_past_a_file_s_end_counts_against_the_compile_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Red team: a run filled the disk through the compile cache with files of size 0 (fallocate's
    KEEP_SIZE), and the next run kept them. The cache now counts the disk its files hold."""
    monkeypatch.setattr(limits, "COMPILE_CACHE_BYTES", 8 * 2**20)
    cache = tmp_path / "compile-cache"
    cache.mkdir()
    allocate_past_the_end(cache / "hidden.bin", 16 * 2**20)

    assert "filled the compile cache past its limit" in supervisor.compile_cache_over_limit(cache, "training")
    supervisor.ready_compile_cache(cache)
    assert cache.is_dir() and not any(cache.iterdir())


# Stands in for train.py: writes three files of 2 MB into out/ (each under the file size limit), deletes
# them and keeps them open.
HOLDS_DELETED_FILES = """
import os, sys, time
kept = []
for number in range(3):
    file = open(os.path.join(sys.argv[1], f"hidden{number}.bin"), "wb")
    file.write(b"x" * 2 * 2**20)
    file.flush()
    os.unlink(file.name)
    kept.append(file)
time.sleep(60)
"""


def test_files_deleted_but_kept_open_count_against_the_output_limit(tmp_path: Path) -> None:
    """Red team: a run held disk in files it had deleted from out/ but kept open, which no walk of
    out/ finds. The watchdog counts the files on out/'s disk that the run's processes hold open."""
    held = dataclasses.replace(limits.resource_limits(memory_limit_gb=4, process_limit=8), output_bytes=4 * 2**20)
    argv = [sys.executable, "-c", HOLDS_DELETED_FILES, str(tmp_path)]
    job = supervisor.Contained(argv, dict(os.environ), tmp_path, 0, tmp_path, held, 30.0, "training")

    with pytest.raises(supervisor.RunFailed) as failure:
        supervisor.run_contained(job)
    assert failure.value.exit_code == contract.RunExit.OVER_LIMIT
    assert "in files it deleted but keeps open" in str(failure.value)
    assert not list(tmp_path.iterdir())


# ---- the supervisor's deadline --------------------------------------------------------------

# Stands in for launch.py and train.py: says it is ready, takes its start, then waits for the hand-back
# request on the pipe (or, told to, ignores it).
WAITS_FOR_THE_REQUEST = """
import os, socket, sys, time
with socket.socket(fileno=int(os.environ["{start_fd}"])) as supervisor:
    supervisor.sendall(b"R")
    supervisor.recv(64)
if sys.argv[1] == "ignore":
    time.sleep(60)
os.read(int(os.environ["{fd}"]), 1)
print("handed back", flush=True)
"""


def deadline_job(tmp_path: Path, behaviour: str, handback_fd: int, start_fd: int) -> supervisor.Contained:
    code = WAITS_FOR_THE_REQUEST.format(fd=contract.ENV_HANDBACK_FD, start_fd=contract.ENV_START_FD)
    env = {**os.environ, contract.ENV_HANDBACK_FD: str(handback_fd), contract.ENV_START_FD: str(start_fd)}
    held = limits.resource_limits(memory_limit_gb=4, process_limit=8)
    return supervisor.Contained(
        [sys.executable, "-c", code, behaviour], env, tmp_path, 0, tmp_path, held, 3.0, "training", handback_after=1.0
    )


def test_the_supervisor_asks_for_the_hand_back_at_the_deadline(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    started = time.monotonic()
    training = supervisor.start_training(functools.partial(deadline_job, tmp_path, "obey"))
    supervisor.begin_training(training, None, tmp_path)
    assert supervisor.finish_contained(training) == 0
    assert 1.0 <= time.monotonic() - started < 3.0
    assert "reached its deadline" in capfd.readouterr().out


def test_a_run_that_does_not_hand_back_after_its_deadline_is_stopped(tmp_path: Path) -> None:
    training = supervisor.start_training(functools.partial(deadline_job, tmp_path, "ignore"))
    supervisor.begin_training(training, None, tmp_path)
    with pytest.raises(supervisor.RunFailed) as failure:
        supervisor.finish_contained(training)
    assert failure.value.exit_code == contract.RunExit.TIMED_OUT
    assert "did not hand back its model within 2 s of its deadline" in str(failure.value)


SHADOW_RAN = "a module of the snapshot's ran"
SHADOWS = ("torch.py", "autoresearch_mcp/__init__.py", "autoresearch_mcp/nanochat/__init__.py",
           "autoresearch_mcp/nanochat/launch.py")  # fmt: skip


def test_no_module_of_the_snapshot_runs_before_its_start(tmp_path: Path, cpu_data_dir: Path) -> None:
    """Before its start the sandbox imports torch and the harness, outside the run's window: a module of
    the snapshot's that stood in for either would train there for free. None is imported, then or later."""
    snapshot = make_snapshot(tmp_path / "snapshot")
    for name in SHADOWS:
        (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
        (snapshot / name).write_text(f"print({SHADOW_RAN!r}, flush=True)\n")
    result = run(snapshot, tmp_path / "run", cpu_data_dir, budget=1)

    assert result.returncode == 0, log_of(result)
    assert SHADOW_RAN not in result.stdout


def test_a_run_held_behind_another_trains_its_whole_window_once_that_one_ends(
    tmp_path: Path, cpu_data_dir: Path
) -> None:
    before = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(4)"])
    try:
        created = psutil.Process(before.pid).create_time()
        after = ["--after-pid", str(before.pid), "--after-started", repr(created)]
        result = run(make_snapshot(tmp_path / "snapshot"), tmp_path / "run", cpu_data_dir, budget=2, extra=after)
    finally:
        before.kill()
        before.wait()
    assert result.returncode == 0, log_of(result)
    timings = summary_of(tmp_path / "run")["timings"]
    events = timings["events"]
    assert timings["held"] >= 3.0  # set up and imported, then waited for the run before it
    # Its window counts from its start: budget + allowance, and the hand-back after.
    window = limits.handback_deadline(2, "cpu")
    assert window <= events["training_exited"] - events["training_started"] <= window + limits.handback_grace("cpu")
    assert events["training_started"] >= created + 4  # not before the run before it ended


def test_run_done_turns_true_once_the_hand_back_is_asked_for_and_the_batches_stop_at_the_step_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prepared_cpu_data: PreparedData
) -> None:
    set_run_context(monkeypatch, tmp_path / "run", tmp_path, prepared_cpu_data, budget=60)
    asked, ask = os.pipe()
    monkeypatch.setenv(contract.ENV_HANDBACK_FD, str(asked))
    monkeypatch.setattr(harness, "_handback_asked", threading.Event())
    run_context = harness.start()
    run_context.log_step(5.0, lr_mult=1.0, tokens=1)
    batches = run_context.train_batches(2)
    next(batches)
    assert not run_context.done
    os.close(ask)
    assert harness._handback_asked.wait(10)
    assert run_context.done
    next(batches)  # the step under way gets its batches (train.py's gradient accumulation)
    run_context.log_step(4.0, lr_mult=1.0, tokens=1)
    assert list(batches) == []  # and no next step starts


def test_the_output_limit_is_capped_by_the_free_disk_space() -> None:
    assert limits.resource_limits().output_bytes == limits.DEFAULT_OUTPUT_BYTES
    assert limits.resource_limits(free_disk_bytes=100 * limits.GB).output_bytes == limits.DEFAULT_OUTPUT_BYTES
    capped = limits.resource_limits(free_disk_bytes=8 * limits.GB).output_bytes
    assert capped == 8 * limits.GB * limits.OUTPUT_SHARE_OF_FREE_DISK < limits.DEFAULT_OUTPUT_BYTES


# ---- the slot's GPU ------------------------------------------------------------------------------


def test_a_gpu_run_whose_gpu_nvml_cannot_identify_is_refused(tmp_path: Path, cpu_data_dir: Path) -> None:
    """Binding every GPU node would leave CUDA_VISIBLE_DEVICES, which train.py can change, as the only fence."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "GPU-00000000-0000-0000-0000-000000000000"}  # no such GPU
    snapshot = make_snapshot(tmp_path / "snapshot")
    (tmp_path / "run").mkdir()
    shutil.copytree(snapshot, tmp_path / "run" / contract.SNAPSHOT_DIR)
    result = subprocess.run(
        [sys.executable, "-m", "autoresearch_mcp.sandbox.supervisor", "--run-dir", str(tmp_path / "run"),
         "--profile", "cpu", "--device", "cuda", "--data-dir", str(cpu_data_dir)],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip

    assert result.returncode == contract.RunExit.SANDBOX_FAILED, log_of(result)
    assert "NVML could not identify the slot's GPU (CUDA_VISIBLE_DEVICES=GPU-00000000" in result.stderr
    assert not (tmp_path / "run" / contract.OUT_DIR / contract.METRICS).exists()  # nothing ran


def test_the_slot_s_gpu_is_pinned_by_its_uuid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    monkeypatch.setattr(isolation, "gpu_identity", lambda visible: (3, "GPU-abc") if visible == "1" else None)  # NVML
    assert supervisor.slot_gpu() == supervisor.SlotGpu(3, "GPU-abc")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    with pytest.raises(supervisor.RunFailed, match="no CUDA_VISIBLE_DEVICES was given"):
        supervisor.slot_gpu()


# ---- the evaluator's end ---------------------------------------------------------------------------


def test_an_evaluator_killed_by_a_signal_is_said_so(tmp_path: Path, cpu_data_dir: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    shutil.copytree(make_snapshot(tmp_path / "snapshot"), run_dir / contract.SNAPSHOT_DIR)
    command = [
        sys.executable, "-m", "autoresearch_mcp.sandbox.supervisor", "--run-dir", str(run_dir), "--profile", "cpu",
        "--budget", "10", "--device", "cpu", "--data-dir", str(cpu_data_dir),
    ]  # fmt: skip
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as started:

        def waiting_evaluator() -> list[psutil.Process]:
            return [p for p in psutil.Process(started.pid).children(recursive=True) if _is_evaluator(p)]

        until(waiting_evaluator, timeout=120, what="the evaluator started")
        for evaluator in waiting_evaluator():  # as the OOM killer would
            evaluator.send_signal(signal.SIGKILL)
        _, stderr = started.communicate(timeout=300)

    assert started.returncode == contract.RunExit.EVAL_FAILED, stderr
    assert "the evaluator was killed by signal SIGKILL (possibly out of memory)" in stderr


def _is_evaluator(process: psutil.Process) -> bool:
    try:
        return process.name().startswith("python") and "autoresearch_mcp.nanochat.evaluate" in process.cmdline()
    except psutil.Error:  # ended meanwhile
        return False
