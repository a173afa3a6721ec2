"""The log of a run's cluster job, framed so that the run's own output can never pass for ours.

A job's log is one stream of text, which the cluster keeps and serves back. Into it go the
trusted job wrapper's reports (where the run is, its phases, its step metrics, its exit code
and summary) and the run's output, which is the supervisor's lines with train.py's and the
evaluator's among them: untrusted. The wrapper (sandbox/ray_job.py) is the stream's only
writer, and it writes every byte of the run's output behind a prefix:

    | text          a line of the run's output
    |+text          part of one, cut where no newline came (a long line, or output ending without one)
    @autoresearch {...}   one report of the wrapper: a JSON object on one line
    anything else   the cluster's own lines (setting up the job's environment, the entrypoint)

So no output of the run starts a line of the stream, and a report cannot be forged by printing
one, by construction. Line ends are normalised first: Ray reads the log back as text with
universal newlines, so a bare carriage return would end a line there; the wrapper turns
"\\r\\n" and "\\r" into "\\n" before it splits (and sends only valid UTF-8).

On the server, a `Mirror` turns the stream back into the run folder a local run has (log.txt,
phase, out/metrics.jsonl, summary.json), so every tool reads a cluster run as it reads a local one.
"""

from __future__ import annotations

import codecs
import json
import logging
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoresearch_mcp.nanochat import contract
from autoresearch_mcp.nanochat import summary as files
from autoresearch_mcp.nanochat.contract import Phase
from autoresearch_mcp.sandbox import limits

log = logging.getLogger("autoresearch_mcp.sandbox")

JOB_PREFIX = "autoresearch-"  # of every job's submission id, and of its folder on the node

# The job's working_dir holds only the run's snapshot as this archive: Ray puts the working_dir
# first on the job's PYTHONPATH and makes it the wrapper's cwd, and no file of the agent's may
# ever be importable by a trusted process (a `json.py` among its files would shadow json).
SNAPSHOT_ARCHIVE = "snapshot.zip"

RELAYED = "| "
PART = "|+"
REPORT = "@autoresearch "
MAX_LINE_CHARS = 4096  # longer output lines travel in parts (Ray reads its log back in 20,000-char chunks)
# The mirrored log keeps what the supervisor let through (its own log limit) and the wrapper's lines.
MIRRORED_LOG_BYTES = limits.DEFAULT_LOG_BYTES + 4 * 1024**2
MIRRORED_METRICS_BYTES = 64 * 1024**2

# The reports, in the order a job sends them.
STARTED = "started"  # node, ip, gpus (the job's CUDA_VISIBLE_DEVICES), time
PHASE = "phase"  # phase
METRICS = "metrics"  # text: complete lines appended to out/metrics.jsonl; reset: the file started over
ENDED = "ended"  # exit_code, summary (the supervisor's summary.json, or null), time
PHASES = frozenset(phase.value for phase in Phase)


def report_line(kind: str, **fields: object) -> str:
    """One report of the wrapper, as a line of the stream (ASCII JSON: no line break inside)."""
    return REPORT + json.dumps({"report": kind, **fields}, ensure_ascii=True, separators=(",", ":")) + "\n"


class Framer:
    """Turns what the run prints (bytes, in any chunks) into relayed lines of the stream."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""  # text after the last line end

    def feed(self, data: bytes, *, final: bool = False) -> str:
        """The stream lines for `data`; `final` flushes a last line that has no newline."""
        text = self._pending + self._decoder.decode(data, final)
        held = ""
        if text.endswith("\r") and not final:  # its "\n" may come in the next chunk
            text, held = text[:-1], "\r"
        *lines, rest = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
        framed = [piece for line in lines for piece in _pieces(line, complete=True)]
        if final:
            framed += _pieces(rest, complete=False) if rest else []
            rest = ""
        elif len(rest) >= MAX_LINE_CHARS:
            cut = len(rest) - len(rest) % MAX_LINE_CHARS
            framed += _pieces(rest[:cut], complete=False)
            rest = rest[cut:]
        self._pending = rest + held
        return "".join(framed)


def _pieces(line: str, *, complete: bool) -> list[str]:
    """`line` as relayed lines: parts of MAX_LINE_CHARS, the last one whole if the line ended."""
    parts = [line[i : i + MAX_LINE_CHARS] for i in range(0, len(line), MAX_LINE_CHARS)] or [""]
    framed = [PART + part + "\n" for part in parts]
    if complete:
        framed[-1] = RELAYED + parts[-1] + "\n"
    return framed


@dataclass(frozen=True)
class Placement:
    """Where a cluster job runs, as its wrapper reported it."""

    node: str
    ip: str
    gpus: str | None  # the GPU ids the cluster gave it (its CUDA_VISIBLE_DEVICES), None on CPU
    started_at: float


@dataclass(frozen=True)
class Ending:
    exit_code: int
    summary: dict[str, Any] | None


@dataclass
class _Batch:
    """What one feed brings: written to the run folder together at its end."""

    log: list[str] = field(default_factory=list)
    metrics: list[str] = field(default_factory=list)
    reset: bool = False  # the metrics file started over
    phase: str | None = None
    ending: Ending | None = None


class Mirror:
    """Rebuilds a cluster run's folder here from its stream, fed from the start in any chunks.

    The first `feed` starts the folder's log, phase, metrics and summary afresh (keeping its
    snapshot), so a server that follows a job again after a restart rebuilds the same folder; until
    then what a previous server mirrored stays (a job that vanished keeps the log there was).
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.placement: Placement | None = None
        self.ending: Ending | None = None
        self._rest = ""
        self._started = False
        self._log_bytes = 0
        self._metrics_bytes = 0
        self._lock = threading.Lock()  # one feed at a time

    def feed(self, text: str) -> None:
        with self._lock:
            if not self._started:
                self._start_afresh()
            *lines, self._rest = (self._rest + text).split("\n")
            batch = _Batch()
            for line in lines:
                self._take(line, batch)
            # Each file is written once per feed (a reader never sees a phase the run has since
            # left), and the ending is known only once the log, phase and summary are all written.
            self._append_log("".join(batch.log))
            self._append_metrics("".join(batch.metrics), batch.reset)
            if batch.phase is not None:
                files.write_atomic(self.run_dir / contract.PHASE, batch.phase + "\n")
            if batch.ending is not None:
                if batch.ending.summary is not None:
                    files.write_json_atomic(self.run_dir / contract.SUMMARY, batch.ending.summary)
                self.ending = batch.ending

    def _take(self, line: str, batch: _Batch) -> None:
        if line.startswith(RELAYED):
            batch.log.append(line[len(RELAYED) :] + "\n")
        elif line.startswith(PART):
            batch.log.append(line[len(PART) :])
        elif line.startswith(REPORT):
            self._report(_parsed(line[len(REPORT) :]), line, batch)
        else:
            batch.log.append(line + "\n")  # the cluster's own

    def _report(self, report: dict[str, Any], line: str, batch: _Batch) -> None:
        kind = report.get("report")
        if kind == PHASE and report.get("phase") in PHASES:
            batch.phase = report["phase"]
        elif kind == METRICS and isinstance(report.get("text"), str):
            if report.get("reset"):
                batch.reset, batch.metrics = True, []
            batch.metrics.append(report["text"])
        elif kind == STARTED and (placement := _placement(report)) is not None:
            self.placement = placement
            batch.log.append(f"[autoresearch-mcp] {describe(placement)}\n")
        elif kind == ENDED and isinstance(report.get("exit_code"), int):
            summary = report.get("summary")
            batch.ending = Ending(report["exit_code"], summary if isinstance(summary, dict) else None)
        else:
            batch.log.append(line + "\n")

    def note(self, message: str) -> None:
        """Add a line of ours to the log (why a run ends where it does)."""
        with self._lock:
            self._append_log(f"[autoresearch-mcp] {message}\n")

    def _start_afresh(self) -> None:
        self._started = True
        for name in (contract.PHASE, contract.SUMMARY):
            (self.run_dir / name).unlink(missing_ok=True)
        shutil.rmtree(self.run_dir / contract.OUT_DIR, ignore_errors=True)
        (self.run_dir / contract.OUT_DIR).mkdir()
        (self.run_dir / contract.LOG).write_bytes(b"")

    def _append_log(self, text: str) -> None:
        data = text.encode("utf-8")[: max(0, MIRRORED_LOG_BYTES - self._log_bytes)]
        if data:
            with open(self.run_dir / contract.LOG, "ab") as log_file:
                log_file.write(data)
            self._log_bytes += len(data)

    def _append_metrics(self, text: str, reset: bool) -> None:
        path = self.run_dir / contract.OUT_DIR / contract.METRICS
        if reset:
            path.unlink(missing_ok=True)
            self._metrics_bytes = 0
        data = text.encode("utf-8")[: max(0, MIRRORED_METRICS_BYTES - self._metrics_bytes)]
        if data:
            with open(path, "ab") as metrics_file:
                metrics_file.write(data)
            self._metrics_bytes += len(data)


def describe(placement: Placement) -> str:
    gpus = f", GPU {placement.gpus}" if placement.gpus else ""
    return f"running on node {placement.node} ({placement.ip}){gpus}"


def _parsed(text: str) -> dict[str, Any]:
    """A report's fields; {} for a line that is not one (logged as it is)."""
    try:
        report = json.loads(text)
    except (ValueError, RecursionError):
        return {}
    return report if isinstance(report, dict) else {}


def _placement(report: dict[str, Any]) -> Placement | None:
    node, ip, gpus, started = (report.get(key) for key in ("node", "ip", "gpus", "time"))
    if not (isinstance(node, str) and isinstance(ip, str) and isinstance(started, (int, float))):
        return None
    return Placement(node, ip, gpus if isinstance(gpus, str) and gpus else None, float(started))
