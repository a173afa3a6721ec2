"""The research dashboard: a live, read-only web page, and the same view as an MCP App.

Where it is served:
- by the HTTP transport, on its own port, at /dashboard (`with_dashboard`);
- by `autoresearch-mcp dashboard` for stdio users (`serve_dashboard`): a separate process that
  reads the workspace a stdio server is running;
- inside MCP hosts that render apps, as the `ui://` resource APP_URI, which fetches its data
  through the app-only tool `dashboard_data`.

Read-only by construction: the data comes from `tools.dashboard` (the run store opened
read-only, run files read as data), the page only GETs, and nothing here starts a scheduler
or writes a file. Access follows the MCP endpoint's rule: loopback by default, the same bearer
token (a link carrying `?token=` once sets an HttpOnly, SameSite=Strict cookie in its place),
Host and Origin checked against the bound address.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import sys
from functools import cache, lru_cache
from pathlib import Path
from typing import Annotated, Any

import anyio.to_thread
from mcp.server import MCPServer
from mcp.server.transport_security import TransportSecurityMiddleware
from mcp.types import CallToolResult
from pydantic import Field
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from autoresearch_mcp.nanochat.errors import UserError
from autoresearch_mcp.sandbox.workspace import STATE_DIR
from autoresearch_mcp.server.http import TOKEN_ENV, TOKEN_FILE, HttpEndpoint, open_endpoint, run_asgi
from autoresearch_mcp.server.wiring import READ_ONLY, answer, refusals_as_tool_errors
from autoresearch_mcp.tools.dashboard import DashboardSnapshot, WorkspaceReader, dashboard_data

log = logging.getLogger(__name__)

DASHBOARD_PATH = "/dashboard"
APP_URI = "ui://autoresearch/dashboard"
APP_MIME_TYPE = "text/html;profile=mcp-app"  # MCP Apps (SEP-1865): an HTML view a host renders in a sandboxed iframe
STATIC_DIR = Path(__file__).resolve().parent / "static"
PAGE_FILE = "dashboard.html"
STATIC_TYPES = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
    "uPlot.iife.min.js": "text/javascript; charset=utf-8",
    "uPlot.min.css": "text/css; charset=utf-8",
}
COOKIE_PREFIX = "autoresearch_dashboard_"  # + the port: cookies are per host, not per port
SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        b"base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]


# ---- the web page ------------------------------------------------------------------------


def dashboard_site(reader: WorkspaceReader, endpoint: HttpEndpoint) -> Starlette:
    """The dashboard at DASHBOARD_PATH (and `/` sending a browser there), behind its guard."""
    routes = [
        Route("/", _page, methods=["GET"]),
        Route("/static/{name}", _static, methods=["GET"]),
        Route("/api/snapshot", _snapshot_endpoint(reader), methods=["GET"]),
    ]
    guarded = DashboardGuard(Starlette(routes=routes), endpoint)
    return Starlette(
        routes=[
            Mount(DASHBOARD_PATH, app=guarded),
            Route("/", lambda _request: RedirectResponse(DASHBOARD_PATH + "/"), methods=["GET"]),
        ]
    )


def with_dashboard(mcp_app: ASGIApp, workspace_root: Path, endpoint: HttpEndpoint) -> ASGIApp:
    """`mcp_app` with the workspace's dashboard answering under DASHBOARD_PATH on the same port."""
    site = dashboard_site(WorkspaceReader(workspace_root), endpoint)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and (path == DASHBOARD_PATH or path.startswith(DASHBOARD_PATH + "/")):
            await site(scope, receive, send)
        else:  # the MCP endpoint, and the lifespan events its session manager needs
            await mcp_app(scope, receive, send)

    return app


def serve_dashboard(workspace_root: Path, port: int) -> None:
    """`autoresearch-mcp dashboard`: serve a workspace's dashboard on loopback until interrupted."""
    reader = WorkspaceReader(workspace_root)
    # The token an HTTP server of this workspace keeps, so one link opens both; none is written here.
    kept = workspace_root / STATE_DIR / TOKEN_FILE
    endpoint = open_endpoint("127.0.0.1", port, token_file=kept if kept.is_file() else None)
    announce(endpoint)
    run_asgi(dashboard_site(reader, endpoint), endpoint)


def announce(endpoint: HttpEndpoint) -> None:
    """Print the dashboard's link on stderr (never to a log file: it can carry the token)."""
    token = endpoint.token if endpoint.token_generated else f"<the token in ${TOKEN_ENV}>"
    link = f"{endpoint.base_url}{DASHBOARD_PATH}/?token={token}"
    print(f"autoresearch-mcp: dashboard at {link}", file=sys.stderr, flush=True)


class DashboardGuard:
    """GET only, Host and Origin of the bound address only, and the bearer token or its cookie."""

    def __init__(self, app: ASGIApp, endpoint: HttpEndpoint):
        self.app = app
        self._token = endpoint.token.encode("utf-8")
        self._origin_checks = TransportSecurityMiddleware(endpoint.security)
        self._cookie = COOKIE_PREFIX + str(endpoint.port)
        self._session = hmac.new(self._token, b"autoresearch-mcp dashboard session", hashlib.sha256).hexdigest()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + SECURITY_HEADERS
            await send(message)

        response = await self._refusal(Request(scope))
        if response is not None:
            await response(scope, receive, send_with_headers)
        else:
            await self.app(scope, receive, send_with_headers)

    async def _refusal(self, request: Request) -> Response | None:
        refused = await self._origin_checks.validate_request(request)  # 421 foreign Host, 403 foreign Origin
        if refused is not None:
            return refused
        if request.method not in ("GET", "HEAD"):
            return PlainTextResponse("the dashboard is read-only", status_code=405, headers={"Allow": "GET, HEAD"})
        presented = request.query_params.get("token")
        if presented is not None and self._matches(presented):
            return self._sign_in(request)
        if self._authorized(request):
            return None
        log.warning("refused a dashboard request without a valid token or cookie")
        return PlainTextResponse(
            "not signed in: open the dashboard link the server printed (it carries ?token=...), "
            "or send `Authorization: Bearer <token>`",
            status_code=401,
            headers={"WWW-Authenticate": 'Bearer realm="autoresearch-mcp"'},
        )

    def _authorized(self, request: Request) -> bool:
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and self._matches(credentials.strip()):
            return True
        return hmac.compare_digest(request.cookies.get(self._cookie, "").encode("utf-8"), self._session.encode("utf-8"))

    def _matches(self, presented: str) -> bool:
        return hmac.compare_digest(presented.encode("utf-8"), self._token)

    def _sign_in(self, request: Request) -> Response:
        """Trade the token in the link for a cookie, and take it out of the address bar."""
        remaining = request.url.remove_query_params("token")
        target = remaining.path + (f"?{remaining.query}" if remaining.query else "")
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(self._cookie, self._session, path=DASHBOARD_PATH, httponly=True, samesite="strict")
        return response


async def _page(_request: Request) -> Response:
    return Response(_static_text(PAGE_FILE), media_type="text/html")


async def _static(request: Request) -> Response:
    name = request.path_params["name"]
    if name not in STATIC_TYPES:  # a fixed list: no path from the request ever reaches the file system
        return PlainTextResponse("not found", status_code=404)
    return Response(_static_text(name), media_type=STATIC_TYPES[name])


def _snapshot_endpoint(reader: WorkspaceReader):
    async def snapshot(request: Request) -> Response:
        run_id = request.query_params.get("run") or None
        try:
            data = await anyio.to_thread.run_sync(dashboard_data, reader, run_id)
        except UserError as error:
            return JSONResponse({"error": str(error)}, status_code=404)
        return Response(data.model_dump_json(), media_type="application/json")

    return snapshot


@cache
def _static_text(name: str) -> str:
    return (STATIC_DIR / name).read_text(encoding="utf-8")


class _QuietPolls(logging.Filter):
    """Leave the page's polls (one every second or two per open page) out of the access log."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        return not (len(args) > 2 and str(args[2]).startswith(DASHBOARD_PATH + "/api/"))


logging.getLogger("uvicorn.access").addFilter(_QuietPolls())


# ---- the MCP App -------------------------------------------------------------------------


def app_link_meta() -> dict[str, Any]:
    """The `_meta` that makes a tool's results open in the dashboard view, in hosts that render MCP Apps."""
    return {"ui": {"resourceUri": APP_URI}}


def register_app(mcp: MCPServer, reader: WorkspaceReader) -> None:
    """The dashboard as a `ui://` resource, and the app-only tool it reads its data through."""

    @mcp.resource(
        APP_URI,
        name="dashboard",
        title="Research dashboard",
        mime_type=APP_MIME_TYPE,
        meta={"ui": {"prefersBorder": False}},
    )
    def dashboard_view() -> str:
        """Live view of the research: leaderboard, progress chart, loss curves, each run's diff and log,
        device slots. Read-only; an MCP App for hosts that render them."""
        return app_html()

    # Hosts hide a tool whose visibility is ["app"] from the model: only the view calls it. It reads
    # the workspace as the HTTP dashboard does (through `reader`), not through the server's lab.
    @mcp.tool(
        name="dashboard_data",
        annotations=READ_ONLY,
        meta={"ui": {"resourceUri": APP_URI, "visibility": ["app"]}},
    )
    @refusals_as_tool_errors
    def app_data(
        run_id: Annotated[
            str | None,
            Field(description="the run to detail (diff and log); default: the newest running run, else the newest"),
        ] = None,
    ) -> Annotated[CallToolResult, DashboardSnapshot]:
        """Everything the research dashboard shows, in one read: leaderboard, progress, live loss curves,
        device slots and one run's diff and log. Read-only."""
        return answer(dashboard_data(reader, run_id))


@lru_cache(maxsize=1)
def app_html() -> str:
    """The page as one self-contained document (a host's sandbox loads nothing from elsewhere)."""
    html = _static_text(PAGE_FILE).replace('data-transport="http"', 'data-transport="mcp-app"')
    for name, media_type in STATIC_TYPES.items():
        if media_type.startswith("text/css"):
            html = html.replace(
                f'<link rel="stylesheet" href="static/{name}">', f"<style>\n{_static_text(name)}\n</style>"
            )
        else:
            html = html.replace(f'<script src="static/{name}"></script>', f"<script>\n{_static_text(name)}\n</script>")
    return html
