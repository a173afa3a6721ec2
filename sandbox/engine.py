"""The experiment engine: launch, watch, stop and decide on runs (what the experiment tools use).

It composes the run store (records), the research history (git snapshots, `best`) and the
scheduler (slots, queue, processes). A launch snapshots the editable files into a commit,
exports that commit into the run's own folder and queues it; the record comes back at once.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import re
import threading
import time
import unicodedata
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from autoresearch_mcp.nanochat import contract
from autoresearch_mcp.nanochat.errors import UserError
from autoresearch_mcp.nanochat.profiles import Profile, resolve_profile
from autoresearch_mcp.sandbox import cgroups, history, research
from autoresearch_mcp.sandbox.changes import touched_between
from autoresearch_mcp.sandbox.config import RAY_BACKEND
from autoresearch_mcp.sandbox.gpus import visible_gpu_count
from autoresearch_mcp.sandbox.isolation import NONE, availability
from autoresearch_mcp.sandbox.runner import (
    CUDA_PREFIX,
    HOST_SLOT,
    CommandFactory,
    Limits,
    Runner,
    harness_command,
)
from autoresearch_mcp.sandbox.runstore import (
    ACTIVE_STATUSES,
    RUN_ID,
    NoiseFloor,
    RunKind,
    RunRecord,
    RunStore,
    StoreFollower,
)
from autoresearch_mcp.sandbox.scheduler import Scheduler
from autoresearch_mcp.sandbox.workspace import Workspace

if TYPE_CHECKING:
    from autoresearch_mcp.sandbox.ray_cluster import RayCluster

log = logging.getLogger("autoresearch_mcp.sandbox")

DB_FILE = "runs.db"
RUNS_DIR = "runs"
# torch.compile's caches (inductor, FX graph, AOTAutograd, Triton), shared by the workspace's training
# runs so that a graph compiled once is not compiled again; the evaluator never sees them.
MAX_BUDGET_SECONDS = 24 * 3600.0
MAX_DESCRIPTION_CHARS = 2000
SHA = re.compile(r"[0-9a-f]{40}")


class ExperimentEngine:
    def __init__(
        self,
        workspace: Workspace,
        *,
        slots: list[str] | None = None,
        command: CommandFactory = harness_command,
        limits: Limits = Limits(),
        poll_seconds: float = 0.25,
    ):
        """`slots` default from the workspace's `devices` setting (on a Ray cluster, from its GPUs
        or CPUs once it answers); `command` builds a run's command line (the harness entry point;
        tests point it at stand-in scripts). Views of the runs follow `store.wait_for_write`; so do
        the noise floors, stored by the engine itself once a group's noise runs have all ended."""
        self.workspace = workspace
        self.store = RunStore(workspace.state_dir / DB_FILE)
        self.repo = history.open_history(workspace.root)
        config = workspace.config
        ray = config.cluster.backend == RAY_BACKEND
        local_slots = list(slots) if slots is not None else default_slots(config.devices)
        settings: dict[str, Any] = dict(
            command=command,
            data_dir=self._data_dir(),
            data_source=self._data_source(),
            workspace=workspace.root,
            # No compile cache shared between runs (red team F11): whatever one run may write, a later
            # one reads, and the red team carried trained weights through it (0.33 bits/byte better
            # runs, training past every window). Each run compiles in its own private /tmp.
            isolation=config.isolation,
            memory_limit_gb=config.memory_limit_gb,
            process_limit=config.process_limit,
            host_threads=None if ray else host_threads(local_slots),  # a node's runs get its cores
            limits=limits,
        )
        runs_root = workspace.state_dir / RUNS_DIR
        self.cluster: RayCluster | None = None
        if ray:
            _require_ray()
            from autoresearch_mcp.sandbox.ray_cluster import SLOT_PREFIX, RayCluster, RayRunner

            key = history.root_commit(self.repo)[:12]
            self.cluster = RayCluster(config.cluster, workspace.state_dir, key)
            self.runner: Runner = RayRunner(self.cluster, runs_root, **settings)
            default = [f"{SLOT_PREFIX}0"]  # until the cluster says how many runs it holds (start)
        else:
            self.runner = Runner(runs_root, **settings)
            default = local_slots
        self.scheduler = Scheduler(
            self.store, self.runner, list(slots) if slots is not None else default, poll_seconds=poll_seconds
        )
        # Guards self.repo (GitPython's repository object is not thread-safe): snapshots, the
        # working base, pins, exports, `best` and reads through it. Taken after workspace.lock
        # and before the scheduler's and the store's locks (docs/design.md).
        self._git = threading.Lock()
        self._floors = threading.Lock()  # one floor update at a time (the follower, a reader); a leaf
        self._floor_follower = StoreFollower(self.store, self.store_floors, name="autoresearch-noise-floors")

    # ---- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        """Re-adopt or settle runs a previous server left, then start scheduling."""
        for record in self.store.list(["queued"]):
            self._prepare(record)  # a server that died mid-launch may not have exported it
        self._describe_old_runs()
        cgroups.remove_stale()  # the sandboxes' cgroups of supervisors that ended while no server ran
        if self.cluster is not None:
            self._connect_cluster()
        self.scheduler.start()
        self._floor_follower.start()  # its first pass covers noise runs that ended while no server watched

    def shutdown(self) -> None:
        """Stop scheduling; live runs keep going and the next `start` re-adopts them."""
        self._floor_follower.stop()
        self.scheduler.shutdown()
        if self.cluster is not None:
            self.cluster.close(runs_active=bool(self.store.list(ACTIVE_STATUSES)))
        self.store.close()

    def __enter__(self) -> ExperimentEngine:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.shutdown()

    # ---- runs -------------------------------------------------------------------------

    def launch(
        self, description: str, budget_seconds: float | None = None, seed: int | None = None, device: str | None = None
    ) -> RunRecord:
        """Snapshot the working copy and queue it; the record is `running` if a slot was free."""
        description = _checked_description(description)
        budget = _checked_budget(budget_seconds if budget_seconds is not None else self._default_budget())
        if seed is not None:
            seed = _checked_seed(seed)
        device = self._checked_device(device)
        self._check_runnable()
        files = [
            self.workspace.resolve_editable(name, must_exist=False).display for name in self.workspace.config.editable
        ]
        # The workspace lock keeps a multi-file apply_diff or a reset from being half-captured.
        with self.workspace.lock, self._git:
            snapshot = history.snapshot(self.repo, files, description)
            key = research.Comparability(self._profile.name, budget, 1.0, self.data_label, None)
            kind, experiment, seed = self._same_code_as(snapshot.tree, key, seed)
            record = self.store.create(
                commit=snapshot.commit,
                parent_commit=snapshot.parent,
                description=description,
                profile=key.profile,
                budget_seconds=budget,
                seed=seed,
                requested_device=device,
                isolation=self.workspace.config.isolation,
                kind=kind,
                experiment=experiment,
                data_source=key.data_source,
                tree=snapshot.tree,
                touched=touched_between(self.repo, snapshot.parent, snapshot.commit),
            )
            self._prepare_new(record)
            history.set_base(self.repo, snapshot.commit)
        self.scheduler.submit(record.id)
        return self.store.get(record.id)

    def launch_copies(
        self, source: RunRecord, kind: RunKind, seeds: Sequence[int], description: str, *, scale: float = 1.0
    ) -> list[RunRecord]:
        """Queue `source`'s commit once per seed, as runs of its experiment at `scale` (budget x scale).

        The working copy and its base are left alone: these runs re-measure code already run.
        """
        budget = _checked_budget(source.budget_seconds * scale)
        description = _checked_description(description[:MAX_DESCRIPTION_CHARS])
        self._check_runnable()
        records = []
        with self._git:
            for seed in seeds:
                record = self.store.create(
                    commit=source.commit,
                    parent_commit=source.parent_commit,
                    description=description,
                    profile=source.profile,
                    budget_seconds=budget,
                    seed=_checked_seed(seed),
                    isolation=self.workspace.config.isolation,
                    kind=kind,
                    experiment=source.experiment,
                    scale=scale,
                    data_source=self.data_label,
                    tree=source.tree,
                    touched=source.touched,
                )
                self._prepare_new(record)
                self.scheduler.submit(record.id)
                records.append(record.id)
        return [self.store.get(run_id) for run_id in records]

    def measure_noise(self, runs: int) -> list[RunRecord]:
        """Queue the latest kept experiment's commit `runs` more times, with seeds it has not run, as
        noise runs; when they have finished, its noise floor is stored."""
        best = research.latest_kept(research.experiments(self.store.list()))
        if best is None:
            raise UserError(
                "nothing kept yet: the noise floor is measured on the best kept code. Run the baseline "
                "(launch_training('baseline')) and keep it first"
            )
        measuring = [run.id for run in best.active if run.kind == "noise"]
        if measuring:
            raise UserError(
                f"the noise floor of {best.id} is being measured already ({', '.join(measuring)}); it is stored when "
                "they finish (training_status)"
            )
        seeds = research.fresh_seeds((run.seed for run in best.runs), runs, contract.DEFAULT_SEED)
        description = f"noise: {best.id} with another seed ({best.primary.description})"
        return self.launch_copies(best.primary, "noise", seeds, description)

    def stop(self, run_id: str) -> RunRecord:
        """Stop a queued or running run; returns once its process group is gone."""
        record = self.store.get(run_id)
        if record.finished:
            raise UserError(f"{run_id} already ended ({record.status}); there is nothing to stop")
        self.scheduler.stop(run_id)
        return self.store.get(run_id)

    def wait(self, run_id: str | None, timeout: float) -> list[RunRecord]:
        """The run (or all queued and running runs), after its next change or `timeout` seconds."""
        self.scheduler.wait(run_id, timeout)
        if run_id is not None:
            return [self.store.get(run_id)]
        return self.store.list(ACTIVE_STATUSES)

    def decide(
        self, run_id: str, decision: Literal["keep", "discard"], note: str | None = None, force: bool = False
    ) -> RunRecord:
        """Record the agent's decision on the run's experiment; `keep` also moves branch `best` to its commit.

        A keep needs the verdict `better` (or nothing kept before: the baseline); `force` keeps
        anyway and the record says so. Returns the experiment's record (the run that opened it).
        """
        if decision not in ("keep", "discard"):
            raise UserError(f"decision must be 'keep' or 'discard', not {decision!r}")
        record = _decidable(self.store.get(run_id))
        experiment = _decidable(self.store.get(record.experiment))
        with self._git:
            if experiment.decision is not None:
                raise UserError(
                    f"{_run_of(record)} was already decided ({experiment.decision}); a decision is final, launch a new "
                    "run to revisit it"
                )
            forced = decision == "keep" and self._gate_keep(record, experiment.id, force)
            decided = self.store.update_if(
                experiment.id, {"decision": None}, decision=decision, note=note, decided_at=time.time(), forced=forced
            )
            if decided is None:  # decided by another process between the check and here
                raise UserError(f"{_run_of(record)} was already decided; a decision is final")
            if decision == "keep":
                try:
                    history.move_best(self.repo, decided.commit)
                except Exception:  # all or nothing
                    self.store.update(experiment.id, decision=None, note=experiment.note, decided_at=None, forced=False)
                    raise
        return decided

    def files_at(self, commit: str) -> dict[str, bytes]:
        """Every file of an experiment commit (path -> content), read through the engine's repository."""
        with self._git:
            return history.commit_files(self.repo, commit)

    @property
    def slots(self) -> list[str]:
        """The device slots runs are scheduled on: GPUs, the host, or a cluster's room for runs."""
        return self.scheduler.slots

    def run_dir(self, run_id: str) -> Path:
        if not RUN_ID.fullmatch(run_id):
            raise UserError(f"{run_id!r} is not a run id; run ids look like r0001 (list_experiments shows them)")
        return self.runner.run_dir(run_id)

    def queue_position(self, run_id: str) -> int | None:
        """1 for the next run to start; None when the run is not queued."""
        return self.scheduler.queue_position(run_id)

    def assess(self, experiment_id: str) -> research.Assessment | None:
        """The verdict of an experiment (None until one of its runs is measured)."""
        everything = research.experiments(self.store.list())
        target = next((e for e in everything if e.id == experiment_id), None)
        if target is None:
            return None
        return research.assess(target, everything, self.floors(), self.workspace.config.noise_k)

    def floors(self) -> list[NoiseFloor]:
        """The stored noise floors, brought up to date first (a read never waits for the follower)."""
        self.store_floors()
        return self.store.floors()

    def store_floors(self) -> None:
        """Store the floor of every group (an experiment at one scale) holding noise runs once none of
        its runs is active, unless the stored one already covers the same runs."""
        with self._floors:
            records = self.store.list()
            by_id = {record.id: record for record in records}
            stored = {(floor.experiment, floor.scale): floor.run_ids for floor in self.store.floors()}
            for experiment_id, scale in {(r.experiment, r.scale) for r in records if r.kind == "noise"}:
                group = research.group_at(records, by_id[experiment_id], scale)
                floor = None if group.active else research.measure_floor(group)
                if floor is not None and stored.get((experiment_id, scale)) != floor.run_ids:
                    self.store.put_floor(floor)

    @property
    def data_label(self) -> str:
        """The data runs are launched on, as configured ("builtin", "climbmix", a path)."""
        return self._data_source() or self._profile.data_source

    # ---- internals --------------------------------------------------------------------

    def _same_code_as(
        self, tree: str, key: research.Comparability, seed: int | None
    ) -> tuple[RunKind, str | None, int]:
        """Kind, experiment and seed of a launch whose code is `tree`.

        The same code as a kept experiment is a noise run of it; as an undecided one (measured or
        running), a repeat of it. Either way it needs a seed that experiment has not run (cpu
        runs are bit-exact): one is picked when none was asked for.
        """
        for group in reversed(research.experiments(self.store.list())):
            same = group.primary.tree == tree and group.key.matches(key)
            # An undecided experiment that measured nothing and runs nothing failed: this is a retry.
            repeatable = group.primary.decision is None and bool(group.measured or group.active)
            if not same or not (group.kept or repeatable):
                continue
            used = {run.seed for run in group.runs}
            if seed in used:
                raise UserError(
                    f"train.py is the same code as {group.id} and seed {seed} already ran it: the run would repeat it "
                    "exactly. Change something first, or leave the seed out to get a fresh one"
                )
            if seed is None:
                seed = research.fresh_seeds(used, 1, contract.DEFAULT_SEED)[0]
            return ("noise" if group.kept else "repeat"), group.id, seed
        return "experiment", None, contract.DEFAULT_SEED if seed is None else seed

    def _gate_keep(self, record: RunRecord, experiment_id: str, force: bool) -> bool:
        """Refuse a keep the verdict does not support unless forced; True when the keep is forced."""
        everything = research.experiments(self.store.list())
        group = next(e for e in everything if e.id == experiment_id)
        if record.status != "succeeded" and group.figure is None:
            raise UserError(
                f"{record.id} {record.status} and has no val_bpb; only a succeeded run can be kept (discard it instead)"
            )
        if group.active:
            waiting = ", ".join(run.id for run in group.active)
            raise UserError(
                f"{group.id} still has runs going ({waiting}); wait for them (training_status) so the keep uses "
                "every run, then keep it"
            )
        assessment = research.assess(group, everything, self.floors(), self.workspace.config.noise_k)
        if assessment is None or assessment.verdict == "better" or not any(e.kept for e in everything):
            return False
        if force:
            return True
        raise UserError(_keep_refusal(group.id, assessment))

    def _describe_old_runs(self) -> None:
        """Give runs recorded before trees and touched names existed theirs (once; later runs have them)."""
        for record in self.store.list():
            if record.tree is not None or not SHA.fullmatch(record.commit):
                continue
            with self._git:
                if not self.repo.odb.has_object(bytes.fromhex(record.commit)):
                    continue
                touched = touched_between(self.repo, record.parent_commit, record.commit)
                tree = self.repo.commit(record.commit).tree.hexsha
            self.store.update(record.id, tree=tree, touched=touched)

    def _prepare_new(self, record: RunRecord) -> None:
        try:
            self._prepare(record)
        except Exception as error:  # e.g. a full disk: the run must not stay queued forever
            self.store.update(
                record.id, status="crashed", finished_at=time.time(), error=f"could not export the snapshot: {error}"
            )
            raise

    @cached_property
    def _profile(self) -> Profile:
        """Resolved on first launch ("auto" asks NVML which GPUs there are)."""
        return resolve_profile(self.workspace.config.profile)

    def _default_budget(self) -> float:
        configured = self.workspace.config.budget_seconds
        return float(configured) if configured is not None else self._profile.budget_seconds

    def _data_dir(self) -> Path | None:
        configured = self.workspace.config.data_dir
        return None if configured is None else self.workspace.root / Path(configured).expanduser()

    def _data_source(self) -> str | None:
        """A local data path is taken relative to the workspace; named sources pass through."""
        configured = self.workspace.config.data_source
        if configured is None or configured in ("builtin", "climbmix"):
            return configured
        return str(self.workspace.root / Path(configured).expanduser())

    def _checked_device(self, device: str | None) -> str | None:
        if device is None or device.strip() in ("", "auto"):
            return None
        if device.strip() not in self.slots:
            raise UserError(
                f"no device slot {device!r}; this server's slots are {', '.join(self.slots)} (or leave device unset)"
            )
        return device.strip()

    def _check_runnable(self) -> None:
        """Refuse to launch what cannot run: on a cluster, while it does not answer or has no room for
        the profile's runs; here, where runs cannot be sandboxed, unless the workspace opted out. (On a
        cluster each node's supervisor checks its own sandbox, and a node without one fails the run.)"""
        if self.cluster is not None:
            self.cluster.check()
            self.scheduler.set_slots(self.cluster.slots(self._profile.name))
            return
        if self.workspace.config.isolation == NONE:
            return
        available = availability()
        if not available.available:
            raise UserError(f"cannot launch: runs must be sandboxed and {available.reason}; {available.fix}")

    def _connect_cluster(self) -> None:
        """Start (or find) a local head, and size the slots to the cluster; a cluster that does not
        answer yet leaves the server serving (launches are refused until it does)."""
        assert self.cluster is not None
        try:
            self.cluster.connect()
            self.scheduler.set_slots(self.cluster.slots(self._profile.name))
        except Exception as error:
            log.warning("the Ray cluster is not ready: %s", error)

    def _prepare(self, record: RunRecord) -> None:
        """Pin the run's commit and export it into its folder (idempotent)."""
        history.pin_run(self.repo, record.id, record.commit)
        run_dir = self.runner.run_dir(record.id)
        run_dir.mkdir(parents=True, exist_ok=True)
        if not (run_dir / contract.SNAPSHOT_DIR).is_dir():
            history.export(self.repo, record.commit, run_dir / contract.SNAPSHOT_DIR)


def _require_ray() -> None:
    try:
        found = importlib.util.find_spec("ray") is not None
    except (ImportError, ValueError):  # a broken or blocked installation counts as none
        found = False
    if not found:
        raise UserError(
            'this workspace runs on a Ray cluster ([cluster] backend = "ray" in .autoresearch/config.toml) but Ray is '
            "not installed here: pip install 'autoresearch-mcp[ray]'"
        )


def host_threads(slots: list[str]) -> int | None:
    """CPU threads per run on a host slot where several share the cores ("cpu:N"): the cores split
    evenly; None (torch's default, a thread per core) for a single host slot."""
    host = [slot for slot in slots if not slot.startswith(CUDA_PREFIX)]
    if len(host) < 2:
        return None
    return max(1, len(os.sched_getaffinity(0)) // len(host))


def default_slots(devices: str) -> list[str]:
    """Device slots from the `devices` setting: "cpu", "auto", or CUDA indices such as "0,1"."""
    setting = devices.strip().lower()
    if setting == HOST_SLOT:
        return [HOST_SLOT]
    if setting.startswith(f"{HOST_SLOT}:") and setting[len(HOST_SLOT) + 1 :].isdigit():
        # "cpu:N": N runs share the host at once (each gets a share of the cores).
        count = int(setting[len(HOST_SLOT) + 1 :])
        if count >= 1:
            return [f"{HOST_SLOT}:{i}" for i in range(count)] if count > 1 else [HOST_SLOT]
    if setting == "auto":
        return [f"{CUDA_PREFIX}{i}" for i in range(visible_gpu_count())] or [HOST_SLOT]
    indices = [part.strip() for part in setting.split(",")]
    if not all(index.isdigit() for index in indices) or len(set(indices)) != len(indices):
        raise UserError(
            f'devices = {devices!r} in .autoresearch/config.toml is not understood; use "auto", "cpu", "cpu:N" or '
            'distinct CUDA indices such as "0,1"'
        )
    return [f"{CUDA_PREFIX}{int(index)}" for index in indices]


def _decidable(record: RunRecord) -> RunRecord:
    """`record`, if a decision may be asked of it now; else a UserError saying what to do."""
    if record.kind == "noise":
        raise UserError(
            f"{record.id} is a noise run: the same code as the kept {record.experiment} with another seed. It measures "
            "the noise floor and is not an idea to keep or discard"
        )
    if record.kind == "validation":
        raise UserError(
            f"{record.id} is a validation run of {record.experiment} at scale {record.scale:g}; it is not decided. "
            f"validate_experiment('{record.experiment}', scale={record.scale:g}) reports its result"
        )
    if not record.finished:
        raise UserError(
            f"{record.id} is still {record.status}; wait for it (training_status with wait_seconds) and decide once it "
            "has finished, or stop_training it first"
        )
    return record


def _run_of(record: RunRecord) -> str:
    return record.id if record.experiment == record.id else f"{record.id}'s experiment {record.experiment}"


def _keep_refusal(experiment_id: str, assessment: research.Assessment) -> str:
    """Why a keep is refused, with the numbers, and what to do instead."""
    force = f"keep_experiment('{experiment_id}', force=true) keeps it anyway (the record shows it was forced)"
    if assessment.verdict == "not comparable":
        return f"{experiment_id} is not comparable with the best kept run ({assessment.reason}); relaunch it with the same settings as the best, or {force}"
    if assessment.verdict == "unknown" and assessment.floor is not None:  # a floor that measured nothing
        return f"{experiment_id} cannot be judged: {assessment.reason}; or {force}"
    if assessment.verdict == "unknown":
        return f"{experiment_id} cannot be judged yet: {assessment.reason}. Wait for the noise runs or call measure_noise(), or {force}"
    if assessment.verdict == "worse":
        return (
            f"{experiment_id} is worse than the best: {assessment.reason}. Discard it (discard_experiment), or {force}"
        )
    return (
        f"{experiment_id} is within noise: {assessment.reason}. Repeat it for a firmer figure "
        f"(repeat_experiment('{experiment_id}', runs=2)) and keep it if it then beats the threshold, or {force}"
    )


def _checked_description(description: str) -> str:
    text = description.strip() if isinstance(description, str) else ""
    if not text:
        raise UserError("describe the experiment in a few words (it names the run, its commit and its results row)")
    # NUL cannot go into a commit message; escape sequences would reach results.tsv and rewrite, in a
    # terminal that shows it, the rows around the run's own.
    controls = sorted({f"U+{ord(c):04X}" for c in text if unicodedata.category(c) == "Cc" and not c.isspace()})
    if controls:
        raise UserError(
            f"the description holds control characters ({', '.join(controls[:5])}); describe the experiment in "
            "plain text"
        )
    if len(text) > MAX_DESCRIPTION_CHARS:
        raise UserError(
            f"the description is {len(text)} characters; keep it under {MAX_DESCRIPTION_CHARS} (one idea, a line or two)"
        )
    return text


def _checked_budget(budget: float) -> float:
    if not isinstance(budget, (int, float)) or not math.isfinite(budget) or not 0 < budget <= MAX_BUDGET_SECONDS:
        raise UserError(f"budget_seconds must be a number above 0 and at most {MAX_BUDGET_SECONDS:g}; got {budget!r}")
    return float(budget)


def _checked_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise UserError(f"seed must be a whole number from 0 to {2**32 - 1}; got {seed!r}")
    return seed
