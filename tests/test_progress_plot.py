"""The progress chart: a valid PNG of the right size for any history, including an empty one."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from autoresearch_mcp.tools.leaderboard import ExperimentRow
from autoresearch_mcp.tools.progress_plot import _running_best, _y_range, render_progress

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def row(
    n: int,
    status: str = "succeeded",
    decision: str | None = None,
    val_bpb: float | None = None,
    spread: float | None = None,
) -> ExperimentRow:
    return ExperimentRow(
        run_id=f"r{n:04d}",
        commit=f"{n:07x}",
        status=status,
        decision=decision,
        forced=False,
        val_bpb=val_bpb,
        runs=0 if val_bpb is None else 1 if spread is None else 3,
        run_ids=[f"r{n:04d}"],
        spread=spread,
        delta_vs_parent=None,
        delta_vs_best=None,
        verdict=None,
        apart=None,
        validation=None,
        touched=[],
        description=f"idea {n}: " + "a rather long description " * 3,
        memory_gb=1.0,
        duration_seconds=5.0,
    )


def decode(png: bytes) -> Image.Image:
    assert png.startswith(PNG_MAGIC)
    image = Image.open(io.BytesIO(png))
    image.verify()
    return Image.open(io.BytesIO(png))


@pytest.mark.parametrize(
    "rows",
    [
        [],
        [row(1, "running")],
        [row(1, "crashed", "discard")],
        [row(1, decision="keep", val_bpb=2.1)],
        [
            row(1, decision="keep", val_bpb=2.1),
            row(2, decision="discard", val_bpb=2.3),
            row(3, "crashed"),
            row(4, "killed", "discard"),
            row(5, decision="keep", val_bpb=2.0, spread=0.01),
            row(6, val_bpb=9.0),
            row(7, "queued"),
        ],
    ],
    ids=["empty", "only-running", "only-crash", "one-kept", "mixed"],
)
@pytest.mark.parametrize(("band", "apart"), [(None, 0), (0.02, 3)], ids=["no-floor", "noise-band"])
def test_renders_a_png(rows: list[ExperimentRow], band: float | None, apart: int) -> None:
    image = decode(render_progress(rows, band, apart))

    assert image.format == "PNG" and image.size[0] > 600 and image.size[1] > 300


def test_running_best_is_a_step_line_to_the_last_experiment() -> None:
    kept = [
        (1, row(1, decision="keep", val_bpb=2.0)),
        (3, row(3, decision="keep", val_bpb=1.9)),
        (6, row(6, decision="keep", val_bpb=1.95)),
    ]

    xs, ys = _running_best(kept, last_x=8)

    # A kept run that is worse than the best so far does not move the line.
    assert xs == [1, 3, 8.5] and ys == [2.0, 1.9, 1.9]


def test_far_off_runs_do_not_flatten_the_frontier() -> None:
    low, high = _y_range(all_values=[1.00, 0.98, 0.97, 1.04, 5.0], kept_values=[1.00, 0.97])

    assert low < 0.97 and 1.04 < high < 1.1, "near misses are in the frame, the diverged run is not"
