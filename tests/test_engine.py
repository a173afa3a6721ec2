"""The experiment engine end to end: snapshots, outcomes, decisions, and surviving a restart.

Most runs use the stand-in harness (tests/stand_in_harness.py); the last test runs the real
harness entry point on the `cpu` profile.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from autoresearch_mcp.nanochat.errors import UserError
from autoresearch_mcp.sandbox import engine as engine_module
from autoresearch_mcp.sandbox.engine import ExperimentEngine
from autoresearch_mcp.sandbox.history import BEST_BRANCH, RUN_REF_PREFIX, open_history
from autoresearch_mcp.sandbox.isolation import Availability
from autoresearch_mcp.sandbox.runner import read_phase
from autoresearch_mcp.sandbox.runstore import RunStore
from autoresearch_mcp.sandbox.workspace import Workspace
from autoresearch_mcp.tests import stand_in_harness
from autoresearch_mcp.tests.engine_helpers import finish, new_workspace, train_script, until
from autoresearch_mcp.tools import experiments
from autoresearch_mcp.tools.history_view import reset_workspace
from autoresearch_mcp.tools.results_tsv import results_tsv


@pytest.fixture
def engine(tmp_path: Path):
    engine = ExperimentEngine(
        new_workspace(tmp_path / "ws", train_script(val_bpb=1.5)), command=stand_in_harness.command
    )
    engine.start()
    yield engine
    for record in reversed(engine.store.list(["queued", "running"])):  # queued first: none starts
        engine.stop(record.id)
    engine.shutdown()


def edit_train(engine: ExperimentEngine, source: str) -> None:
    (engine.workspace.root / "train.py").write_text(source, encoding="utf-8")


def test_a_launched_run_succeeds_with_the_harness_summary(engine: ExperimentEngine) -> None:
    launched = engine.launch("  baseline  ", budget_seconds=5, seed=7)
    assert (launched.status, launched.description, launched.seed, launched.profile) == ("running", "baseline", 7, "cpu")
    record = finish(engine, launched.id)
    assert (record.status, record.exit_code, record.error, record.phase) == ("succeeded", 0, None, "done")
    assert record.summary["val_bpb"] == 1.5
    assert record.started_at <= record.finished_at and record.pid is not None


def test_a_crash_records_the_exception_line_of_the_traceback(engine: ExperimentEngine) -> None:
    edit_train(engine, "def forward(x):\n    return x / 0\nforward(1)\n")
    record = finish(engine, engine.launch("divides by zero", budget_seconds=5).id)
    assert (record.status, record.exit_code, record.phase) == ("crashed", 4, "failed")
    assert record.error == "exit 4 (train.py crashed): ZeroDivisionError: division by zero"
    assert "return x / 0" in (engine.run_dir(record.id) / "log.txt").read_text()


def test_launch_snapshots_without_touching_the_working_copy_index_or_head(engine: ExperimentEngine) -> None:
    repo = open_history(engine.workspace.root)
    baseline = repo.commit(BEST_BRANCH).hexsha
    index_before, head_before = (Path(repo.git_dir) / "index").read_bytes(), repo.head.commit.hexsha
    edit_train(engine, train_script(val_bpb=1.25))
    first = engine.launch("first idea", budget_seconds=5)
    edit_train(engine, train_script(val_bpb=1.125))
    second = engine.launch("second idea on top", budget_seconds=5)
    again = engine.launch("same code again, for noise", budget_seconds=5)
    # Each run's parent is the code it was edited from; unchanged code still makes a run.
    assert (first.parent_commit, second.parent_commit, again.parent_commit) == (baseline, first.commit, second.commit)
    assert repo.commit(again.commit).tree == repo.commit(second.commit).tree
    assert repo.commit(first.commit).message.strip() == "first idea"
    for run in (first, second, again):
        assert repo.commit(RUN_REF_PREFIX + run.id).hexsha == run.commit
    assert (Path(repo.git_dir) / "index").read_bytes() == index_before and repo.head.commit.hexsha == head_before
    assert (engine.workspace.root / "train.py").read_text() == train_script(val_bpb=1.125)
    assert [finish(engine, run.id).summary["val_bpb"] for run in (first, second, again)] == [1.25, 1.125, 1.125]


def test_edits_after_launch_do_not_reach_the_running_snapshot(engine: ExperimentEngine) -> None:
    edit_train(engine, train_script(sleep=1.0, val_bpb=1.25))
    run = engine.launch("slow run", budget_seconds=5)
    edit_train(engine, "raise SystemExit('edited after launch')\n")
    record = finish(engine, run.id)
    assert (record.status, record.summary["val_bpb"]) == ("succeeded", 1.25)
    assert (engine.run_dir(run.id) / "snapshot" / "train.py").read_text() == train_script(sleep=1.0, val_bpb=1.25)


def test_keep_moves_best_and_discard_leaves_it(engine: ExperimentEngine) -> None:
    repo = open_history(engine.workspace.root)
    kept = finish(engine, engine.launch("better", budget_seconds=5).id)
    assert engine.decide(kept.id, "keep", note="clear win").decision == "keep"
    assert repo.commit(BEST_BRANCH).hexsha == kept.commit
    edit_train(engine, train_script(val_bpb=2.0))
    worse = finish(engine, engine.launch("worse", budget_seconds=5).id)
    discarded = engine.decide(worse.id, "discard", note="regressed")
    assert (discarded.decision, discarded.note) == ("discard", "regressed")
    assert repo.commit(BEST_BRANCH).hexsha == kept.commit


def test_decisions_are_refused_when_they_make_no_sense(engine: ExperimentEngine) -> None:
    edit_train(engine, "raise ValueError('bad idea')\n")
    crashed = finish(engine, engine.launch("crashes", budget_seconds=5).id)
    with pytest.raises(UserError, match="only a succeeded run can be kept"):
        engine.decide(crashed.id, "keep")
    engine.decide(crashed.id, "discard")
    with pytest.raises(UserError, match="already decided \\(discard\\)"):
        engine.decide(crashed.id, "discard")
    edit_train(engine, train_script(sleep=600))
    running = engine.launch("still going", budget_seconds=60)
    with pytest.raises(UserError, match="still running"):
        engine.decide(running.id, "keep")
    with pytest.raises(UserError, match="no run 'r0099'"):
        engine.decide("r0099", "keep")
    with pytest.raises(UserError, match="not a run id"):
        engine.run_dir("../../etc")


def test_a_launch_after_reset_workspace_descends_from_the_reset_target(engine: ExperimentEngine) -> None:
    repo = open_history(engine.workspace.root)
    first = engine.launch("first", budget_seconds=5)
    reset_workspace(engine.workspace, BEST_BRANCH)  # it holds the workspace lock, as launch does
    second = engine.launch("from best again", budget_seconds=5)
    assert second.parent_commit == repo.commit(BEST_BRANCH).hexsha != first.commit


def test_launch_refuses_bad_arguments_before_recording_anything(engine: ExperimentEngine) -> None:
    for arguments, message in [
        (dict(description=" "), "describe the experiment"),
        (dict(description="x", budget_seconds=0), "budget_seconds must be"),
        (dict(description="x", budget_seconds=float("nan")), "budget_seconds must be"),
        (dict(description="x", seed=-1), "seed must be"),
    ]:
        with pytest.raises(UserError, match=message):
            engine.launch(**arguments)
    assert engine.store.list() == []


# ---- restarts ----------------------------------------------------------------------------

SERVER = """
import sys, time
from autoresearch_mcp.sandbox.engine import ExperimentEngine
from autoresearch_mcp.sandbox.workspace import Workspace
from autoresearch_mcp.tests import stand_in_harness
engine = ExperimentEngine(Workspace(sys.argv[1]), command=stand_in_harness.command)
engine.start()
for description in sys.argv[2:]:
    engine.launch(description, budget_seconds=30)
print("launched", flush=True)
time.sleep(600)
"""


def serve_and_die(root: Path, *descriptions: str) -> None:
    """A server in another process launches runs, and is killed once the first one trains."""
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(root), *descriptions], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout.readline().strip() == "launched"
        run_dir = root / ".autoresearch" / "runs" / "r0001"
        until(lambda: (read_phase(run_dir) or ("",))[0] == "training", what="first run training")
    finally:
        server.kill()
        server.wait()


def test_a_restarted_engine_readopts_a_live_run_and_requeues_the_rest(tmp_path: Path) -> None:
    root = tmp_path / "ws"
    note_start = "open('trained_from', 'w').write(repr(time.time()))"
    new_workspace(root, train_script(sleep=1.5, val_bpb=1.25, before=note_start))
    serve_and_die(root, "survives the restart", "was queued")
    running, queued = RunStore(root / ".autoresearch" / "runs.db").list()
    assert (running.status, queued.status) == ("running", "queued")
    assert psutil.pid_exists(running.pid)
    with ExperimentEngine(Workspace(root), command=stand_in_harness.command) as engine:
        adopted = finish(engine, running.id)
        assert (adopted.status, adopted.summary["val_bpb"], adopted.exit_code) == ("succeeded", 1.25, None)
        after = finish(engine, queued.id)
        assert after.status == "succeeded"
        # It may set up while the adopted run is evaluated (a held start), and trains once that one has ended.
        trained_from = float((engine.run_dir(after.id) / "snapshot" / "trained_from").read_text())
        assert trained_from >= (engine.run_dir(adopted.id) / "phase").stat().st_mtime


def test_a_run_whose_process_died_with_the_server_is_lost_with_its_log(tmp_path: Path) -> None:
    root = tmp_path / "ws"
    new_workspace(root, train_script(sleep=600))
    serve_and_die(root, "dies with the server")
    [orphan] = RunStore(root / ".autoresearch" / "runs.db").list()
    os.killpg(orphan.pid, signal.SIGKILL)
    until(lambda: not psutil.pid_exists(orphan.pid), what="orphan gone")
    with ExperimentEngine(Workspace(root), command=stand_in_harness.command) as engine:
        lost = engine.store.get(orphan.id)
        assert lost.status == "lost" and lost.finished_at is not None
        assert "without a summary in phase training" in lost.error
        assert stand_in_harness.ENVIRONMENT_MARK in (engine.run_dir(orphan.id) / "log.txt").read_text()


# ---- the real supervisor: tests/test_sandbox_attacks.py runs it through the engine -----------


def test_a_local_data_source_reaches_the_harness_command(tmp_path: Path) -> None:
    from autoresearch_mcp.sandbox.config import WorkspaceConfig
    from autoresearch_mcp.sandbox.runner import RunSpec, harness_command
    from autoresearch_mcp.tools.setup import init_workspace

    workspace = init_workspace(tmp_path / "ws", WorkspaceConfig(profile="cpu", devices="cpu", data_source="corpus"))
    with ExperimentEngine(workspace) as engine:
        source = engine.runner.data_source
    assert source == str(workspace.root / "corpus")
    spec = RunSpec("r0001", tmp_path / "run", "cpu", 5.0, 1, "cpu", None, source)
    command = harness_command(spec)
    assert command[command.index("--data-source") + 1] == source


# ---- isolation ------------------------------------------------------------------------------


def _opt_out(root: Path) -> None:
    config = root / ".autoresearch" / "config.toml"
    config.write_text(config.read_text().replace('isolation = "bubblewrap"', 'isolation = "none"'))


def test_where_no_sandbox_can_be_had_a_launch_is_refused_with_the_reason_and_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The probe is the operating system's answer; here it is made to say no, as on macOS."""
    missing = Availability(None, None, "bubblewrap needs Linux and this is darwin", 'opt out with isolation = "none"')
    monkeypatch.setattr(engine_module, "availability", lambda: missing)
    with ExperimentEngine(new_workspace(tmp_path / "ws", train_script()), command=stand_in_harness.command) as engine:
        with pytest.raises(UserError, match='cannot launch: .*darwin; opt out with isolation = "none"'):
            engine.launch("refused")
        assert engine.store.list() == []
    _opt_out(tmp_path / "ws")
    with ExperimentEngine(Workspace(tmp_path / "ws"), command=stand_in_harness.command) as engine:
        record = finish(engine, engine.launch("opted out", budget_seconds=5).id)
        assert (record.status, record.isolation) == ("succeeded", "none")


def test_an_opted_out_run_is_marked_unisolated_everywhere_it_is_listed(tmp_path: Path) -> None:
    _opt_out(new_workspace(tmp_path / "ws", train_script(val_bpb=1.25)).root)
    with ExperimentEngine(Workspace(tmp_path / "ws"), command=stand_in_harness.command) as engine:
        record = finish(engine, engine.launch("opted out", budget_seconds=5).id)
        listing = experiments.list_experiments(engine)
        metrics = experiments.read_metrics(engine, record.id)
        tsv = results_tsv(engine.store, engine.workspace.config.noise_k)
    assert listing.experiments[0].unisolated and " unisolated " in listing.text()
    assert metrics.unisolated and "(unisolated: made without a sandbox)" in metrics.text()
    assert "\t[unisolated] opted out" in tsv
