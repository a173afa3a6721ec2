"""Research validity over the run records: which runs compare, experiments as groups of runs,
noise floors, and the verdict a measured experiment earns against the best kept one.

A run is one sample. Runs of the same code (repeats, noise runs) form one experiment whose figure
is the mean of its runs. Two runs compare only when they share profile, budget, data and scale.
The noise floor is the seed-to-seed spread (standard deviation) of val_bpb of one commit, never
less than the profile's minimum (the template's own spread, profiles.Profile.min_noise_std: code that
pins its own seed measures a spread of 0, and such a floor gives no verdict at all), nor less than the
spread of the experiment's own runs where it has several; an experiment is `better` when its mean
beats the best kept experiment's by more than k times the standard error of that mean
(k x std / sqrt(n); with one run, k x std).

Everything here is a pure function of records and stored floors: the engine uses it to gate
keeps and store floors, the tools to show verdicts, so all of them agree.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

from autoresearch_mcp.nanochat.profiles import min_noise_std
from autoresearch_mcp.sandbox.runstore import NoiseFloor, RunRecord

Verdict = Literal["better", "within noise", "worse", "not comparable", "unknown"]
DEFAULT_K = 2.0


def measured_bpb(record: RunRecord) -> float | None:
    """The run's trusted val_bpb, or None unless it succeeded with one."""
    value = (record.summary or {}).get("val_bpb")
    if record.status != "succeeded" or isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


# ---- what compares ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Comparability:
    """What must be equal for two val_bpb figures to compare."""

    profile: str
    budget_seconds: float
    scale: float
    data_source: str | None  # the configured data at launch
    data_id: str | None  # the harness's hash of validation split and tokenizer, from the summary

    @classmethod
    def of(cls, record: RunRecord) -> Comparability:
        data_id = (record.summary or {}).get("data_id")
        return cls(
            record.profile,
            record.budget_seconds,
            record.scale,
            record.data_source,
            data_id if isinstance(data_id, str) else None,
        )

    @classmethod
    def of_floor(cls, floor: NoiseFloor) -> Comparability:
        return cls(floor.profile, floor.budget_seconds, floor.scale, floor.data_source, floor.data_id)

    def differences(self, other: Comparability) -> list[tuple[str, str, str]]:
        """(what, this one's, the other's) for each way they differ; empty when they compare.

        Data recorded on one side only is no difference: runs recorded before the field existed lack it.
        """
        found = []
        if self.profile != other.profile:
            found.append(("profile", self.profile, other.profile))
        if self.budget_seconds != other.budget_seconds:
            found.append(("budget", f"{self.budget_seconds:g} s", f"{other.budget_seconds:g} s"))
        if self.scale != other.scale:
            found.append(("scale", f"{self.scale:g}x", f"{other.scale:g}x"))
        for mine, theirs in ((self.data_source, other.data_source), (self.data_id, other.data_id)):
            if mine is not None and theirs is not None and mine != theirs:
                found.append(("data", _short_data(mine), _short_data(theirs)))
        return found

    def matches(self, other: Comparability) -> bool:
        return not self.differences(other)

    def why_not(self, other: Comparability, other_name: str) -> str:
        """e.g. "budget 90 s, best r0003 is 15 s"; empty when they compare."""
        return "; ".join(f"{what} {mine}, {other_name} is {theirs}" for what, mine, theirs in self.differences(other))

    def describe(self) -> str:
        """e.g. "cpu, 60 s, builtin" (scale only when not 1)."""
        parts = [self.profile, f"{self.budget_seconds:g} s"]
        if self.scale != 1:
            parts.append(f"scale {self.scale:g}x")
        if self.data_source is not None:
            parts.append(_short_data(self.data_source))
        return ", ".join(parts)


def _short_data(data: str) -> str:
    return data if len(data) <= 40 else "..." + data[-37:]


# ---- experiments -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Figure:
    """An experiment's val_bpb: the mean of its measured runs and their spread."""

    mean: float
    std: float | None  # None with one run
    runs: int


@dataclass(frozen=True)
class Experiment:
    """One idea: the run that opened it and every run of the same code counted toward it.

    Its figures are computed once (the records it holds never change; a later read makes new ones)."""

    primary: RunRecord
    runs: tuple[RunRecord, ...]  # at one scale, in launch order

    @property
    def id(self) -> str:
        return self.primary.id

    @cached_property
    def measured(self) -> list[float]:
        return [value for run in self.runs if (value := measured_bpb(run)) is not None]

    @cached_property
    def figure(self) -> Figure | None:
        values = self.measured
        if not values:
            return None
        return Figure(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None, len(values))

    @cached_property
    def key(self) -> Comparability:
        """Its comparability, data identity taken from a measured run where there is one."""
        measured = [run for run in self.runs if measured_bpb(run) is not None]
        return Comparability.of(measured[0] if measured else self.primary)

    @property
    def active(self) -> list[RunRecord]:
        return [run for run in self.runs if not run.finished]

    @property
    def status(self) -> str:
        """`succeeded` once any of its runs has; else that of a run still going, or of the run that opened it."""
        if self.measured:
            return "succeeded"
        return self.active[0].status if self.active else self.primary.status

    @property
    def kept(self) -> bool:
        return self.primary.decision == "keep"

    @property
    def decision_order(self) -> tuple[float, int]:
        """When it was decided (launch time for records older than decided_at), then launch order."""
        return (self.primary.decided_at or self.primary.created_at, int(self.primary.id[1:]))


def experiments(records: Sequence[RunRecord]) -> list[Experiment]:
    """One Experiment per run that opened one (kind experiment), in launch order, with its runs
    at its own scale; validation runs at other scales are left out."""
    by_id = {record.id: record for record in records}
    members: dict[str, list[RunRecord]] = {}
    for record in records:
        primary = by_id.get(record.experiment, record)
        if record.scale == primary.scale:
            members.setdefault(primary.id, []).append(record)
    return [Experiment(by_id[eid], tuple(runs)) for eid, runs in members.items() if by_id[eid].kind == "experiment"]


def group_at(records: Sequence[RunRecord], experiment: RunRecord, scale: float) -> Experiment:
    """The runs of `experiment`'s code at `scale` (validation and their noise runs), as one Experiment."""
    runs = tuple(r for r in records if r.experiment == experiment.id and r.scale == scale)
    return Experiment(experiment, runs)


def best_kept(candidates: Iterable[Experiment], key: Comparability) -> Experiment | None:
    """The kept experiment with the lowest figure among those comparable with `key`."""
    kept = [(figure.mean, e) for e in candidates if e.kept and (figure := e.figure) and e.key.matches(key)]
    return min(kept, key=lambda pair: pair[0])[1] if kept else None


def latest_kept(candidates: Iterable[Experiment]) -> Experiment | None:
    kept = [e for e in candidates if e.kept]
    return max(kept, key=lambda e: e.decision_order) if kept else None


def first_kept(candidates: Iterable[Experiment], key: Comparability) -> Experiment | None:
    """The baseline: the first experiment kept among those comparable with `key`."""
    kept = [e for e in candidates if e.kept and e.key.matches(key)]
    return min(kept, key=lambda e: e.decision_order) if kept else None


def fresh_seeds(used: Iterable[int], count: int, start: int) -> list[int]:
    """`count` seeds from `start` upwards that are not in `used` (cpu runs with one seed are bit-exact)."""
    taken, seeds, seed = set(used), list[int](), start
    while len(seeds) < count:
        if seed not in taken:
            seeds.append(seed)
        seed += 1
    return seeds


# ---- noise floors ----------------------------------------------------------------------------


def measure_floor(group: Experiment) -> NoiseFloor | None:
    """The spread of the group's measured runs that compare with its first; None under two runs."""
    key = group.key
    measured = [(r, v) for r in group.runs if (v := measured_bpb(r)) is not None and Comparability.of(r).matches(key)]
    if len(measured) < 2:
        return None
    runs, values = [r for r, _ in measured], [v for _, v in measured]
    median = statistics.median(values)
    return NoiseFloor(
        commit=group.primary.commit,
        experiment=group.id,
        profile=key.profile,
        budget_seconds=key.budget_seconds,
        scale=key.scale,
        data_source=key.data_source,
        data_id=key.data_id,
        runs=len(values),
        mean=statistics.fmean(values),
        std=statistics.stdev(values),
        mad=statistics.median(abs(v - median) for v in values),
        run_ids=[r.id for r in runs],
        measured_at=time.time(),
    )


def floor_std(floor: NoiseFloor) -> float:
    """The spread verdicts use: the floor's measured std, or its profile's minimum where that is larger."""
    return max(floor.std, min_noise_std(floor.profile))


def ignores_seed(floor: NoiseFloor) -> bool:
    """The floor's runs, each with its own seed, scored exactly the same: the code ignores run.seed."""
    return floor.runs > 1 and floor.std == 0


def describe_floor(floor: NoiseFloor) -> str:
    """Where the std in force comes from, e.g. "floor from 3 runs of r0001", or, under the minimum,
    "the cpu profile's minimum; 3 runs of r0001 measured 0.000000: ..."."""
    measured = f"{floor.runs} runs of {floor.experiment}"
    if floor.std >= floor_std(floor):
        return f"floor from {measured}"
    why = (
        "identical val_bpb with different seeds: the code ignores the run's seed (run.seed)"
        if ignores_seed(floor)
        else "less than the template's spread"
    )
    return f"the {floor.profile} profile's minimum; {measured} measured {floor.std:.6f}, {why}"


def floor_for(key: Comparability, floors: Sequence[NoiseFloor], commit: str | None) -> NoiseFloor | None:
    """The floor in force for `key`: the one measured on `commit` (the best's) if any, else the latest."""
    matching = [floor for floor in floors if Comparability.of_floor(floor).matches(key)]
    preferred = [floor for floor in matching if floor.commit == commit]
    return (preferred or matching)[-1] if matching else None


# ---- verdicts --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Assessment:
    """An experiment's verdict, with the numbers behind it."""

    verdict: Verdict
    reason: str  # one line, with the numbers
    figure: Figure
    reference: Experiment | None = None  # what it was compared with (the best kept, or a baseline)
    delta: float | None = None  # figure minus the reference's (negative = better)
    floor: NoiseFloor | None = None
    threshold: float | None = None  # k x std / sqrt(n)


def judge(figure: Figure, reference: Experiment, name: str, floor: NoiseFloor | None, k: float) -> Assessment:
    """`figure` against `reference`'s figure, with the noise floor `floor` (named `name` in the reason)."""
    ref = reference.figure
    assert ref is not None, "a reference has a figure"
    delta = figure.mean - ref.mean
    against = f"{_figure_text(figure)} vs {name} {reference.id} {_figure_text(ref)}: {delta:+.6f}"
    if floor is None:
        reason = f"{against}; no noise floor yet for {reference.key.describe()}: measure_noise()"
        return Assessment("unknown", reason, figure, reference, delta)
    if ignores_seed(floor):  # a spread of 0 is no measurement: no floor, not a floor of 0 or a guess
        reason = (
            f"{against}; {floor.runs} runs of {floor.experiment} with different seeds scored identically: "
            "the code ignores the run's seed (run.seed), so its noise cannot be measured; "
            "seed train.py from run.seed, then measure_noise()"
        )
        return Assessment("unknown", reason, figure, reference, delta, floor)
    # The candidate's own seed-to-seed spread counts too: the floor was measured on other code, and
    # code whose result swings more than that code's must clear its own swing, not the floor's.
    own = figure.std or 0.0
    std = max(floor_std(floor), own)
    threshold = k * std / math.sqrt(figure.runs)
    verdict: Verdict = "better" if delta < -threshold else "worse" if delta > threshold else "within noise"
    over_n = f" / sqrt({figure.runs})" if figure.runs > 1 else ""
    spread = "its own runs' spread, above the floor" if own > floor_std(floor) else describe_floor(floor)
    bound = f"{k:g} x noise std {std:.6f}{over_n} = {threshold:.6f} ({spread})"
    return Assessment(verdict, f"{against}; threshold {bound}", figure, reference, delta, floor, threshold)


def assess(
    target: Experiment, everything: Sequence[Experiment], floors: Sequence[NoiseFloor], k: float
) -> Assessment | None:
    """`target`'s verdict against the best comparable kept experiment (for a kept one: kept before it).

    None while it has no measured run.
    """
    figure = target.figure
    if figure is None:
        return None
    others = [e for e in everything if e.kept and e.id != target.id]
    if target.kept:
        others = [e for e in others if e.decision_order < target.decision_order]
    if not others:
        what = (
            "the baseline: nothing was kept before it"
            if target.kept
            else "nothing kept yet: keeping it makes it the baseline"
        )
        return Assessment("unknown", f"{_figure_text(figure)}; {what}", figure)
    best = best_kept(others, target.key)
    if best is None:
        frontier = max(others, key=lambda e: e.decision_order)
        return Assessment("not comparable", target.key.why_not(frontier.key, f"best {frontier.id}"), figure, frontier)
    return judge(figure, best, "best", floor_for(target.key, floors, best.primary.commit), k)


def _figure_text(figure: Figure) -> str:
    if figure.runs == 1:
        return f"{figure.mean:.6f}"
    return f"{figure.mean:.6f} (mean of {figure.runs}, std {figure.std:.6f})"
