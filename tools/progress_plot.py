"""plot_progress: val_bpb per experiment, the kept frontier against everything tried.

The picture people know from the original autoresearch: kept runs as solid points with the
running best as a step line, discarded runs as faint dots, crashes as marks on the x axis,
kept runs labelled with their description. Research validity adds a band around the running
best as wide as the noise threshold (k x the noise floor's std: a run inside it is within
noise), error bars on experiments of several runs, and only the experiments that compare with
the best (the rest are counted in the title). matplotlib is imported inside the function, so
the server starts without it.
"""

from __future__ import annotations

import io
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass

from autoresearch_mcp.sandbox import research
from autoresearch_mcp.sandbox.engine import ExperimentEngine
from autoresearch_mcp.sandbox.runstore import ACTIVE_STATUSES
from autoresearch_mcp.sandbox.workspace import STATE_DIR, atomic_write
from autoresearch_mcp.tools.leaderboard import ExperimentRow, board
from autoresearch_mcp.tools.text import counted

PLOT_FILE = "progress.png"
LABEL_CHARS = 40
KEPT_COLOR = "#2a9d58"
DISCARDED_COLOR = "#9aa0a6"
CRASH_COLOR = "#d1495b"


@dataclass(frozen=True)
class ProgressChart:
    """The chart, and what it shows in words (for a reader that cannot see images)."""

    png: bytes
    finished: int
    kept: int
    best: ExperimentRow | None
    band: float | None  # the noise threshold drawn around the best
    apart: int  # experiments left out: not comparable with the best

    def text(self) -> str:
        if self.best is None or self.best.val_bpb is None:
            where = "nothing kept yet"
        else:
            where = f"best kept: {self.best.run_id} at val_bpb {self.best.val_bpb:.6f} [{self.best.description}]"
        noise = f"noise band +/- {self.band:.6f} around the best" if self.band is not None else "no noise floor yet"
        apart = f"; {self.apart} not comparable with the best, not shown" if self.apart else ""
        return (
            f"val_bpb per experiment: {counted(self.finished, 'finished experiment')}, {self.kept} kept; {where}; "
            f"{noise}{apart}. Saved as {STATE_DIR}/{PLOT_FILE}."
        )


def plot_progress(engine: ExperimentEngine) -> ProgressChart:
    """A PNG of val_bpb per experiment in launch order; also saved as `.autoresearch/progress.png`."""
    current = board(engine)
    rows = current.ranked()
    band = current.k * research.floor_std(current.floor) if current.floor else None
    apart = len(current.rows) - len(rows)
    png = render_progress(rows, band, apart)
    atomic_write(engine.workspace.state_dir / PLOT_FILE, png)
    finished = [row for row in rows if row.status not in ACTIVE_STATUSES]
    kept = sum(1 for row in finished if row.decision == "keep")
    return ProgressChart(png=png, finished=len(finished), kept=kept, best=current.best, band=band, apart=apart)


def render_progress(rows: Sequence[ExperimentRow], band: float | None = None, apart: int = 0) -> bytes:
    """PNG bytes for the finished experiments among `rows` (launch order), with a noise band of
    half-width `band` around the running best; `apart` experiments that do not compare are counted."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    finished = [row for row in rows if row.status not in ACTIVE_STATUSES]
    figure = Figure(figsize=(11, 5.5), dpi=110, layout="constrained")
    axes = figure.add_subplot()
    measured = [(x, row) for x, row in enumerate(finished, start=1) if row.val_bpb is not None]
    if not measured:
        axes.text(
            0.5,
            0.5,
            "no measured experiments yet:\nlaunch a baseline with launch_training",
            ha="center",
            va="center",
            transform=axes.transAxes,
        )
        axes.set_axis_off()
    else:
        _draw_experiments(axes, finished, measured, band)
        if apart:
            axes.set_title(axes.get_title() + f"\n({apart} not comparable with the best, not shown)", fontsize=10)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _draw_experiments(
    axes, finished: Sequence[ExperimentRow], measured: list[tuple[int, ExperimentRow]], band: float | None
) -> None:
    from matplotlib.ticker import MaxNLocator

    kept = [(x, row) for x, row in measured if row.decision == "keep"]
    others = [(x, row) for x, row in measured if row.decision != "keep"]
    crashes = [x for x, row in enumerate(finished, start=1) if row.val_bpb is None]

    values = [_score(row) for _, row in measured]
    band_floor = [min(_score(row) for _, row in kept) - band] if band and kept else []  # the band stays in frame
    low, high = _y_range(values + band_floor, [_score(row) for _, row in kept])
    if others:
        ys = [min(_score(row), high) for _, row in others]  # off-scale runs sit on the top edge
        axes.scatter(
            [x for x, _ in others],
            ys,
            s=18,
            color=DISCARDED_COLOR,
            alpha=0.55,
            clip_on=False,
            label="discarded / undecided",
            zorder=2,
        )
    repeated = [(x, row) for x, row in measured if row.spread is not None]
    if repeated:
        axes.errorbar(
            [x for x, _ in repeated],
            [_score(row) for _, row in repeated],
            yerr=[row.spread for _, row in repeated],
            fmt="none",
            ecolor="#555555",
            elinewidth=0.8,
            capsize=2,
            zorder=2,
        )
    if kept:
        frontier_x, frontier_y = _running_best(kept, len(finished))
        if band:
            axes.fill_between(
                frontier_x,
                [y - band for y in frontier_y],
                [y + band for y in frontier_y],
                step="post",
                color=KEPT_COLOR,
                alpha=0.12,
                linewidth=0,
                label=f"noise band (+/- {band:.4g})",
                zorder=1,
            )
        axes.step(
            frontier_x,
            frontier_y,
            where="post",
            color=KEPT_COLOR,
            linewidth=2,
            alpha=0.8,
            label="running best",
            zorder=3,
        )
        axes.scatter(
            [x for x, _ in kept],
            [row.val_bpb for _, row in kept],
            s=46,
            color=KEPT_COLOR,
            edgecolor="black",
            linewidth=0.6,
            label="kept",
            zorder=4,
        )
        for x, row in kept:
            label = textwrap.shorten(row.description, LABEL_CHARS, placeholder="...")
            axes.annotate(
                label,
                (x, row.val_bpb),
                xytext=(4, 6),
                textcoords="offset points",
                fontsize=7.5,
                rotation=18,
                color="#1d5e3a",
            )
    if crashes:
        axes.scatter(
            crashes,
            [low] * len(crashes),
            marker="x",
            s=40,
            color=CRASH_COLOR,
            clip_on=False,
            label="crashed / killed",
            zorder=5,
        )

    axes.set_ylim(low, high)
    axes.set_xlim(0.5, len(finished) + 0.5)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.ticklabel_format(axis="y", useOffset=False)
    axes.set_xlabel("experiment (launch order)")
    axes.set_ylabel("val_bpb (lower is better)")
    best = min(_score(row) for _, row in kept) if kept else None
    title = f"autoresearch: {len(finished)} experiments, {len(kept)} kept"
    axes.set_title(title + (f", best val_bpb {best:.4f}" if best is not None else ""))
    axes.grid(alpha=0.25)
    axes.legend(loc="best", fontsize=8)


def _score(row: ExperimentRow) -> float:
    """The val_bpb of a measured row (the only rows drawn as points)."""
    if row.val_bpb is None:
        raise ValueError(f"{row.run_id} has no val_bpb to draw")
    return row.val_bpb


def _y_range(all_values: list[float], kept_values: list[float]) -> tuple[float, float]:
    """Frame the kept frontier and the runs near it; far-off failures (a diverged run at 9.0
    next to a frontier at 1.0) would flatten everything, so they are drawn at the top edge."""
    low = min(all_values)
    frontier_top = max(kept_values or all_values)
    near = max(0.5 * (frontier_top - low), 0.05 * abs(frontier_top))
    top = max(frontier_top, min(max(all_values), frontier_top + near))
    span = max(top - low, 1e-3)
    return low - 0.08 * span, top + 0.04 * span


def _running_best(kept: list[tuple[int, ExperimentRow]], last_x: int) -> tuple[list[float], list[float]]:
    xs, ys, best = [], [], float("inf")
    for x, row in kept:
        if _score(row) < best:
            best = _score(row)
            xs.append(x)
            ys.append(best)
    return [*xs, last_x + 0.5], [*ys, ys[-1]]
