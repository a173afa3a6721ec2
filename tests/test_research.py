"""Research validity: comparability, experiments of several runs, noise floors, verdicts, what a
change touched (pure pieces); then the research tools through the in-memory MCP client, with the
stand-in harness, whose train.py decides val_bpb from the run's seed and scale (so the numbers,
and so the verdicts, are exact)."""

from __future__ import annotations

import json
import sqlite3
import statistics
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from autoresearch_mcp.nanochat.profiles import PROFILES
from autoresearch_mcp.sandbox import research, runner
from autoresearch_mcp.sandbox.changes import touched_names
from autoresearch_mcp.sandbox.config import WorkspaceConfig
from autoresearch_mcp.sandbox.engine import ExperimentEngine
from autoresearch_mcp.sandbox.research import Comparability
from autoresearch_mcp.sandbox.runstore import NoiseFloor, RunRecord
from autoresearch_mcp.server.app import build_server
from autoresearch_mcp.tests import stand_in_harness
from autoresearch_mcp.tests.agent import Agent
from autoresearch_mcp.tests.engine_helpers import finish, until
from autoresearch_mcp.tools.leaderboard import ExperimentList, noise_info
from autoresearch_mcp.tools.research import Journal, RunsLaunched, ValidationReport, research_summary
from autoresearch_mcp.tools.setup import init_workspace

# ---- pure pieces -------------------------------------------------------------------------------


def run(
    n: int,
    val_bpb: float | None,
    *,
    experiment: int | None = None,
    kind: str = "experiment",
    decision: str | None = None,
    budget: float = 60,
    data: str | None = "builtin",
    data_id: str | None = None,
    decided_at: float | None = None,
) -> RunRecord:
    summary = None if val_bpb is None else {"val_bpb": val_bpb, **({"data_id": data_id} if data_id else {})}
    return RunRecord(
        id=f"r{n:04d}",
        commit=f"{n:040x}",
        parent_commit=None,
        description=f"idea {n}",
        profile="cpu",
        budget_seconds=budget,
        seed=42 + n,
        status="succeeded" if val_bpb is not None else "crashed",
        decision=decision,
        decided_at=decided_at,
        created_at=float(n),
        finished_at=float(n) + 1,
        summary=summary,
        kind=kind,
        experiment=f"r{experiment or n:04d}",
        data_source=data,
    )


def floor(std: float, runs: int = 3, experiment: str = "r0001", budget: float = 60) -> NoiseFloor:
    return NoiseFloor(
        commit=f"{1:040x}",
        experiment=experiment,
        profile="cpu",
        budget_seconds=budget,
        scale=1.0,
        data_source="builtin",
        data_id=None,
        runs=runs,
        mean=1.5,
        std=std,
        mad=std / 2,
        run_ids=[],
        measured_at=1.0,
    )


def test_runs_compare_only_with_the_same_profile_budget_data_and_scale() -> None:
    base = Comparability("cpu", 60, 1.0, "builtin", "aaaa")
    assert base.matches(Comparability("cpu", 60, 1.0, "builtin", None)), "data recorded on one side only"
    assert base.matches(Comparability("cpu", 60, 1.0, None, None)), "a run from before data was recorded"
    other = Comparability("gpu", 90, 2.0, "/data/mine", "bbbb")
    assert base.why_not(other, "best r0003") == (
        "profile cpu, best r0003 is gpu; budget 60 s, best r0003 is 90 s; scale 1x, best r0003 is 2x; "
        "data builtin, best r0003 is /data/mine; data aaaa, best r0003 is bbbb"
    )
    assert Comparability("cpu", 60, 1.0, "builtin", "aaaa").why_not(base, "best r0001") == ""


def test_repeats_and_noise_runs_make_one_experiment_whose_figure_is_their_mean() -> None:
    records = [
        run(1, 1.50, decision="keep"),
        run(2, 1.52, experiment=1, kind="noise"),
        run(3, 1.48, experiment=1, kind="noise"),
        run(4, 1.47),
        run(5, 1.45, experiment=4, kind="repeat"),
        run(6, None, experiment=4, kind="repeat"),  # a crashed repeat counts for nothing
    ]
    baseline, idea = research.experiments(records)
    assert [r.id for r in baseline.runs] == ["r0001", "r0002", "r0003"] and baseline.kept
    assert baseline.figure == research.Figure(mean=pytest.approx(1.5), std=pytest.approx(0.02), runs=3)
    assert idea.figure.mean == pytest.approx(1.46) and idea.figure.runs == 2 and idea.status == "succeeded"

    measured = research.measure_floor(baseline)
    assert (measured.runs, measured.run_ids, measured.experiment) == (3, ["r0001", "r0002", "r0003"], "r0001")
    assert measured.std == pytest.approx(0.02) and measured.mad == pytest.approx(0.02)
    assert research.measure_floor(research.Experiment(records[3], (records[3],))) is None, "one run has no spread"
    retried = research.experiments([run(7, None), run(8, None, experiment=7).model_copy(update={"status": "running"})])
    assert retried[0].status == "running", "a crashed first run with a repeat going is not shown as crashed"


@pytest.mark.parametrize(
    ("value", "runs", "verdict"),
    [
        (1.47, 1, "better"),  # 0.03 below the best, threshold 2 x 0.01 = 0.02
        (1.49, 1, "within noise"),
        (1.485, 1, "within noise"),  # 0.015 below: a hair, not a win
        (1.485, 4, "better"),  # the same mean from 4 runs: threshold 0.02 / sqrt(4) = 0.01
        (1.53, 1, "worse"),
    ],
)
@pytest.mark.usefixtures("no_minimum_noise_floor")
def test_verdicts_use_k_times_the_standard_error(value: float, runs: int, verdict: str) -> None:
    records = [run(1, 1.5, decision="keep"), run(2, value)]
    records += [run(10 + i, value, experiment=2, kind="repeat") for i in range(runs - 1)]
    everything = research.experiments(records)

    assessment = research.assess(everything[1], everything, [floor(0.01)], k=2.0)

    assert assessment.verdict == verdict and assessment.delta == pytest.approx(value - 1.5)
    assert assessment.threshold == pytest.approx(0.02 / runs**0.5) and assessment.reference.id == "r0001"
    assert "floor from 3 runs of r0001" in assessment.reason and f"{value - 1.5:+.6f}" in assessment.reason


@pytest.mark.usefixtures("no_minimum_noise_floor")
def test_an_experiment_whose_own_runs_swing_more_than_the_floor_must_clear_its_own_swing() -> None:
    """The floor was measured on other code: code that swings 0.05 between seeds, judged against a
    0.01 floor, would win on seed luck."""
    records = [run(1, 1.5, decision="keep"), run(2, 1.43), run(3, 1.53, experiment=2, kind="repeat")]
    everything = research.experiments(records)

    assessment = research.assess(everything[1], everything, [floor(0.01)], k=2.0)

    own = statistics.stdev([1.43, 1.53])
    assert assessment.verdict == "within noise", assessment.reason  # -0.02 beats 2 x 0.01 / sqrt 2, not its own
    assert assessment.threshold == pytest.approx(2 * own / 2**0.5)
    assert "its own runs' spread, above the floor" in assessment.reason
    steady = research.experiments(
        [run(1, 1.5, decision="keep"), run(2, 1.47), run(3, 1.47, experiment=2, kind="repeat")]
    )
    assert research.assess(steady[1], steady, [floor(0.01)], k=2.0).verdict == "better", "a steady idea still wins"


def test_verdicts_without_a_floor_a_best_or_the_same_settings() -> None:
    records = [
        run(1, 1.5, decision="keep", decided_at=10),
        run(2, 1.4, decision="keep", decided_at=20),
        run(3, 1.2, budget=90),
        run(4, 1.3),
    ]
    everything = research.experiments(records)
    verdicts = {e.id: research.assess(e, everything, [], k=2.0) for e in everything}

    assert verdicts["r0001"].verdict == "unknown" and "baseline" in verdicts["r0001"].reason
    assert verdicts["r0002"].verdict == "unknown" and "no noise floor yet" in verdicts["r0002"].reason
    assert verdicts["r0002"].delta == pytest.approx(-0.1), "a kept run is judged against the best kept before it"
    assert (
        verdicts["r0003"].verdict == "not comparable" and verdicts["r0003"].reason == "budget 90 s, best r0002 is 60 s"
    )
    assert verdicts["r0004"].delta == pytest.approx(-0.1) and verdicts["r0004"].reference.id == "r0002"
    assert research.assess(
        research.experiments([run(1, 1.5)])[0], research.experiments([run(1, 1.5)]), [], 2.0
    ).reason.endswith("nothing kept yet: keeping it makes it the baseline")
    assert research.assess(research.experiments([run(1, None)])[0], [], [], 2.0) is None, "no val_bpb, no verdict"


def test_a_floor_of_code_that_ignores_its_seed_gives_no_verdict() -> None:
    """Code that pins its own seed measures a spread of exactly 0: that is no measurement of its noise, so
    no verdict (and no unforced keep) rests on it, however far the candidate moved."""
    records = [run(1, 1.5, decision="keep"), run(2, 1.0)]
    everything = research.experiments(records)

    assessment = research.assess(everything[1], everything, [floor(0.0)], k=2.0)

    assert assessment.verdict == "unknown" and assessment.delta == pytest.approx(-0.5)
    assert "3 runs of r0001 with different seeds scored identically" in assessment.reason
    assert "the code ignores the run's seed (run.seed)" in assessment.reason
    assert assessment.reason.endswith("seed train.py from run.seed, then measure_noise()")


@pytest.mark.parametrize(
    ("measured", "why"),
    [
        (0.0, "identical val_bpb with different seeds: the code ignores the run's seed (run.seed)"),
        (0.5, "less than the template's spread"),  # half the minimum
    ],
)
def test_a_floor_below_the_profile_minimum_counts_as_the_minimum(measured: float, why: str) -> None:
    """A floor under the template's spread counts as that spread (one of 0 is shown so, but judges nothing)."""
    minimum = PROFILES["cpu"].min_noise_std
    records = [run(1, 1.5, decision="keep"), run(2, 1.5 - 1.5 * minimum)]  # 1.5 minimums below: a seed's luck
    everything = research.experiments(records)
    pinned = floor(measured * minimum)

    assessment = research.assess(everything[1], everything, [pinned], k=2.0)

    if measured == 0.0:
        assert assessment.verdict == "unknown"
    else:
        assert assessment.verdict == "within noise" and assessment.threshold == pytest.approx(2 * minimum)
        assert (
            f"the cpu profile's minimum; 3 runs of r0001 measured {measured * minimum:.6f}, {why}" in assessment.reason
        )
    info = noise_info(pinned, k=2.0)
    assert info is not None and info.minimum and info.std == pytest.approx(minimum, abs=1e-6)
    assert info.measured_std == pytest.approx(measured * minimum, abs=1e-6) and why in info.text()
    assert research.floor_std(floor(2 * minimum)) == 2 * minimum, "a larger measured floor stands"


def test_the_floor_in_force_is_the_best_s_where_there_is_one() -> None:
    key = Comparability("cpu", 60, 1.0, "builtin", None)
    best_commit = floor(0.01).model_copy(update={"measured_at": 1.0})
    newer_other = floor(0.02).model_copy(update={"commit": "f" * 40, "measured_at": 2.0})
    elsewhere = floor(0.03, budget=90).model_copy(update={"measured_at": 3.0})
    floors = [best_commit, newer_other, elsewhere]

    assert research.floor_for(key, floors, commit=best_commit.commit) == best_commit
    assert research.floor_for(key, floors, commit="e" * 40) == newer_other
    assert research.floor_for(Comparability("cpu", 30, 1.0, "builtin", None), floors, None) is None


def test_fresh_seeds_skip_the_used_ones() -> None:
    assert research.fresh_seeds([42, 44], 3, start=42) == [43, 45, 46]


TRAIN = """\
import math

MATRIX_LR = 0.02
SIZES = {"cpu": dict(depth=4)}


class GPT:
    def forward(self, x):
        return x * 2

    def loss(self, x):
        return x


def main():
    print(MATRIX_LR)
"""


@pytest.mark.parametrize(
    ("old", "new", "names"),
    [
        ("MATRIX_LR = 0.02", "MATRIX_LR = 0.04", ["MATRIX_LR"]),
        ("dict(depth=4)", "dict(depth=3)", ["SIZES"]),
        ("return x * 2", "return x * 3", ["GPT.forward"]),
        ("    print(MATRIX_LR)", "    print(MATRIX_LR + 1)", ["main"]),
        ("import math", "import math\nimport os", ["imports"]),
        ("MATRIX_LR = 0.02\n", "MATRIX_LR = 0.02\nEMBEDDING_LR = 0.1\n", ["EMBEDDING_LR"]),
        # The new code does not parse: the old side still says where, the new side only the file.
        ("return x * 2", "return x *", ["GPT.forward", "train.py"]),
        ("\n\ndef main", "\n\n# entry point\ndef main", ["train.py"]),  # a comment between statements
    ],
)
def test_touched_names_come_from_the_code(old: str, new: str, names: list[str]) -> None:
    assert touched_names("train.py", TRAIN, TRAIN.replace(old, new, 1)) == names


def test_touched_names_of_other_files() -> None:
    assert touched_names("notes.md", "a", "b") == ["notes.md"]
    assert touched_names("extra.py", None, "x = 1\n") == ["extra.py"]
    assert touched_names("train.py", TRAIN, TRAIN) == []


# ---- the tools, through MCP, with the stand-in harness ---------------------------------------

SPREAD = 0.01
BASELINE = 1.5


def train_py(value: float, gain_per_scale: float = 0.0) -> str:
    """A stand-in train.py: val_bpb = value - gain_per_scale x (scale - 1), plus a seed offset.

    Seeds 42, 43, 44, 45, 46 add 0, +1, -1, +0.5, -0.5 x SPREAD: the baseline's first three
    runs (its own and two noise runs) have mean BASELINE and standard deviation SPREAD.
    """
    return (
        "import os\n"
        f"VALUE = {value}\n"
        f"GAIN_PER_SCALE = {gain_per_scale}\n"
        "seed, scale = int(os.environ['AUTORESEARCH_SEED']), float(os.environ['AUTORESEARCH_SCALE'])\n"
        f"offset = [0, 1, -1, 0.5, -0.5][(seed - 42) % 5] * {SPREAD}\n"
        "open('val_bpb.txt', 'w').write(repr(VALUE - GAIN_PER_SCALE * (scale - 1) + offset))\n"
    )


@pytest.fixture
def lab(tmp_path: Path, no_minimum_noise_floor: None) -> Path:
    """A cpu workspace whose train.py is the stand-in baseline; 2 noise runs after the first keep."""
    config = WorkspaceConfig(profile="cpu", budget_seconds=1, devices="cpu", noise_runs=2)
    workspace = init_workspace(tmp_path / "workspace", config)
    (workspace.root / "train.py").write_text(train_py(BASELINE), encoding="utf-8")
    return workspace.root


def session(root: Path, story: Any) -> None:
    from autoresearch_mcp.sandbox.workspace import Workspace

    async def main() -> None:
        async with Client(build_server(Workspace(root), stand_in_harness.command), raise_exceptions=True) as client:
            await story(Agent(client))

    anyio.run(main)


async def write_train(agent: Agent, source: str) -> None:
    await agent.call("write_file", path="train.py", content=source)


async def measured(agent: Agent, description: str, **options: Any) -> dict[str, Any]:
    launched = await agent.launch(description, **options)
    await agent.finish(launched["run_id"])
    return await agent.call("read_metrics", run_id=launched["run_id"], last_n=1)


async def finish_all(agent: Agent, run_ids: list[str]) -> None:
    for run_id in run_ids:
        assert (await agent.finish(run_id))["status"] == "succeeded"


def test_research_tools_refuse_what_makes_no_sense(lab: Path) -> None:
    async def story(agent: Agent) -> None:
        assert "nothing kept yet" in await agent.refused("measure_noise")
        assert "greater than or equal to 1" in await agent.refused("measure_noise", runs=0)
        assert "less than or equal to 20" in await agent.refused("measure_noise", runs=21)
        assert "greater than 1" in await agent.refused("validate_experiment", run_id="r0001", scale=1)
        assert "less than or equal to 10" in await agent.refused("repeat_experiment", run_id="r0001", runs=11)
        assert "no run 'r0042'" in await agent.refused("repeat_experiment", run_id="r0042")
        empty = Journal.model_validate(await agent.call("research_summary"))
        assert empty.experiments == 0 and empty.text() == (
            "Research journal: no experiments yet.\nnext: launch_training('baseline'), wait for it, and keep_experiment it"
        )

        await write_train(agent, "raise SystemExit(3)\n")
        crashed = (await agent.launch("crashes"))["run_id"]
        await agent.finish(crashed)
        assert "has no val_bpb to firm up (it crashed)" in await agent.refused("repeat_experiment", run_id=crashed)
        assert "has no val_bpb (it crashed)" in await agent.refused("validate_experiment", run_id=crashed)
        await agent.call("discard_experiment", run_id=crashed)
        assert "was discarded, and a decision is final" in await agent.refused("repeat_experiment", run_id=crashed)

        await write_train(agent, train_py(BASELINE))
        baseline = await measured(agent, "baseline")
        assert (
            baseline["verdict"]["verdict"] == "unknown"
            and "keeping it makes it the baseline" in baseline["verdict"]["reason"]
        )
        assert "make it the baseline" in baseline["next_step"]
        assert "nothing kept yet" in await agent.refused("validate_experiment", run_id="r0002")
        kept = await agent.call("keep_experiment", run_id="r0002")
        assert (kept["forced"], kept["noise_runs"]) == (False, ["r0003", "r0004"])
        assert "being measured already (r0003, r0004)" in await agent.refused("measure_noise")
        assert "is a noise run" in await agent.refused("keep_experiment", run_id="r0003")
        assert "baseline every scale-up check compares against" in await agent.refused(
            "validate_experiment", run_id="r0002"
        )
        assert "is the same code as r0002 and seed 42 already ran it" in await agent.refused(
            "launch_training", description="same again", seed=42
        )
        await finish_all(agent, ["r0003", "r0004"])

        # The same code as an undecided experiment joins it as a repeat, with a fresh seed.
        await write_train(agent, train_py(1.49))
        idea = await agent.launch("an idea")
        again = await agent.launch("the same idea once more")
        assert (again["kind"], again["experiment"], again["seed"]) == ("repeat", idea["run_id"], 43)
        await finish_all(agent, [idea["run_id"], again["run_id"]])
        status = await agent.call("training_status", run_id=again["run_id"])
        assert (
            status["runs"][0]["decision"] is None and "verdict: within noise (-0.005000 vs r0002)" in status["message"]
        )
        assert status["runs"][0]["verdict"]["runs"] == 2
        discarded = await agent.call("discard_experiment", run_id=again["run_id"])
        assert discarded["run_id"] == idea["run_id"], "a repeat's decision is its experiment's"
        status = await agent.call("training_status", run_id=again["run_id"])
        assert status["runs"][0]["decision"] == "discard"

    session(lab, story)


def test_the_research_loop_with_noise_repeats_forced_keeps_and_a_scale_up(lab: Path) -> None:
    async def story(agent: Agent) -> None:
        baseline = await measured(agent, "baseline")
        kept = await agent.call("keep_experiment", run_id=baseline["run_id"], note="the reference")
        noise = kept["noise_runs"]
        await finish_all(agent, noise)

        # The floor: the baseline's three runs (seeds 42, 43, 44).
        board = await agent.call("list_experiments")
        values = [BASELINE, BASELINE + SPREAD, BASELINE - SPREAD]
        assert board["noise_floor"]["std"] == pytest.approx(statistics.stdev(values), abs=1e-6)
        assert board["noise_floor"]["runs"] == 3 and board["noise_floor"]["threshold"] == pytest.approx(2 * SPREAD)
        (row,) = board["experiments"]
        assert (row["run_id"], row["runs"], row["run_ids"]) == ("r0001", 3, ["r0001", "r0002", "r0003"])
        assert row["val_bpb"] == pytest.approx(BASELINE) and row["spread"] == pytest.approx(SPREAD)

        # The same code again is a noise measurement with a fresh seed, never an idea to keep.
        again = await agent.launch("same code, another try")
        assert (again["kind"], again["experiment"], again["seed"]) == ("noise", "r0001", 45)
        assert "measures the noise floor" in again["next_step"]
        await agent.finish(again["run_id"])
        assert "is a noise run" in await agent.refused("keep_experiment", run_id=again["run_id"])

        # A small gain: within noise as one run, refused with the numbers; better once repeated.
        await write_train(agent, train_py(1.485, gain_per_scale=0.015))
        idea = await measured(agent, "lower VALUE a little")
        candidate = idea["run_id"]
        verdict = idea["verdict"]
        assert verdict["verdict"] == "within noise" and verdict["reference_run_id"] == "r0001"
        assert verdict["noise_runs"] == 4, "the noise run launched by hand joined the floor"
        refusal = await agent.refused("keep_experiment", run_id=candidate)
        assert "is within noise" in refusal and f"repeat_experiment('{candidate}', runs=2)" in refusal
        assert f"{verdict['delta']:+.6f}" in refusal and "force=true" in refusal
        repeats = await agent.call("repeat_experiment", run_id=candidate, runs=2)
        assert (repeats["purpose"], repeats["experiment"], repeats["seeds"]) == ("repeat", candidate, [43, 44])
        assert (
            RunsLaunched.model_validate(repeats)
            .text()
            .startswith(
                f"repeating {candidate} ({repeats['commit'][:7]}): r0006 (seed 43), r0007 (seed 44) queued, budget 1 s each\nnext: "
            )
        )
        await finish_all(agent, repeats["run_ids"])
        firm = (await agent.call("read_metrics", run_id=repeats["run_ids"][0]))["verdict"]
        assert (firm["experiment"], firm["runs"], firm["verdict"]) == (candidate, 3, "better")
        # Its own three runs (seed offsets 0, +1, -1) spread SPREAD, above the 4-run floor: that std counts.
        assert firm["noise_std"] < SPREAD and firm["threshold"] == pytest.approx(2 * SPREAD / 3**0.5, abs=1e-6)
        kept = await agent.call("keep_experiment", run_id=repeats["run_ids"][1], note="firm after repeats")
        assert (kept["run_id"], kept["decision"], kept["forced"], kept["noise_runs"]) == (candidate, "keep", False, [])

        # A worse idea: refused, then kept by force, and the record says so.
        await write_train(agent, train_py(1.6))
        worse = (await measured(agent, "raise VALUE"))["run_id"]
        assert "is worse than the best" in await agent.refused("keep_experiment", run_id=worse)
        forced = await agent.call("keep_experiment", run_id=worse, force=True, note="on purpose")
        assert forced["forced"] and forced["verdict"]["verdict"] == "worse" and forced["best_run_id"] == candidate

        # Another budget does not compare: listed apart, saying why; not keepable without force.
        await agent.call("reset_workspace", to=candidate)
        longer = await measured(agent, "same idea, longer budget", budget_seconds=3)
        assert longer["verdict"]["verdict"] == "not comparable"
        assert "budget 3 s" in await agent.refused("keep_experiment", run_id=longer["run_id"])
        await agent.call("discard_experiment", run_id=longer["run_id"], note="other budget")

        # The scale-up check: the candidate and the baseline at 2x with the same seed, plus noise runs.
        started = await agent.call("validate_experiment", run_id=candidate, scale=2)
        assert (started["baseline_run_id"], started["state"], started["budget_seconds"]) == ("r0001", "running", 2)
        baseline_mean = statistics.fmean([*values, BASELINE + SPREAD / 2])  # seeds 42-45
        assert len(started["launched"]) == 4 and started["gain"] == pytest.approx(1.485 - baseline_mean, abs=1e-6)
        await finish_all(agent, started["launched"])
        done = await agent.call("validate_experiment", run_id=candidate, scale=2)
        assert done["launched"] == [] and done["state"] == "holds"
        assert done["verdict"]["delta"] == pytest.approx(-0.03, abs=1e-6) and done["verdict"]["noise_runs"] == 3
        lines = ValidationReport.model_validate(done).text().splitlines()
        assert lines[0] == f"validation of {candidate} at 2x (budget 2 s) against baseline r0001: holds"
        assert lines[2].startswith("at 2x: verdict: better: 1.470000 vs baseline r0001 1.500000 (mean of 3")

        await check_the_record(agent, candidate, worse, longer["run_id"])

    session(lab, story)


async def check_the_record(agent: Agent, candidate: str, worse: str, longer: str) -> None:
    """The leaderboard, results.tsv, the journal and the prompt tell the same story, as data and as text."""
    board = ExperimentList.model_validate(await agent.call("list_experiments"))
    rows = {row.run_id: row for row in board.experiments}
    assert list(rows) == [worse, candidate, "r0001"], "one row per experiment, newest first"
    mark = rows[candidate].validation
    assert (mark.scale, mark.state, mark.delta) == (2.0, "holds", pytest.approx(-0.03, abs=1e-6))
    assert (rows[worse].forced, rows[worse].verdict, rows[candidate].verdict) == (True, "worse", "better")
    assert (board.best_run_id, board.total, board.runs) == (candidate, 4, 13)
    (apart,) = board.apart
    assert (apart.run_id, apart.apart, apart.delta_vs_best) == (longer, f"budget 3 s, best {candidate} is 1 s", None)
    table = board.text().splitlines()
    std = statistics.stdev([BASELINE, BASELINE + SPREAD, BASELINE - SPREAD, BASELINE + SPREAD / 2])  # seeds 42-45
    assert table[0].startswith(f"4 experiments (13 runs); best {candidate} 1.485000; noise std {std:.6f}")
    assert table[1] == "ranked (cpu, 1 s, builtin):"
    header = table[2]
    assert header.split() == ["run", "status", "decision", "val_bpb", "n", "vs", "best", "verdict", "description"]
    numbers_end, verdicts_start = header.index("val_bpb") + len("val_bpb"), header.index("verdict")
    for line in table[3:6]:  # aligned: numbers end under their header's end, words start under its start
        assert line[numbers_end - 1].isdigit() and line[numbers_end] == " " and line[verdicts_start - 1] == " "
    assert table[4].split()[:6] == [candidate, "succeeded", "keep", "1.485000", "3", "+0.000000"]
    assert "better, holds at 2x (-0.030000)" in table[4] and "keep!" in table[3]
    assert any(line.startswith(f"{longer}  ") and f"budget 3 s, best {candidate} is 1 s" in line for line in table)

    tsv = (await agent.client.read_resource("autoresearch://results.tsv")).contents[0].text
    lines = [line.split("\t") for line in tsv.splitlines()[1:]]
    assert [cells[3] for cells in lines] == [
        "keep", "noise", "noise", "noise", "keep", "repeat", "repeat", "keep", "discard",
        "validation", "validation", "noise", "noise",
    ]  # fmt: skip
    assert [cells[5:8] for cells in lines[4:7]] == [[run, candidate, "better"] for run in ("r0005", "r0006", "r0007")]
    assert lines[-1][7:] == ["", ""], "a noise run at 2x is not part of the 1x experiment's row"

    journal = Journal.model_validate(await agent.call("research_summary"))
    assert journal.best.run_id == candidate and [step.run_id for step in journal.chain] == ["r0001", candidate, worse]
    assert journal.chain[1].validation == "holds at 2x (-0.030000)" and journal.chain[1].touched == [
        "VALUE",
        "GAIN_PER_SCALE",
    ]
    assert journal.chain[2].forced and journal.chain[2].verdict == "worse"
    assert [(g.touched, [t.run_id for t in g.tries]) for g in journal.not_kept] == [("(no code change)", [longer])]
    text = (await agent.client.read_resource("autoresearch://journal")).contents[0].text
    assert text == journal.text() and len(text) < 8000
    assert text.startswith("Research journal: 4 experiments (13 runs) on cpu, 1 s, builtin.\nBest: r0005 1.485000")
    assert f'  {worse} 1.600000 +0.115000 worse, forced [VALUE, GAIN_PER_SCALE] "raise VALUE"' in text.splitlines()
    prompt = (await agent.client.get_prompt("autoresearch")).messages[0].content.text
    assert "read the research journal (research_summary()" in prompt


# ---- the engine: floors stored by themselves, old runs described ---------------------------


def test_floors_are_stored_when_noise_runs_end_even_with_no_server_watching(lab: Path) -> None:
    from autoresearch_mcp.sandbox.workspace import Workspace

    workspace = Workspace(lab)
    with ExperimentEngine(workspace, command=stand_in_harness.command) as engine:
        baseline = engine.launch("baseline")
        finish(engine, baseline.id)
        engine.decide(baseline.id, "keep")
        noise = engine.measure_noise(2)
        assert [(r.kind, r.experiment, r.seed) for r in noise] == [("noise", "r0001", 43), ("noise", "r0001", 44)]
        for record in noise:
            finish(engine, record.id)
        until(lambda: engine.store.floors(), what="the floor stored by the engine's follower, with no read asking")
        (stored,) = engine.store.floors()
        assert (stored.runs, stored.run_ids, stored.commit) == (3, ["r0001", "r0002", "r0003"], baseline.commit)
        assert stored.std == pytest.approx(SPREAD) and (stored.profile, stored.budget_seconds) == ("cpu", 1.0)
        touched = engine.store.get("r0001").touched
        assert len(touched) == 8, "the template replaced whole: its names, at most 8"

    # A store from before trees, touched names and floors were kept: the next start fills them in.
    with sqlite3.connect(workspace.state_dir / "runs.db") as db:
        db.execute("UPDATE runs SET tree = NULL, touched = NULL")
        db.execute("DELETE FROM noise_floors")
    with ExperimentEngine(workspace, command=stand_in_harness.command) as engine:
        assert engine.store.floors() == [
            stored.model_copy(update={"measured_at": engine.store.floors()[0].measured_at})
        ]
        assert all(record.tree == engine.repo.commit(record.commit).tree.hexsha for record in engine.store.list())
        assert engine.store.get("r0001").touched == touched


def test_the_journal_shows_how_far_a_running_run_has_trained(lab: Path) -> None:
    from autoresearch_mcp.sandbox.workspace import Workspace

    step = json.dumps({"step": 3, "loss": 4.0, "lr_mult": 1.0, "tok_per_s": 1.0, "elapsed": 0.5, "progress": 0.5})
    (lab / "train.py").write_text(
        f"import os, time\nopen(os.environ['STAND_IN_METRICS'], 'w').write({step!r} + '\\n')\ntime.sleep(30)\n",
        encoding="utf-8",
    )
    with ExperimentEngine(Workspace(lab), command=stand_in_harness.command) as engine:
        record = engine.launch("halfway")
        metrics = runner.metrics_path(engine.run_dir(record.id))
        until(lambda: metrics.exists() and metrics.stat().st_size > 0, what="the run's first step logged")
        assert engine.store.get(record.id).status == "running"
        [line] = research_summary(engine).running
        assert line.startswith(f"{record.id} running") and line.endswith(' 50% "halfway"'), line
        engine.stop(record.id)


def test_the_same_code_after_a_failed_run_is_a_retry_not_a_repeat(lab: Path) -> None:
    from autoresearch_mcp.sandbox.workspace import Workspace

    (lab / "train.py").write_text("raise SystemExit(3)\n", encoding="utf-8")
    with ExperimentEngine(Workspace(lab), command=stand_in_harness.command) as engine:
        failed = finish(engine, engine.launch("crashes").id)
        retry = engine.launch("crashes, again")
        finish(engine, retry.id)
    assert failed.status == "crashed" and (retry.kind, retry.experiment, retry.seed) == ("experiment", retry.id, 42)


def test_the_journal_stays_compact_after_hundreds_of_experiments(tmp_path: Path) -> None:
    """~2,000 tokens at most by default, whatever the history: lists are cut, each saying how much more there is."""
    workspace = init_workspace(tmp_path / "ws", WorkspaceConfig(profile="cpu", devices="cpu"))
    engine = ExperimentEngine(workspace, command=stand_in_harness.command)
    names = ["MATRIX_LR", "EMBEDDING_LR", "WARMDOWN_FRACTION", "SIZES", "GPT.forward", "MLP.forward", "Muon.step"]
    for n in range(300):
        record = engine.store.create(
            commit=f"{n:040x}",
            parent_commit=None,
            description=f"idea {n}: " + "a description as long as an agent would write it, " * 3,
            profile="cpu",
            budget_seconds=60,
            seed=42,
            touched=[names[n % len(names)], names[(3 * n + 1) % len(names)]],
        )
        kept = n % 30 == 0
        engine.store.update(
            record.id,
            status="succeeded",
            summary={"val_bpb": 2.0 - n / 1000 if kept else 2.0 + n / 10000},
            decision="keep" if kept else "discard",
            decided_at=float(n),
        )
    journal = research_summary(engine)
    text = journal.text()

    assert len(text) < 8000, f"{len(text)} characters"
    assert (len(journal.chain), journal.earlier_keeps, len(journal.not_kept)) == (10, 0, 7)
    assert all(group.total > len(group.tries) == 4 for group in journal.not_kept)
    assert text.count("\n") < 40 and "r0271" in text, "the newest keep is in the chain"
    engine.store.close()
