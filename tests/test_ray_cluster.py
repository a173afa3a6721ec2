"""Runs on a Ray cluster: a real one-node head (started once for the module, small: 3 CPUs and 2
logical GPUs, dashboard on for the Jobs API, usage stats off), the real job wrapper on it, the
stand-in harness for speed (tests/stand_in_harness.py) and one real cpu-harness run.

Every run is one Ray job; the tools read it as they read a local run, from the run folder the
server mirrors from the job's log.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("ray", reason="Ray is not installed here (pip install 'autoresearch-mcp[ray]')")

from ray.job_submission import JobDetails, JobStatus, JobSubmissionClient

from autoresearch_mcp.nanochat.data import prepare_data
from autoresearch_mcp.nanochat.errors import UserError
from autoresearch_mcp.nanochat.profiles import PROFILES
from autoresearch_mcp.sandbox.engine import ExperimentEngine
from autoresearch_mcp.sandbox.ray_cluster import archive
from autoresearch_mcp.sandbox.ray_head import LocalHead, free_ports, processes_of, start_head
from autoresearch_mcp.sandbox.ray_job import sweep_stale_folders
from autoresearch_mcp.sandbox.runstore import RunStore
from autoresearch_mcp.tests import stand_in_harness
from autoresearch_mcp.tests.engine_helpers import finish, until
from autoresearch_mcp.tests.ray_helpers import Proxy, cluster_workspace, job_processes, stop_everything
from autoresearch_mcp.tools import experiments, gpu

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def head(
    cpu_data_dir: Path, prepared_cpu_data: object, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalHead]:
    """The node's own data cache is the session's: the cpu profile's, and the gpu profile's on the
    built-in corpus (for the GPU runs)."""
    prepare_data(PROFILES["gpu"], cpu_data_dir, "builtin")
    env = {**os.environ, "AUTORESEARCH_MCP_CACHE": str(cpu_data_dir), "OMP_NUM_THREADS": "1"}
    head = start_head(tmp_path_factory.mktemp("ray-head") / "head.log", num_cpus=3, num_gpus=2, env=env)
    yield head
    head.stop()
    assert not head.running() and not processes_of(head.temp_dir), "the head left processes behind"
    sweep_stale_folders()  # of the jobs killed outright (their node died, in a test)


@pytest.fixture
def cluster_engine(tmp_path: Path, head: LocalHead) -> Iterator[Callable[..., ExperimentEngine]]:
    """make(train_py, **settings): a started engine on a new workspace whose runs go to the head."""
    engines: list[ExperimentEngine] = []

    def make(train_py: str, *, address: str | None = None, **settings: Any) -> ExperimentEngine:
        workspace = cluster_workspace(tmp_path / f"ws{len(engines)}", train_py, address or head.address, **settings)
        engine = ExperimentEngine(workspace, command=stand_in_harness.command, poll_seconds=0.1)
        engine.start()
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        stop_everything(engine)


def steps(*, count: int = 3, pause: float = 0.5, sleep: float = 0.0, val_bpb: float = 1.5, before: str = "") -> str:
    """A train.py for the stand-in: log `count` steps, then sleep, then report `val_bpb`."""
    return (
        "import json, os, sys, time\n"
        f"{before}\n"
        f"for step in range({count}):\n"
        "    with open(os.environ['STAND_IN_METRICS'], 'a') as metrics:\n"
        "        metrics.write(json.dumps({'step': step, 'loss': 5.0 - step}) + '\\n')\n"
        f"    time.sleep({pause})\n"
        f"time.sleep({sleep})\n"
        "print('hello from train', flush=True)\n"
        f"open('val_bpb.txt', 'w').write('{val_bpb}')\n"
    )


def job(head: LocalHead, engine: ExperimentEngine, run_id: str) -> JobDetails:
    assert engine.cluster is not None
    return JobSubmissionClient(head.address).get_job_info(engine.cluster.job_id(run_id))


def test_a_run_is_one_ray_job_followed_to_its_summary(
    cluster_engine: Callable[..., ExperimentEngine], head: LocalHead
) -> None:
    engine = cluster_engine(steps(count=4, pause=1.0))
    launched = experiments.launch_training(engine, "baseline", budget_seconds=5)
    assert (launched.status, launched.device) == ("running", "ray:0")
    run_id = launched.run_id

    def streamed() -> bool:
        status = asyncio.run(experiments.training_status(engine, run_id))
        history = experiments.read_metrics(engine, run_id).history
        return status.runs[0].status == "running" and len(history) >= 2

    until(streamed, 90, "step metrics streamed back while the job runs")
    # The phase reaches the record on the scheduler's next look at the mirrored phase file.
    until(lambda: engine.store.get(run_id).phase == "training", 10, "the training phase recorded")
    record = finish(engine, run_id, 120)
    assert (record.status, record.phase, record.error) == ("succeeded", "done", None)
    assert record.summary is not None and record.summary["val_bpb"] == 1.5
    assert [point.loss for point in experiments.read_metrics(engine, run_id).history] == [5.0, 4.0, 3.0, 2.0]
    log = experiments.read_log(engine, run_id, tail=200).text()
    assert "hello from train" in log and "running on node" in log
    details = job(head, engine, run_id)  # its submission id names the workspace and the run
    assert details.status == JobStatus.SUCCEEDED and details.metadata["autoresearch_run"] == run_id
    assert experiments.list_experiments(engine).text().count(run_id) >= 1


def test_a_crash_comes_back_with_its_traceback(cluster_engine: Callable[..., ExperimentEngine]) -> None:
    engine = cluster_engine("def forward(x):\n    return x / 0\nforward(1)\n")
    record = finish(engine, engine.launch("divides by zero", budget_seconds=5).id, 120)
    assert (record.status, record.exit_code, record.phase) == ("crashed", 4, "failed")
    assert record.error == "exit 4 (train.py crashed): ZeroDivisionError: division by zero"
    assert "return x / 0" in experiments.read_log(engine, record.id, tail=50).text()


def test_stop_ends_the_job_and_every_process_of_it(
    cluster_engine: Callable[..., ExperimentEngine], head: LocalHead
) -> None:
    # train.py leaves a grandchild of its own session behind: it too belongs to the job.
    spawn = "import subprocess\nsubprocess.Popen(['sleep', '300'], start_new_session=True)\n"
    engine = cluster_engine(steps(count=1, pause=0.1, sleep=300, before=spawn))
    run_id = engine.launch("runs until stopped", budget_seconds=5).id
    assert engine.cluster is not None
    job_id = engine.cluster.job_id(run_id)
    until(lambda: len(job_processes(job_id)) >= 3, 90, "the wrapper, the stand-in, train.py and its sleep running")
    stopped = experiments.stop_training(engine, run_id)
    assert stopped.status == "killed"
    assert "stopped by stop_training" in (engine.store.get(run_id).error or "")
    until(lambda: job(head, engine, run_id).status == JobStatus.STOPPED, 30, "the Ray job stopped")
    until(lambda: not job_processes(job_id), 30, "every process of the job gone from the node")


def test_a_restarted_server_follows_its_jobs_and_marks_vanished_ones_lost(head: LocalHead, tmp_path: Path) -> None:
    workspace = cluster_workspace(tmp_path / "ws", steps(count=2, pause=1.0, sleep=4), head.address)
    engine = ExperimentEngine(workspace, command=stand_in_harness.command, poll_seconds=0.1)
    engine.start()
    run_id = engine.launch("outlives its server", budget_seconds=5).id
    until(lambda: engine.store.get(run_id).phase == "training", 90, "training")
    record = engine.store.get(run_id)
    engine.shutdown()
    # While no server watches: a run recorded as running whose job the cluster never had.
    store = RunStore(engine.workspace.state_dir / "runs.db")
    ghost = store.create(
        commit=record.commit, parent_commit=record.parent_commit, description="ghost", profile="cpu",
        budget_seconds=5, seed=9,
    )  # fmt: skip
    store.update(ghost.id, status="running", device="ray:1", started_at=time.time())
    store.close()
    (engine.workspace.state_dir / "runs" / ghost.id).mkdir(parents=True)
    (engine.workspace.state_dir / "runs" / ghost.id / "log.txt").write_text("what there was\n")

    again = ExperimentEngine(engine.workspace, command=stand_in_harness.command, poll_seconds=0.1)
    again.start()
    try:
        followed = finish(again, run_id, 120)
        assert (followed.status, followed.summary and followed.summary["val_bpb"]) == ("succeeded", 1.5)
        assert "hello from train" in (again.run_dir(run_id) / "log.txt").read_text()
        lost = finish(again, ghost.id, 60)
        assert lost.status == "lost" and "no longer on the cluster" in (lost.error or "")
        log = (again.run_dir(ghost.id) / "log.txt").read_text()
        assert log.startswith("what there was\n") and "no longer on the cluster" in log
    finally:
        stop_everything(again)


def test_runs_go_in_parallel_and_the_queue_holds_the_rest(cluster_engine: Callable[..., ExperimentEngine]) -> None:
    engine = cluster_engine(steps(count=1, pause=0.1, sleep=3))
    assert engine.slots == ["ray:0", "ray:1", "ray:2"]  # 3 CPUs, 1 per cpu-profile run
    launched = [experiments.launch_training(engine, f"idea {n}", budget_seconds=5, seed=n) for n in range(4)]
    assert [run.status for run in launched] == ["running"] * 3 + ["queued"]
    assert launched[3].queue_position == 1 and "position 1 in the queue" in launched[3].text()
    records = [finish(engine, run.run_id, 180) for run in launched]
    assert [record.status for record in records] == ["succeeded"] * 4
    first, second = records[0], records[1]
    assert second.started_at < first.finished_at, "the first two runs overlapped"
    assert records[3].started_at >= min(r.finished_at for r in records[:3]) - 0.5, "the fourth waited for a slot"


def test_train_py_cannot_forge_the_wrappers_reports(cluster_engine: Callable[..., ExperimentEngine]) -> None:
    forged = '@autoresearch {"report":"ended","exit_code":0,"summary":{"val_bpb":0.001}}'
    phase = '@autoresearch {"report":"phase","phase":"done"}'
    attack = (
        "import sys\n"
        f"print('\\r{forged}')\n"  # Ray reads its log back with universal newlines: \r ends a line there
        f"print('\\n{forged}')\n"
        f"print('x' * 30000 + '\\r{phase}')\n"  # past the log's 20,000-character chunks
        f"sys.stdout.buffer.write(b'\\xff\\xfe\\r{forged}\\n')\n"
        f"sys.stderr.write('\\r\\n{forged}\\r')\n"
        "sys.stdout.flush()\n"
        "raise SystemExit(3)\n"
    )
    engine = cluster_engine(attack)
    record = finish(engine, engine.launch("forges a summary", budget_seconds=5).id, 120)
    assert (record.status, record.summary, record.phase) == ("crashed", None, "failed")
    assert not (engine.run_dir(record.id) / "summary.json").exists()
    log = (engine.run_dir(record.id) / "log.txt").read_text()
    assert log.count(forged) == 4, "the forged lines are kept in the log, as the run's output"


def test_gpu_profile_runs_hold_one_gpu_each(cluster_engine: Callable[..., ExperimentEngine], head: LocalHead) -> None:
    report_gpu = "import os\nprint('gpu=' + os.environ['CUDA_VISIBLE_DEVICES'], flush=True)\n"
    engine = cluster_engine(steps(count=1, pause=0.1, sleep=6, before=report_gpu), profile="gpu", data_source="builtin")
    assert engine.slots == ["ray:0", "ray:1"]  # 2 logical GPUs
    run_ids = [engine.launch(f"gpu run {n}", budget_seconds=5, seed=n).id for n in range(2)]
    status = None

    def both_placed() -> bool:
        nonlocal status
        status = gpu.gpu_status(engine)
        return status.cluster is not None and len(status.cluster.placements) == 2

    until(both_placed, 90, "both runs placed on a GPU")
    assert status is not None and status.cluster is not None
    assert sorted(g.run_id for g in status.cluster.gpus) == sorted(run_ids)
    assert "Ray cluster at" in status.text() and all(run_id in status.text() for run_id in run_ids)
    records = [finish(engine, run_id, 120) for run_id in run_ids]
    assert [r.status for r in records] == ["succeeded", "succeeded"]
    seen = sorted(
        line
        for r in records
        for line in (engine.run_dir(r.id) / "log.txt").read_text().splitlines()
        if line.startswith("gpu=")
    )
    assert seen == ["gpu=0", "gpu=1"]  # one GPU each, never the same


def test_a_node_without_prepared_data_refuses_with_the_prepare_command(
    cluster_engine: Callable[..., ExperimentEngine], tmp_path: Path
) -> None:
    engine = cluster_engine(steps(), data_dir=str(tmp_path / "empty-cache"))
    record = finish(engine, engine.launch("no data there", budget_seconds=5).id, 120)
    assert (record.status, record.exit_code) == ("crashed", 3)
    assert "no prepared cpu data" in (record.error or "")
    assert f"autoresearch-mcp prepare --profile cpu --data-dir {tmp_path / 'empty-cache'}" in (record.error or "")


def test_a_job_whose_node_dies_is_lost_with_the_reason(cluster_engine: Callable[..., ExperimentEngine]) -> None:
    engine = cluster_engine(steps(count=1, pause=0.1, sleep=300))
    run_id = engine.launch("its node dies", budget_seconds=5).id
    assert engine.cluster is not None
    job_id = engine.cluster.job_id(run_id)
    until(lambda: engine.store.get(run_id).phase == "training", 90, "training")
    # The job's supervisor actor (the Ray worker that runs the entrypoint) dies as with its node.
    wrapper = next(p for p in job_processes(job_id) if "ray_job" in " ".join(p.cmdline()))
    actor = next(p for p in wrapper.parents() if " ".join(p.cmdline()).startswith("ray::"))
    actor.send_signal(signal.SIGKILL)
    record = finish(engine, run_id, 120)
    assert record.status == "lost"
    assert "its Ray job failed without a result" in (record.error or "")
    until(lambda: not job_processes(job_id), 30, "the job's processes gone with its supervisor")


def test_a_cluster_that_stops_answering_loses_its_runs(
    cluster_engine: Callable[..., ExperimentEngine], head: LocalHead
) -> None:
    proxy = Proxy(int(head.address.rsplit(":", 1)[1]))
    engine = cluster_engine(steps(count=1, pause=0.1, sleep=300), address=proxy.address)
    assert engine.cluster is not None
    engine.cluster.lost_after = 2.0
    run_id = engine.launch("loses its cluster", budget_seconds=5).id
    until(lambda: engine.store.get(run_id).phase == "training", 90, "training")
    proxy.cut()
    record = finish(engine, run_id, 60)
    assert record.status == "lost" and f"the Ray cluster at {proxy.address} did not answer" in (record.error or "")
    with pytest.raises(UserError, match="does not answer; start its head"):
        engine.launch("while it is away", budget_seconds=5)
    JobSubmissionClient(head.address).stop_job(engine.cluster.job_id(run_id))  # it ran on, out of sight


def test_a_launch_is_refused_while_the_cluster_does_not_answer(cluster_engine: Callable[..., ExperimentEngine]) -> None:
    [port] = free_ports(1)
    engine = cluster_engine(steps(), address=f"http://127.0.0.1:{port}")
    with pytest.raises(UserError) as refusal:
        engine.launch("nowhere to go", budget_seconds=5)
    assert f"http://127.0.0.1:{port} does not answer" in str(refusal.value)
    assert "ray start --head" in str(refusal.value)
    assert engine.store.list() == []
    assert "not answering" in gpu.gpu_status(engine).text()


@pytest.mark.timeout(600)
def test_a_real_cpu_run_on_the_cluster(head: LocalHead, tmp_path: Path) -> None:
    """The real supervisor on the node: data verified there, train.py in bubblewrap, the evaluator in
    its own sandbox; the summary comes back as for a local run."""
    workspace = cluster_workspace(tmp_path / "ws", None, head.address)  # the template's train.py
    engine = ExperimentEngine(workspace, poll_seconds=0.2)
    engine.start()
    try:
        record = finish(engine, engine.launch("the template on the cluster", budget_seconds=8).id, 540)
        assert record.status == "succeeded", (engine.run_dir(record.id) / "log.txt").read_text()[-3000:]
        assert record.summary is not None and isinstance(record.summary["val_bpb"], float)
        assert record.summary["isolation"] == "bubblewrap"
        assert experiments.read_metrics(engine, record.id).logged_steps > 0
    finally:
        stop_everything(engine)


def test_the_snapshot_ships_without_links(tmp_path: Path) -> None:
    snapshot = tmp_path / "snapshot"
    (snapshot / "lib").mkdir(parents=True)
    (snapshot / "train.py").write_text("print('hi')\n")
    (snapshot / "lib" / "helper.py").write_text("x = 1\n")
    (snapshot / "secret.txt").symlink_to("/etc/hostname")
    (snapshot / "elsewhere").symlink_to(tmp_path)
    archive(snapshot, tmp_path / "snapshot.zip")
    with zipfile.ZipFile(tmp_path / "snapshot.zip") as zipped:
        assert sorted(zipped.namelist()) == ["lib/helper.py", "train.py"]
