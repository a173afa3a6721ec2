"""The dashboard's data: where the research stands, as one snapshot a page can draw.

Everything is assembled from the records and run files the experiment tools read, through the
same readers (`build_board`, `metric_history`, `code_diff`, `read_log_tail`), and through a
`WorkspaceReader` that opens the run store read-only. So the dashboard can watch a workspace
that another process (a stdio server) is running, and nothing it does can change it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from autoresearch_mcp.nanochat.errors import UserError
from autoresearch_mcp.sandbox import runner
from autoresearch_mcp.sandbox.config import LOCAL_BACKEND
from autoresearch_mcp.sandbox.engine import DB_FILE, RUN_ID, RUNS_DIR, default_slots
from autoresearch_mcp.sandbox.gpus import GpuInfo, GpuReport, HostInfo, query_gpus, query_host
from autoresearch_mcp.sandbox.history import commit_files, open_history
from autoresearch_mcp.sandbox.runstore import FAILED_STATUSES, NoiseFloor, RunRecord, RunStore
from autoresearch_mcp.sandbox.workspace import Workspace
from autoresearch_mcp.tools.experiments import MetricPoint, budget_fraction, code_diff, downsample, metric_history
from autoresearch_mcp.tools.leaderboard import ExperimentRow, NoiseFloorInfo, build_board, noise_info

CURVE_POINTS = 400  # per loss curve: enough for a smooth line, small enough to poll every second
LOG_TAIL_BYTES = 64 * 1024
LOG_TAIL_LINES = 200
GPU_REFRESH_SECONDS = 5.0  # NVML is initialised per query; once per poll of every viewer would be wasteful
DIFF_CACHE_SIZE = 256  # commits never change, so their diffs are cached


# ---- what the page shows -----------------------------------------------------------------


class ProgressPoint(BaseModel):
    """One experiment on the progress chart (x = its launch number)."""

    x: int
    run_id: str
    val_bpb: float | None
    kept: bool
    failed: bool = Field(description="crashed, killed, timed out or lost: no val_bpb")
    best_so_far: float | None = Field(description="the kept frontier: the best kept val_bpb up to this experiment")


class CurvePoint(BaseModel):
    step: int
    progress: float | None = Field(description="fraction of the training budget used")
    loss: float | None


class LossCurve(BaseModel):
    run_id: str
    description: str
    role: Literal["best", "running"]
    points: list[CurvePoint] = Field(description="training loss, evenly downsampled, always with the last step")


class SlotRun(BaseModel):
    run_id: str
    description: str
    phase: str | None
    progress: float | None
    step: int | None
    loss: float | None


class DeviceSlot(BaseModel):
    slot: str = Field(description="'cpu', 'cuda:0', ...")
    run: SlotRun | None = Field(description="the run on it; None when idle")
    gpu: GpuInfo | None = Field(description="NVML's view of the GPU behind a cuda slot")


class RunDetail(BaseModel):
    run_id: str
    description: str
    status: str
    phase: str | None
    decision: str | None
    note: str | None
    error: str | None
    commit: str
    parent_commit: str | None
    parent_run_id: str | None = Field(description="the run measured on the parent commit, if any")
    diff: str = Field(description="the code change against the parent commit, as a git diff")
    diff_truncated: bool
    log_tail: str = Field(description="the last lines of the run's output")
    traceback: str | None


class DashboardSnapshot(BaseModel):
    workspace: str
    generated_at: float
    total: int
    kept: int
    running: int
    queued: int
    best_run_id: str | None
    best_val_bpb: float | None
    experiments: list[ExperimentRow] = Field(
        description="every experiment, in launch order, with its verdict; those that do not compare with the best "
        "say why in `apart`"
    )
    noise_floor: NoiseFloorInfo | None = Field(
        description="the noise floor in force: the progress chart's band is the best +/- its threshold"
    )
    progress: list[ProgressPoint] = Field(description="the experiments that compare with the best")
    curves: list[LossCurve] = Field(description="the best kept run's training loss, then each running run's")
    slots: list[DeviceSlot]
    queued_runs: list[str]
    host: HostInfo
    gpu_message: str | None = Field(description="why there are no GPU figures, on a machine without NVIDIA GPUs")
    detail: RunDetail | None = Field(description="the selected run (default: the newest running, else the newest)")

    def text(self) -> str:
        if not self.total:
            return "no experiments yet; launch a baseline with launch_training"
        lines = [f"{self.total} experiments, {self.kept} kept, {self.running} running, {self.queued} queued"]
        if self.best_val_bpb is not None:
            lines[0] += f"; best val_bpb {self.best_val_bpb:.4f} ({self.best_run_id})"
        for slot in self.slots:
            if slot.run is not None:
                lines.append(f"{slot.slot}: {_describe_slot_run(slot.run)}")
        return "\n".join(lines)


# ---- reading a workspace -----------------------------------------------------------------


class WorkspaceReader:
    """A read-only view of a workspace: its records (SQLite opened read-only), run folders and git history."""

    def __init__(self, root: Path):
        self.workspace = Workspace(root)
        open_history(self.workspace.root)  # a folder that is not a workspace is refused here, not on first poll
        self.runs_root = self.workspace.state_dir / RUNS_DIR
        # A Ray cluster's room for runs is the server's to ask (the dashboard imports no Ray): its slots
        # show as runs hold them.
        local = self.workspace.config.cluster.backend == LOCAL_BACKEND
        self.slots = default_slots(self.workspace.config.devices) if local else []
        self._db_path = self.workspace.state_dir / DB_FILE
        self._store: RunStore | None = None
        self._lock = threading.Lock()
        self._gpus: tuple[float, GpuReport] | None = None

    def records(self) -> list[RunRecord]:
        """Every run in launch order; none while no server has created the store yet."""
        store = self._open_store()
        return store.list() if store is not None else []

    def floors(self) -> list[NoiseFloor]:
        store = self._open_store()
        return store.floors() if store is not None else []

    def run_dir(self, run_id: str) -> Path:
        if not RUN_ID.fullmatch(run_id):
            raise UserError(f"{run_id!r} is not a run id; run ids look like r0001")
        return self.runs_root / run_id

    def diff(self, old_commit: str, new_commit: str) -> tuple[str, bool]:
        return _cached_diff(self.workspace.root, old_commit, new_commit)

    def gpus(self) -> GpuReport:
        with self._lock:
            if self._gpus is None or time.monotonic() - self._gpus[0] > GPU_REFRESH_SECONDS:
                self._gpus = (time.monotonic(), query_gpus())
            return self._gpus[1]

    def close(self) -> None:
        with self._lock:
            if self._store is not None:
                self._store.close()
                self._store = None

    def _open_store(self) -> RunStore | None:
        with self._lock:
            if self._store is None and self._db_path.exists():
                self._store = RunStore(self._db_path, read_only=True)
            return self._store


@lru_cache(maxsize=DIFF_CACHE_SIZE)
def _cached_diff(root: Path, old_commit: str, new_commit: str) -> tuple[str, bool]:
    repo = open_history(root)
    return code_diff(commit_files(repo, old_commit), commit_files(repo, new_commit))


# ---- the snapshot ------------------------------------------------------------------------


def dashboard_data(reader: WorkspaceReader, run_id: str | None = None) -> DashboardSnapshot:
    """Everything the dashboard shows, in one read; `run_id` is the run to detail (default: the
    newest running run, else the newest)."""
    records = reader.records()
    by_id = {record.id: record for record in records}
    if run_id is not None and run_id not in by_id:
        raise UserError(f"no run {run_id!r}; the dashboard's leaderboard lists the runs there are")
    board = build_board(records, reader.floors(), reader.workspace.config.noise_k)
    rows, best = board.rows, board.best
    running = [record for record in records if record.status == "running"]
    histories = {record.id: metric_history(reader.run_dir(record.id)) for record in running}
    gpus = reader.gpus()
    selected = by_id[run_id] if run_id is not None else _default_selection(records, running)
    return DashboardSnapshot(
        workspace=str(reader.workspace.root),
        generated_at=time.time(),
        total=len(rows),
        kept=sum(1 for row in rows if row.decision == "keep"),
        running=len(running),
        queued=sum(1 for record in records if record.status == "queued"),
        best_run_id=best.run_id if best else None,
        best_val_bpb=best.val_bpb if best else None,
        experiments=rows,
        noise_floor=noise_info(board.floor, board.k),
        progress=progress_points(board.ranked()),
        curves=_loss_curves(reader, by_id.get(best.run_id) if best else None, running, histories),
        slots=device_slots(reader.slots, running, histories, gpus),
        queued_runs=[record.id for record in records if record.status == "queued"],
        host=query_host(reader.workspace.root),
        gpu_message=None if gpus.available else gpus.reason,
        detail=run_detail(reader, selected, records) if selected is not None else None,
    )


def progress_points(rows: Sequence[ExperimentRow]) -> list[ProgressPoint]:
    """Each experiment in launch order, with the kept frontier as it stood at that experiment."""
    points: list[ProgressPoint] = []
    best: float | None = None
    for x, row in enumerate(rows, start=1):
        kept = row.decision == "keep" and row.val_bpb is not None
        if row.decision == "keep" and row.val_bpb is not None and (best is None or row.val_bpb < best):
            best = row.val_bpb
        points.append(
            ProgressPoint(
                x=x,
                run_id=row.run_id,
                val_bpb=row.val_bpb,
                kept=kept,
                failed=row.status in FAILED_STATUSES,
                best_so_far=best,
            )
        )
    return points


def device_slots(
    slots: Sequence[str], running: Sequence[RunRecord], histories: dict[str, list[MetricPoint]], gpus: GpuReport
) -> list[DeviceSlot]:
    """Every slot the scheduler fills (plus any a running run holds that the config no longer names)."""
    by_slot = {record.device: record for record in running if record.device}
    names = list(slots) + [device for device in by_slot if device not in slots]
    by_index = {f"{runner.CUDA_PREFIX}{gpu.index}": gpu for gpu in gpus.gpus}
    return [
        DeviceSlot(
            slot=name,
            run=_slot_run(by_slot[name], histories.get(by_slot[name].id, [])) if name in by_slot else None,
            gpu=by_index.get(name),
        )
        for name in names
    ]


def run_detail(reader: WorkspaceReader, record: RunRecord, records: Sequence[RunRecord]) -> RunDetail:
    """One run's code change against its parent, and the tail of its output."""
    parent_run = next((r for r in records if r.commit == record.parent_commit and r.id != record.id), None)
    diff, truncated = reader.diff(record.parent_commit, record.commit) if record.parent_commit else ("", False)
    log = runner.read_log_tail(reader.run_dir(record.id), LOG_TAIL_BYTES)
    return RunDetail(
        run_id=record.id,
        description=record.description,
        status=record.status,
        phase=record.phase,
        decision=record.decision,
        note=record.note,
        error=record.error,
        commit=record.commit,
        parent_commit=record.parent_commit,
        parent_run_id=parent_run.id if parent_run else None,
        diff=diff,
        diff_truncated=truncated,
        log_tail="\n".join(log.splitlines()[-LOG_TAIL_LINES:]),
        traceback=runner.last_traceback(log) if record.status in FAILED_STATUSES else None,
    )


def _default_selection(records: Sequence[RunRecord], running: Sequence[RunRecord]) -> RunRecord | None:
    if running:
        return running[-1]
    return records[-1] if records else None


def _loss_curves(
    reader: WorkspaceReader,
    best: RunRecord | None,
    running: Sequence[RunRecord],
    histories: dict[str, list[MetricPoint]],
) -> list[LossCurve]:
    curves = []
    if best is not None:
        curves.append(_curve(best, "best", metric_history(reader.run_dir(best.id))))
    curves += [_curve(record, "running", histories[record.id]) for record in running]
    return curves


def _curve(record: RunRecord, role: Literal["best", "running"], history: list[MetricPoint]) -> LossCurve:
    points = [CurvePoint(step=p.step, progress=p.progress, loss=p.loss) for p in downsample(history, CURVE_POINTS)]
    return LossCurve(run_id=record.id, description=record.description, role=role, points=points)


def _slot_run(record: RunRecord, history: list[MetricPoint]) -> SlotRun:
    last = history[-1] if history else None
    return SlotRun(
        run_id=record.id,
        description=record.description,
        phase=record.phase,
        progress=budget_fraction(last),
        step=last.step if last else None,
        loss=last.loss if last else None,
    )


def _describe_slot_run(run: SlotRun) -> str:
    text = run.run_id + (f" ({run.phase})" if run.phase else "")
    if run.progress is not None:
        text += f" {100 * run.progress:.0f}%"
    if run.step is not None:
        text += f" step {run.step}"
    if run.loss is not None:
        text += f" loss {run.loss:.3f}"
    return f"{text}: {run.description}"
