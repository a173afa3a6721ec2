"""The server's state: one workspace, its experiment engine, and results.tsv following the store.

`build_server` opens a `Lab`; the server's lifespan (`running`) starts it and yields it, and
tools read it from the lifespan context (`wiring.lab_of(ctx)`).
"""

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import anyio.to_thread

from autoresearch_mcp.sandbox.engine import ExperimentEngine
from autoresearch_mcp.sandbox.runner import CommandFactory, harness_command
from autoresearch_mcp.sandbox.runstore import RunStore
from autoresearch_mcp.sandbox.workspace import Workspace, atomic_write
from autoresearch_mcp.tools.results_tsv import RESULTS_FILE, results_tsv

log = logging.getLogger("autoresearch_mcp.server")


class ResultsWriter:
    """Keeps `.autoresearch/results.tsv` a view of the run store, written on its own thread.

    The store is the source: whoever changes a run (the scheduler under its lock, a decision)
    only writes the store, and this thread, woken by the store's write counter, renders the
    table and rewrites the file if it changed. A burst of changes that arrives while it
    renders is covered by its next pass.
    """

    def __init__(self, path: Path, store: RunStore):
        self.path = path
        self.store = store
        self._written: str | None = None
        self._stopping = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Write the file now, then follow every change."""
        seen = self.store.wait_for_write(-1)  # the current count, at once
        self._write()
        self._stopping = False
        self._thread = threading.Thread(target=self._follow, args=(seen,), name="autoresearch-results", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping = True
        self.store.wake_waiters()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _follow(self, seen: int) -> None:
        while not self._stopping:
            # The timeout covers a wake that comes between the check above and the wait.
            count = self.store.wait_for_write(seen, timeout=1.0)
            if count != seen and not self._stopping:
                seen = count
                self._write()

    def _write(self) -> None:
        try:
            text = results_tsv(self.store)
            if text != self._written:
                atomic_write(self.path, text)
                self._written = text
        except Exception:  # a full disk, say: the thread must live on to write the next change
            log.exception("could not write %s; it is rewritten on the next change", self.path)


@dataclass(frozen=True)
class Lab:
    """What the tools work on. Lock order, where several are taken: workspace.lock, then the
    engine's git lock, then the scheduler's, then the store's (docs/design.md)."""

    workspace: Workspace
    engine: ExperimentEngine
    results: ResultsWriter = field(repr=False)


def open_lab(workspace: Workspace, command: CommandFactory = harness_command) -> Lab:
    """The engine (run store, scheduler) for `workspace`, not yet started; `command` starts a
    run (the harness; tests pass a stand-in)."""
    engine = ExperimentEngine(workspace, command=command)
    return Lab(workspace, engine, ResultsWriter(workspace.state_dir / RESULTS_FILE, engine.store))


@asynccontextmanager
async def running(lab: Lab) -> AsyncIterator[Lab]:
    """Schedule runs and follow the store while the server runs; on exit, leave live runs
    adoptable by the next server."""
    await anyio.to_thread.run_sync(lab.engine.start)
    try:
        await anyio.to_thread.run_sync(lab.results.start)
        yield lab
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(lab.results.stop)
            await anyio.to_thread.run_sync(lab.engine.shutdown)
