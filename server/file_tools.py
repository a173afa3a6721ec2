"""The workspace file tools (tools/files.py, tools/history_view.py) as MCP tools.

Each tool's docstring and parameter descriptions are what the client's model reads.
"""

from typing import Annotated

from mcp.server import MCPServer
from mcp.server.mcpserver import Context
from mcp.types import CallToolResult
from pydantic import Field

from autoresearch_mcp.sandbox.history import BEST_BRANCH
from autoresearch_mcp.server.wiring import READ_ONLY, WRITES, answer, lab_of, refusals_as_tool_errors
from autoresearch_mcp.tools import files, history_view

FilePath = Annotated[
    str,
    Field(description="a path relative to the workspace, e.g. 'train.py'; '@harness/<name>' reads the harness"),
]
EditablePath = Annotated[str, Field(description="an editable file of the workspace, e.g. 'train.py'")]
Ref = Annotated[str, Field(description="a run id such as 'r0003', or a git ref: 'best', a commit sha, 'best~1'")]


def register(mcp: MCPServer) -> None:
    """Add read_file, list_files, search_files, workspace_diff (read-only) and edit_file,
    apply_diff, write_file, reset_workspace (destructive: they replace file content)."""

    @mcp.tool(annotations=READ_ONLY)
    @refusals_as_tool_errors
    def read_file(
        ctx: Context,
        path: FilePath,
        start_line: Annotated[int | None, Field(ge=1, description="first line to show, 1-based (default 1)")] = None,
        end_line: Annotated[
            int | None, Field(ge=1, description="last line to show, inclusive (default: the end)")
        ] = None,
    ) -> Annotated[CallToolResult, files.FileText]:
        """Read a workspace file (or a harness file, as "@harness/<name>", read-only) with line numbers.

        Shows at most 2000 lines per call; use start_line/end_line (1-based, inclusive) for the rest.
        """
        return answer(files.read_file(lab_of(ctx).workspace, path, start_line, end_line))

    @mcp.tool(annotations=READ_ONLY)
    @refusals_as_tool_errors
    def list_files(
        ctx: Context,
        path: Annotated[
            str | None, Field(description="a folder of the workspace (default: all of it), or '@harness/'")
        ] = None,
    ) -> Annotated[CallToolResult, files.FileListing]:
        """List files (size, whether editable) under a workspace folder, or the harness with "@harness/"."""
        return answer(files.list_files(lab_of(ctx).workspace, path))

    @mcp.tool(annotations=READ_ONLY)
    @refusals_as_tool_errors
    def search_files(
        ctx: Context,
        pattern: Annotated[str, Field(description="a regular expression (Python syntax), e.g. 'lr|learning_rate'")],
        path: Annotated[
            str | None, Field(description="a folder or file to search (default: the workspace), or '@harness/'")
        ] = None,
        max_results: Annotated[int, Field(ge=1, le=1000, description="stop after this many matching lines")] = 100,
    ) -> Annotated[CallToolResult, files.SearchResult]:
        """Search text files for a regular expression (Python syntax), line by line: path, line number, text.

        Searches the workspace (or a folder or file in it); "@harness/" searches the harness.
        """
        return answer(files.search_files(lab_of(ctx).workspace, pattern, path, max_results))

    @mcp.tool(annotations=READ_ONLY)
    @refusals_as_tool_errors
    def workspace_diff(
        ctx: Context, base: Annotated[Ref, Field(description="what to compare with (default: 'best')")] = BEST_BRANCH
    ) -> Annotated[CallToolResult, history_view.WorkspaceDiff]:
        """Show how the working copy differs from `best` (or a run id, commit or ref) as a unified diff."""
        return answer(history_view.workspace_diff(lab_of(ctx).workspace, base))

    @mcp.tool(annotations=WRITES)
    @refusals_as_tool_errors
    def edit_file(
        ctx: Context,
        path: EditablePath,
        old_text: Annotated[
            str,
            Field(
                description="the exact text to replace, indentation and all (copy it from read_file, without the line numbers)"
            ),
        ],
        new_text: Annotated[str, Field(description="the text to put in its place")],
        replace_all: Annotated[bool, Field(description="replace every occurrence, not just the one")] = False,
    ) -> Annotated[CallToolResult, files.FileChange]:
        """Replace old_text with new_text in an editable file; old_text must match exactly (indentation too).

        old_text must occur exactly once, unless replace_all is true. Returns the diff of the change.
        """
        return answer(files.edit_file(lab_of(ctx).workspace, path, old_text, new_text, replace_all))

    @mcp.tool(annotations=WRITES)
    @refusals_as_tool_errors
    def apply_diff(
        ctx: Context,
        diff: Annotated[
            str, Field(description="a unified diff as `git diff` or `diff -u` prints it, one or more files")
        ],
        dry_run: Annotated[bool, Field(description="check the diff and show the result, write nothing")] = False,
    ) -> Annotated[CallToolResult, files.PatchResult]:
        """Apply a unified diff (as `git diff` prints it) to editable files: every file, or none.

        Hunks are found by their context lines, which must match the file exactly; wrong line numbers
        in '@@' headers are tolerated. Paths may carry git's a/ and b/ prefixes or not. New files are
        allowed if editable; deleting or renaming files is not. With dry_run, check and show only.
        """
        return answer(files.apply_diff(lab_of(ctx).workspace, diff, dry_run))

    @mcp.tool(annotations=WRITES)
    @refusals_as_tool_errors
    def write_file(
        ctx: Context,
        path: EditablePath,
        content: Annotated[str, Field(description="the file's whole new content")],
    ) -> Annotated[CallToolResult, files.FileChange]:
        """Replace the whole content of an editable file (or create it, if the config lists it as editable).

        A CRLF file stays CRLF. Prefer edit_file or apply_diff for small changes.
        """
        return answer(files.write_file(lab_of(ctx).workspace, path, content))

    @mcp.tool(annotations=WRITES)
    @refusals_as_tool_errors
    def reset_workspace(
        ctx: Context, to: Annotated[Ref, Field(description="what to restore (default: 'best')")] = BEST_BRANCH
    ) -> Annotated[CallToolResult, history_view.ResetResult]:
        """Put every editable file back to its content at `best` (or a run id, commit or ref).

        Other files are left alone; the next launch records the commit as its parent. Returns the
        diff of what the reset changed.
        """
        return answer(history_view.reset_workspace(lab_of(ctx).workspace, to))
