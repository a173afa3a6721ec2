"""The runner: process groups, the scrubbed environment, limits, and how an exit becomes a status."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

from autoresearch_mcp.sandbox import limits
from autoresearch_mcp.sandbox.engine import host_threads
from autoresearch_mcp.sandbox.runner import (
    HARNESS_MODULE,
    Exit,
    Limits,
    RunProcess,
    RunSpec,
    exception_line,
    harness_command,
    last_traceback,
    outcome,
    run_environment,
)
from autoresearch_mcp.sandbox.runstore import RunRecord
from autoresearch_mcp.tests.engine_helpers import until


def start_script(tmp_path: Path, source: str) -> RunProcess:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(source), encoding="utf-8")
    return RunProcess.start([sys.executable, str(script)], tmp_path, tmp_path / "log.txt", run_environment("cpu"))


def wait_exit(process: RunProcess) -> Exit:
    exit = None

    def ended() -> bool:
        nonlocal exit
        exit = process.poll()
        return exit is not None

    until(ended, what="process exit")
    assert exit is not None
    return exit


def spec(slot: str, data_dir: Path | None = None) -> RunSpec:
    return RunSpec("r0001", Path("/w/.autoresearch/runs/r0001"), "cpu", 60.0, 7, slot, data_dir)


# ---- command and environment -------------------------------------------------------------


def test_harness_command_follows_the_entry_point_contract() -> None:
    command = harness_command(spec("cuda:1", Path("/data")))
    assert command[:3] == [sys.executable, "-m", HARNESS_MODULE]
    arguments = dict(zip(command[3::2], command[4::2], strict=True))
    assert arguments == {
        "--run-dir": "/w/.autoresearch/runs/r0001",
        "--profile": "cpu",
        "--budget": "60",
        "--seed": "7",
        "--isolation": "bubblewrap",
        "--scale": "1",
        "--device": "cuda",
        "--data-dir": "/data",
    }
    # The host slot lets the harness pick MPS or CPU; CUDA is hidden from it anyway.
    assert "--device" not in harness_command(spec("cpu"))


def test_environment_keeps_what_python_needs_and_drops_everything_else() -> None:
    server = {
        "PATH": "/bin",
        "HOME": "/home/me",
        "LC_ALL": "C.UTF-8",
        "VIRTUAL_ENV": "/venv",
        "OPENAI_API_KEY": "sk-secret",
        "AWS_SECRET_ACCESS_KEY": "x",
        "CUDA_VISIBLE_DEVICES": "2,3",
    }
    env = run_environment("cuda:1", server)
    assert {"PATH", "HOME", "LC_ALL", "VIRTUAL_ENV"} <= set(env)
    assert "OPENAI_API_KEY" not in env and "AWS_SECRET_ACCESS_KEY" not in env
    assert env["CUDA_VISIBLE_DEVICES"] == "3"  # slot cuda:1 of the GPUs the server was given
    assert env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert run_environment("cuda:1", {"PATH": "/bin"})["CUDA_VISIBLE_DEVICES"] == "1"
    assert run_environment("cpu", server)["CUDA_VISIBLE_DEVICES"] == ""


def test_runs_that_share_the_host_get_a_share_of_its_cores() -> None:
    cores = len(os.sched_getaffinity(0))
    assert host_threads(["cpu"]) is None and host_threads(["cuda:0", "cpu"]) is None  # one run at a time: all cores
    assert host_threads(["cpu:0", "cpu:1"]) == max(1, cores // 2)
    assert run_environment("cpu:1", {"PATH": "/bin"}, host_threads=3)["OMP_NUM_THREADS"] == "3"
    assert run_environment("cpu:1", {"OMP_NUM_THREADS": "8"}, host_threads=3)["OMP_NUM_THREADS"] == "8"  # the user's
    assert "OMP_NUM_THREADS" not in run_environment("cuda:0", {"PATH": "/bin"}, host_threads=3)


# ---- the process -------------------------------------------------------------------------


def test_a_run_leads_its_own_session_reads_no_stdin_and_logs_both_streams(tmp_path: Path) -> None:
    process = start_script(
        tmp_path,
        """
        import os, sys
        print("out:", os.getpgid(0) == os.getpid() == os.getsid(0))
        print("in:", repr(sys.stdin.read()), file=sys.stderr)
        """,
    )
    assert wait_exit(process) == Exit(0)
    log = (tmp_path / "log.txt").read_text()
    assert "out: True" in log and "in: ''" in log


def test_signal_group_reaches_grandchildren_also_those_that_left_the_group(tmp_path: Path) -> None:
    process = start_script(
        tmp_path,
        """
        import os, subprocess, sys, time
        sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
        same_group = subprocess.Popen(sleeper)
        own_session = subprocess.Popen(sleeper, start_new_session=True)
        open("pids", "w").write(f"{same_group.pid} {own_session.pid}")
        time.sleep(60)
        """,
    )
    until(lambda: (tmp_path / "pids").exists() and (tmp_path / "pids").read_text(), what="grandchildren started")
    grandchildren = [psutil.Process(int(pid)) for pid in (tmp_path / "pids").read_text().split()]
    process.signal_group(signal.SIGKILL)
    assert wait_exit(process) == Exit(-signal.SIGKILL)
    until(
        lambda: not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in grandchildren),
        what="grandchildren gone",
    )
    until(lambda: not process.group_alive(), what="group gone")


def test_adopt_checks_the_creation_time_so_a_reused_pid_is_not_taken_for_the_run(tmp_path: Path) -> None:
    process = start_script(tmp_path, "import time; time.sleep(60)")
    try:
        adopted = RunProcess.adopt(process.pid, process.create_time)
        assert adopted is not None and adopted.poll() is None
        assert RunProcess.adopt(process.pid, process.create_time - 5.0) is None
    finally:
        process.signal_group(signal.SIGKILL)
    wait_exit(process)
    assert RunProcess.adopt(process.pid, process.create_time) is None


# ---- limits ------------------------------------------------------------------------------


def record(**fields: object) -> RunRecord:
    base = dict(
        id="r0001",
        commit="c",
        parent_commit=None,
        description="d",
        profile="cpu",
        budget_seconds=100.0,
        seed=1,
        created_at=0.0,
    )
    return RunRecord(**{**base, **fields})


def test_the_runner_backstop_is_every_phase_limit_plus_slack_from_the_start() -> None:
    """The supervisor stops its own phases and says why; the runner only catches a hung supervisor."""
    held = Limits()
    assert held.deadline(record()) is None  # queued: no clock yet
    # A held start waits at most as long as the evaluation before it (its supervisor's own limit).
    waiting = limits.IMPORT_SECONDS + limits.EVALUATION_SECONDS + limits.SUPERVISOR_SLACK_SECONDS
    expected = limits.SETUP_SECONDS + waiting + limits.training_seconds(100, "cuda") + limits.EVALUATION_SECONDS
    assert held.deadline(record(started_at=1000.0)) == 1000 + expected + limits.SUPERVISOR_SLACK_SECONDS
    assert held.deadline(record(started_at=1000.0, phase="evaluating", phase_started_at=5000.0)) == held.deadline(
        record(started_at=1000.0)
    )
    assert Limits(backstop_override_seconds=3).deadline(record(started_at=10.0)) == 13.0


# ---- outcomes ----------------------------------------------------------------------------

CHAINED = """
def load():
    raise KeyError("vocab")
try:
    load()
except KeyError as error:
    raise RuntimeError("tokenizer missing:\\n  run prepare first") from error
"""


def real_traceback(tmp_path: Path, source: str) -> str:
    script = tmp_path / "crash.py"
    script.write_text(source, encoding="utf-8")
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
    assert result.returncode == 1
    return "step 1 loss 3.2\n" + result.stderr + "harness: train.py exited with 1\n"


def test_the_last_traceback_and_its_exception_line_are_extracted(tmp_path: Path) -> None:
    log = real_traceback(tmp_path, CHAINED)
    traceback = last_traceback(log)
    assert traceback is not None
    assert traceback.startswith("Traceback (most recent call last):") and "raise RuntimeError" in traceback
    assert "KeyError" not in traceback  # the cause's traceback came first; this is the last one
    assert exception_line(log) == "RuntimeError: tokenizer missing:"
    assert last_traceback("no trouble here\n") is None and exception_line("") is None


@pytest.mark.parametrize(
    ("code", "status", "error"),
    [
        (0, "succeeded", None),
        (4, "crashed", "exit 4 (train.py crashed): ZeroDivisionError: division by zero"),
        (5, "crashed", "exit 5 (training fast-failed (NaN or exploding loss))"),
        (-signal.SIGKILL, "crashed", "killed by signal SIGKILL (possibly out of memory)"),
    ],
)
def test_exit_codes_map_to_statuses(tmp_path: Path, code: int, status: str, error: str | None) -> None:
    if code == 0:
        (tmp_path / "summary.json").write_text(json.dumps({"val_bpb": 1.1}))
    if code == 4:
        (tmp_path / "log.txt").write_text(real_traceback(tmp_path, "1 / 0\n"))
    fields = outcome(tmp_path, Exit(code))
    assert (fields["status"], fields["error"], fields["exit_code"]) == (status, error, code)
    assert fields["summary"] == ({"val_bpb": 1.1} if code == 0 else None)


def test_exit_zero_without_a_summary_is_a_crash(tmp_path: Path) -> None:
    fields = outcome(tmp_path, Exit(0))
    assert fields["status"] == "crashed" and "summary.json" in fields["error"]


def test_a_readopted_run_is_judged_by_its_run_dir(tmp_path: Path) -> None:
    (tmp_path / "phase").write_text("training\n")
    lost = outcome(tmp_path, Exit(None))
    assert lost["status"] == "lost" and "phase training" in lost["error"]
    (tmp_path / "phase").write_text("failed\n")
    assert outcome(tmp_path, Exit(None))["status"] == "crashed"
    (tmp_path / "summary.json").write_text(json.dumps({"val_bpb": 0.9}))
    assert outcome(tmp_path, Exit(None)) == {
        "status": "succeeded",
        "summary": {"val_bpb": 0.9},
        "exit_code": None,
        "error": None,
    }


def test_own_child_exit_code_is_read_even_when_it_is_watched_as_adopted(tmp_path: Path) -> None:
    """A server restarted in the same process (tests, reloads) still learns the exit code."""
    process = start_script(tmp_path, "import sys; sys.exit(3)")
    watched = RunProcess(process.pid, process.create_time)  # as the next engine would hold it
    until(lambda: psutil.Process(process.pid).status() == psutil.STATUS_ZOMBIE, what="child exited")
    assert watched.poll() == Exit(3)
    assert not psutil.pid_exists(process.pid) or psutil.Process(process.pid).status() != psutil.STATUS_ZOMBIE


def test_the_supervisor_never_imports_a_module_the_agent_wrote(tmp_path: Path) -> None:
    """`python -m` puts its working directory first on the import path: a json.py in the snapshot
    must not run inside the trusted supervisor, so the supervisor starts in the run folder."""
    from autoresearch_mcp.sandbox.config import WorkspaceConfig
    from autoresearch_mcp.sandbox.engine import ExperimentEngine
    from autoresearch_mcp.tests.engine_helpers import finish
    from autoresearch_mcp.tools.setup import init_workspace

    marker = tmp_path / "imported"
    workspace = init_workspace(tmp_path / "ws", WorkspaceConfig(profile="cpu", editable=["train.py", "json.py"]))
    (workspace.root / "json.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n", encoding="utf-8")

    def supervisor_that_imports_json(spec: RunSpec) -> list[str]:
        return [sys.executable, "-c", "import json, sys; sys.exit(0)"]

    with ExperimentEngine(workspace, command=supervisor_that_imports_json) as engine:
        record = finish(engine, engine.launch("plants json.py", budget_seconds=5).id)
    assert record.finished and not marker.exists()
