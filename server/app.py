"""The MCPServer application: one workspace, its tools, prompt and resources."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from mcp.server import MCPServer

from autoresearch_mcp.sandbox.runner import CommandFactory, harness_command
from autoresearch_mcp.sandbox.workspace import Workspace
from autoresearch_mcp.server import dashboard, experiment_tools, file_tools, research_tools, resources
from autoresearch_mcp.server.cli import package_version
from autoresearch_mcp.server.lab import Lab, open_lab, running
from autoresearch_mcp.tools.dashboard import WorkspaceReader

INSTRUCTIONS = """\
Autoresearch: improve a small GPT training script by experiment. Edit train.py (read_file,
edit_file, apply_diff), start a fixed-budget run with launch_training, follow it with
training_status, read val_bpb with read_metrics (lower is better), then keep_experiment or
discard_experiment. The data, budget and evaluation belong to the server and cannot be changed.
Use the `autoresearch` prompt for the full loop instructions."""


def build_server(workspace: Workspace, command: CommandFactory = harness_command) -> MCPServer:
    """An MCPServer serving `workspace`. Its lifespan starts the lab (scheduler, results.tsv)
    and yields it; tools read it as `ctx.request_context.lifespan_context`. `command` starts
    a run (the harness; tests pass a stand-in)."""
    lab = open_lab(workspace, command)

    @asynccontextmanager
    async def lifespan(_server: MCPServer) -> AsyncIterator[Lab]:
        async with running(lab):
            yield lab

    mcp = MCPServer("autoresearch", instructions=INSTRUCTIONS, version=package_version(), lifespan=lifespan)
    file_tools.register(mcp)
    experiment_tools.register(mcp)
    research_tools.register(mcp)
    resources.register(mcp, lab)
    dashboard.register_app(mcp, WorkspaceReader(workspace.root))
    return mcp
