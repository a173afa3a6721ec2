"""The noise floor of the template train.py on one profile, and which of the demo's ideas beat it.

Runs the unmodified template as the kept baseline, then the same code with more seeds (the
server's own noise measurement), then each idea of `autoresearch-mcp demo` once, all through
the experiment engine and the real harness, one run at a time. Prints every seed's val_bpb,
the floor (std, MAD, range) and each idea's delta and verdict against it.

    python bench/noise_floor.py [--budget 60] [--seeds 10] [--idea-seeds 1] [--profile cpu] [--data-dir DIR]

--idea-seeds 0 measures the floor alone (the value for profiles.Profile.min_noise_std).

At the cpu profile's default budget (60 s), 10 seeds and the demo's 3 ideas this takes about
15 minutes on 2 cores: run it on a quiet machine, since load changes how many steps fit the budget.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from autoresearch_mcp.nanochat.contract import DEFAULT_SEED
from autoresearch_mcp.nanochat.profiles import PROFILES
from autoresearch_mcp.sandbox.config import WorkspaceConfig
from autoresearch_mcp.sandbox.engine import ExperimentEngine
from autoresearch_mcp.sandbox.research import Assessment, floor_std, fresh_seeds, measured_bpb
from autoresearch_mcp.sandbox.runstore import NoiseFloor, RunRecord
from autoresearch_mcp.server.demo import ideas_for
from autoresearch_mcp.tools.setup import init_workspace


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="cpu", choices=sorted(PROFILES))
    parser.add_argument("--budget", type=float, help="training seconds per run (default: the profile's)")
    parser.add_argument("--seeds", type=int, default=10, help="runs of the template, each with its own seed")
    parser.add_argument(
        "--idea-seeds", type=int, default=1, help="runs of each demo idea (its figure is their mean; 0: no ideas)"
    )
    parser.add_argument("--data-dir", type=Path, help="data cache (default: the per-user cache)")
    parser.add_argument("--workspace", type=Path, help="where to create the workspace (default: a temporary folder)")
    args = parser.parse_args()
    if args.seeds < 2 or args.idea_seeds < 0:
        parser.error("--seeds must be at least 2 (a spread needs two runs) and --idea-seeds at least 0")
    budget = args.budget or PROFILES[args.profile].budget_seconds
    root = args.workspace or Path(tempfile.mkdtemp(prefix="noise-floor-bench-")) / "workspace"
    config = WorkspaceConfig(
        profile=args.profile,
        budget_seconds=budget,
        devices="cpu" if args.profile == "cpu" else "auto",
        data_dir=str(args.data_dir.resolve()) if args.data_dir else None,
        noise_runs=0,  # measured below, with --seeds
    )
    workspace = init_workspace(root, config)
    started = time.time()
    with ExperimentEngine(workspace) as engine:
        baseline = run_to_end(engine, engine.launch("baseline: the template"))
        if measured_bpb(baseline) is None:
            print(f"the baseline did not train ({baseline.error}); see {engine.run_dir(baseline.id)}/log.txt")
            return 1
        engine.decide(baseline.id, "keep")
        seeds = [baseline, *(run_to_end(engine, r) for r in engine.measure_noise(args.seeds - 1))]
        template = (root / "train.py").read_text(encoding="utf-8")
        ideas = []
        for idea in ideas_for(args.profile) if args.idea_seeds else []:
            (root / "train.py").write_text(idea.edit(template), encoding="utf-8")
            first = run_to_end(engine, engine.launch(idea.description))
            more = fresh_seeds([first.seed], args.idea_seeds - 1, DEFAULT_SEED)
            repeats = engine.launch_copies(first, "repeat", more, idea.description) if more else []
            for record in repeats:
                run_to_end(engine, record)
            ideas.append((idea.description, first.id, engine.assess(first.id)))
            (root / "train.py").write_text(template, encoding="utf-8")
        floors = engine.floors()
        floor = floors[-1] if floors else None
        print_report(args.profile, budget, seeds, floor, ideas, engine.workspace.config.noise_k, time.time() - started)
    print(f"\nworkspace: {root}")
    return 0


def run_to_end(engine: ExperimentEngine, record: RunRecord) -> RunRecord:
    print(f"  {record.id} {record.description} (seed {record.seed}) ...", end="", flush=True)
    while not (record := engine.store.get(record.id)).finished:
        engine.wait(record.id, 5.0)
    value = measured_bpb(record)
    print(f" {value:.6f}" if value is not None else f" {record.status}: {record.error}", flush=True)
    return record


def print_report(
    profile: str,
    budget: float,
    seeds: list[RunRecord],
    floor: NoiseFloor | None,
    ideas: list[tuple[str, str, Assessment | None]],
    k: float,
    wall: float,
) -> None:
    values = [v for r in seeds if (v := measured_bpb(r)) is not None]
    steps = [r.summary.get("num_steps") for r in seeds if r.summary]
    print(f"\n{profile} profile, template train.py, budget {budget:g} s, {len(values)} seeds ({wall / 60:.0f} min)")
    print(f"{'seed':>6}  {'val_bpb':>9}  {'steps':>5}")
    for record in seeds:
        value = measured_bpb(record)
        steps_taken = (record.summary or {}).get("num_steps")
        print(f"{record.seed:>6}  {value if value is not None else float('nan'):>9.6f}  {steps_taken or '-':>5}")
    median = statistics.median(values)
    rows = [
        ("mean", f"{statistics.fmean(values):.6f}"),
        ("std (n-1)", f"{statistics.stdev(values):.6f}"),
        ("MAD", f"{statistics.median(abs(v - median) for v in values):.6f}"),
        ("min .. max", f"{min(values):.6f} .. {max(values):.6f}"),
        ("steps min .. max", f"{min(s for s in steps if s)} .. {max(s for s in steps if s)}"),
        (f"better needs (k={k:g})", f"< -{k * statistics.stdev(values):.6f}"),
        ("stored floor", f"std {floor.std:.6f} from {floor.runs} runs" if floor else "none"),
    ]
    width = max(len(name) for name, _ in rows)
    print("\n".join(f"{name:<{width}}  {value}" for name, value in rows))
    print(f"\n{'idea':<56}  {'run':<5}  {'val_bpb':>9}  {'delta':>9}  {'delta/std':>9}  verdict")
    for description, run_id, assessment in ideas:
        if assessment is None:
            print(f"{description[:56]:<56}  {run_id:<5}  {'-':>9}  {'-':>9}  {'-':>9}  no val_bpb (crashed)")
            continue
        sigmas = assessment.delta / floor_std(assessment.floor) if assessment.floor else float("nan")
        print(
            f"{description[:56]:<56}  {run_id:<5}  {assessment.figure.mean:>9.6f}  {assessment.delta:>+9.6f}  "
            f"{sigmas:>+9.2f}  {assessment.verdict}"
        )
    beat = sum(1 for _, _, a in ideas if a is not None and a.verdict == "better")
    print(f"\n{beat} of {len(ideas)} demo ideas beat the baseline beyond the noise")


if __name__ == "__main__":
    sys.exit(main())
