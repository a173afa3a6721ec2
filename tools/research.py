"""Research validity as tools: the noise floor, repeat runs, the scale-up check, and the journal.

A run is one sample. measure_noise runs the best kept code again with fresh seeds, and the
spread of those runs is the noise floor every verdict uses; repeat_experiment gives an
experiment more runs, so its figure becomes their mean; validate_experiment re-runs a change
and the baseline with a larger model and budget; research_summary tells a fresh session
where the research stands, in a couple of thousand tokens.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, Field

from autoresearch_mcp.nanochat import contract
from autoresearch_mcp.nanochat.errors import UserError
from autoresearch_mcp.sandbox import research, runner
from autoresearch_mcp.sandbox.config import WorkspaceConfig
from autoresearch_mcp.sandbox.engine import ExperimentEngine
from autoresearch_mcp.sandbox.research import Experiment, Verdict
from autoresearch_mcp.sandbox.runstore import ACTIVE_STATUSES, RunKind, RunRecord
from autoresearch_mcp.tools.experiments import MAX_WAIT_SECONDS, last_metric
from autoresearch_mcp.tools.leaderboard import (
    ExperimentRow,
    NoiseFloorInfo,
    ValidationState,
    VerdictReport,
    board,
    noise_info,
    report_of,
    validation_of,
)

DESCRIPTION_CHARS = 60  # a description as the journal quotes it
JOURNAL_TRIES_PER_GROUP = 4

# ---- result models ---------------------------------------------------------------------------


class RunsLaunched(BaseModel):
    purpose: Literal["noise", "repeat"] = Field(
        description="noise: the kept code again, to measure the noise floor; repeat: more runs of an experiment"
    )
    experiment: str = Field(description="the experiment the runs count toward")
    commit: str
    run_ids: list[str]
    seeds: list[int] = Field(description="fresh seeds, one per run (runs with one seed repeat each other exactly)")
    budget_seconds: float
    next_step: str

    def text(self) -> str:
        what = "measuring the noise floor of" if self.purpose == "noise" else "repeating"
        runs = ", ".join(f"{run} (seed {seed})" for run, seed in zip(self.run_ids, self.seeds, strict=True))
        return f"{what} {self.experiment} ({self.commit[:7]}): {runs} queued, budget {self.budget_seconds:g} s each\nnext: {self.next_step}"


class ValidationReport(BaseModel):
    run_id: str = Field(description="the experiment checked at the larger scale")
    baseline_run_id: str = Field(description="the first kept experiment, run at the same scale with the same seeds")
    scale: float
    budget_seconds: float = Field(description="the training budget at this scale (the experiment's budget x scale)")
    state: ValidationState = Field(
        description="running; holds (still better than the baseline beyond the noise at this scale); does not hold; "
        "inconclusive (no noise floor at this scale); failed (runs without a val_bpb)"
    )
    launched: list[str] = Field(description="runs this call started (none when the check was started before)")
    runs: list[str] = Field(description="the experiment's runs at this scale")
    baseline_runs: list[str] = Field(description="the baseline's runs at this scale (its noise runs included)")
    gain: float | None = Field(description="the experiment's val_bpb minus the baseline's at the original scale")
    verdict: VerdictReport | None = Field(description="at this scale, against the baseline, once everything finished")
    next_step: str

    def text(self) -> str:
        head = f"validation of {self.run_id} at {self.scale:g}x (budget {self.budget_seconds:g} s) against baseline {self.baseline_run_id}: {self.state}"
        lines = [head]
        if self.launched:
            lines.append(f"started: {', '.join(self.launched)}")
        if self.gain is not None:
            lines.append(f"gain at 1x: {self.gain:+.6f}")
        if self.verdict:
            lines.append(f"at {self.scale:g}x: {self.verdict.text()}")
        lines.append(f"next: {self.next_step}")
        return "\n".join(lines)


class KeptStep(BaseModel):
    run_id: str
    description: str
    val_bpb: float = Field(description="mean over its runs")
    runs: int
    gain: float | None = Field(description="val_bpb minus the best kept before it; None for the baseline")
    verdict: Verdict = Field(description="its verdict against the best kept before it")
    forced: bool
    validation: str | None = Field(description="its latest scale-up check, e.g. 'holds at 2x (-0.004100)'")
    touched: list[str]


class TriedChange(BaseModel):
    run_id: str
    description: str
    status: str
    decision: str | None
    verdict: Verdict | None
    delta_vs_best: float | None


class TouchedGroup(BaseModel):
    touched: str = Field(description="what the changes touched: a hyperparameter or function name from the code diff")
    total: int = Field(description="experiments in the group")
    tries: list[TriedChange] = Field(description="the newest of them")
    closest: TriedChange | None = Field(description="the one that came nearest the best (lowest delta), a near miss")


class Journal(BaseModel):
    experiments: int
    runs: int
    compared_on: str | None = Field(description="the profile, budget and data the ranked experiments share")
    best: KeptStep | None
    chain: list[KeptStep] = Field(description="the kept changes in the order they were kept, the newest `limit`")
    earlier_keeps: int = Field(description="kept changes before those in `chain`")
    not_kept: list[TouchedGroup] = Field(
        description="experiments tried and discarded or crashed, under each name their change touched, the most "
        "tried names first"
    )
    more_groups: int = Field(description="groups left out of `not_kept`")
    undecided: list[TriedChange] = Field(description="measured experiments waiting for a decision")
    running: list[str] = Field(description="queued and running runs, one line each")
    noise_floor: NoiseFloorInfo | None
    next_step: str

    def text(self) -> str:
        if not self.experiments:
            return "Research journal: no experiments yet.\nnext: " + self.next_step
        lines = [f"Research journal: {self.experiments} experiments ({self.runs} runs) on {self.compared_on}."]
        if self.best:
            lines.append(f"Best: {_kept_line(self.best)}")
        lines.append(
            "Noise floor: " + (self.noise_floor.text() if self.noise_floor else "not measured yet (measure_noise)")
        )
        if self.chain:
            lines.append("How the best was reached (kept changes in order; gain vs the best before):")
            if self.earlier_keeps:
                lines.append(f"  ... {self.earlier_keeps} earlier keeps (list_experiments)")
            lines += [f"  {_kept_line(step)}" for step in self.chain]
        if self.not_kept:
            lines.append("Tried and not kept, by what the change touched (delta vs best):")
            for group in self.not_kept:
                tries = "; ".join(_try_text(t) for t in group.tries)
                more = f"; +{group.total - len(group.tries)} more" if group.total > len(group.tries) else ""
                closest = group.closest
                if closest is not None and closest not in group.tries:
                    more += f" (closest: {closest.run_id} {closest.delta_vs_best:+.6f})"
                lines.append(f"  {group.touched}: {tries}{more}")
            if self.more_groups:
                lines.append(f"  ... {self.more_groups} more groups (raise limit, or list_experiments)")
        if self.undecided:
            lines.append("Waiting for a decision: " + "; ".join(_try_text(t) for t in self.undecided))
        if self.running:
            lines.append("Running: " + "; ".join(self.running))
        lines.append(f"next: {self.next_step}")
        return "\n".join(lines)


def _kept_line(step: KeptStep) -> str:
    gain = f" {step.gain:+.6f}" if step.gain is not None else " (baseline)"
    runs = f" (mean of {step.runs})" if step.runs > 1 else ""
    marks = [
        m
        for m in (step.verdict if step.gain is not None else None, "forced" if step.forced else None, step.validation)
        if m
    ]
    touched = f" [{', '.join(step.touched[:3])}]" if step.touched else ""
    return f'{step.run_id} {step.val_bpb:.6f}{runs}{gain}{" " + ", ".join(marks) if marks else ""}{touched} "{step.description}"'


def _try_text(change: TriedChange) -> str:
    if change.delta_vs_best is not None:
        outcome = f"{change.delta_vs_best:+.6f} {change.verdict or ''}".rstrip()
    else:
        outcome = change.verdict or change.status
    return f'{change.run_id} {outcome} "{change.description}"'


# ---- tools -------------------------------------------------------------------------------------


def measure_noise(engine: ExperimentEngine, runs: int = 3) -> RunsLaunched:
    """Queue the best kept code `runs` more times with fresh seeds, as noise runs; the floor is
    stored when they have finished."""
    launched = engine.measure_noise(runs)
    step = f"training_status(wait_seconds={MAX_WAIT_SECONDS}) until they finish; list_experiments then shows the floor"
    return _launched("noise", launched, step)


def repeat_experiment(engine: ExperimentEngine, run_id: str, runs: int = 2) -> RunsLaunched:
    """Queue the commit of `run_id`'s experiment `runs` more times with fresh seeds (noise runs for
    a kept one); refused for validation runs, discarded experiments and ones with nothing measured."""
    record = engine.store.get(run_id)
    if record.kind == "validation":
        raise UserError(
            f"{run_id} is a validation run; validate_experiment('{record.experiment}', scale={record.scale:g}, runs=...) "
            "runs more of those"
        )
    experiment = _experiment(engine, record.experiment)
    if experiment.primary.decision == "discard":
        raise UserError(
            f"{experiment.id} was discarded, and a decision is final. To try it again, reset_workspace('{experiment.id}') "
            "and launch_training it as a new experiment"
        )
    if experiment.figure is None and not experiment.active:
        raise UserError(
            f"{experiment.id} has no val_bpb to firm up (it {experiment.status}); read_log('{experiment.id}') for why"
        )
    seeds = research.fresh_seeds((run.seed for run in experiment.runs), runs, contract.DEFAULT_SEED)
    kind: RunKind = "noise" if experiment.kept else "repeat"
    description = f"repeat of {experiment.id}: {experiment.primary.description}"
    launched = engine.launch_copies(experiment.primary, kind, seeds, description)
    step = f"training_status(wait_seconds={MAX_WAIT_SECONDS}) until they finish, then read_metrics('{experiment.id}') for the verdict"
    return _launched("noise" if kind == "noise" else "repeat", launched, step)


def validate_experiment(engine: ExperimentEngine, run_id: str, scale: float = 2.0, runs: int = 1) -> ValidationReport:
    """The experiment of `run_id` and the baseline (the first kept one) at `scale`, `runs` seeds each
    (the same for both), plus noise runs of the baseline where that scale has no floor yet: queued
    on the first call, reported on every call."""
    records = engine.store.list()
    record = next((r for r in records if r.id == run_id), None) or engine.store.get(run_id)
    everything = research.experiments(records)
    candidate = _experiment(engine, record.experiment, everything)
    if candidate.figure is None:
        raise UserError(
            f"{candidate.id} has no val_bpb yet ({candidate.status}); validate it once it has one"
            if candidate.active
            else f"{candidate.id} has no val_bpb (it {candidate.status}); there is no gain to check"
        )
    baseline = research.first_kept(everything, candidate.key)
    if baseline is None:
        raise UserError(
            "nothing kept yet to compare with: keep a baseline (launch_training('baseline'), keep_experiment) first"
        )
    if baseline.id == candidate.id:
        raise UserError(
            f"{candidate.id} is the baseline every scale-up check compares against; validate a later change"
        )
    launched: list[RunRecord] = []
    scaled = research.group_at(records, candidate.primary, scale)
    if not scaled.active and not scaled.measured:
        launched = _launch_validation(engine, records, candidate, baseline, scale, runs)
        records = engine.store.list()
    check = validation_of(records, candidate, baseline, scale, engine.floors(), engine.workspace.config.noise_k)
    return ValidationReport(
        run_id=candidate.id,
        baseline_run_id=baseline.id,
        scale=scale,
        budget_seconds=candidate.primary.budget_seconds * scale,
        state=check.state,
        launched=[r.id for r in launched],
        runs=[r.id for r in check.candidate.runs],
        baseline_runs=[r.id for r in check.baseline.runs],
        gain=round(candidate.figure.mean - baseline.figure.mean, 6) if baseline.figure else None,
        verdict=report_of(check.candidate, check.assessment) if check.assessment else None,
        next_step=_validation_step(check.state, candidate.id, scale),
    )


def research_summary(engine: ExperimentEngine, limit: int = 10) -> Journal:
    """The research journal: at most `limit` kept changes, groups of ideas not kept, and entries
    of the other lists."""
    records = engine.store.list()
    current = board(engine)
    floors, k = engine.floors(), current.k
    ranked = {row.run_id: row for row in current.ranked()}
    kept = sorted((e for e in current.experiments if e.kept and e.id in ranked), key=lambda e: e.decision_order)
    assessed = [(e, research.assess(e, current.experiments, floors, k)) for e in kept]
    chain = [_kept_step(e, assessment, ranked[e.id]) for e, assessment in assessed if assessment is not None]
    best = next((step for step in chain if current.best and step.run_id == current.best.run_id), None)
    rows = {row.run_id: row for row in current.rows}
    tried = [
        e
        for e in current.experiments
        if e.primary.decision == "discard" or (e.primary.decision is None and not e.active and e.figure is None)
    ]
    groups = _groups(tried, rows, limit)
    undecided = [
        _tried(rows[e.id], e) for e in current.experiments if e.primary.decision is None and e.figure and not e.active
    ]
    running = [_running_line(engine, r) for r in records if r.status in ACTIVE_STATUSES]
    return Journal(
        experiments=len(current.rows),
        runs=len(records),
        compared_on=current.reference.describe() if current.reference else None,
        best=best,
        chain=chain[-limit:],
        earlier_keeps=max(0, len(chain) - limit),
        not_kept=groups[:limit],
        more_groups=max(0, len(groups) - limit),
        undecided=undecided[-limit:],
        running=running[:limit] + ([f"... {len(running) - limit} more"] if len(running) > limit else []),
        noise_floor=noise_info(current.floor, k),
        next_step=_journal_step(current.best is not None, bool(undecided), bool(running)),
    )


# ---- helpers -----------------------------------------------------------------------------------


def _experiment(
    engine: ExperimentEngine, experiment_id: str, everything: Sequence[Experiment] | None = None
) -> Experiment:
    everything = research.experiments(engine.store.list()) if everything is None else everything
    return next(e for e in everything if e.id == experiment_id)


def _launched(purpose: Literal["noise", "repeat"], launched: list[RunRecord], next_step: str) -> RunsLaunched:
    first = launched[0]
    return RunsLaunched(
        purpose=purpose,
        experiment=first.experiment,
        commit=first.commit,
        run_ids=[r.id for r in launched],
        seeds=[r.seed for r in launched],
        budget_seconds=first.budget_seconds,
        next_step=next_step,
    )


def _launch_validation(
    engine: ExperimentEngine,
    records: Sequence[RunRecord],
    candidate: Experiment,
    baseline: Experiment,
    scale: float,
    runs: int,
) -> list[RunRecord]:
    """Queue the baseline's runs at `scale` it still lacks, the candidate's with the same seeds, and
    noise runs of the baseline when there is no floor at that scale."""
    base = research.group_at(records, baseline.primary, scale)
    reusable = [r for r in base.runs if r.kind == "validation" and (not r.finished or r.status == "succeeded")]
    seeds = [r.seed for r in reusable][:runs]
    used = {r.seed for r in base.runs}
    missing = research.fresh_seeds(used, runs - len(seeds), contract.DEFAULT_SEED)
    about = f"at {scale:g}x"
    launched = []
    if missing:
        text = f"validate {about}: baseline {baseline.id} ({baseline.primary.description})"
        launched += engine.launch_copies(baseline.primary, "validation", missing, text, scale=scale)
    seeds += missing
    text = f"validate {candidate.id} {about} ({candidate.primary.description})"
    launched += engine.launch_copies(candidate.primary, "validation", seeds, text, scale=scale)
    key = dataclasses.replace(
        candidate.key, budget_seconds=candidate.primary.budget_seconds * scale, scale=scale, data_id=None
    )
    measuring = any(r.kind == "noise" and (not r.finished or r.status == "succeeded") for r in base.runs)
    if research.floor_for(key, engine.floors(), baseline.primary.commit) is None and not measuring:
        count = engine.workspace.config.noise_runs or WorkspaceConfig().noise_runs
        noise_seeds = research.fresh_seeds(used | set(seeds), count, contract.DEFAULT_SEED)
        text = f"noise {about}: baseline {baseline.id} with another seed"
        launched += engine.launch_copies(baseline.primary, "noise", noise_seeds, text, scale=scale)
    return launched


def _validation_step(state: ValidationState, experiment_id: str, scale: float) -> str:
    again = f"validate_experiment('{experiment_id}', scale={scale:g})"
    return {
        "running": f"training_status(wait_seconds={MAX_WAIT_SECONDS}) until its runs finish, then {again} for the result",
        "holds": "the gain holds at the larger scale; list_experiments marks it",
        "does not hold": "the gain did not hold at the larger scale: weigh that before building more on it",
        "inconclusive": f"no noise floor at this scale (its noise runs failed); read_log them, then {again}",
        "failed": "the runs at this scale have no val_bpb; read_log them (a larger model may not fit)",
    }[state]


def _kept_step(experiment: Experiment, assessment: research.Assessment, row: ExperimentRow) -> KeptStep:
    return KeptStep(
        run_id=experiment.id,
        description=_short(experiment.primary.description),
        val_bpb=round(assessment.figure.mean, 6),
        runs=assessment.figure.runs,
        gain=round(assessment.delta, 6) if assessment.delta is not None else None,
        verdict=assessment.verdict,
        forced=experiment.primary.forced,
        validation=row.validation.text() if row.validation else None,
        touched=experiment.primary.touched or [],
    )


def _tried(row: ExperimentRow, experiment: Experiment) -> TriedChange:
    return TriedChange(
        run_id=row.run_id,
        description=_short(experiment.primary.description),
        status=row.status,
        decision=row.decision,
        verdict=row.verdict,
        delta_vs_best=row.delta_vs_best,
    )


def _groups(tried: Sequence[Experiment], rows: dict[str, ExperimentRow], limit: int) -> list[TouchedGroup]:
    """Not-kept experiments under each name their change touched (one may sit in several groups),
    the most tried names first, then the most recently tried."""
    groups: dict[str, list[Experiment]] = {}
    for experiment in tried:
        for name in experiment.primary.touched or ["(no code change)"]:
            groups.setdefault(name, []).append(experiment)
    ordered = sorted(groups.items(), key=lambda item: (len(item[1]), int(item[1][-1].id[1:])), reverse=True)
    return [_group(name, [_tried(rows[e.id], e) for e in members[::-1]], limit) for name, members in ordered]


def _group(name: str, tries: list[TriedChange], limit: int) -> TouchedGroup:
    """A group of tries (newest first): the newest few, and the nearest miss among all."""
    measured = [t for t in tries if t.delta_vs_best is not None]
    closest = min(measured, key=lambda t: t.delta_vs_best or 0.0) if measured else None
    return TouchedGroup(
        touched=name, total=len(tries), tries=tries[: min(limit, JOURNAL_TRIES_PER_GROUP)], closest=closest
    )


def _running_line(engine: ExperimentEngine, record: RunRecord) -> str:
    text = f"{record.id} {record.status}" + (f" ({record.phase})" if record.phase else "")
    point = last_metric(runner.metrics_path(engine.run_dir(record.id))) if record.status == "running" else None
    if point is not None and point.progress is not None:
        text += f" {100 * point.progress:.0f}%"
    if record.kind != "experiment":
        text += f" {record.kind} of {record.experiment}"
    return f'{text} "{_short(record.description)}"'


def _journal_step(has_best: bool, undecided: bool, running: bool) -> str:
    if undecided:
        return "decide on the experiments waiting (read_metrics for the numbers), then the next idea"
    if not has_best:
        return (
            "launch_training('baseline'), wait for it, and keep_experiment it"
            if not running
            else (f"training_status(wait_seconds={MAX_WAIT_SECONDS}) for the baseline, then keep it")
        )
    return "pick an idea not tried above (or build on a near miss), edit train.py and launch_training"


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= DESCRIPTION_CHARS else text[: DESCRIPTION_CHARS - 3] + "..."
