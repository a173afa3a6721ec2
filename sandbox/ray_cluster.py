"""Runs on a Ray cluster, behind the scheduler's runner interface: one Ray job per run.

Chosen by the workspace's `[cluster]` table (`backend = "ray"`) and imported only then, since it
imports Ray (`pip install 'autoresearch-mcp[ray]'`).

- `RayCluster`: the cluster at `address`, or a one-node head this server starts and stops itself
  (`address = "local"`, sandbox/ray_head.py): whether it answers, its nodes and their GPUs and
  CPUs (the scheduler's slots), its Jobs API client, and the jobs this server follows.
- `RayRunner`: the scheduler's runner. A run becomes a job whose working_dir is the run's
  snapshot (archived), which reserves one GPU (GPU profiles) or `cpus_per_run` CPUs (the cpu profile), and
  whose entrypoint is sandbox/ray_job.py wrapping the same supervisor command a local run gets.
  Its submission id is made of the workspace's and the run's ids, so a restarted server finds it.
- `RayJob`: the scheduler's handle on one job. A thread of its own submits it, then follows it:
  it feeds the job's log into a Mirror of the run folder (sandbox/job_stream.py: log, phase,
  step metrics, summary) and watches the job's status, so the scheduler's `poll` is answered
  from memory, never over the network, and a stop is sent from that thread too.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import shlex
import signal
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

from ray.job_submission import JobDetails, JobStatus, JobSubmissionClient
from ray.util.state import list_nodes

from autoresearch_mcp.nanochat import contract
from autoresearch_mcp.nanochat.errors import UserError
from autoresearch_mcp.sandbox.cluster import ClusterGpu, ClusterNode, ClusterReport
from autoresearch_mcp.sandbox.config import LOCAL_HEAD, ClusterConfig
from autoresearch_mcp.sandbox.job_stream import JOB_PREFIX, SNAPSHOT_ARCHIVE, Mirror, describe
from autoresearch_mcp.sandbox.ray_head import LocalHead, jobs_api_answers, start_head
from autoresearch_mcp.sandbox.runner import CUDA_PREFIX, HOST_SLOT, Exit, RunHandle, Runner
from autoresearch_mcp.sandbox.runstore import RunRecord

log = logging.getLogger("autoresearch_mcp.sandbox")

SLOT_PREFIX = "ray:"  # the scheduler's slots on a cluster: ray:0, ray:1, ... (one run each)
CPU_PROFILE = "cpu"  # the one profile whose runs reserve CPUs instead of a GPU
JOB_MODULE = "autoresearch_mcp.sandbox.ray_job"
HEAD_FILE = "ray-head.json"  # in the workspace's state folder: the head `address = "local"` started
HEAD_LOG = "ray-head.log"
LOST_AFTER_SECONDS = 60.0  # a cluster that does not answer this long loses the runs it held
LOG_POLL_SECONDS = 1.0  # how often a running job's log is read (plus a second per 4 MB of it)
STATUS_POLL_SECONDS = 5.0  # how often its status is asked while it reports nothing new
ENDING_POLL_SECONDS = 0.2  # ... and once it has ended, or a stop was sent
NODES_TIMEOUT_SECONDS = 10
START_HEAD_HINT = "`ray start --head --dashboard-host 0.0.0.0` on the head machine"


class RayCluster:
    """The Ray cluster runs go to, and the jobs this server follows on it."""

    def __init__(self, config: ClusterConfig, state_dir: Path, workspace_key: str) -> None:
        self.config = config
        self.state_dir = state_dir
        self.workspace_key = workspace_key
        self.local = config.address == LOCAL_HEAD
        self.address = "" if self.local else config.address.rstrip("/")  # a local head's, once started
        # The nodes' interpreter: a local head's job runs ours; a cluster's, whatever `python` is there.
        self.python = config.python or (sys.executable if self.local else "python")
        self.lost_after = LOST_AFTER_SECONDS
        self.head: LocalHead | None = None
        self._client: JobSubmissionClient | None = None
        self._jobs: dict[str, RayJob] = {}  # run id -> the job followed, while it runs
        self._lock = threading.Lock()  # guards _client and _jobs; a leaf, held for no network call

    # ---- lifecycle --------------------------------------------------------------------

    def connect(self) -> None:
        """With `address = "local"`: find the head a previous server left running, or start one."""
        if not self.local:
            return
        state = self.state_dir / HEAD_FILE
        self.head = LocalHead.load(state)
        if self.head is None:
            log.info('starting a one-node Ray head (address = "local")')
            self.head = start_head(self.state_dir / HEAD_LOG)
            self.head.save(state)
        self.address = self.head.address

    def close(self, runs_active: bool) -> None:
        """Stop following jobs (they go on, for the next server); stop a local head unless it runs
        some of this workspace's runs."""
        with self._lock:
            jobs, self._jobs = list(self._jobs.values()), {}
        for job in jobs:
            job.close()
        if self.head is None:
            return
        if runs_active:
            log.info("leaving the local Ray head running: runs are still going, the next server follows them")
            return
        self.head.stop()
        (self.state_dir / HEAD_FILE).unlink(missing_ok=True)
        self.head = None

    # ---- the cluster ------------------------------------------------------------------

    def check(self) -> None:
        """Refuse (UserError) while the cluster does not answer: a launch must not queue runs that
        cannot start."""
        if not jobs_api_answers(self.address):
            raise UserError(self.unreachable())

    def unreachable(self) -> str:
        if self.local:
            return (
                f"the local Ray head this server started ({self.address or 'not started'}) does not answer; "
                f"its log is {self.state_dir / HEAD_LOG}. Restart the server to start a new one"
            )
        return (
            f"the Ray cluster at {self.address} does not answer; start its head ({START_HEAD_HINT}), or point "
            "address under [cluster] in .autoresearch/config.toml at a running cluster's Jobs API "
            '(http://HEAD:8265), or at "local"'
        )

    def nodes(self) -> list[ClusterNode]:
        """The cluster's nodes, as its state API lists them."""
        found = list_nodes(address=self.address, timeout=NODES_TIMEOUT_SECONDS, raise_on_missing_output=False)
        return [
            ClusterNode(
                name=node.node_name,
                ip=node.node_ip,
                alive=node.state == "ALIVE",
                cpus=float(node.resources_total.get("CPU", 0)),
                gpus=int(node.resources_total.get("GPU", 0)),
            )
            for node in found
        ]

    def slots(self, profile: str) -> list[str]:
        """One slot per run the cluster can hold at once: its GPUs, or for the cpu profile its CPUs
        in shares of `cpus_per_run`. UserError when it holds none."""
        try:
            alive = [node for node in self.nodes() if node.alive]
        except Exception as error:  # the state API's own errors as well as the network's
            raise UserError(f"{self.unreachable()} ({_one_line(error)})") from error
        if profile == CPU_PROFILE:
            count = sum(math.floor(node.cpus / self.config.cpus_per_run + 1e-9) for node in alive)
            need = f"{self.config.cpus_per_run:g} CPU(s) per run (cpus_per_run under [cluster])"
        else:
            count = sum(node.gpus for node in alive)
            need = "a GPU per run"
        if count == 0:
            raise UserError(
                f"the Ray cluster at {self.address} has {len(alive)} node(s) and room for no {profile} run: it needs "
                f"{need}. Start a worker with GPUs (`ray start --address HEAD:6379`), or use the cpu profile"
            )
        return [f"{SLOT_PREFIX}{index}" for index in range(count)]

    def client(self) -> JobSubmissionClient:
        with self._lock:
            client = self._client
        if client is None:
            client = JobSubmissionClient(self.address)  # asks the cluster for its version: may raise
            with self._lock:
                self._client = client
        return client

    def job_id(self, run_id: str) -> str:
        return f"{JOB_PREFIX}{self.workspace_key}-{run_id}"

    def report(self, running: list[RunRecord]) -> ClusterReport:
        """The nodes, every GPU and the run that holds it, and where each running run is."""
        with self._lock:
            jobs = list(self._jobs.items())
        placed = {run_id: job.mirror.placement for run_id, job in jobs if job.mirror.placement is not None}
        placements = {run.id: describe(placed[run.id]) for run in running if run.id in placed}
        holders = {
            (place.ip, gpu.strip()): run_id
            for run_id, place in placed.items()
            if place.gpus
            for gpu in place.gpus.split(",")
        }
        try:
            nodes = self.nodes()
        except Exception as error:
            return ClusterReport(
                address=self.address, reachable=False, reason=str(error), nodes=[], gpus=[], placements=placements
            )
        gpus = [
            ClusterGpu(node=node.ip, index=index, run_id=holders.get((node.ip, str(index))))
            for node in nodes
            if node.alive
            for index in range(node.gpus)
        ]
        return ClusterReport(
            address=self.address, reachable=True, reason=None, nodes=nodes, gpus=gpus, placements=placements
        )

    # ---- jobs -------------------------------------------------------------------------

    def follow(self, run_id: str, run_dir: Path, submission: dict[str, Any] | None) -> RayJob:
        """Start following the run's job (after submitting it, given a `submission`)."""
        job = RayJob(self, run_id, run_dir, submission)
        with self._lock:
            self._jobs[run_id] = job
        job.begin()
        return job

    def forget(self, run_id: str) -> None:
        with self._lock:
            self._jobs.pop(run_id, None)


class RayRunner(Runner):
    """Starts runs as Ray jobs; `adopt` follows the job of a run a previous server started."""

    def __init__(self, cluster: RayCluster, runs_root: Path, **settings: Any) -> None:
        # The nodes' own cache (or the one [cluster] data_dir names there), never a folder of this machine.
        data_dir = cluster.config.data_dir
        super().__init__(runs_root, **{**settings, "data_dir": None if data_dir is None else Path(data_dir)})
        self.cluster = cluster

    holds_starts = False  # a node's runs are not started alongside another: the scheduler never passes `after`

    def start(self, record: RunRecord, slot: str, after: RunHandle | None = None) -> RayJob:
        snapshot = self.spec(record, slot).snapshot_dir
        if not snapshot.is_dir():
            raise FileNotFoundError(f"the run's code snapshot {snapshot} is missing")
        return self.cluster.follow(record.id, self.run_dir(record.id), self.submission(record))

    def adopt(self, record: RunRecord) -> RayJob:
        return self.cluster.follow(record.id, self.run_dir(record.id), None)

    def submission(self, record: RunRecord) -> dict[str, Any]:
        """The job of a run: its id, entrypoint and resources (RayJob adds the snapshot)."""
        gpu = record.profile != CPU_PROFILE
        job_slot = f"{CUDA_PREFIX}0" if gpu else HOST_SLOT  # on the node: the job's one GPU, or none
        # The supervisor as a local run gets it, run in the job's own folder on the node (`--run-dir .`),
        # which never names a folder of this machine (so no compile cache: the workspace's is here).
        spec = dataclasses.replace(
            self.spec(record, job_slot),
            run_dir=Path("."),
            workspace=None,
            compile_cache=None,
            python=self.cluster.python,
        )
        job_id = self.cluster.job_id(record.id)
        wrapper = [
            self.cluster.python,
            "-m",
            JOB_MODULE,
            "--job",
            job_id,
            "--slot",
            job_slot,
            "--profile",
            record.profile,
        ]
        for flag, value in (("--data-dir", spec.data_dir), ("--data-source", spec.data_source)):
            wrapper += [flag, str(value)] if value is not None else []
        resources = {"entrypoint_num_gpus": 1} if gpu else {"entrypoint_num_cpus": self.cluster.config.cpus_per_run}
        return {
            "submission_id": job_id,
            "entrypoint": shlex.join([*wrapper, "--", *self.command(spec)]),
            "metadata": {"autoresearch_run": record.id, "autoresearch_workspace": str(self.workspace)},
            **resources,
        }


class RayJob:
    """The scheduler's handle on a run's Ray job (a RunHandle): it has no local pid."""

    pid: int | None = None
    create_time: float | None = None

    def __init__(self, cluster: RayCluster, run_id: str, run_dir: Path, submission: dict[str, Any] | None) -> None:
        self.cluster = cluster
        self.run_id = run_id
        self.job_id = cluster.job_id(run_id)
        self.mirror = Mirror(run_dir)
        self._submission = submission
        self._exit: Exit | None = None
        self._gone = False  # no process of the job is left (or none can be seen any more)
        self._stop_asked = threading.Event()
        self._stop_sent = False
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._follow, name=f"autoresearch-{self.job_id}", daemon=True)

    def begin(self) -> None:
        self._thread.start()

    # ---- RunHandle ----------------------------------------------------------------------

    def poll(self) -> Exit | None:
        return self._exit

    def signal_group(self, sig: signal.Signals) -> None:
        """Ask the cluster to stop the job (it sends SIGTERM to every process of it, then SIGKILL);
        after the run has ended on its own, nothing is left to signal."""
        if not self._gone and not (sig == signal.SIGKILL and self._exit is not None):
            self._stop_asked.set()

    def group_alive(self) -> bool:
        return not self._gone

    def close(self) -> None:
        """Stop following (the server shuts down); the job goes on."""
        self._closed.set()

    # ---- the thread ---------------------------------------------------------------------

    def _follow(self) -> None:
        try:
            if self._submission is not None and not self._submit():
                return
            self._watch()
        except Exception as error:  # a bug of ours must not leave the run running for ever
            log.exception("following %s failed", self.job_id)
            self._settle(Exit(None, lost=f"following its Ray job {self.job_id} failed: {error}"))

    def _submit(self) -> bool:
        """Submit the job; False if the run ended instead (stopped first, or refused)."""
        if self._stop_asked.is_set():
            self._settle(Exit(None, lost="stopped before its Ray job was submitted"))
            return False
        try:
            with tempfile.TemporaryDirectory(prefix="autoresearch-job-") as package:
                # The working_dir: the snapshot as one archive (job_stream.SNAPSHOT_ARCHIVE says why).
                archive(self.mirror.run_dir / contract.SNAPSHOT_DIR, Path(package) / SNAPSHOT_ARCHIVE)
                runtime_env = {"working_dir": package}
                self.cluster.client().submit_job(**(self._submission or {}), runtime_env=runtime_env)
        except Exception as error:
            if "already exists" in str(error):  # submitted before a restart: follow that one
                return True
            self._settle(Exit(None, lost=f"its Ray job could not be submitted to {self.cluster.address}: {error}"))
            return False
        return True

    def _watch(self) -> None:
        read = 0  # characters of the job's log mirrored
        failing_since: float | None = None
        next_status = 0.0
        while not self._closed.is_set():
            try:
                self._send_stop()
                read = self._mirror_log(read)
                if self._exit is not None or self._stop_sent or time.monotonic() >= next_status:
                    next_status = time.monotonic() + STATUS_POLL_SECONDS
                    info = self.cluster.client().get_job_info(self.job_id)
                    if info.status.is_terminal():
                        self._mirror_log(read)  # what it wrote between the two reads
                        self._settle(self._ended(info))
                        return
                failing_since = None
            except (RuntimeError, OSError) as error:  # Ray's HTTP errors; requests' are OSErrors
                if "status code 404" in str(error) or "does not exist" in str(error):
                    self._settle(Exit(None, lost=self._vanished()), note=True)
                    return
                failing_since = failing_since or time.monotonic()
                if time.monotonic() - failing_since >= self.cluster.lost_after:
                    reason = f"the Ray cluster at {self.cluster.address} did not answer for {self.cluster.lost_after:g} s ({_one_line(error)})"
                    self._settle(Exit(None, lost=reason), note=True)
                    return
            ending = self._exit is not None or self._stop_sent
            self._closed.wait(ENDING_POLL_SECONDS if ending else LOG_POLL_SECONDS + read / 4e6)

    def _send_stop(self) -> None:
        if self._stop_asked.is_set() and not self._stop_sent:
            self.cluster.client().stop_job(self.job_id)
            self._stop_sent = True

    def _mirror_log(self, read: int) -> int:
        """Mirror what the job's log gained since `read` characters; the new count."""
        text = self.cluster.client().get_job_logs(self.job_id)
        if len(text) > read:
            self.mirror.feed(text[read:])
            if self.mirror.ending is not None and self._exit is None:
                self._exit = Exit(self.mirror.ending.exit_code)
        return max(read, len(text))

    def _ended(self, info: JobDetails) -> Exit:
        """How a job that reached a final status ended, when its wrapper did not say."""
        if self.mirror.ending is not None:
            return Exit(self.mirror.ending.exit_code)
        if info.status == JobStatus.STOPPED:
            return Exit(None, lost="its Ray job was stopped" + ("" if self._stop_sent else " outside this server"))
        if info.driver_exit_code is not None:  # the entrypoint failed before it could report (it says why above)
            return Exit(info.driver_exit_code)
        reason = f"its Ray job {info.status.value.lower()} without a result: {_one_line(info.message or 'no message')}"
        self.mirror.note(reason)
        return Exit(None, lost=reason)

    def _vanished(self) -> str:
        return (
            f"its Ray job {self.job_id} is no longer on the cluster at {self.cluster.address} "
            "(the cluster was restarted, or the job deleted); the log is what was mirrored before"
        )

    def _settle(self, exit: Exit, note: bool = False) -> None:
        if note and exit.lost:
            self.mirror.note(exit.lost)
        self._gone = True
        if self._exit is None:
            self._exit = exit
        self.cluster.forget(self.run_id)


def archive(folder: Path, path: Path) -> None:
    """Zip the regular files under `folder` (links are left out: nothing outside it goes along)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zipped:
        for root, _, names in os.walk(folder):  # a linked folder is listed, never entered
            for file in sorted(Path(root) / name for name in names):
                if file.is_file() and not file.is_symlink():
                    zipped.write(file, file.relative_to(folder).as_posix())


def _one_line(error: object, limit: int = 300) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
