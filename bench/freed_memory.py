"""What keeping freed memory (harness.reuse_freed_memory) buys on the cpu profile.

glibc's malloc maps every block of 32 MB or more on its own and unmaps it when freed, so each large
tensor (a cpu forward's logits: rows x 256 x 2048 floats, 33-67 MB) is new memory that the kernel
faults in and zeroes page by page. The training process and the evaluator call
harness.reuse_freed_memory() at start; this times the same work in fresh processes with and
without it, alternating:

- one elementwise op on an evaluation batch's logits (32 x 256 x 2048 floats, 67 MB),
- a forward pass of the template's cpu model at the evaluator's batch shape (32 x 256), eager,
- a training step of the template's cpu model (16 x 256 tokens: forward, backward, AdamW + Muon).

    python bench/freed_memory.py [--runs 3] [--steps 10]

Medians over --steps repetitions in each process (after 3 untimed), then the median over --runs processes.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from autoresearch_mcp.nanochat import summary as files

TEMPLATE = Path(files.__file__).parent / "template" / "train.py"
WARM_UP = 3


def timed(work, steps: int) -> float:
    """Median seconds of `work()` over `steps` calls, after WARM_UP untimed ones."""
    for _ in range(WARM_UP):
        work()
    seconds = []
    for _ in range(steps):
        started = time.perf_counter()
        work()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def measure(keep_freed_memory: bool, steps: int) -> dict[str, float]:
    """In a child: the three timings, with or without the policy."""
    import torch

    from autoresearch_mcp.nanochat import harness

    if keep_freed_memory:
        harness.reuse_freed_memory()
    spec = importlib.util.spec_from_file_location("template_train", TEMPLATE)
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    config = train.GPTConfig(vocab_size=2048, seq_len=256, depth=2, width=128, head_dim=32, short_window=128)
    model = train.GPT(config)
    optimizers = train.make_optimizers(model, torch.device("cpu"))
    logits = torch.randn(32 * 256, 2048)
    scored = torch.randint(0, 2048, (32, 256))
    inputs, targets = torch.randint(0, 2048, (16, 256)), torch.randint(0, 2048, (16, 256))

    def step() -> None:
        model(inputs, targets).backward()
        for optimizer in optimizers:
            optimizer.step()
        model.zero_grad(set_to_none=True)

    def forward() -> None:
        with torch.inference_mode():
            model(scored)

    return {
        "tanh of 67 MB of logits, ms": 1000 * timed(lambda: torch.tanh(logits), steps),
        "forward at 32 x 256 (evaluation batch), ms": 1000 * timed(forward, steps),
        "training step at 16 x 256, ms": 1000 * timed(step, steps),
    }


def child(keep_freed_memory: bool, steps: int) -> dict[str, float]:
    code = f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import freed_memory as b; "
    code += f"print(json.dumps(b.measure({keep_freed_memory}, {steps})))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    results: dict[bool, list[dict[str, float]]] = {False: [], True: []}
    for _ in range(args.runs):
        for keep in (False, True):
            results[keep].append(child(keep, args.steps))
    print(f"cpu profile template, median of {args.runs} processes x {args.steps} repetitions\n")
    print("| work | freed memory unmapped (glibc default) | kept for reuse | speed-up |")
    print("| --- | ---: | ---: | ---: |")
    for name in results[False][0]:
        plain = statistics.median(run[name] for run in results[False])
        kept = statistics.median(run[name] for run in results[True])
        print(f"| {name} | {plain:.1f} | {kept:.1f} | {plain / kept:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
