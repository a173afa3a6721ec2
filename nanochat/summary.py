"""The run summary's format, the training clock's constants, and safe small-file I/O for the run folder.

The names the parts meet through (files, phases, exit codes, environment) are in contract.py.
No torch here, so that the supervisor starts fast.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

# The training clock (`progress`, and the counted seconds and tokens behind tokens/s and MFU) leaves
# out the first steps, as the original does: on CUDA ten (compilation, autotuning, allocator warm-up),
# elsewhere the first one only (one-time set-up, or compilation if train.py turns it on); they still
# come out of the run's window (the supervisor's deadline). Never more than MAX_UNCOUNTED_SECONDS of
# wall time, so a schedule never waits on a warm-up that does not end.
UNCOUNTED_STEPS_CUDA = 10
UNCOUNTED_STEPS_OTHER = 1
MAX_UNCOUNTED_SECONDS = 120.0

# Order and format of the printed block after `---` (the original's fields, then ours).
SUMMARY_FORMATS = {
    "val_bpb": "{:.6f}",
    "training_seconds": "{:.1f}",
    "training_wall_seconds": "{:.1f}",
    "total_seconds": "{:.1f}",
    "peak_memory_mb": "{:.1f}",
    "mfu_percent": "{:.2f}",
    "total_tokens_M": "{:.1f}",
    "num_steps": "{:d}",
    "num_params_M": "{:.1f}",
    "depth": "{}",
    "profile": "{}",
    "device": "{}",
    "seed": "{:d}",
}
# The summary's fields that come from train_stats.json, which the run writes itself: what the agent's
# process says, shown for information. training_wall_seconds (the training sandbox's spawn to its
# end, by the supervisor's clock) and val_bpb are the trusted figures.
REPORTED_BY_RUN = ("training_seconds", "peak_memory_mb", "mfu_percent", "total_tokens_M", "num_steps", "depth")


def write_atomic(path: Path, text: str) -> None:
    """Replace `path` with `text` so a reader sees the old file or the new one, never half."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    write_atomic(path, json.dumps(data, indent=2) + "\n")


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in `path`, or None if it is missing or not a JSON object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def process_started_unix(pid: int | str = "self") -> float | None:
    """When process `pid` started, on the wall clock, to about 10 ms (Linux /proc; None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, IndexError, ValueError):
        return None
    return time.time() - uptime + int(fields[19]) / os.sysconf("SC_CLK_TCK")


def format_summary(summary: dict[str, Any]) -> str:
    """The familiar `key: value` block, one line per field, unknown values as `n/a`."""
    width = max(len(key) for key in SUMMARY_FORMATS) + 1
    lines = []
    for key, fmt in SUMMARY_FORMATS.items():
        value = summary.get(key)
        text = "n/a" if value is None else fmt.format(value)
        lines.append(f"{key + ':':<{width}} {text}")
    return "\n".join(lines)
