"""The research dashboard: its data, its guard, the page in a real browser, and the stdio-mode command.

One workspace for the module holds what a person comes back to: two kept runs, a discarded
one, a crash, an undecided one and a run still training (stand-in harness, through the real
ExperimentEngine, on two cpu slots). `autoresearch-mcp dashboard` serves it from a separate
process while the engine in this process runs it, as it would beside a stdio server.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx2
import pytest
from mcp import Client, StdioServerParameters

from autoresearch_mcp.nanochat.errors import UserError
from autoresearch_mcp.sandbox import research
from autoresearch_mcp.sandbox.config import WorkspaceConfig
from autoresearch_mcp.sandbox.engine import ExperimentEngine
from autoresearch_mcp.server.dashboard import APP_MIME_TYPE, APP_URI, COOKIE_PREFIX
from autoresearch_mcp.tests import stand_in_harness
from autoresearch_mcp.tests.cli_process import clean_env, cli_path, start_listening, stop_process
from autoresearch_mcp.tests.engine_helpers import finish, until
from autoresearch_mcp.tools.dashboard import WorkspaceReader, dashboard_data
from autoresearch_mcp.tools.experiments import keep_experiment
from autoresearch_mcp.tools.setup import init_workspace

TOKEN = "dashboard-test-token-0123456789"
START_TIMEOUT_S = 60
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium): no browser to test in"
)
CHROMIUM_ARGS = [
    "--no-sandbox",  # Chromium refuses to run as root with its own sandbox
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def train_script(val_bpb: float, *, steps: int = 12, release: Path | None = None, crash: bool = False) -> str:
    """A train.py for the stand-in harness: log `steps` training steps, optionally keep logging one
    every 0.2 s until `release` exists, then crash or report `val_bpb`."""
    lines = [
        "import json, os, time",
        "out = open(os.environ['STAND_IN_METRICS'], 'a')",
        "def log(step):",
        f"    loss = 3.0 * 0.85 ** step + {val_bpb}",
        "    out.write(json.dumps({'step': step, 'loss': loss, 'progress': min(step / 60, 1.0)}) + '\\n')",
        "    out.flush()",
        f"for step in range(1, {steps + 1}):",
        "    log(step)",
    ]
    if release is not None:
        lines += [f"step = {steps}", f"while not os.path.exists({str(release)!r}):", "    step += 1", "    log(step)"]
        lines += ["    time.sleep(0.2)"]
    if crash:
        lines.append("raise RuntimeError('out of memory (pretend)')")
    lines.append(f"open('val_bpb.txt', 'w').write('{val_bpb}')")
    return "\n".join(lines) + "\n"


@dataclass
class Lab:
    engine: ExperimentEngine
    root: Path
    runs: dict[str, str]  # role -> run id
    release: Path  # touch it to let the running run finish

    def launch(self, description: str, source: str) -> str:
        (self.root / "train.py").write_text(source, encoding="utf-8")
        return self.engine.launch(description, budget_seconds=60).id


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    base = tmp_path_factory.mktemp("dashboard")
    workspace = init_workspace(base / "ws", WorkspaceConfig(profile="cpu", devices="cpu:2"))
    engine = ExperimentEngine(workspace, command=stand_in_harness.command)
    engine.start()
    lab = Lab(engine, workspace.root, {}, base / "release-running")
    plan = [
        ("baseline", "baseline", train_script(1.50), "keep"),
        ("kept", "raise matrix LR 0.04 -> 0.06", train_script(1.45), "keep"),
        ("discarded", "swap GELU for ReLU^2", train_script(1.52), "discard"),
        ("crashed", "double the depth", train_script(1.40, crash=True), "discard"),
        ("undecided", "warmup 5% of the budget", train_script(1.46), None),
    ]
    for role, description, source, decision in plan:
        lab.runs[role] = lab.launch(description, source)
        finish(engine, lab.runs[role])
        if decision:  # no noise floor in this story: the second keep needs force
            engine.decide(lab.runs[role], decision, force=decision == "keep")
    lab.runs["running"] = lab.launch("longer context window", train_script(1.42, release=lab.release))
    until(lambda: len(WorkspaceReader(lab.root).records()) == 6)
    try:
        yield lab
    finally:
        lab.release.touch()
        for record in reversed(engine.store.list(["queued", "running"])):
            engine.stop(record.id)
        engine.shutdown()


# ---- the data ----------------------------------------------------------------------------


def test_the_snapshot_shows_leaderboard_frontier_curves_slots_and_the_running_run(lab: Lab) -> None:
    reader = WorkspaceReader(lab.root)
    until(lambda: dashboard_data(reader).curves[-1].points, what="the running run's first steps")
    snapshot = dashboard_data(reader)
    rows = {row.run_id: row for row in snapshot.experiments}

    assert (snapshot.best_run_id, snapshot.best_val_bpb) == (lab.runs["kept"], 1.45)
    assert rows[lab.runs["crashed"]].status == "crashed" and rows[lab.runs["running"]].status == "running"
    assert rows[lab.runs["discarded"]].delta_vs_best == pytest.approx(0.07)
    frontier = {point.run_id: point.best_so_far for point in snapshot.progress}
    assert frontier[lab.runs["baseline"]] == 1.5 and frontier[lab.runs["discarded"]] == 1.45
    assert [p.failed for p in snapshot.progress if p.run_id == lab.runs["crashed"]] == [True]
    assert [(c.run_id, c.role) for c in snapshot.curves][:2] == [
        (lab.runs["kept"], "best"),
        (lab.runs["running"], "running"),
    ]
    assert len(snapshot.curves[0].points) == 12
    busy = [slot for slot in snapshot.slots if slot.run is not None]
    assert [slot.slot for slot in snapshot.slots] == ["cpu:0", "cpu:1"]
    assert lab.runs["running"] in [slot.run.run_id for slot in busy]
    # With nothing chosen, the detail follows the newest running run: its change and its output.
    assert snapshot.detail.run_id == lab.runs["running"]
    assert snapshot.detail.parent_run_id == lab.runs["undecided"]
    assert "+    loss = 3.0 * 0.85 ** step + 1.42" in snapshot.detail.diff
    assert "stand-in environment" in snapshot.detail.log_tail
    assert "running" in snapshot.text() and "best val_bpb 1.4500" in snapshot.text()


def test_a_crashed_run_shows_its_traceback_and_an_unknown_run_is_refused(lab: Lab) -> None:
    reader = WorkspaceReader(lab.root)
    detail = dashboard_data(reader, lab.runs["crashed"]).detail

    assert detail.status == "crashed" and "RuntimeError: out of memory (pretend)" in detail.traceback
    assert detail.error.startswith("exit 4")
    with pytest.raises(UserError, match="no run 'r9999'"):
        dashboard_data(reader, "r9999")
    with pytest.raises(UserError, match="not a run id"):
        reader.run_dir("../../etc")


def test_reading_never_writes_the_records(tmp_path: Path) -> None:
    workspace = init_workspace(tmp_path / "ws", WorkspaceConfig(profile="cpu", devices="cpu"))
    (workspace.root / "train.py").write_text(train_script(1.3), encoding="utf-8")
    with ExperimentEngine(workspace, command=stand_in_harness.command) as engine:
        finish(engine, engine.launch("baseline", budget_seconds=60).id)
    db = workspace.state_dir / "runs.db"
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    reader = WorkspaceReader(workspace.root)
    for _ in range(3):
        assert dashboard_data(reader).total == 1
    reader.close()
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before
    assert not (workspace.state_dir / "server.log").exists()


# ---- the dashboard command: a separate process reading the workspace ------------------------


@dataclass
class Served:
    url: str  # .../dashboard/
    process: subprocess.Popen[bytes]


def start_dashboard(root: Path, stderr: Path) -> Served:
    args = ["dashboard", "--workspace", str(root), "--port", "0"]
    process, text = start_listening(args, stderr, clean_env(AUTORESEARCH_MCP_TOKEN=TOKEN), START_TIMEOUT_S)
    return Served(re.search(r"dashboard at (\S+/dashboard/)", text).group(1), process)


@pytest.fixture(scope="module")
def served(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    served = start_dashboard(lab.root, tmp_path_factory.mktemp("served") / "stderr.txt")
    try:
        yield served
    finally:
        stop_process(served.process)


def test_without_the_token_nothing_is_served(served: Served) -> None:
    for path in ("", "api/snapshot", "static/dashboard.js"):
        response = httpx2.get(served.url + path)
        assert response.status_code == 401, path
        assert "open the dashboard link" in response.text
    wrong = httpx2.get(served.url + "api/snapshot", headers={"Authorization": "Bearer not-the-token-at-all-0000"})
    assert wrong.status_code == 401
    assert httpx2.get(served.url + "?token=not-the-token-at-all-0000").status_code == 401


def test_a_foreign_origin_or_host_is_refused_even_with_the_token(served: Served) -> None:
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    foreign = httpx2.get(served.url + "api/snapshot", headers={**bearer, "Origin": "http://evil.example"})
    assert foreign.status_code == 403
    rebound = httpx2.get(served.url + "api/snapshot", headers={**bearer, "Host": "evil.example"})
    assert rebound.status_code == 421
    own_origin = served.url.split("/dashboard")[0]
    assert httpx2.get(served.url + "api/snapshot", headers={**bearer, "Origin": own_origin}).status_code == 200


def test_the_link_trades_the_token_for_a_strict_httponly_cookie(served: Served, lab: Lab) -> None:
    with httpx2.Client() as client:
        signed_in = client.get(served.url + f"?token={TOKEN}")
        assert signed_in.status_code == 303 and signed_in.headers["location"] == "/dashboard/"
        cookie = signed_in.headers["set-cookie"]
        assert cookie.startswith(COOKIE_PREFIX) and "HttpOnly" in cookie and "SameSite=strict" in cookie
        assert TOKEN not in cookie  # the cookie is not the bearer token, so it cannot drive /mcp
        snapshot = client.get(served.url + "api/snapshot")
    assert snapshot.status_code == 200 and snapshot.headers["cache-control"] == "no-store"
    assert "script-src 'self'" in snapshot.headers["content-security-policy"]
    assert lab.runs["running"] in [row["run_id"] for row in snapshot.json()["experiments"]]


def test_nothing_on_the_dashboard_changes_anything(served: Served, lab: Lab) -> None:
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        assert httpx2.request(method, served.url + "api/snapshot", headers=bearer).status_code == 405, method
    assert httpx2.get(served.url + "static/..%2F..%2Fdashboard.py", headers=bearer).status_code == 404
    assert httpx2.get(served.url + "api/snapshot?run=r9999", headers=bearer).status_code == 404
    page = httpx2.get(served.url, headers=bearer).text
    assert "http://" not in page and "https://" not in page  # no CDN: everything comes from the package


# ---- the page, in a real browser ---------------------------------------------------------


@needs_chromium
def test_the_page_shows_the_research_and_updates_itself(served: Served, lab: Lab, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    release = tmp_path / "release-new"
    problems: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: problems.append(str(error)))
        page.goto(served.url + f"?token={TOKEN}")

        assert page.url == served.url, "the token leaves the address bar"
        expect(page.locator("#status")).to_contain_text("live")
        expect(page.locator("#best-value")).to_have_text("1.4500")
        expect(page.locator("#best-run")).to_contain_text(lab.runs["kept"])
        rows = page.locator("#leaderboard tbody tr")
        expect(rows).to_have_count(6)
        expect(row_cell(page, lab.runs["crashed"], "status")).to_have_text("crashed")
        expect(row_cell(page, lab.runs["kept"], "val_bpb")).to_have_text("1.4500")
        expect(row_cell(page, lab.runs["discarded"], "Δ best")).to_have_text("+0.0700")
        expect(page.locator("#progress-chart")).to_have_attribute("data-points", "4")
        assert drawn_pixels(page, "#progress-chart") > 50, "the progress chart draws its points"
        expect(page.locator(f'[data-slot] .run-id:text("{lab.runs["running"]}")')).to_be_visible()
        # The running run's loss curve grows as steps arrive, without a reload.
        before = int(page.locator("#loss-chart").get_attribute("data-points"))
        expect(page.locator("#loss-chart")).not_to_have_attribute("data-points", str(before), timeout=20_000)
        assert int(page.locator("#loss-chart").get_attribute("data-points")) > before
        # Clicking a row shows that experiment's change against its parent.
        page.locator(f'tr[data-run="{lab.runs["discarded"]}"]').click()
        expect(page.locator("#detail-title")).to_contain_text("swap GELU for ReLU^2")
        expect(page.locator("#diff")).to_contain_text("+    loss = 3.0 * 0.85 ** step + 1.52")
        page.locator(f'tr[data-run="{lab.runs["crashed"]}"]').click()
        expect(page.locator("#detail-error")).to_contain_text("RuntimeError: out of memory (pretend)")

        # A new experiment starts on the free slot and finishes while the page stays open.
        new_run = lab.launch("tie the embeddings", train_script(1.44, release=release))
        expect(page.locator(f'tr[data-run="{new_run}"] td').nth(1)).to_have_text("running", timeout=20_000)
        release.touch()
        finish(lab.engine, new_run)
        expect(row_cell(page, new_run, "status")).to_have_text("succeeded", timeout=20_000)
        expect(row_cell(page, new_run, "val_bpb")).to_have_text("1.4400")
        expect(page.locator("#progress-chart")).to_have_attribute("data-points", "5")

        page.locator(f'tr[data-run="{lab.runs["running"]}"]').click()
        expect(page.locator("#log")).to_contain_text("stand-in environment")
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
        browser.close()
    assert problems == [], "the page logged errors (a CSP violation, a script error)"


def row_cell(page, run_id: str, column: str):
    """The cell of `run_id`'s leaderboard row under the header `column`."""
    headers = page.locator("#leaderboard thead th").all_inner_texts()
    return page.locator(f'#leaderboard tr[data-run="{run_id}"] td').nth(headers.index(column))


def drawn_pixels(page, selector: str) -> int:
    """How many pixels of the chart's data canvas are not blank: what a person sees as points and lines."""
    return page.evaluate(
        """(selector) => {
            const canvas = document.querySelector(selector + ' canvas');
            const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
            let drawn = 0;
            for (let i = 3; i < data.length; i += 4) if (data[i] > 0) drawn++;
            return drawn;
        }""",
        selector,
    )


# ---- beside a stdio server -----------------------------------------------------------------


def test_the_dashboard_command_serves_a_workspace_a_stdio_server_is_running(tmp_path: Path) -> None:
    workspace = init_workspace(tmp_path / "ws", WorkspaceConfig(profile="cpu", devices="cpu"))
    (workspace.root / "train.py").write_text(train_script(1.3), encoding="utf-8")
    with ExperimentEngine(workspace, command=stand_in_harness.command) as engine:
        run_id = finish(engine, engine.launch("baseline", budget_seconds=60).id).id
    served = start_dashboard(workspace.root, tmp_path / "stderr.txt")
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    try:

        async def drive_the_stdio_server() -> None:
            server = StdioServerParameters(
                command=cli_path(), args=["serve", "--workspace", str(workspace.root)], env=clean_env()
            )
            async with Client(server) as client:
                tools = {tool.name: tool for tool in (await client.list_tools()).tools}
                assert tools["list_experiments"].meta == {"ui": {"resourceUri": APP_URI}}
                assert tools["dashboard_data"].meta["ui"]["visibility"] == ["app"]
                [view] = (await client.read_resource(APP_URI)).contents
                assert view.mime_type == APP_MIME_TYPE and 'data-transport="mcp-app"' in view.text
                assert "uPlot" in view.text and "src=" not in view.text  # one self-contained document
                app_data = await client.call_tool("dashboard_data", {})
                assert app_data.structured_content["experiments"][0]["run_id"] == run_id
                # A decision made through the stdio server shows on the dashboard, read from the store it holds open.
                await client.call_tool("keep_experiment", {"run_id": run_id})
                snapshot = await anyio.to_thread.run_sync(
                    lambda: httpx2.get(served.url + "api/snapshot", headers=bearer).json()
                )
                assert snapshot["experiments"][0]["decision"] == "keep"
                assert snapshot["best_run_id"] == run_id

        anyio.run(drive_the_stdio_server)
    finally:
        stop_process(served.process)


# ---- as an MCP App, in a host page ---------------------------------------------------------

# A minimal MCP Apps host: renders the view in an iframe, answers ui/initialize, and passes the
# view's tools/call to the real server (window.callTool, bound to an MCP client below).
APP_HOST_PAGE = """<!doctype html><html><body style="margin:0">
<iframe id="view" style="width:1200px;height:1700px;border:0"></iframe>
<script>
window.hostLog = [];
const view = document.getElementById("view");
window.addEventListener("message", async (event) => {
  if (event.source !== view.contentWindow) return;
  const message = event.data;
  window.hostLog.push(message.method || "response");
  const reply = (result) => view.contentWindow.postMessage({jsonrpc: "2.0", id: message.id, result: result}, "*");
  if (message.method === "ui/initialize") {
    reply({protocolVersion: "2026-01-26", hostCapabilities: {serverTools: {}}, hostInfo: {name: "test-host", version: "0"},
           hostContext: {theme: "dark", displayMode: "inline"}});
  } else if (message.method === "tools/call") {
    reply(JSON.parse(await window.callTool(JSON.stringify(message.params))));
  }
});
</script></body></html>"""


@needs_chromium
def test_the_mcp_app_view_renders_in_a_host_through_the_servers_tool(lab: Lab) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from mcp.server import MCPServer
    from playwright.sync_api import expect, sync_playwright

    from autoresearch_mcp.server import dashboard

    server = MCPServer("dashboard-app-test")
    dashboard.register_app(server, WorkspaceReader(lab.root))

    async def read_view() -> str:
        async with Client(server) as client:
            [content] = (await client.read_resource(APP_URI)).contents
            return content.text

    async def call(params: dict) -> str:
        async with Client(server) as client:
            result = await client.call_tool(params["name"], params.get("arguments") or {})
            return json.dumps(result.model_dump(mode="json", by_alias=True, exclude_none=True))

    calls: list[dict] = []

    def call_tool(params_json: str) -> str:
        calls.append(json.loads(params_json))
        with ThreadPoolExecutor(1) as pool:  # the MCP client needs an event loop of its own
            return pool.submit(anyio.run, call, calls[-1]).result()

    view_html = anyio.run(read_view)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1200, "height": 1000})
        page.expose_function("callTool", call_tool)
        page.set_content(APP_HOST_PAGE)
        page.evaluate("html => { document.getElementById('view').srcdoc = html; }", view_html)
        view = page.frame_locator("#view")

        expect(view.locator("#status")).to_contain_text("live", timeout=20_000)
        expect(view.locator("#best-value")).to_have_text("1.4500")
        expect(view.locator(f'#leaderboard tr[data-run="{lab.runs["crashed"]}"]')).to_contain_text("crashed")
        expect(view.locator("html")).to_have_attribute("data-theme", "dark")
        view.locator(f'tr[data-run="{lab.runs["discarded"]}"]').click()
        expect(view.locator("#detail-title")).to_contain_text("swap GELU for ReLU^2")
        log = page.evaluate("window.hostLog")
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "dashboard-app.png"), full_page=True)
        browser.close()
    assert log[:2] == ["ui/initialize", "ui/notifications/initialized"]
    assert "ui/notifications/size-changed" in log
    assert {c["name"] for c in calls} == {"dashboard_data"}, "the view reads through the app-only tool, nothing else"
    assert {"run_id": lab.runs["discarded"]} in [c.get("arguments") for c in calls]


@needs_chromium
def test_the_progress_chart_draws_the_noise_band_once_a_floor_is_measured(tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    workspace = init_workspace(tmp_path / "ws", WorkspaceConfig(profile="cpu", devices="cpu:2", noise_runs=3))
    # val_bpb moves a little with the seed, as a real run's does: the noise runs then measure a spread.
    seeded = train_script(1.50).replace(
        "write('1.5')", "write(str(1.50 + 0.002 * (int(os.environ['AUTORESEARCH_SEED']) % 3)))"
    )
    (workspace.root / "train.py").write_text(seeded, encoding="utf-8")
    with ExperimentEngine(workspace, command=stand_in_harness.command) as engine:
        baseline = engine.launch("baseline", budget_seconds=60).id
        finish(engine, baseline)
        keep_experiment(engine, baseline)  # the first keep measures the noise floor with three more seeds
        for record in engine.store.list(["queued", "running"]):
            finish(engine, record.id)
        (floor,) = engine.floors()
        (workspace.root / "train.py").write_text(train_script(1.5005), encoding="utf-8")
        finish(engine, engine.launch("an idea within the noise", budget_seconds=60).id)
    threshold = dashboard_data(WorkspaceReader(workspace.root)).noise_floor.threshold
    assert threshold == pytest.approx(2 * research.floor_std(floor), abs=1e-6) and threshold > 0  # the floor in force

    served = start_dashboard(workspace.root, tmp_path / "stderr.txt")
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(served.url + f"?token={TOKEN}")
            chart = page.locator("#progress-chart")
            expect(chart).to_have_attribute("data-band", f"{threshold:.6f}")
            expect(page.locator("#progress-chart .u-legend")).to_contain_text("noise band")
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "dashboard-noise-band.png"), full_page=True)
            browser.close()
    finally:
        stop_process(served.process)


def test_the_dashboard_opens_with_the_token_the_workspace_s_http_server_keeps(tmp_path: Path) -> None:
    workspace = init_workspace(tmp_path / "ws", WorkspaceConfig(profile="cpu"))
    kept = "kept-by-the-http-server-0123456789abcdef"
    (workspace.state_dir / "http_token").write_text(kept + "\n", encoding="utf-8")
    args = ["dashboard", "--workspace", str(workspace.root), "--port", "0"]
    process, text = start_listening(args, tmp_path / "stderr.txt", clean_env(), START_TIMEOUT_S)
    try:
        url = re.search(r"dashboard at (\S+/dashboard/)", text).group(1)
        assert f"?token={kept}" in text
        assert httpx2.get(url + "api/snapshot", headers={"Authorization": f"Bearer {kept}"}).status_code == 200
    finally:
        stop_process(process)
    assert (workspace.state_dir / "http_token").read_text(encoding="utf-8") == kept + "\n"
