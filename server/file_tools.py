"""Registers the workspace file tools (tools/files.py) on the server."""

from __future__ import annotations

from mcp.server import MCPServer

from autoresearch_mcp.sandbox.workspace import Workspace


def register(mcp: MCPServer, workspace: Workspace) -> None:
    """Add read_file, list_files, search_files, edit_file, apply_diff, write_file, workspace_diff, reset_workspace."""
