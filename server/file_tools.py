"""Registers the workspace file tools (tools/files.py, tools/history_view.py) on the server."""

from __future__ import annotations

from mcp.server import MCPServer

from autoresearch_mcp.sandbox.workspace import Workspace
from autoresearch_mcp.server.wiring import READ_ONLY, WRITES, add_tool
from autoresearch_mcp.tools import files, history_view


def register(mcp: MCPServer, workspace: Workspace) -> None:
    """Add read_file, list_files, search_files, edit_file, apply_diff, write_file, workspace_diff, reset_workspace."""
    for reader in (files.read_file, files.list_files, files.search_files, history_view.workspace_diff):
        add_tool(mcp, reader, workspace, READ_ONLY)
    # Writers replace file content (destructive): edits overwrite lines, a reset discards edits.
    for writer in (files.edit_file, files.apply_diff, files.write_file, history_view.reset_workspace):
        add_tool(mcp, writer, workspace, WRITES)
