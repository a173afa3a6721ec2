"""The server's state: one workspace, its experiment engine, and results.tsv following the store.

`build_server` opens a `Lab`; the server's lifespan (`running`) starts it and yields it, and
tools read it from the lifespan context (`wiring.lab_of(ctx)`).
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import anyio.to_thread

from autoresearch_mcp.sandbox.engine import ExperimentEngine
from autoresearch_mcp.sandbox.runner import CommandFactory, harness_command
from autoresearch_mcp.sandbox.runstore import RunStore, StoreFollower
from autoresearch_mcp.sandbox.workspace import Workspace, atomic_write
from autoresearch_mcp.tools.results_tsv import RESULTS_FILE, results_tsv


class ResultsWriter:
    """Keeps `.autoresearch/results.tsv` a view of the run store, written on its own thread.

    The store is the source: whoever changes a run (the scheduler under its lock, a decision)
    only writes the store, and this follower, woken by the store's write counter, renders the
    table and rewrites the file if it changed. `k` is the workspace's noise_k, for the verdicts.
    """

    def __init__(self, path: Path, store: RunStore, k: float):
        self.path = path
        self.store = store
        self.k = k
        self._written: str | None = None
        self._follower = StoreFollower(store, self._write, name="autoresearch-results")

    def start(self) -> None:
        """Write the file now, then follow every change."""
        self._follower.start()

    def stop(self) -> None:
        self._follower.stop()

    def _write(self) -> None:
        text = results_tsv(self.store, self.k)
        if text != self._written:
            atomic_write(self.path, text)
            self._written = text


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
    results = ResultsWriter(workspace.state_dir / RESULTS_FILE, engine.store, workspace.config.noise_k)
    return Lab(workspace, engine, results)


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
