"""What every tool module in server/ shares: the lab from the lifespan, answers, errors, hints.

A tool here is a plain `@mcp.tool(...)` function: its parameters (with their descriptions) and
its docstring are what the client sees; its body reads the lab from the lifespan context and
calls a function from `autoresearch_mcp.tools`. `answer` turns that function's result model
into the two things a client gets: the model's `text()` as text content (what a model or
person reads) and the model as structuredContent (what a program reads, checked against the
output schema the SDK derives from the `Annotated[CallToolResult, Model]` return annotation).
"""

import functools
import inspect
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol, TypeVar, cast

from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult, TextContent, ToolAnnotations

from autoresearch_mcp.nanochat.errors import UserError
from autoresearch_mcp.server.lab import Lab

log = logging.getLogger("autoresearch_mcp.server")

READ_ONLY = ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False)
WRITES = ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=False, open_world_hint=False)
ADDS = ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=False)
DECIDES = ADDS  # a decision is recorded once and never undone, but destroys nothing

ToolFunction = TypeVar("ToolFunction", bound=Callable[..., Any])


class ToolResult(Protocol):
    """What a tools/ function returns: a pydantic model that also renders itself as text."""

    def text(self) -> str: ...

    def model_dump(self, *, mode: str = ..., by_alias: bool | None = ...) -> dict[str, Any]: ...


def lab_of(ctx: Context) -> Lab:
    """`ctx.request_context.lifespan_context`: the lab the server's lifespan yielded (workspace,
    engine), shared by every session."""
    return cast(Lab, ctx.request_context.lifespan_context)


def answer(result: ToolResult) -> CallToolResult:
    """The result as text for the reader and as structuredContent for programs."""
    return CallToolResult(
        content=[TextContent(type="text", text=result.text())],
        structured_content=result.model_dump(mode="json", by_alias=True),
    )


def refusals_as_tool_errors(tool: ToolFunction) -> ToolFunction:
    """Under `@mcp.tool(...)`: a `UserError` reaches the client as a tool error with its message
    (the SDK shows only ToolError messages); any other exception is logged and reported as a bug."""
    if inspect.iscoroutinefunction(tool):

        @functools.wraps(tool)
        async def call_async(*args: Any, **kwargs: Any) -> Any:
            with _as_tool_errors(tool.__name__):
                return await tool(*args, **kwargs)

        return cast(ToolFunction, call_async)

    @functools.wraps(tool)
    def call(*args: Any, **kwargs: Any) -> Any:
        with _as_tool_errors(tool.__name__):
            return tool(*args, **kwargs)

    return cast(ToolFunction, call)


@contextmanager
def _as_tool_errors(tool: str) -> Iterator[None]:
    """Refusals pass through with their message; bugs are logged and reported without a crash."""
    try:
        yield
    except UserError as error:
        raise ToolError(str(error)) from error
    except ToolError:
        raise
    except Exception as error:
        log.exception("tool %s failed", tool)
        raise ToolError(
            f"internal error in {tool}: {type(error).__name__}: {error}. "
            "This is a bug in autoresearch-mcp, not in your input; details are in .autoresearch/server.log"
        ) from error
