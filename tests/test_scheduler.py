"""The scheduler, through the engine: slots, the queue, limits and stops, with real processes.

Runs use the stand-in harness (tests/stand_in_harness.py): same command-line and file
protocol as the real one, with train.py deciding what each run does.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import psutil
import pytest

from autoresearch_mcp.nanochat.errors import UserError
from autoresearch_mcp.sandbox.engine import ExperimentEngine, default_slots
from autoresearch_mcp.sandbox.gpus import visible_gpu_count
from autoresearch_mcp.sandbox.runner import Limits, RunSpec
from autoresearch_mcp.tests import stand_in_harness
from autoresearch_mcp.tests.engine_helpers import finish, new_workspace, train_script, until

SLEEP_FOREVER = train_script(sleep=600)


def engine_for(tmp_path: Path, train_py: str, **options: object) -> ExperimentEngine:
    engine = ExperimentEngine(new_workspace(tmp_path / "ws", train_py), command=stand_in_harness.command, **options)
    engine.start()
    return engine


@pytest.fixture
def stopped_engines() -> list[ExperimentEngine]:
    """Engines to stop at the end of a test, with every run still going killed."""
    engines: list[ExperimentEngine] = []
    yield engines
    for engine in engines:
        for record in reversed(engine.store.list(["queued", "running"])):  # queued first: none starts
            engine.stop(record.id)
        engine.shutdown()


# train.py notes when it started training (the stand-in runs it once its slot is its own).
NOTE_START = "open('trained_from', 'w').write(repr(time.time()))"


def trained_from(engine: ExperimentEngine, run_id: str) -> float:
    return float((engine.run_dir(run_id) / "snapshot" / "trained_from").read_text())


def ended_at(engine: ExperimentEngine, run_id: str) -> float:
    """When the run's supervisor wrote its last phase, just before it exited."""
    return (engine.run_dir(run_id) / "phase").stat().st_mtime


def test_one_run_per_slot_and_the_rest_in_launch_order(tmp_path: Path, stopped_engines: list) -> None:
    engine = engine_for(tmp_path, train_script(sleep=0.3, before=NOTE_START))
    stopped_engines.append(engine)
    first = engine.launch("first", budget_seconds=5)
    second = engine.launch("second", budget_seconds=5)
    third = engine.launch("third", budget_seconds=5)
    assert (first.status, first.device) == ("running", "cpu")
    assert (second.status, third.status) == ("queued", "queued")
    assert (engine.queue_position(second.id), engine.queue_position(third.id)) == (1, 2)
    records = [finish(engine, run.id) for run in (first, second, third)]
    assert [r.status for r in records] == ["succeeded"] * 3
    # Trained strictly one after the other, in launch order.
    runs = [first.id, second.id, third.id]
    assert all(ended_at(engine, runs[i]) <= trained_from(engine, runs[i + 1]) for i in range(2))
    assert engine.queue_position(third.id) is None


def test_the_next_run_sets_up_while_the_last_is_evaluated_and_trains_after(
    tmp_path: Path, stopped_engines: list
) -> None:
    evaluation = f"open('{stand_in_harness.EVALUATION_SECONDS_FILE}', 'w').write('2')"
    engine = engine_for(tmp_path, train_script(sleep=0.3, before=f"{NOTE_START}\n{evaluation}"))
    stopped_engines.append(engine)
    first = engine.launch("first", budget_seconds=5)
    second = engine.launch("second", budget_seconds=5)
    assert second.status == "queued"

    def held() -> bool:
        return (engine.store.get(first.id).phase, engine.store.get(second.id).phase) == ("evaluating", "waiting")

    until(held, what="the second run held while the first is evaluated")
    assert engine.store.get(second.id).device == "cpu"
    records = [finish(engine, run_id) for run_id in (first.id, second.id)]
    assert [r.status for r in records] == ["succeeded"] * 2
    assert records[1].started_at < records[0].finished_at
    assert ended_at(engine, first.id) <= trained_from(engine, second.id)


def test_a_run_waits_for_the_slot_it_asked_for_while_others_pass(tmp_path: Path, stopped_engines: list) -> None:
    engine = engine_for(tmp_path, SLEEP_FOREVER, slots=["cuda:0", "cuda:1"])
    stopped_engines.append(engine)
    blocker = engine.launch("holds cuda:1", budget_seconds=60, device="cuda:1")
    picky = engine.launch("wants cuda:1", budget_seconds=60, device="cuda:1")
    easy = engine.launch("anywhere", budget_seconds=60)
    assert (blocker.device, picky.status, easy.device) == ("cuda:1", "queued", "cuda:0")
    engine.stop(blocker.id)
    until(lambda: engine.store.get(picky.id).status == "running", what="picky run started")
    assert engine.store.get(picky.id).device == "cuda:1"
    # The run sees only its own GPU.
    until(lambda: stand_in_harness.ENVIRONMENT_MARK in log_of(engine, picky.id), what="environment logged")
    assert environment_of(engine, picky.id)["CUDA_VISIBLE_DEVICES"] == "1"


def test_an_unknown_device_names_the_slots(tmp_path: Path) -> None:
    engine = ExperimentEngine(
        new_workspace(tmp_path / "ws", SLEEP_FOREVER), command=stand_in_harness.command, slots=["cuda:0", "cuda:1"]
    )
    with pytest.raises(UserError, match="slots are cuda:0, cuda:1"):
        engine.launch("typo", budget_seconds=5, device="cuda:7")
    assert engine.store.list() == []


def test_slots_come_from_the_devices_setting() -> None:
    assert default_slots("cpu") == ["cpu"]
    assert default_slots("cpu:1") == ["cpu"]
    assert default_slots("cpu:3") == ["cpu:0", "cpu:1", "cpu:2"]
    assert default_slots(" 0, 2 ") == ["cuda:0", "cuda:2"]
    # One slot per GPU NVML reports; the host when there is none.
    assert default_slots("auto") == ([f"cuda:{i}" for i in range(visible_gpu_count())] or ["cpu"])
    with pytest.raises(UserError, match="devices"):
        default_slots("gpu0")


def test_stop_kills_the_whole_group_and_frees_the_slot(tmp_path: Path, stopped_engines: list) -> None:
    spawn = "import subprocess, sys, os\nchild = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\nopen('pids', 'w').write(f'{os.getpid()} {child.pid}')"
    engine = engine_for(tmp_path, train_script(sleep=600, before=spawn))
    stopped_engines.append(engine)
    run = engine.launch("to be stopped", budget_seconds=60)
    waiting = engine.launch("waits for the slot", budget_seconds=60)
    pids_file = engine.run_dir(run.id) / "snapshot" / "pids"
    until(lambda: pids_file.exists() and pids_file.read_text(), what="train.py and its child started")
    processes = [psutil.Process(run.pid)] + [psutil.Process(int(pid)) for pid in pids_file.read_text().split()]
    stopped = engine.stop(run.id)
    assert (stopped.status, stopped.error) == ("killed", "stopped by stop_training; the whole process group was killed")
    assert not any(alive(p) for p in processes)
    with pytest.raises(ProcessLookupError):
        os.killpg(run.pid, 0)
    assert "[autoresearch-mcp] stopped by stop_training" in log_of(engine, run.id)
    until(lambda: engine.store.get(waiting.id).status == "running", what="next run took the slot")


def test_a_run_that_ignores_sigterm_is_killed_after_the_grace(tmp_path: Path, stopped_engines: list) -> None:
    def stubborn(spec: RunSpec) -> list[str]:
        code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); open('ready', 'w'); time.sleep(600)"
        return [sys.executable, "-c", code]

    engine = ExperimentEngine(
        new_workspace(tmp_path / "ws", ""), command=stubborn, limits=Limits(kill_grace_seconds=0.5)
    )
    engine.start()
    stopped_engines.append(engine)
    run = engine.launch("ignores SIGTERM", budget_seconds=60)
    until(lambda: (engine.run_dir(run.id) / "ready").exists(), what="SIGTERM ignored")
    stopped = engine.stop(run.id)
    assert (stopped.status, stopped.exit_code) == ("killed", -9)
    assert not psutil.pid_exists(run.pid) or psutil.Process(run.pid).status() == psutil.STATUS_ZOMBIE


def test_a_supervisor_past_the_backstop_times_out(tmp_path: Path, stopped_engines: list) -> None:
    """The supervisor stops its own phases; a hung one is killed by the runner's single backstop."""
    engine = engine_for(tmp_path, SLEEP_FOREVER, limits=Limits(backstop_override_seconds=0.5, kill_grace_seconds=0.5))
    stopped_engines.append(engine)
    record = finish(engine, engine.launch("never ends", budget_seconds=60).id)
    assert record.status == "timed_out"
    assert record.error.startswith("timed out: the run's supervisor was still running 0.5 s after it started")
    assert not psutil.pid_exists(record.pid) or psutil.Process(record.pid).status() == psutil.STATUS_ZOMBIE


def test_wait_returns_on_each_phase_change(tmp_path: Path, stopped_engines: list) -> None:
    engine = engine_for(tmp_path, SLEEP_FOREVER)
    stopped_engines.append(engine)
    run = engine.launch("watched", budget_seconds=60)
    seen = []
    while "training" not in seen:
        [record] = engine.wait(run.id, 30)
        seen.append(record.phase)
    assert seen[-1] == "training" and len(seen) <= 3  # setup, training (or straight to training)
    queued = engine.launch("queued", budget_seconds=60)
    assert [r.id for r in engine.wait(None, 0)] == [run.id, queued.id]


def log_of(engine: ExperimentEngine, run_id: str) -> str:
    return (engine.run_dir(run_id) / "log.txt").read_text(encoding="utf-8")


def environment_of(engine: ExperimentEngine, run_id: str) -> dict[str, str]:
    for line in log_of(engine, run_id).splitlines():
        if line.startswith(stand_in_harness.ENVIRONMENT_MARK):
            return json.loads(line[len(stand_in_harness.ENVIRONMENT_MARK) :])
    raise AssertionError("the run logged no environment")


def alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
