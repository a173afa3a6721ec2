"""The experiment-loop tools (tools/experiments.py, tools/gpu.py, tools/progress_plot.py) as MCP tools.

Each tool's docstring and parameter descriptions are what the client's model reads. A tool
that reports progress declares `ctx` and hands `ctx.report_progress` to the tools/ function.
"""

from typing import Annotated, Literal

from mcp.server import MCPServer
from mcp.server.mcpserver import Context, Image
from mcp.types import CallToolResult, TextContent
from pydantic import Field

from autoresearch_mcp.sandbox.engine import MAX_DESCRIPTION_CHARS
from autoresearch_mcp.server.dashboard import app_link_meta
from autoresearch_mcp.server.wiring import ADDS, DECIDES, READ_ONLY, WRITES, answer, lab_of, refusals_as_tool_errors
from autoresearch_mcp.tools import experiments, gpu, progress_plot
from autoresearch_mcp.tools.experiments import MAX_WAIT_SECONDS
from autoresearch_mcp.tools.leaderboard import ExperimentList

RunId = Annotated[str, Field(description="a run id such as 'r0003'")]
Note = Annotated[str | None, Field(max_length=2000, description="why: one line for the record")]

# Hosts that render MCP Apps show the results of the tools registered with this in the live
# dashboard (list_experiments, training_status, plot_progress); other hosts show their text.
IN_DASHBOARD = app_link_meta()


def register(mcp: MCPServer) -> None:
    """Add the launch / watch / measure / decide tools, gpu_status and plot_progress."""

    @mcp.tool(annotations=ADDS)
    @refusals_as_tool_errors
    def launch_training(
        ctx: Context,
        description: Annotated[
            str,
            Field(
                min_length=1,
                max_length=MAX_DESCRIPTION_CHARS,
                description="the one idea this experiment tests, e.g. 'raise matrix LR 0.04 -> 0.06'",
            ),
        ],
        budget_seconds: Annotated[
            float | None,
            Field(gt=0, description="training budget; default: the workspace's (keep it fixed so runs compare)"),
        ] = None,
        seed: Annotated[int | None, Field(ge=0, description="random seed; default: the workspace's")] = None,
        device: Annotated[
            str | None, Field(description="slot to run on, e.g. 'cuda:1' or 'cpu'; default: the first free one")
        ] = None,
    ) -> Annotated[CallToolResult, experiments.LaunchResult]:
        """Snapshot the editable files as a git commit and queue a fixed-budget training run of it.

        Returns at once with the run id; edits made after this call do not affect the run.
        Follow it with training_status(run_id, wait_seconds=...)."""
        engine = lab_of(ctx).engine
        return answer(experiments.launch_training(engine, description, budget_seconds, seed, device))

    @mcp.tool(annotations=READ_ONLY, meta=IN_DASHBOARD)
    @refusals_as_tool_errors
    async def training_status(
        ctx: Context,
        run_id: Annotated[
            str | None, Field(description="a run id such as 'r0003'; default: every queued or running run")
        ] = None,
        wait_seconds: Annotated[
            float,
            Field(
                ge=0,
                le=MAX_WAIT_SECONDS,
                description=(
                    f"wait up to this long for a status or phase change (long-poll); 0 = answer now. At most "
                    f"{MAX_WAIT_SECONDS} s, so the call answers before clients time out (60 s); to wait longer, call again"
                ),
            ),
        ] = 0,
    ) -> Annotated[CallToolResult, experiments.TrainingStatus]:
        """Status, phase, progress, elapsed time and ETA of one run or of all active runs.

        With wait_seconds, returns as soon as a status or phase changes (or the time is up),
        reporting progress while it waits."""
        engine = lab_of(ctx).engine
        return answer(await experiments.training_status(engine, run_id, wait_seconds, progress=ctx.report_progress))

    @mcp.tool(annotations=READ_ONLY)
    @refusals_as_tool_errors
    def read_metrics(
        ctx: Context,
        run_id: RunId,
        last_n: Annotated[
            int, Field(ge=1, le=1000, description="at most this many history points, evenly spaced")
        ] = 20,
    ) -> Annotated[CallToolResult, experiments.MetricsReport]:
        """The trusted end-of-run summary (val_bpb, lower is better), the verdict of the run's
        experiment against the best kept run (better, within noise, worse, not comparable, unknown),
        and the training-step history."""
        return answer(experiments.read_metrics(lab_of(ctx).engine, run_id, last_n))

    @mcp.tool(annotations=READ_ONLY)
    @refusals_as_tool_errors
    def read_log(
        ctx: Context,
        run_id: RunId,
        tail: Annotated[int, Field(ge=1, le=5000, description="how many lines from the end")] = 50,
    ) -> Annotated[CallToolResult, experiments.LogReport]:
        """The last lines of a run's output (stdout and stderr), and the Python traceback if it crashed."""
        return answer(experiments.read_log(lab_of(ctx).engine, run_id, tail))

    @mcp.tool(annotations=WRITES)
    @refusals_as_tool_errors
    def stop_training(ctx: Context, run_id: RunId) -> Annotated[CallToolResult, experiments.RunStatus]:
        """Stop a queued or running run: its whole process group is killed and its device freed."""
        return answer(experiments.stop_training(lab_of(ctx).engine, run_id))

    @mcp.tool(annotations=DECIDES)
    @refusals_as_tool_errors
    def keep_experiment(
        ctx: Context,
        run_id: Annotated[str, Field(description="a succeeded run's id (a repeat's id keeps its experiment)")],
        note: Annotated[Note, Field(description="why it is kept")] = None,
        force: Annotated[
            bool, Field(description="keep it even though its verdict is not `better`; the record shows it was forced")
        ] = False,
    ) -> Annotated[CallToolResult, experiments.DecisionResult]:
        """Keep a succeeded experiment: the `best` branch moves to its commit, and later launches build on it.

        Refused unless its verdict is `better` (it beats the best kept run by more than the noise
        threshold), except for the first keep, the baseline, which also starts the noise-floor
        measurement. The refusal gives the numbers; repeat_experiment firms up a close call."""
        return answer(experiments.keep_experiment(lab_of(ctx).engine, run_id, note, force))

    @mcp.tool(annotations=DECIDES)
    @refusals_as_tool_errors
    def discard_experiment(
        ctx: Context,
        run_id: Annotated[str, Field(description="a finished run's id (a repeat's id discards its experiment)")],
        note: Annotated[Note, Field(description="why it is discarded")] = None,
    ) -> Annotated[CallToolResult, experiments.DecisionResult]:
        """Discard a finished experiment (succeeded, crashed, killed, ...); `best` stays where it is."""
        return answer(experiments.discard_experiment(lab_of(ctx).engine, run_id, note))

    @mcp.tool(annotations=READ_ONLY, meta=IN_DASHBOARD)
    @refusals_as_tool_errors
    def list_experiments(
        ctx: Context,
        limit: Annotated[int, Field(ge=1, le=1000, description="at most this many rows in each list")] = 20,
        sort: Annotated[
            Literal["launch", "val_bpb"],
            Field(description="'launch': newest first; 'val_bpb': best first, unmeasured last"),
        ] = "launch",
    ) -> Annotated[CallToolResult, ExperimentList]:
        """The leaderboard: one row per experiment (its runs averaged), with its verdict and deltas.

        Only experiments with the best's profile, budget, data and scale are ranked and given deltas
        against it; the others are listed apart, each saying why."""
        return answer(experiments.list_experiments(lab_of(ctx).engine, limit, sort))

    @mcp.tool(annotations=READ_ONLY)
    @refusals_as_tool_errors
    def compare_experiments(
        ctx: Context,
        run_a: Annotated[str, Field(description="the reference run, e.g. the baseline")],
        run_b: Annotated[str, Field(description="the run to compare with it")],
    ) -> Annotated[CallToolResult, experiments.Comparison]:
        """The code diff from run_a to run_b and the change in each end-of-run metric (b minus a)."""
        return answer(experiments.compare_experiments(lab_of(ctx).engine, run_a, run_b))

    @mcp.tool(annotations=READ_ONLY)
    @refusals_as_tool_errors
    def gpu_status(ctx: Context) -> Annotated[CallToolResult, gpu.MachineStatus]:
        """Per-GPU utilization, memory, temperature, power and processes (with the experiment each
        belongs to), plus CPU, RAM and disk. On a machine without NVIDIA GPUs, says so and why. Where
        runs go to a Ray cluster, also its nodes, its GPUs and the run that holds each."""
        return answer(gpu.gpu_status(lab_of(ctx).engine))

    @mcp.tool(annotations=READ_ONLY, meta=IN_DASHBOARD)
    @refusals_as_tool_errors
    def plot_progress(ctx: Context) -> CallToolResult:
        """A PNG chart of val_bpb per experiment in launch order: kept runs and the running best as a
        step line with the noise band around it, discarded runs as faint dots, crashes on the x axis,
        and a line saying what it shows. Also saved as .autoresearch/progress.png."""
        chart = progress_plot.plot_progress(lab_of(ctx).engine)
        image = Image(data=chart.png, format="png").to_image_content()
        return CallToolResult(content=[image, TextContent(type="text", text=chart.text())])
