"""Registers the experiment-loop tools, the `autoresearch` prompt and the resources on the server.

Most tools are plain functions from `autoresearch_mcp.tools`, bound to the engine by
`wiring.add_tool`. Two need the SDK: `training_status` reports MCP progress while it
long-polls, and `plot_progress` answers with an image. Their wrappers live here so that
`tools/` stays free of MCP imports.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.to_thread
from mcp.server import MCPServer
from mcp.server.mcpserver import Context, Image
from mcp.server.mcpserver.exceptions import ResourceError

from autoresearch_mcp.nanochat.errors import UserError
from autoresearch_mcp.sandbox import runner
from autoresearch_mcp.sandbox.engine import ExperimentEngine
from autoresearch_mcp.sandbox.runstore import RunRecord
from autoresearch_mcp.sandbox.workspace import Workspace
from autoresearch_mcp.server.dashboard import app_link_meta
from autoresearch_mcp.server.wiring import ADDS, READ_ONLY, WRITES, add_tool
from autoresearch_mcp.tools import experiments, gpu, program, progress_plot, research
from autoresearch_mcp.tools.results_tsv import RESULTS_FILE, ResultsFile, results_tsv

log = logging.getLogger("autoresearch_mcp.server")

DECIDES = ADDS  # a decision is recorded once and never undone, but destroys nothing

PLAIN_TOOLS = (
    (experiments.launch_training, ADDS),
    (experiments.read_metrics, READ_ONLY),
    (experiments.read_log, READ_ONLY),
    (experiments.stop_training, WRITES),
    (experiments.keep_experiment, DECIDES),
    (experiments.discard_experiment, DECIDES),
    (experiments.list_experiments, READ_ONLY),
    (experiments.compare_experiments, READ_ONLY),
    (research.measure_noise, ADDS),
    (research.repeat_experiment, ADDS),
    (research.validate_experiment, ADDS),
    (research.research_summary, READ_ONLY),
    (gpu.gpu_status, READ_ONLY),
)

# Hosts that render MCP Apps show these tools' results in the live dashboard (text elsewhere).
SHOWN_IN_DASHBOARD = (experiments.list_experiments,)


@dataclass(frozen=True)
class Lab:
    """The experiment engine, and the results.tsv it keeps up to date."""

    engine: ExperimentEngine
    results: ResultsFile


def open_lab(workspace: Workspace) -> Lab:
    """The experiment engine (run store, scheduler) for `workspace`; started by `running`."""
    results = ResultsFile(workspace.state_dir / RESULTS_FILE, workspace.config.noise_k)

    def export_results(_changed: RunRecord) -> None:
        # Called on the scheduler's thread for every status, phase and decision change.
        try:
            results.update(engine.store)
        except OSError:
            log.exception("could not write %s; it is rewritten on the next change", results.path)

    engine = ExperimentEngine(workspace, on_change=export_results)
    return Lab(engine, results)


@asynccontextmanager
async def running(lab: Lab) -> AsyncIterator[None]:
    """Run the scheduler while the server runs; on exit, leave live runs adoptable by the next server."""
    await anyio.to_thread.run_sync(lab.engine.start)
    try:
        lab.results.update(lab.engine.store)
        yield
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(lab.engine.shutdown)


def register(mcp: MCPServer, lab: Lab) -> None:
    """Add the launch/watch/measure/decide tools, the `autoresearch` prompt and resources."""
    for fn, hints in PLAIN_TOOLS:
        add_tool(mcp, fn, lab.engine, hints, meta=app_link_meta() if fn in SHOWN_IN_DASHBOARD else None)
    add_tool(mcp, training_status, lab.engine, READ_ONLY, meta=app_link_meta())
    add_tool(mcp, plot_progress, lab.engine, READ_ONLY, meta=app_link_meta())
    _register_instructions(mcp, lab.engine)


async def training_status(
    engine: ExperimentEngine, *args: Any, ctx: Context, **kwargs: Any
) -> experiments.TrainingStatus:
    async def report(waited: float, total: float, message: str) -> None:
        await ctx.report_progress(waited, total, message)

    return await experiments.training_status(engine, *args, progress=report, **kwargs)


# The advertised parameters are those of the tool function, with the SDK's context in place
# of the progress callback, so schema and descriptions have one source. Annotations are set as
# objects: the SDK finds the context parameter by resolving them, outside this module.
_status_signature = inspect.signature(experiments.training_status, eval_str=True)
training_status.__signature__ = _status_signature.replace(  # type: ignore[attr-defined]
    parameters=[
        *(p for p in _status_signature.parameters.values() if p.name != "progress"),
        inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=Context),
    ]
)
training_status.__annotations__ = {
    **{p.name: p.annotation for p in training_status.__signature__.parameters.values()},  # type: ignore[attr-defined]
    "return": _status_signature.return_annotation,
}
training_status.__doc__ = experiments.training_status.__doc__


def plot_progress(engine: ExperimentEngine) -> Image:
    """A PNG chart of val_bpb per experiment in launch order: kept runs and the running best as a
    step line, discarded runs as faint dots, crashes on the x axis. Also saved as .autoresearch/progress.png."""
    return Image(data=progress_plot.plot_progress(engine), format="png")


def _register_instructions(mcp: MCPServer, engine: ExperimentEngine) -> None:
    @mcp.prompt(name="autoresearch", title="Run the autoresearch loop")
    def autoresearch() -> str:
        """The research loop instructions (the workspace's program.md) and where the research stands."""
        return program.autoresearch_prompt(engine)

    @mcp.resource("autoresearch://program", name="program", mime_type="text/markdown")
    def program_resource() -> str:
        """program.md: the human's research instructions for this workspace."""
        return program.program_text(engine.workspace)

    @mcp.resource("autoresearch://results.tsv", name="results", mime_type="text/tab-separated-values")
    def results_resource() -> str:
        """Every finished run in the original autoresearch's results.tsv columns (commit, val_bpb,
        memory_gb, status keep/discard/crash/pending or noise/repeat/validation, description), then
        run, experiment, the experiment's verdict and its delta against the best."""
        # From the store itself, so it is current even mid-update.
        return results_tsv(engine.store, engine.workspace.config.noise_k)

    @mcp.resource("autoresearch://journal", name="journal", mime_type="text/plain")
    def journal_resource() -> str:
        """The research journal (as research_summary): the best and how it was reached, what was
        tried and not kept, what is running, and the noise floor. Read it first in a fresh session."""
        return research.journal(engine).text()

    @mcp.resource("autoresearch://runs/{run_id}/log", name="run_log", mime_type="text/plain")
    def run_log_resource(run_id: str) -> str:
        """The output of one run (its last 256 KiB): stdout and stderr of the harness and train.py."""
        try:
            engine.store.get(run_id)
        except UserError as error:
            raise ResourceError(str(error)) from error
        return runner.read_log_tail(engine.run_dir(run_id))
