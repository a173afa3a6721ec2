"""torch.compile's cache across the runs of one workspace: which of the demo's ideas compile again.

Every run of a workspace shares one compile cache (`.autoresearch/compile-cache`: inductor's FX
graphs and kernels, AOTAutograd's, Triton's), so a run whose graph did not change loads its compiled
code instead of compiling it. This runs the template with compilation turned on (on the cpu profile
it is off, as CPU steps gain little from it; here it is on to measure the cache on this machine),
through the experiment engine, in this order: the baseline (cold cache), the baseline again with
another seed, then each idea of `autoresearch-mcp demo`. For each run it prints the uncounted warm-up
(model built -> budget clock start: the first step, where compilation happens) and the FX graph
and AOTAutograd cache hits and misses, as the training process counted them.

    python bench/compile_cache.py [--budget 20] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import tempfile
import time
from pathlib import Path

from run_report import run_files  # beside this script

from autoresearch_mcp.sandbox.config import WorkspaceConfig
from autoresearch_mcp.sandbox.engine import ExperimentEngine
from autoresearch_mcp.server.demo import ideas_for
from autoresearch_mcp.tools.setup import init_workspace

COMPILE_ON_CPU = (
    "torch.compile(model, dynamic=False) if on_cuda else model",
    "torch.compile(model, dynamic=False)",
)
REPORT_COUNTERS = (
    "    run.hand_back(model)\n",
    "    run.hand_back(model)\n"
    "    from torch._dynamo.utils import counters\n"
    '    print("compile counters:", __import__("json").dumps({k: dict(counters[k]) '
    'for k in ("inductor", "aot_autograd")}))\n',
)
COUNTERS = re.compile(r"^compile counters: (\{.*\})$", re.MULTILINE)


def run(engine: ExperimentEngine, description: str, budget: float) -> dict:
    record = engine.launch(description, budget_seconds=budget)
    while not (record := engine.store.get(record.id)).finished:
        engine.wait(record.id, 5)
    log = (engine.run_dir(record.id) / "log.txt").read_text(errors="replace")
    found = COUNTERS.findall(log)
    counters = json.loads(found[-1]) if found else {}
    row = {"run": record.id, "idea": description, "status": record.status, "warm-up s": None}
    if record.status == "succeeded":
        summary, stats = run_files(engine.run_dir(record.id))
        row["warm-up s"] = stats["clock_start_unix"] - stats["model_built_unix"]
        row["val_bpb"] = summary["val_bpb"]
    inductor, aot = counters.get("inductor", {}), counters.get("aot_autograd", {})
    row["fx graph hit/miss"] = f"{inductor.get('fxgraph_cache_hit', 0)}/{inductor.get('fxgraph_cache_miss', 0)}"
    row["aot hit/miss"] = f"{aot.get('autograd_cache_hit', 0)}/{aot.get('autograd_cache_miss', 0)}"
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=float, default=20.0)
    parser.add_argument("--data-dir", type=Path)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="compile-cache-bench-")) / "workspace"
    config = WorkspaceConfig(
        profile="cpu", devices="cpu", data_dir=str(args.data_dir.resolve()) if args.data_dir else None
    )
    workspace = init_workspace(root, config)
    train_py = root / "train.py"
    source = train_py.read_text()
    for old, new in (COMPILE_ON_CPU, REPORT_COUNTERS):
        assert old in source, f"the template no longer contains {old!r}"
        source = source.replace(old, new)
    train_py.write_text(source)
    print(f"load average before: {'/'.join(f'{v:.2f}' for v in os.getloadavg())}", flush=True)
    started = time.time()
    rows = []
    with ExperimentEngine(workspace) as engine:
        rows.append(run(engine, "baseline (compiled on CPU), cold cache", args.budget))
        rows.append(run(engine, "baseline again, another seed", args.budget))
        for idea in ideas_for("cpu"):
            train_py.write_text(idea.edit(source))
            rows.append(run(engine, idea.description, args.budget))
    print(f"\ncpu profile, template compiled, {args.budget:g} s budget; {time.time() - started:.0f} s in all\n")
    print("| run | idea | status | warm-up s (compiles here) | FX graph cache hit/miss | AOTAutograd hit/miss |")
    print("| --- | --- | --- | ---: | --- | --- |")
    for row in rows:
        warm = "-" if row["warm-up s"] is None else f"{row['warm-up s']:.1f}"
        print(
            f"| {row['run']} | {row['idea']} | {row['status']} | {warm} | {row['fx graph hit/miss']} | "
            f"{row['aot hit/miss']} |"
        )
    print(f"\nload average after: {'/'.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
