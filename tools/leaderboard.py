"""The honest leaderboard: one row per experiment, its verdict, ranked only among runs that compare.

An experiment's figure is the mean val_bpb of its runs (the one that opened it, its repeats and,
for a kept one, its noise runs). Experiments trained with the same profile, budget, data and
scale as the current best are ranked and given deltas against it; the others are listed apart,
each saying why. Shared by list_experiments, results.tsv, the progress plot, the journal and the
verdict that read_metrics, training_status and the decisions report.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, Field

from autoresearch_mcp.sandbox import research
from autoresearch_mcp.sandbox.engine import ExperimentEngine
from autoresearch_mcp.sandbox.isolation import NONE
from autoresearch_mcp.sandbox.research import Comparability, Experiment, Verdict
from autoresearch_mcp.sandbox.runstore import NoiseFloor, RunRecord
from autoresearch_mcp.tools.text import counted, table

ValidationState = Literal["running", "holds", "does not hold", "inconclusive", "failed"]

# ---- result models ---------------------------------------------------------------------------


class VerdictReport(BaseModel):
    """How a measured experiment compares with the kept run it is judged against."""

    verdict: Verdict = Field(
        description="better (beats the reference by more than the noise threshold), within noise, worse, "
        "not comparable (other profile, budget, data or scale), unknown (no noise floor yet, or nothing kept)"
    )
    reason: str = Field(description="the comparison in one line, with its numbers")
    experiment: str = Field(description="the experiment (the id of the run that opened it) the figure belongs to")
    val_bpb: float = Field(description="the experiment's figure: mean val_bpb of its measured runs")
    runs: int = Field(description="measured runs behind the figure")
    spread: float | None = Field(description="standard deviation of those runs; None with one run")
    reference_run_id: str | None = Field(
        description="the kept experiment it is judged against: the best comparable one (validation: the baseline)"
    )
    reference_val_bpb: float | None
    delta: float | None = Field(description="val_bpb minus the reference's (negative = better)")
    threshold: float | None = Field(
        description="how far below the reference counts as better: k x noise std / sqrt(runs)"
    )
    noise_std: float | None = Field(
        description="the noise floor in force: seed-to-seed std of val_bpb, at least the profile's minimum"
    )
    noise_mad: float | None = Field(description="median absolute deviation of the same runs")
    noise_runs: int | None = Field(description="how many runs measured the noise floor")
    forced: bool = Field(description="kept although its verdict was not better (keep_experiment force=true)")

    def text(self) -> str:
        return f"verdict: {self.verdict}{' (kept by force)' if self.forced else ''}: {self.reason}"

    def short(self) -> str:
        """e.g. "verdict: better (-0.012000 vs r0003)", for a status line."""
        if self.delta is None or self.reference_run_id is None:
            return f"verdict: {self.verdict}"
        return f"verdict: {self.verdict} ({self.delta:+.6f} vs {self.reference_run_id})"


class ValidationMark(BaseModel):
    """Whether a kept change still wins when the model and budget are scaled up (validate_experiment)."""

    scale: float
    state: ValidationState
    delta: float | None = Field(description="val_bpb minus the baseline's at that scale (negative = better)")

    def text(self) -> str:
        delta = f" ({self.delta:+.6f})" if self.delta is not None else ""
        return f"{self.state} at {self.scale:g}x{delta}"


class ExperimentRow(BaseModel):
    run_id: str = Field(description="the experiment: the id of the run that opened it")
    commit: str
    status: str = Field(
        description="succeeded once any of its runs has; else that of a run still going, or of its first"
    )
    decision: str | None
    forced: bool = Field(description="kept although its verdict was not better")
    val_bpb: float | None = Field(description="mean val_bpb of its measured runs")
    runs: int = Field(description="measured runs behind val_bpb")
    run_ids: list[str] = Field(description="every run of the experiment: the first, its repeats and noise runs")
    spread: float | None = Field(description="standard deviation of its runs; None with fewer than two")
    delta_vs_parent: float | None = Field(
        description="val_bpb minus that of the experiment on this one's parent commit (negative = better)"
    )
    delta_vs_best: float | None = Field(
        description="val_bpb minus the best kept experiment's; None when it does not compare (negative = better)"
    )
    verdict: Verdict | None = Field(description="its verdict (see read_metrics for the numbers); None until measured")
    apart: str | None = Field(description="why it is not ranked with the best (e.g. 'budget 90 s, best r0003 is 15 s')")
    validation: ValidationMark | None = Field(description="the latest scale-up check of it, if any")
    touched: list[str] = Field(description="what its code change touched: hyperparameters and functions")
    description: str
    memory_gb: float | None
    duration_seconds: float | None
    unisolated: bool = Field(
        default=False,
        description='made without a sandbox (the workspace set isolation = "none"): its code could reach the data and records',
    )


class NoiseFloorInfo(BaseModel):
    std: float = Field(
        description="the spread verdicts use: the measured std, or the profile's minimum where that is larger"
    )
    measured_std: float = Field(description="seed-to-seed standard deviation of val_bpb of the runs")
    mad: float = Field(description="median absolute deviation of the runs")
    runs: int
    experiment: str = Field(description="the experiment whose runs measured it")
    minimum: bool = Field(description="the profile's minimum is in force: the runs measured less")
    source: str = Field(description="where std comes from, and under the minimum why (e.g. the code ignores run.seed)")
    threshold: float = Field(description="k x std: how far below the best a single run must be to count as better")

    def text(self) -> str:
        origin = (
            f"({self.source})" if self.minimum else f"(MAD {self.mad:.6f}) from {self.runs} runs of {self.experiment}"
        )
        return f"std {self.std:.6f} {origin}; better means more than {self.threshold:.6f} below the best"


class ExperimentList(BaseModel):
    experiments: list[ExperimentRow] = Field(description="ranked: experiments that compare with the best")
    apart: list[ExperimentRow] = Field(description="listed apart: other profile, budget, data or scale, with why")
    total: int = Field(description="experiments in all (each may hold several runs)")
    runs: int = Field(description="runs in all, noise and validation runs included")
    best_run_id: str | None
    best_val_bpb: float | None
    compared_on: str | None = Field(description="what the ranked experiments share: profile, budget, data")
    noise_floor: NoiseFloorInfo | None = Field(description="the noise floor in force for the ranked experiments")

    def text(self) -> str:
        if not self.total:
            return "no experiments yet; start with a baseline: launch_training('baseline')"
        best = (
            f"best {self.best_run_id} {self.best_val_bpb:.6f}" if self.best_val_bpb is not None else "nothing kept yet"
        )
        floor = f"noise {self.noise_floor.text()}" if self.noise_floor else "no noise floor yet (measure_noise)"
        lines = [f"{counted(self.total, 'experiment')} ({counted(self.runs, 'run')}); {best}; {floor}"]
        lines += [f"ranked ({self.compared_on}):", _table(self.experiments, ranked=True)]
        if self.apart:
            lines += ["apart (not comparable with the best):", _table(self.apart, ranked=False)]
        if any(row.forced for row in [*self.experiments, *self.apart]):
            lines.append("(keep! = kept by force, against its verdict)")
        shown = len(self.experiments) + len(self.apart)
        if shown < self.total:
            lines.append(f"({self.total - shown} more: raise limit)")
        return "\n".join(lines)


def _table(rows: Sequence[ExperimentRow], ranked: bool) -> str:
    if not rows:
        return "  none"
    header = [
        "run",
        "status",
        "decision",
        "val_bpb",
        "n",
        "vs best" if ranked else "why apart",
        "verdict",
        "description",
    ]
    body = [
        [
            row.run_id,
            row.status + (" unisolated" if row.unisolated else ""),
            (row.decision or "-") + ("!" if row.forced else ""),
            f"{row.val_bpb:.6f}" if row.val_bpb is not None else "-",
            str(row.runs),
            (f"{row.delta_vs_best:+.6f}" if row.delta_vs_best is not None else "-") if ranked else row.apart or "-",
            (row.verdict or "-") + (f", {row.validation.text()}" if row.validation else ""),
            _shorten(row.description, 60),
        ]
        for row in rows
    ]
    return table([header, *body], right=[3, 4, 5] if ranked else [3, 4])


def _shorten(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---- building the board ----------------------------------------------------------------------


@dataclass(frozen=True)
class Board:
    """Every experiment as a row (launch order), and what the ranked ones are compared on."""

    rows: list[ExperimentRow]
    experiments: list[Experiment]
    best: ExperimentRow | None
    reference: Comparability | None  # the key the ranked rows share
    floor: NoiseFloor | None  # in force for the reference key
    k: float

    def ranked(self) -> list[ExperimentRow]:
        return [row for row in self.rows if row.apart is None]

    def row(self, experiment_id: str) -> ExperimentRow:
        return next(row for row in self.rows if row.run_id == experiment_id)


def board(engine: ExperimentEngine) -> Board:
    return build_board(engine.store.list(), engine.floors(), engine.workspace.config.noise_k)


def build_board(records: Sequence[RunRecord], floors: Sequence[NoiseFloor], k: float) -> Board:
    everything = research.experiments(records)
    frontier = research.latest_kept(everything) or (everything[0] if everything else None)
    reference = frontier.key if frontier else None
    best = research.best_kept(everything, reference) if reference else None
    name = f"best {best.id}" if best else f"first run {frontier.id}" if frontier else ""
    by_commit = {run.commit: e for e in everything for run in e.runs}
    floor = research.floor_for(reference, floors, best.primary.commit if best else None) if reference else None
    scales: dict[str, float] = {}  # each experiment's latest validation scale
    for record in records:
        if record.kind == "validation":
            scales[record.experiment] = record.scale
    rows = []
    for experiment in everything:
        assessment = research.assess(experiment, everything, floors, k)
        apart = experiment.key.why_not(reference, name) if reference else ""
        parent = by_commit.get(experiment.primary.parent_commit or "")
        rows.append(
            ExperimentRow(
                run_id=experiment.id,
                commit=experiment.primary.commit[:7],
                status=experiment.status,
                decision=experiment.primary.decision,
                forced=experiment.primary.forced,
                val_bpb=_mean(experiment),
                runs=len(experiment.measured),
                run_ids=[run.id for run in experiment.runs],
                spread=experiment.figure.std if experiment.figure else None,
                delta_vs_parent=_delta(experiment, parent) if parent and parent.key.matches(experiment.key) else None,
                delta_vs_best=None if apart or best is None else _delta(experiment, best),
                verdict=assessment.verdict if assessment else None,
                apart=apart or None,
                validation=_latest_validation(records, experiment, scales.get(experiment.id), everything, floors, k),
                touched=experiment.primary.touched or [],
                description=experiment.primary.description,
                memory_gb=_memory_gb(experiment),
                duration_seconds=duration(experiment.primary),
                unisolated=any(run.isolation == NONE for run in experiment.runs),
            )
        )
    best_row = next((row for row in rows if best and row.run_id == best.id), None)
    return Board(rows, everything, best_row, reference, floor, k)


def verdict_report(engine: ExperimentEngine, record: RunRecord) -> VerdictReport | None:
    """The verdict of the experiment `record` counts toward; None while unmeasured, and for
    validation runs (validate_experiment reports those)."""
    if record.kind == "validation":
        return None
    everything = research.experiments(engine.store.list())
    target = next((e for e in everything if e.id == record.experiment), None)
    if target is None:
        return None
    assessment = research.assess(target, everything, engine.floors(), engine.workspace.config.noise_k)
    return report_of(target, assessment) if assessment else None


def report_of(experiment: Experiment, assessment: research.Assessment) -> VerdictReport:
    reference, floor = assessment.reference, assessment.floor
    return VerdictReport(
        verdict=assessment.verdict,
        reason=assessment.reason,
        experiment=experiment.id,
        val_bpb=round(assessment.figure.mean, 6),
        runs=assessment.figure.runs,
        spread=_round(assessment.figure.std),
        reference_run_id=reference.id if reference else None,
        reference_val_bpb=_round(reference.figure.mean) if reference and reference.figure else None,
        delta=_round(assessment.delta),
        threshold=_round(assessment.threshold),
        noise_std=_round(research.floor_std(floor)) if floor else None,
        noise_mad=_round(floor.mad) if floor else None,
        noise_runs=floor.runs if floor else None,
        forced=experiment.primary.forced,
    )


def noise_info(floor: NoiseFloor | None, k: float) -> NoiseFloorInfo | None:
    if floor is None:
        return None
    std = research.floor_std(floor)
    return NoiseFloorInfo(
        std=round(std, 6),
        measured_std=round(floor.std, 6),
        mad=round(floor.mad, 6),
        runs=floor.runs,
        experiment=floor.experiment,
        minimum=floor.std < std,
        source=research.describe_floor(floor),
        threshold=round(k * std, 6),
    )


# ---- validations -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Validation:
    """An experiment and its baseline at a larger scale, and how they compare there."""

    candidate: Experiment  # its runs at the scale
    baseline: Experiment  # the baseline's runs at the scale
    scale: float
    assessment: research.Assessment | None  # once both are measured and nothing runs

    @property
    def state(self) -> ValidationState:
        if self.candidate.active or self.baseline.active:
            return "running"
        if self.assessment is None:
            return "failed"
        if self.assessment.verdict == "better":
            return "holds"
        if self.assessment.verdict in ("within noise", "worse"):
            return "does not hold"
        return "inconclusive"  # no floor at that scale

    def mark(self) -> ValidationMark:
        return ValidationMark(
            scale=self.scale, state=self.state, delta=_round(self.assessment.delta) if self.assessment else None
        )


def validation_of(
    records: Sequence[RunRecord],
    candidate: Experiment,
    baseline: Experiment,
    scale: float,
    floors: Sequence[NoiseFloor],
    k: float,
) -> Validation:
    scaled = research.group_at(records, candidate.primary, scale)
    base = research.group_at(records, baseline.primary, scale)
    assessment = None
    if scaled.figure and base.figure and not scaled.active and not base.active:
        floor = research.floor_for(scaled.key, floors, baseline.primary.commit)
        assessment = research.judge(scaled.figure, base, "baseline", floor, k)
    return Validation(scaled, base, scale, assessment)


def _latest_validation(
    records: Sequence[RunRecord],
    experiment: Experiment,
    scale: float | None,
    everything: Sequence[Experiment],
    floors: Sequence[NoiseFloor],
    k: float,
) -> ValidationMark | None:
    if scale is None:
        return None
    baseline = research.first_kept(everything, experiment.key)
    if baseline is None or baseline.id == experiment.id:  # the baseline's own runs at scale
        return None
    return validation_of(records, experiment, baseline, scale, floors, k).mark()


# ---- small shared helpers --------------------------------------------------------------------


def duration(record: RunRecord) -> float | None:
    if record.started_at is None:
        return None
    return round((record.finished_at or time.time()) - record.started_at, 1)


def _mean(experiment: Experiment) -> float | None:
    figure = experiment.figure
    return figure.mean if figure else None


def _delta(experiment: Experiment, reference: Experiment) -> float | None:
    mine, theirs = experiment.figure, reference.figure
    return _round(mine.mean - theirs.mean) if mine and theirs else None


def _memory_gb(experiment: Experiment) -> float | None:
    for run in experiment.runs:
        value = (run.summary or {}).get("peak_memory_mb")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return round(float(value) / 1024, 1)
    return None


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)
