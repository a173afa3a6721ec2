"""Registers the experiment-loop tools, prompt and resources on the server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from mcp.server import MCPServer

from autoresearch_mcp.sandbox.workspace import Workspace


def open_lab(workspace: Workspace) -> Any:
    """The experiment state (run store, scheduler) for `workspace`."""
    return workspace


@asynccontextmanager
async def running(lab: Any) -> AsyncIterator[None]:
    """Run the scheduler while the server runs; on exit, leave runs adoptable by the next server."""
    yield


def register(mcp: MCPServer, lab: Any) -> None:
    """Add the launch/watch/measure/decide tools, the `autoresearch` prompt and resources."""
