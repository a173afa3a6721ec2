"""Turning a plain tool function into an MCP tool.

Tool functions in `autoresearch_mcp.tools` take the server's state as their first argument
and raise `UserError` for refusals. Here the state is bound, the first parameter dropped from
the advertised signature, and `UserError` becomes the SDK's `ToolError`, so the model sees
the message (isError) instead of a generic failure.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any

from mcp.server import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations

from autoresearch_mcp.nanochat.errors import UserError

log = logging.getLogger("autoresearch_mcp.server")

READ_ONLY = ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False)
WRITES = ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=False, open_world_hint=False)
ADDS = ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=False)


def add_tool(
    mcp: MCPServer,
    fn: Callable[..., Any],
    state: Any,
    annotations: ToolAnnotations,
    meta: dict[str, Any] | None = None,
) -> None:
    """Register `fn(state, ...)` as the tool `fn.__name__`, described by its docstring
    (`meta`: the tool's `_meta`, e.g. the MCP App that shows its results)."""
    signature = inspect.signature(fn, eval_str=True)
    public = signature.replace(parameters=list(signature.parameters.values())[1:])

    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def call(*args: Any, **kwargs: Any) -> Any:
            with _as_tool_errors(fn.__name__):
                return await fn(state, *args, **kwargs)
    else:

        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            with _as_tool_errors(fn.__name__):
                return fn(state, *args, **kwargs)

    call.__signature__ = public  # type: ignore[attr-defined]
    del call.__wrapped__  # the SDK must see `public`, not the state-taking original
    mcp.add_tool(call, name=fn.__name__, description=inspect.getdoc(fn), annotations=annotations, meta=meta)


class _as_tool_errors:
    """Refusals pass through with their message; bugs are logged and reported without a crash."""

    def __init__(self, tool: str):
        self.tool = tool

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, _tb: Any) -> bool:
        if isinstance(error, UserError):
            raise ToolError(str(error)) from error
        if isinstance(error, Exception) and not isinstance(error, ToolError):
            log.exception("tool %s failed", self.tool)
            raise ToolError(
                f"internal error in {self.tool}: {type(error).__name__}: {error}. "
                "This is a bug in autoresearch-mcp, not in your input; details are in .autoresearch/server.log"
            ) from error
        return False
