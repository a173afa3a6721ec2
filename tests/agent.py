"""An MCP client session with the calls an agent makes, for end-to-end tests through the protocol."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from mcp import Client

ACTIVE = ("queued", "running")


class Agent:
    """An MCP client session with the calls an agent makes, failing loudly on tool errors."""

    def __init__(self, client: Client):
        self.client = client

    async def call(self, tool: str, **arguments: Any) -> dict[str, Any]:
        result = await self.client.call_tool(tool, arguments)
        assert not result.is_error, f"{tool}({arguments}) failed: {result.content[0].text}"
        return result.structured_content

    async def refused(self, tool: str, **arguments: Any) -> str:
        result = await self.client.call_tool(tool, arguments)
        assert result.is_error, f"{tool}({arguments}) should have been refused"
        return result.content[0].text

    async def edit(self, replacements: dict[str, str]) -> None:
        for old, new in replacements.items():
            await self.call("edit_file", path="train.py", old_text=old, new_text=new)

    async def status(
        self, run_id: str, wait_seconds: float = 0, progress: Callable[..., Awaitable[None]] | None = None
    ) -> dict[str, Any]:
        result = await self.client.call_tool(
            "training_status", {"run_id": run_id, "wait_seconds": wait_seconds}, progress_callback=progress
        )
        assert not result.is_error, result.content[0].text
        (run,) = result.structured_content["runs"]
        return run

    async def until(self, run_id: str, done: Callable[[dict[str, Any]], bool], max_polls: int = 20) -> dict[str, Any]:
        """Long-poll until `done(status)`; a bounded number of polls, never a busy loop."""
        for _ in range(max_polls):
            run = await self.status(run_id, wait_seconds=30)
            if done(run):
                return run
        pytest.fail(f"{run_id} never got there: {run}")

    async def finish(self, run_id: str) -> dict[str, Any]:
        return await self.until(run_id, lambda run: run["status"] not in ACTIVE)

    async def launch(self, description: str, **options: Any) -> dict[str, Any]:
        return await self.call("launch_training", description=description, **options)
