"""The `autoresearch` prompt and the resources: program.md, the research journal, results.tsv, a run's log.

The SDK injects `Context` into prompts and resource templates but not into static resources,
so these read the lab they are registered with.
"""

from mcp.server import MCPServer
from mcp.server.mcpserver.exceptions import ResourceError

from autoresearch_mcp.nanochat.errors import UserError
from autoresearch_mcp.sandbox import runner
from autoresearch_mcp.server.lab import Lab
from autoresearch_mcp.tools import program, research
from autoresearch_mcp.tools.results_tsv import results_tsv


def register(mcp: MCPServer, lab: Lab) -> None:
    engine = lab.engine

    @mcp.prompt(name="autoresearch", title="Run the autoresearch loop")
    def autoresearch() -> str:
        """The research loop instructions (the workspace's program.md) and where the research stands."""
        return program.autoresearch_prompt(engine)

    @mcp.resource("autoresearch://program", name="program", mime_type="text/markdown")
    def program_resource() -> str:
        """program.md: the human's research instructions for this workspace."""
        return program.program_text(lab.workspace)

    @mcp.resource("autoresearch://journal", name="journal", mime_type="text/plain")
    def journal_resource() -> str:
        """The research journal (as research_summary): the best and how it was reached, what was
        tried and not kept, what is running, and the noise floor. Read it first in a fresh session."""
        return research.research_summary(engine).text()

    @mcp.resource("autoresearch://results.tsv", name="results", mime_type="text/tab-separated-values")
    def results_resource() -> str:
        """Every finished run in the original autoresearch's results.tsv columns (commit, val_bpb,
        memory_gb, status keep/discard/crash/pending or noise/repeat/validation, description), then
        run, experiment, the experiment's verdict and its delta against the best."""
        engine.floors()  # brought up to date, so the verdicts are current even before the file is
        return results_tsv(engine.store, lab.workspace.config.noise_k)

    @mcp.resource("autoresearch://runs/{run_id}/log", name="run_log", mime_type="text/plain")
    def run_log_resource(run_id: str) -> str:
        """The output of one run (its last 256 KiB): stdout and stderr of the harness and train.py."""
        try:
            engine.store.get(run_id)
        except UserError as error:
            raise ResourceError(str(error)) from error
        return runner.read_log_tail(engine.run_dir(run_id))
