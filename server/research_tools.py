"""The research-validity tools (tools/research.py) as MCP tools: the noise floor, repeats, the
scale-up check and the journal.

Each tool's docstring and parameter descriptions are what the client's model reads.
"""

from typing import Annotated

from mcp.server import MCPServer
from mcp.server.mcpserver import Context
from mcp.types import CallToolResult
from pydantic import Field

from autoresearch_mcp.sandbox.config import MAX_NOISE_RUNS
from autoresearch_mcp.server.wiring import ADDS, READ_ONLY, answer, lab_of, refusals_as_tool_errors
from autoresearch_mcp.tools import research

MAX_REPEATS = 10
MAX_SCALE = 8.0
MAX_VALIDATION_RUNS = 5
MAX_JOURNAL_LIMIT = 50


def register(mcp: MCPServer) -> None:
    """Add measure_noise, repeat_experiment, validate_experiment (they queue runs) and research_summary."""

    @mcp.tool(annotations=ADDS)
    @refusals_as_tool_errors
    def measure_noise(
        ctx: Context,
        runs: Annotated[
            int,
            Field(
                ge=1, le=MAX_NOISE_RUNS, description="how many more runs of the best kept code, each with a fresh seed"
            ),
        ] = 3,
    ) -> Annotated[CallToolResult, research.RunsLaunched]:
        """Measure the noise floor: queue the best kept code again with fresh seeds, as noise runs.

        When they have finished, the spread of val_bpb over every run of that code (standard deviation
        and median absolute deviation) is stored for its profile, budget, data and scale, and verdicts
        use it: `better` means beating the best by more than k x that std (k = noise_k, default 2).
        The first kept baseline starts this by itself unless the workspace config sets noise_runs = 0."""
        return answer(research.measure_noise(lab_of(ctx).engine, runs))

    @mcp.tool(annotations=ADDS)
    @refusals_as_tool_errors
    def repeat_experiment(
        ctx: Context,
        run_id: Annotated[str, Field(description="any run of the experiment to repeat, e.g. 'r0007'")],
        runs: Annotated[int, Field(ge=1, le=MAX_REPEATS, description="how many more runs, each with a fresh seed")] = 2,
    ) -> Annotated[CallToolResult, research.RunsLaunched]:
        """Run an experiment's commit again with fresh seeds. Its figure becomes the mean of all its
        runs, and its verdict uses the standard error (threshold k x noise std / sqrt(runs)): the way to
        settle a gain that is `within noise`. Repeats of a kept experiment count as noise runs."""
        return answer(research.repeat_experiment(lab_of(ctx).engine, run_id, runs))

    @mcp.tool(annotations=ADDS)
    @refusals_as_tool_errors
    def validate_experiment(
        ctx: Context,
        run_id: Annotated[
            str, Field(description="a run of the experiment to check, usually a kept change, e.g. 'r0007'")
        ],
        scale: Annotated[
            float,
            Field(
                gt=1,
                le=MAX_SCALE,
                description="how much larger: the budget times scale, and the model grown through run.scale",
            ),
        ] = 2.0,
        runs: Annotated[
            int, Field(ge=1, le=MAX_VALIDATION_RUNS, description="seeds per side (the same seeds for both)")
        ] = 1,
    ) -> Annotated[CallToolResult, research.ValidationReport]:
        """Does the gain hold at a larger scale? Runs the experiment's commit and the baseline (the first
        kept run) with the budget x scale and a model grown through the harness's run.scale, both with the
        same seeds, and measures the noise floor at that scale if there is none. Returns at once; call it
        again (same arguments) to read the result. list_experiments marks validated keeps."""
        return answer(research.validate_experiment(lab_of(ctx).engine, run_id, scale, runs))

    @mcp.tool(annotations=READ_ONLY)
    @refusals_as_tool_errors
    def research_summary(
        ctx: Context,
        limit: Annotated[
            int,
            Field(
                ge=1,
                le=MAX_JOURNAL_LIMIT,
                description="at most this many kept changes, groups of ideas not kept, and entries per list",
            ),
        ] = 10,
    ) -> Annotated[CallToolResult, research.Journal]:
        """The research journal, for resuming: the best and the chain of kept changes that reached it
        (with their gains), what was tried and not kept grouped by what the code change touched, what
        waits for a decision, what is running, and the noise floor. Compact (about 2,000 tokens at
        most); read it first in a fresh session. Also the resource autoresearch://journal."""
        return answer(research.research_summary(lab_of(ctx).engine, limit))
