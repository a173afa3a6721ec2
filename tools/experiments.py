"""The experiment loop as tools: launch, watch, measure, decide, remember.

Thin, typed functions over `ExperimentEngine`. The engine owns runs, the queue and git, and
refuses what makes no sense (unknown runs, decisions on unfinished or decided runs) with a
`UserError` that says what to do instead; these functions shape its records into answers an
agent can act on, with a `next_step` hint wherever there is an obvious one.
"""

from __future__ import annotations

import inspect
import json
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeGuard

import anyio
import anyio.to_thread
from pydantic import BaseModel, ConfigDict, Field

from autoresearch_mcp.nanochat import contract
from autoresearch_mcp.nanochat.contract import Phase
from autoresearch_mcp.nanochat.summary import SUMMARY_FORMATS
from autoresearch_mcp.sandbox import runner
from autoresearch_mcp.sandbox.engine import ExperimentEngine
from autoresearch_mcp.sandbox.isolation import NONE
from autoresearch_mcp.sandbox.research import measured_bpb
from autoresearch_mcp.sandbox.runstore import ACTIVE_STATUSES, FAILED_STATUSES, RunKind, RunRecord
from autoresearch_mcp.tools.history_view import file_diffs
from autoresearch_mcp.tools.leaderboard import (
    ExperimentList,
    ExperimentRow,
    VerdictReport,
    board,
    duration,
    noise_info,
    verdict_report,
)
from autoresearch_mcp.tools.text import number, seconds, table

# A call must answer inside the 60 s after which TypeScript-SDK clients (Claude Desktop, the
# Inspector, most IDEs) give up on a request; a longer wait is a second call.
MAX_WAIT_SECONDS = 45
# The engine's wait returns on any change; slicing it lets us report progress in between.
WAIT_SLICE_SECONDS = 2.0
METRICS_TAIL_BYTES = 16 * 1024  # holds the last few records of metrics.jsonl
METRICS_HISTORY_BYTES = 8 * 1024**2  # a step record is ~150 bytes: some 50,000 steps
MAX_METRIC_LINE_CHARS = 4096
DIFF_CHARS_LIMIT = 100_000

ProgressCallback = Callable[[float, float, str], Awaitable[None] | None]

# ---- results -----------------------------------------------------------------------------


class RunStatus(BaseModel):
    run_id: str
    description: str
    kind: RunKind = Field(
        description="experiment, repeat (same code, another seed), noise (the kept code again), validation"
    )
    experiment: str = Field(description="the experiment it counts toward (its own id for an experiment)")
    status: str
    phase: str | None
    decision: str | None
    device: str | None
    queue_position: int | None = Field(description="1 = next to start; None unless queued")
    progress: float | None = Field(description="fraction of the training budget used, from the last logged step")
    elapsed_seconds: float | None = Field(description="since the run started (or its total, once finished)")
    eta_seconds: float | None = Field(description="estimated seconds of training left; evaluation follows")
    latest_step: int | None
    latest_loss: float | None
    val_bpb: float | None
    verdict: VerdictReport | None = Field(description="once measured: its experiment against the best kept run")
    error: str | None
    next_step: str

    def line(self) -> str:
        """e.g. "r0002 running (training): 45%, step 120, loss 3.214, 27 s in, ~33 s of training left"."""
        state = self.status + (f" ({self.phase})" if self.phase and self.status == "running" else "")
        facts = []
        if self.queue_position is not None:
            facts.append(f"position {self.queue_position} in the queue")
        if self.status == "running" and self.progress is not None:
            facts.append(f"{100 * self.progress:.0f}%")
        if self.status == "running" and self.latest_step is not None:
            facts.append(
                f"step {self.latest_step}" + (f", loss {self.latest_loss:.3f}" if self.latest_loss is not None else "")
            )
        if self.val_bpb is not None:
            facts.append(f"val_bpb {self.val_bpb:.6f}")
        if self.verdict is not None:
            facts.append(self.verdict.short())
        if self.kind != "experiment":
            facts.append(f"{self.kind} of {self.experiment}")
        if self.elapsed_seconds is not None:
            facts.append(
                f"{seconds(self.elapsed_seconds)} elapsed"
                if self.status == "running"
                else f"took {seconds(self.elapsed_seconds)}"
            )
        if self.eta_seconds is not None:
            facts.append(f"~{seconds(self.eta_seconds)} of training left")
        if self.decision is not None:
            facts.append(f"decided: {self.decision}")
        if self.error:
            facts.append(self.error)
        return f"{self.run_id} {state}" + (f": {', '.join(facts)}" if facts else "") + f" [{self.description}]"

    def text(self) -> str:
        return f"{self.line()}\nnext: {self.next_step}"


class TrainingStatus(BaseModel):
    runs: list[RunStatus]
    waited_seconds: float
    changed: bool = Field(description="whether a status or phase changed while waiting")
    message: str

    def text(self) -> str:
        if not self.runs:
            return self.message
        lines = [run.line() for run in self.runs]
        if self.waited_seconds >= 1:
            lines.append(
                f"(waited {seconds(self.waited_seconds)}; {'something changed' if self.changed else 'no change yet'})"
            )
        next_steps = dict.fromkeys(run.next_step for run in self.runs)  # in order, once each
        lines += [f"next: {step}" for step in next_steps]
        return "\n".join(lines)


class LaunchResult(BaseModel):
    run_id: str
    kind: RunKind = Field(
        description="experiment; repeat: the same code as the undecided experiment it joins; noise: the same code "
        "as a kept one (it measures the noise floor and is never kept)"
    )
    experiment: str = Field(description="the experiment it counts toward (its own id for a new experiment)")
    status: str
    queue_position: int | None
    device: str | None
    commit: str
    parent_commit: str | None
    budget_seconds: float
    seed: int
    next_step: str

    def text(self) -> str:
        where = f"at position {self.queue_position} in the queue" if self.queue_position else f"on {self.device}"
        return (
            f"{self.run_id} {self.status} {where}: commit {self.commit[:7]}, budget {seconds(self.budget_seconds)}, "
            f"seed {self.seed}\nnext: {self.next_step}"
        )


class MetricPoint(BaseModel):
    # Read from a file train.py writes: only finite numbers are believed.
    model_config = ConfigDict(allow_inf_nan=False)

    step: int
    loss: float | None = None
    progress: float | None = None
    elapsed: float | None = None
    lr_mult: float | None = None
    tok_per_s: float | None = None
    mfu: float | None = None


class MetricsReport(BaseModel):
    run_id: str
    kind: RunKind
    experiment: str = Field(description="the experiment it counts toward (its own id for an experiment)")
    status: str
    description: str
    val_bpb: float | None = Field(description="this run's val_bpb (the verdict has the experiment's mean)")
    verdict: VerdictReport | None = Field(description="its experiment against the best kept run; None until measured")
    summary: dict[str, Any] | None = Field(
        description="the harness's end-of-run summary (trusted evaluation); None until it finishes"
    )
    history: list[MetricPoint] = Field(
        description="logged training steps, evenly downsampled, always with the last one"
    )
    logged_steps: int
    next_step: str
    unisolated: bool = Field(
        default=False,
        description='made without a sandbox (the workspace set isolation = "none"): its code could reach the data and records',
    )

    def text(self) -> str:
        result = f"val_bpb {self.val_bpb:.6f}" if self.val_bpb is not None else "no val_bpb"
        marker = " (unisolated: made without a sandbox)" if self.unisolated else ""
        lines = [f"{self.run_id} {self.status}{marker}: {result} [{self.description}]"]
        if self.verdict is not None:
            lines.append(self.verdict.text())
        if self.summary:
            lines.append("summary: " + _summary_line(self.summary))
        if self.history:
            lines.append(f"training steps ({len(self.history)} of {self.logged_steps} logged):")
            lines.append(_history_table(self.history))
        else:
            lines.append("no training steps logged yet")
        lines.append(f"next: {self.next_step}")
        return "\n".join(lines)


class LogReport(BaseModel):
    run_id: str
    status: str
    log: str
    truncated: bool = Field(description="whether earlier lines were left out")
    traceback: str | None
    error: str | None

    def text(self) -> str:
        header = f"{self.run_id} {self.status}" + (f": {self.error}" if self.error else "")
        cut = "(earlier lines left out)\n" if self.truncated else ""
        log = self.log if self.log else "(the log is empty)\n"
        shown_traceback = self.traceback and self.traceback.strip() not in self.log
        return f"{header}\n{cut}{log}" + (f"traceback:\n{self.traceback}" if shown_traceback else "")


class DecisionResult(BaseModel):
    run_id: str = Field(description="the experiment decided (the run that opened it)")
    decision: Literal["keep", "discard"]
    forced: bool = Field(description="kept although its verdict was not better")
    note: str | None
    val_bpb: float | None = Field(description="the experiment's figure: mean val_bpb of its runs")
    verdict: VerdictReport | None
    best_run_id: str | None
    best_val_bpb: float | None
    noise_runs: list[str] = Field(
        description="noise runs this keep started (the first kept baseline measures the noise floor)"
    )
    next_step: str

    def text(self) -> str:
        verb = ("kept by force" if self.forced else "kept") if self.decision == "keep" else "discarded"
        value = f" (val_bpb {self.val_bpb:.6f})" if self.val_bpb is not None else ""
        best = (
            f"best: {self.best_run_id} at {self.best_val_bpb:.6f}"
            if self.best_val_bpb is not None
            else "nothing kept yet"
        )
        verdict = f"\n{self.verdict.text()}" if self.verdict is not None else ""
        return f"{verb} {self.run_id}{value}; {best}{verdict}\nnext: {self.next_step}"


class MetricDelta(BaseModel):
    name: str
    a: float | None
    b: float | None
    delta: float | None = Field(description="b minus a")


class Comparison(BaseModel):
    run_a: str
    run_b: str
    commit_a: str
    commit_b: str
    diff: str = Field(description="git diff from run_a's code to run_b's code")
    diff_truncated: bool
    metrics: list[MetricDelta]

    def text(self) -> str:
        lines = [f"{self.run_a} ({self.commit_a[:7]}) -> {self.run_b} ({self.commit_b[:7]})"]
        if self.metrics:
            rows = [["metric", self.run_a, self.run_b, "change"]]
            rows += [[m.name, number(m.a), number(m.b), _signed(m.delta)] for m in self.metrics]
            lines.append(table(rows, right=[1, 2, 3]))
        lines.append(self.diff.rstrip("\n") if self.diff else "the code is the same")
        if self.diff_truncated:
            lines.append(f"(diff cut at {len(self.diff):,} characters)")
        return "\n".join(lines)


# ---- tools -------------------------------------------------------------------------------


def launch_training(
    engine: ExperimentEngine,
    description: str,
    budget_seconds: float | None = None,
    seed: int | None = None,
    device: str | None = None,
) -> LaunchResult:
    """Snapshot the editable files as a commit and queue a fixed-budget run of it (returns at once)."""
    record = engine.launch(description, budget_seconds, seed, device)
    position = engine.queue_position(record.id)
    follow = f"{_wait_call(record.id)} to follow it"
    if record.kind == "noise":
        follow = f"train.py is the same code as the kept {record.experiment}: this run measures the noise floor with seed {record.seed} and cannot be kept. {follow}"
    elif record.kind == "repeat":
        follow = f"train.py is the same code as {record.experiment}: this run repeats it with seed {record.seed}, and the experiment's figure becomes the mean. {follow}"
    return LaunchResult(
        run_id=record.id,
        kind=record.kind,
        experiment=record.experiment,
        status=record.status,
        queue_position=position,
        device=record.device,
        commit=record.commit,
        parent_commit=record.parent_commit,
        budget_seconds=record.budget_seconds,
        seed=record.seed,
        next_step=follow,
    )


async def training_status(
    engine: ExperimentEngine,
    run_id: str | None = None,
    wait_seconds: float = 0,
    progress: ProgressCallback | None = None,
) -> TrainingStatus:
    """One run (or every active run), after waiting up to `wait_seconds` (at most
    MAX_WAIT_SECONDS) for a status or phase change, calling `progress` while it waits."""
    if run_id is not None:
        engine.store.get(run_id)  # unknown ids fail before any waiting
    wait_seconds = min(wait_seconds, MAX_WAIT_SECONDS)
    before = _watched_state(engine, run_id)
    started = time.monotonic()
    changed = False
    while before and (remaining := wait_seconds - (time.monotonic() - started)) > 0:
        await anyio.to_thread.run_sync(engine.wait, run_id, min(WAIT_SLICE_SECONDS, remaining), abandon_on_cancel=True)
        changed = _watched_state(engine, run_id) != before
        if changed:
            break
        if progress is not None:
            waited = time.monotonic() - started
            result = progress(waited, wait_seconds, _progress_message(engine, run_id))
            if inspect.isawaitable(result):
                await result
    records = _watched_runs(engine, run_id)
    statuses = [_run_status(engine, record) for record in records]
    return TrainingStatus(
        runs=statuses,
        waited_seconds=round(time.monotonic() - started, 2),
        changed=changed,
        message=_status_message(engine, statuses, run_id),
    )


def read_metrics(engine: ExperimentEngine, run_id: str, last_n: int = 20) -> MetricsReport:
    """The run's trusted summary, its experiment's verdict, and at most `last_n` evenly spaced training steps."""
    record = engine.store.get(run_id)
    points = metric_history(engine.run_dir(run_id))
    verdict = verdict_report(engine, record)
    return MetricsReport(
        run_id=record.id,
        kind=record.kind,
        experiment=record.experiment,
        status=record.status,
        description=record.description,
        val_bpb=measured_bpb(record),
        verdict=verdict,
        summary=record.summary,
        history=downsample(points, last_n),
        logged_steps=len(points),
        next_step=_next_step(record, _decision(engine, record), verdict),
        unisolated=record.isolation == NONE,
    )


def read_log(engine: ExperimentEngine, run_id: str, tail: int = 50) -> LogReport:
    """The last `tail` lines of the run's log, and its traceback if it failed."""
    record = engine.store.get(run_id)
    run_dir = engine.run_dir(run_id)
    text = runner.read_log_tail(run_dir)
    lines = text.splitlines(keepends=True)
    clipped = (run_dir / contract.LOG).stat().st_size > runner.LOG_TAIL_BYTES if text else False
    if clipped:
        lines = lines[1:]  # the tail was cut at a byte offset, likely mid-line
    traceback = runner.last_traceback(text) if record.status in FAILED_STATUSES else None
    return LogReport(
        run_id=record.id,
        status=record.status,
        log="".join(lines[-tail:]),
        truncated=clipped or len(lines) > tail,
        traceback=traceback,
        error=record.error,
    )


def stop_training(engine: ExperimentEngine, run_id: str) -> RunStatus:
    """Stop a queued or running run (its whole process group) and report how it ended."""
    return _run_status(engine, engine.stop(run_id))


def keep_experiment(
    engine: ExperimentEngine, run_id: str, note: str | None = None, force: bool = False
) -> DecisionResult:
    """Record `keep` for the run's experiment (refused unless its verdict is `better`, or `force`);
    `best` moves to its commit. The first keep, the baseline, also starts the noise measurement."""
    first = not any(r.decision == "keep" for r in engine.store.list())
    decided = engine.decide(run_id, "keep", note, force)
    runs = engine.workspace.config.noise_runs
    noise = engine.measure_noise(runs) if first and runs else []
    return _decision_result(engine, decided, [r.id for r in noise])


def discard_experiment(engine: ExperimentEngine, run_id: str, note: str | None = None) -> DecisionResult:
    """Record `discard` for the run's experiment; `best` stays."""
    return _decision_result(engine, engine.decide(run_id, "discard", note), [])


def list_experiments(
    engine: ExperimentEngine, limit: int = 20, sort: Literal["launch", "val_bpb"] = "launch"
) -> ExperimentList:
    """The leaderboard, one row per experiment: newest first ('launch') or best first ('val_bpb'), at
    most `limit` rows ranked (same profile, budget, data and scale as the best) and `limit` apart."""
    current = board(engine)

    def ordered(rows: list[ExperimentRow]) -> list[ExperimentRow]:
        if sort == "launch":
            return rows[::-1][:limit]
        return sorted(rows, key=lambda row: (row.val_bpb is None, row.val_bpb or 0.0))[:limit]

    best = current.best
    return ExperimentList(
        experiments=ordered(current.ranked()),
        apart=ordered([row for row in current.rows if row.apart is not None]),
        total=len(current.rows),
        runs=len(engine.store.list()),
        best_run_id=best.run_id if best else None,
        best_val_bpb=best.val_bpb if best else None,
        compared_on=current.reference.describe() if current.reference else None,
        noise_floor=noise_info(current.floor, current.k),
    )


def compare_experiments(engine: ExperimentEngine, run_a: str, run_b: str) -> Comparison:
    """The code diff from run_a's commit to run_b's, and each end-of-run metric's change (b - a)."""
    a, b = engine.store.get(run_a), engine.store.get(run_b)
    diff, truncated = code_diff(engine.files_at(a.commit), engine.files_at(b.commit))
    summaries = (a.summary or {}, b.summary or {})
    names = sorted({key for summary in summaries for key, value in summary.items() if _is_number(value)})
    return Comparison(
        run_a=a.id,
        run_b=b.id,
        commit_a=a.commit,
        commit_b=b.commit,
        diff=diff,
        diff_truncated=truncated,
        metrics=[_metric_delta(name, *summaries) for name in names],
    )


# ---- reading run files -------------------------------------------------------------------


def downsample(points: Sequence[MetricPoint], n: int) -> list[MetricPoint]:
    """At most `n` points evenly spaced over the whole history, always including the last."""
    if len(points) <= n:
        return list(points)
    if n == 1:
        return [points[-1]]
    last = len(points) - 1
    return [points[round(i * last / (n - 1))] for i in range(n)]


def last_metric(path: Path) -> MetricPoint | None:
    """The newest complete record of a metrics.jsonl that may still be being written."""
    for line in reversed(runner.read_tail(path, METRICS_TAIL_BYTES).splitlines()):
        point = _parse_point(line)
        if point is not None:
            return point
    return None


def budget_fraction(point: MetricPoint | None) -> float | None:
    """How much of its training budget the run had used at `point`, from 0 to 1 (None if unknown)."""
    return min(max(point.progress, 0.0), 1.0) if point and point.progress is not None else None


def metric_history(run_dir: Path) -> list[MetricPoint]:
    """Every complete step record the run has logged so far (none before training starts)."""
    return _read_metric_points(runner.metrics_path(run_dir))


def code_diff(old_files: Mapping[str, bytes], new_files: Mapping[str, bytes]) -> tuple[str, bool]:
    """The unified diff from one experiment's files to another's (history.commit_files), cut at
    DIFF_CHARS_LIMIT, and whether it was cut."""
    diff = "".join(text for _, text in file_diffs(old_files, new_files))
    return diff[:DIFF_CHARS_LIMIT], len(diff) > DIFF_CHARS_LIMIT


def _read_metric_points(path: Path) -> list[MetricPoint]:
    """The step records of a metrics.jsonl (written by train.py: bounded, read as data); of a
    huge one, the records in its last METRICS_HISTORY_BYTES."""
    lines = runner.read_tail(path, METRICS_HISTORY_BYTES).splitlines()
    return [point for line in lines if (point := _parse_point(line)) is not None]


def _parse_point(line: str) -> MetricPoint | None:
    if len(line) > MAX_METRIC_LINE_CHARS:  # not a step record: never parsed
        return None
    try:
        return MetricPoint.model_validate(json.loads(line))
    except (ValueError, RecursionError):  # a half-written last line, or a malformed one
        return None


# ---- shaping records ---------------------------------------------------------------------


def _run_status(engine: ExperimentEngine, record: RunRecord) -> RunStatus:
    point = last_metric(runner.metrics_path(engine.run_dir(record.id))) if record.started_at else None
    fraction = budget_fraction(point)
    running = record.status == "running"
    decision = _decision(engine, record)
    verdict = verdict_report(engine, record) if record.status == "succeeded" else None
    return RunStatus(
        run_id=record.id,
        description=record.description,
        kind=record.kind,
        experiment=record.experiment,
        status=record.status,
        phase=record.phase,
        decision=decision,
        device=record.device,
        queue_position=engine.queue_position(record.id) if record.status == "queued" else None,
        progress=fraction,
        elapsed_seconds=duration(record),
        eta_seconds=round(record.budget_seconds * (1 - fraction), 1) if running and fraction is not None else None,
        latest_step=point.step if point else None,
        latest_loss=point.loss if point else None,
        val_bpb=measured_bpb(record),
        verdict=verdict,
        error=record.error,
        next_step=_next_step(record, decision, verdict),
    )


def _wait_call(run_id: str) -> str:
    return f"training_status(run_id='{run_id}', wait_seconds={MAX_WAIT_SECONDS})"


def _decision(engine: ExperimentEngine, record: RunRecord) -> str | None:
    """The decision on the run's experiment (a repeat shares the one on the run it repeats)."""
    return record.decision if record.experiment == record.id else engine.store.get(record.experiment).decision


def _next_step(record: RunRecord, decision: str | None, verdict: VerdictReport | None) -> str:
    rid, eid = record.id, record.experiment
    if record.status in ACTIVE_STATUSES:
        return f"{_wait_call(rid)} to wait for it"
    if record.kind == "noise":
        return f"a noise run of {eid}: nothing to decide; the noise floor is stored when its measurement ends"
    if record.kind == "validation":
        return f"validate_experiment('{eid}', scale={record.scale:g}) says whether the gain holds"
    if decision is not None:
        return f"decided ({decision}); launch the next experiment"
    if record.status != "succeeded":
        return (
            f"read_log('{rid}') for the cause, then discard_experiment('{rid}') and reset_workspace() or fix train.py"
        )
    if verdict is None or verdict.verdict == "unknown" and verdict.reference_run_id is None:
        return f"keep_experiment('{eid}') to make it the baseline (that also measures the noise floor), or discard_experiment('{eid}')"
    return {
        "better": f"keep_experiment('{eid}'): it beats the best by more than the noise",
        "within noise": f"within noise: repeat_experiment('{eid}') for a firmer figure, or discard_experiment('{eid}')",
        "worse": f"discard_experiment('{eid}'), then reset_workspace()",
        "not comparable": f"discard_experiment('{eid}') and relaunch it with the best's budget and settings",
        "unknown": f"no noise floor yet: wait for the noise runs (training_status) or measure_noise(), then decide on {eid}",
    }[verdict.verdict]


def _watched_state(engine: ExperimentEngine, run_id: str | None) -> dict[str, tuple[str, str | None]]:
    """What a long-poll waits to change: (status, phase) per run it watches."""
    return {r.id: (r.status, r.phase) for r in _watched_runs(engine, run_id) if not r.finished}


def _watched_runs(engine: ExperimentEngine, run_id: str | None) -> list[RunRecord]:
    return [engine.store.get(run_id)] if run_id is not None else engine.store.list(ACTIVE_STATUSES)


def _progress_message(engine: ExperimentEngine, run_id: str | None) -> str:
    return "; ".join(_run_progress(engine, r) for r in _watched_runs(engine, run_id)) or "nothing active"


def _run_progress(engine: ExperimentEngine, record: RunRecord) -> str:
    """e.g. "r0002 running (training) 45% step 120 loss 3.214": what a person watching wants."""
    text = f"{record.id} {record.status}" + (f" ({record.phase})" if record.phase else "")
    point = last_metric(runner.metrics_path(engine.run_dir(record.id))) if record.phase == Phase.TRAINING else None
    if point is not None:
        text += f" {100 * (point.progress or 0):.0f}% step {point.step}"
        text += f" loss {point.loss:.3f}" if point.loss is not None else ""
    return text


def _status_message(engine: ExperimentEngine, statuses: list[RunStatus], run_id: str | None) -> str:
    if statuses or run_id is not None:
        return "; ".join(
            f"{s.run_id}: {s.status}"
            + (f" ({s.phase})" if s.phase else "")
            + (f", {s.verdict.short()}" if s.verdict else "")
            for s in statuses
        )
    finished = [r for r in engine.store.list() if r.finished]
    if not finished:
        return "no experiments yet; start with a baseline: launch_training('baseline')"
    last = finished[-1]
    verdict = verdict_report(engine, last) if last.status == "succeeded" else None
    return f"nothing queued or running; the last run {last.id} {last.status}. {_next_step(last, _decision(engine, last), verdict)}"


def _decision_result(engine: ExperimentEngine, record: RunRecord, noise_runs: list[str]) -> DecisionResult:
    current = board(engine)
    row = current.row(record.id)
    if record.decision == "keep":
        next_step = "the working copy builds on this run now; edit train.py for the next idea and launch_training"
        if noise_runs:
            next_step = (
                f"the noise floor is being measured ({', '.join(noise_runs)}: the baseline with other seeds); later "
                f"verdicts need it. Meanwhile {next_step}"
            )
    else:
        next_step = "reset_workspace() to put train.py back to the best kept version before the next idea"
    return DecisionResult(
        run_id=record.id,
        decision=record.decision or "discard",
        forced=record.forced,
        note=record.note,
        val_bpb=row.val_bpb,
        verdict=verdict_report(engine, record),
        best_run_id=current.best.run_id if current.best else None,
        best_val_bpb=current.best.val_bpb if current.best else None,
        noise_runs=noise_runs,
        next_step=next_step,
    )


def _delta(value: float | None, reference: float | None) -> float | None:
    return round(value - reference, 6) if value is not None and reference is not None else None


def _metric_delta(name: str, a: dict[str, Any], b: dict[str, Any]) -> MetricDelta:
    va, vb = (float(v) if _is_number(v := summary.get(name)) else None for summary in (a, b))
    return MetricDelta(name=name, a=va, b=vb, delta=_delta(vb, va))


def _signed(value: float | None) -> str:
    return "" if value is None else f"{value:+.6f}"


def _summary_line(summary: dict[str, Any]) -> str:
    """The summary's familiar fields (the original's `key: value` block, on one line) in their
    usual format; the per-phase timings and anything else stay in the structured result."""
    facts = []
    for name, form in SUMMARY_FORMATS.items():
        value = summary.get(name)
        if name != "val_bpb" and value is not None:
            try:
                facts.append(f"{name} {form.format(value)}")
            except (TypeError, ValueError):  # not the type the harness writes: shown as it is
                facts.append(f"{name} {value}")
    return ", ".join(facts)


def _history_table(points: Sequence[MetricPoint]) -> str:
    """The logged steps as a table, with only the columns some step has."""
    columns = [name for name in MetricPoint.model_fields if any(getattr(p, name) is not None for p in points)]
    rows = [columns, *([number(getattr(p, name), 5) for name in columns] for p in points)]
    return table(rows, right=range(len(columns)))


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
