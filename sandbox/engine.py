"""The experiment engine: launch, watch, stop and decide on runs (what the experiment tools use).

It composes the run store (records), the research history (git snapshots, `best`) and the
scheduler (slots, queue, processes). A launch snapshots the editable files into a commit,
exports that commit into the run's own folder and queues it; the record comes back at once.
"""

from __future__ import annotations

import math
import threading
import time
from functools import cached_property
from pathlib import Path
from typing import Literal

from autoresearch_mcp.nanochat import contract
from autoresearch_mcp.nanochat.errors import UserError
from autoresearch_mcp.nanochat.profiles import Profile, resolve_profile
from autoresearch_mcp.sandbox import history
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
from autoresearch_mcp.sandbox.runstore import ACTIVE_STATUSES, RUN_ID, RunRecord, RunStore
from autoresearch_mcp.sandbox.scheduler import Scheduler
from autoresearch_mcp.sandbox.workspace import Workspace

DB_FILE = "runs.db"
RUNS_DIR = "runs"
MAX_BUDGET_SECONDS = 24 * 3600.0
MAX_DESCRIPTION_CHARS = 2000


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
        """`slots` default from the workspace's `devices` setting; `command` builds a run's
        command line (the harness entry point; tests point it at stand-in scripts). Views of
        the runs follow `store.wait_for_write`."""
        self.workspace = workspace
        self.store = RunStore(workspace.state_dir / DB_FILE)
        self.repo = history.open_history(workspace.root)
        self.slots = list(slots) if slots is not None else default_slots(workspace.config.devices)
        config = workspace.config
        self.runner = Runner(
            workspace.state_dir / RUNS_DIR,
            command=command,
            data_dir=self._data_dir(),
            data_source=self._data_source(),
            workspace=workspace.root,
            isolation=config.isolation,
            memory_limit_gb=config.memory_limit_gb,
            process_limit=config.process_limit,
            limits=limits,
        )
        self.scheduler = Scheduler(self.store, self.runner, self.slots, poll_seconds=poll_seconds)
        # Guards self.repo (GitPython's repository object is not thread-safe): snapshots, the
        # working base, pins, exports, `best` and reads through it. Taken after workspace.lock
        # and before the scheduler's and the store's locks (docs/design.md).
        self._git = threading.Lock()

    # ---- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        """Re-adopt or settle runs a previous server left, then start scheduling."""
        for record in self.store.list(["queued"]):
            self._prepare(record)  # a server that died mid-launch may not have exported it
        self.scheduler.start()

    def shutdown(self) -> None:
        """Stop scheduling; live runs keep going and the next `start` re-adopts them."""
        self.scheduler.shutdown()
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
        seed = _checked_seed(contract.DEFAULT_SEED if seed is None else seed)
        device = self._checked_device(device)
        self._check_isolation()
        files = [
            self.workspace.resolve_editable(name, must_exist=False).display for name in self.workspace.config.editable
        ]
        # The workspace lock keeps a multi-file apply_diff or a reset from being half-captured.
        with self.workspace.lock, self._git:
            snapshot = history.snapshot(self.repo, files, description)
            record = self.store.create(
                commit=snapshot.commit,
                parent_commit=snapshot.parent,
                description=description,
                profile=self._profile.name,
                budget_seconds=budget,
                seed=seed,
                requested_device=device,
                isolation=self.workspace.config.isolation,
            )
            try:
                self._prepare(record)
            except Exception as error:  # e.g. a full disk: the run must not stay queued forever
                self.store.update(
                    record.id,
                    status="crashed",
                    finished_at=time.time(),
                    error=f"could not export the snapshot: {error}",
                )
                raise
            history.set_base(self.repo, snapshot.commit)
        self.scheduler.submit(record.id)
        return self.store.get(record.id)

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

    def decide(self, run_id: str, decision: Literal["keep", "discard"], note: str | None = None) -> RunRecord:
        """Record the agent's decision; `keep` also moves branch `best` to the run's commit."""
        record = self.store.get(run_id)
        if decision not in ("keep", "discard"):
            raise UserError(f"decision must be 'keep' or 'discard', not {decision!r}")
        if not record.finished:
            raise UserError(
                f"{run_id} is still {record.status}; wait for it (training_status with wait_seconds) and decide once it "
                "has finished, or stop_training it first"
            )
        if decision == "keep" and record.status != "succeeded":
            raise UserError(
                f"{run_id} {record.status} and has no val_bpb; only a succeeded run can be kept (discard it instead)"
            )
        with self._git:
            decided = self.store.update_if(run_id, {"decision": None}, decision=decision, note=note)
            if decided is None:
                earlier = self.store.get(run_id).decision
                raise UserError(
                    f"{run_id} was already decided ({earlier}); a decision is final, launch a new run to revisit it"
                )
            if decision == "keep":
                try:
                    history.move_best(self.repo, decided.commit)
                except Exception:
                    self.store.update(run_id, decision=None, note=record.note)  # all or nothing
                    raise
        return decided

    def files_at(self, commit: str) -> dict[str, bytes]:
        """Every file of an experiment commit (path -> content), read through the engine's repository."""
        with self._git:
            return history.commit_files(self.repo, commit)

    def run_dir(self, run_id: str) -> Path:
        if not RUN_ID.fullmatch(run_id):
            raise UserError(f"{run_id!r} is not a run id; run ids look like r0001 (list_experiments shows them)")
        return self.runner.run_dir(run_id)

    def queue_position(self, run_id: str) -> int | None:
        """1 for the next run to start; None when the run is not queued."""
        return self.scheduler.queue_position(run_id)

    # ---- internals --------------------------------------------------------------------

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

    def _check_isolation(self) -> None:
        """Refuse to launch where runs cannot be sandboxed, unless the workspace opted out."""
        if self.workspace.config.isolation == NONE:
            return
        available = availability()
        if not available.available:
            raise UserError(f"cannot launch: runs must be sandboxed and {available.reason}; {available.fix}")

    def _prepare(self, record: RunRecord) -> None:
        """Pin the run's commit and export it into its folder (idempotent)."""
        history.pin_run(self.repo, record.id, record.commit)
        run_dir = self.runner.run_dir(record.id)
        run_dir.mkdir(parents=True, exist_ok=True)
        if not (run_dir / contract.SNAPSHOT_DIR).is_dir():
            history.export(self.repo, record.commit, run_dir / contract.SNAPSHOT_DIR)


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


def _checked_description(description: str) -> str:
    text = description.strip() if isinstance(description, str) else ""
    if not text:
        raise UserError("describe the experiment in a few words (it names the run, its commit and its results row)")
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
