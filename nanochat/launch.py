"""The training sandbox's first process: import torch once, fork an export process, run train.py.

    python -m autoresearch_mcp.nanochat.launch /autoresearch/snapshot/train.py

The evaluator needs train.py's model as an exported graph (handback.py), and exporting takes seconds
(mostly importing torch.export's machinery and tracing): paid before the budget clock, that is the
largest fixed cost of a run after `import torch`. The graph does not depend on the weights, so a
second process can export a freshly built model of the same config while the first one trains:

- this process imports torch and the harness, then forks (before any thread, CUDA or OpenMP pool
  exists, so both processes start clean and neither pays the imports again);
- the child, at lower priority, runs train.py as the export process (harness.export_only): its
  run.export(model) (or run.hand_back(model), if train.py never calls run.export) writes the
  program into out/ and ends it; nothing trains there, and no metrics are written;
- the parent runs train.py as the training process (harness.export_alongside): its run.export(model)
  returns at once, and run.hand_back(model) takes the export process's program once it has ended,
  checks that it still computes the trained model, and hands back the weights (exporting the model
  itself if the export process wrote no program, or the model changed since).

A model that cannot be exported stops both within seconds, as before: the export process exits with
harness.EXPORT_REFUSED after printing why, and the training process stops when it sees that. Both
processes live in the same sandbox and run the same code; nothing here widens what either can reach.
Where fork is not safe after importing torch (macOS), train.py runs alone and exports in-process.
"""

from __future__ import annotations

import os
import runpy
import sys
import traceback
from pathlib import Path

import torch  # noqa: F401  (imported here, before the fork, so that neither process pays for it again)

from autoresearch_mcp.nanochat import handback, harness

EXPORT_NICENESS = 10  # the export process yields the CPU to training on a machine with few cores


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: python -m autoresearch_mcp.nanochat.launch TRAIN_PY")
    script = Path(sys.argv[1])
    sys.argv = [str(script)]
    sys.path[0] = str(script.parent)  # as `python train.py` would: train.py's folder first
    if sys.platform.startswith("linux"):
        pid = os.fork()
        if pid == 0:
            _export_process(script)
        harness.export_alongside(pid)
    runpy.run_path(str(script), run_name="__main__")


def _export_process(script: Path) -> None:
    """Run train.py as the export process; never returns. A failure other than a refused export is
    left unsaid: the training process runs the same code and meets it itself, or exports itself."""
    code = 1
    try:
        os.nice(EXPORT_NICENESS)
        harness.export_only()
        runpy.run_path(str(script), run_name="__main__")
        code = 0  # train.py ended without handing back a model: the training process exports it
    except handback.ExportFailed:
        traceback.print_exc()
        code = harness.EXPORT_REFUSED
    except BaseException:  # the training process reports it, or recovers
        pass
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


if __name__ == "__main__":
    main()
