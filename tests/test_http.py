"""`autoresearch-mcp serve --transport http` as a real subprocess: token, Host/Origin checks, bind rules,
OAuth discovery answered 404, a token kept across restarts, idle sessions ended."""

from __future__ import annotations

import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from autoresearch_mcp.tests.cli_process import clean_env, run_cli, start_http_server, stop_process
from autoresearch_mcp.tools.setup import init_workspace

CHOSEN_TOKEN = "a-token-the-user-chose-0123456789"
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "test", "version": "0"}},
}
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


@dataclass
class RunningServer:
    url: str
    token: str
    stderr: Path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """One server for the module, with a token generated at start."""
    root = tmp_path_factory.mktemp("http")
    workspace = init_workspace(root / "ws").root
    process, url, token = start_http_server(workspace, root / "stderr.txt", clean_env())
    assert token is not None, "a generated token must be printed on stderr"
    try:
        yield RunningServer(url, token, root / "stderr.txt")
    finally:
        stop_process(process)


def post(url: str, headers: dict[str, str], message: dict | None = None) -> httpx2.Response:
    return httpx2.post(url, json=message or INITIALIZE, headers={**MCP_HEADERS, **headers}, timeout=30)


@pytest.mark.timeout(120)
def test_mcp_session_with_the_token(server: RunningServer) -> None:
    async def session() -> set[str]:
        http = create_mcp_http_client(headers={"Authorization": f"Bearer {server.token}"})
        async with http, Client(streamable_http_client(server.url, http_client=http)) as client:
            listed = {tool.name for tool in (await client.list_tools()).tools}
            result = await client.call_tool("list_files", {})
            assert not result.is_error, result.content
            return listed

    assert {"read_file", "list_files"} <= anyio.run(session)


@pytest.mark.parametrize(
    ("headers", "challenge"),
    [
        ({}, 'Bearer realm="autoresearch-mcp"'),
        ({"Authorization": "Bearer not-the-token"}, 'Bearer realm="autoresearch-mcp", error="invalid_token"'),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, 'Bearer realm="autoresearch-mcp"'),
        ({"Authorization": "Bearer"}, 'Bearer realm="autoresearch-mcp", error="invalid_token"'),
    ],
    ids=["missing", "wrong", "basic-auth", "empty"],
)
def test_requests_without_the_token_get_401(server: RunningServer, headers: dict[str, str], challenge: str) -> None:
    response = post(server.url, headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == challenge
    assert "mcp-session-id" not in response.headers


def test_the_401_says_in_plain_text_how_to_send_the_token(server: RunningServer) -> None:
    response = post(server.url, {})
    assert response.status_code == 401
    assert response.headers["content-type"].startswith("text/plain")
    assert response.text.startswith("401 Unauthorized: no bearer token. ")
    assert "`Authorization: Bearer <token>`" in response.text and ".autoresearch/http_token" in response.text


def test_every_path_needs_the_token(server: RunningServer) -> None:
    assert httpx2.get(server.url.replace("/mcp", "/"), timeout=30).status_code == 401
    assert httpx2.get(server.url.replace("/mcp", "/.well-known/other"), timeout=30).status_code == 401


@pytest.mark.parametrize(
    "path",
    [
        "/.well-known/oauth-protected-resource",
        "/.well-known/oauth-protected-resource/mcp",
        "/.well-known/oauth-authorization-server",
        "/.well-known/oauth-authorization-server/mcp",
        "/.well-known/openid-configuration",
        "/mcp/.well-known/openid-configuration",
        "/register",
    ],
)
def test_oauth_discovery_is_not_found_so_clients_do_not_try_oauth(server: RunningServer, path: str) -> None:
    request = httpx2.post if path == "/register" else httpx2.get  # dynamic client registration is a POST
    response = request(server.url.replace("/mcp", path), timeout=30)
    assert response.status_code == 404
    assert "does not use OAuth" in response.text and "Authorization: Bearer <token>" in response.text


def test_the_dashboard_is_served_on_the_same_port_behind_the_same_token(server: RunningServer) -> None:
    dashboard = server.url.removesuffix("/mcp") + "/dashboard/"
    assert f"dashboard at {dashboard}?token={server.token}" in server.stderr.read_text()
    assert httpx2.get(dashboard + "api/snapshot", timeout=30).status_code == 401
    bearer = {"Authorization": f"Bearer {server.token}"}
    snapshot = httpx2.get(dashboard + "api/snapshot", headers=bearer, timeout=30)
    assert snapshot.status_code == 200 and snapshot.json()["total"] == 0
    foreign = httpx2.get(dashboard + "api/snapshot", headers={**bearer, "Origin": "http://evil.example"}, timeout=30)
    assert foreign.status_code == 403


def test_foreign_origin_is_refused_even_with_the_token(server: RunningServer) -> None:
    response = post(server.url, {"Authorization": f"Bearer {server.token}", "Origin": "http://evil.example"})
    assert response.status_code == 403


def test_foreign_host_header_is_refused_even_with_the_token(server: RunningServer) -> None:
    response = post(server.url, {"Authorization": f"Bearer {server.token}", "Host": "evil.example"})
    assert response.status_code == 421


def test_local_origin_with_the_token_is_served(server: RunningServer) -> None:
    origin = server.url.removesuffix("/mcp")
    response = post(server.url, {"Authorization": f"Bearer {server.token}", "Origin": origin})
    assert response.status_code == 200
    assert "mcp-session-id" in response.headers


def test_the_token_never_reaches_the_log_file(server: RunningServer) -> None:
    post(server.url, {"Authorization": "Bearer not-the-token"})
    server_log = next(server.stderr.parent.glob("ws/.autoresearch/server.log")).read_text()
    assert "rejected a request with a wrong bearer token" in server_log
    assert server.token not in server_log


@pytest.mark.timeout(120)
def test_a_token_from_the_environment_is_used_and_not_printed(tmp_path: Path) -> None:
    workspace = init_workspace(tmp_path / "ws").root
    stderr = tmp_path / "stderr.txt"
    process, url, printed = start_http_server(workspace, stderr, clean_env(AUTORESEARCH_MCP_TOKEN=CHOSEN_TOKEN))
    try:
        assert printed is None and CHOSEN_TOKEN not in stderr.read_text()
        assert post(url, {"Authorization": f"Bearer {CHOSEN_TOKEN}"}).status_code == 200
        assert post(url, {"Authorization": "Bearer something-else-entirely"}).status_code == 401
    finally:
        stop_process(process)
    assert not (workspace / ".autoresearch" / "http_token").exists()


@pytest.mark.timeout(180)
def test_a_generated_token_is_kept_owner_only_and_survives_a_restart(tmp_path: Path) -> None:
    workspace = init_workspace(tmp_path / "ws").root
    kept = workspace / ".autoresearch" / "http_token"
    process, _, first = start_http_server(workspace, tmp_path / "first.txt", clean_env())
    stop_process(process)
    assert first is not None and kept.read_text().strip() == first
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    assert f"kept in {kept}, readable only by you" in (tmp_path / "first.txt").read_text()

    process, url, second = start_http_server(workspace, tmp_path / "second.txt", clean_env())
    try:
        assert second == first
        assert post(url, {"Authorization": f"Bearer {first}"}).status_code == 200
    finally:
        stop_process(process)


@pytest.mark.parametrize(
    ("options", "env", "message"),
    [
        (["--host", "0.0.0.0"], {}, "not a loopback address"),
        (["--host", "0.0.0.0", "--allow-remote"], {}, "--allow-remote needs a token you chose"),
        (["--host", "0.0.0.0", "--allow-remote"], {"AUTORESEARCH_MCP_TOKEN": CHOSEN_TOKEN}, "--allowed-host"),
        (["--host", "127.0.0.1"], {"AUTORESEARCH_MCP_TOKEN": "short"}, "at least 16"),
    ],
    ids=["remote-without-flag", "remote-without-token", "wildcard-without-allowed-host", "short-token"],
)
def test_unsafe_binds_are_refused_before_anything_starts(
    tmp_path: Path, options: list[str], env: dict[str, str], message: str
) -> None:
    workspace = tmp_path / "ws"
    result = run_cli(
        "serve",
        "--transport",
        "http",
        "--port",
        "0",
        "--workspace",
        str(workspace),
        "--create",
        *options,
        env=clean_env(**env),
    )
    assert result.returncode == 2
    assert message in result.stderr
    assert not workspace.exists()


# ---- idle sessions ----------------------------------------------------------------------------

IDLE_TIMEOUT_S = 2
PING = {"jsonrpc": "2.0", "id": 2, "method": "ping"}


def open_session(url: str, token: str) -> dict[str, str]:
    """Initialize a session with raw requests; the headers that address it."""
    response = post(url, {"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    headers = {
        "Authorization": f"Bearer {token}",
        "mcp-session-id": response.headers["mcp-session-id"],
        "mcp-protocol-version": INITIALIZE["params"]["protocolVersion"],
    }
    initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    assert post(url, headers, initialized).status_code == 202
    return headers


@pytest.mark.timeout(180)
def test_an_idle_session_is_ended_and_an_active_one_kept(tmp_path: Path) -> None:
    workspace = init_workspace(tmp_path / "ws").root
    process, url, token = start_http_server(
        workspace, tmp_path / "stderr.txt", clean_env(), "--session-idle-timeout", str(IDLE_TIMEOUT_S)
    )
    assert token is not None
    try:
        idle, active = open_session(url, token), open_session(url, token)
        # The active session holds its event stream open, as MCP clients do while connected:
        # that keeps it alive however long the wait (a loaded machine only makes it longer).
        stream_headers = {**active, "Accept": "text/event-stream"}
        with httpx2.stream("GET", url, headers=stream_headers, timeout=30) as stream:
            assert stream.status_code == 200
            time.sleep(4 * IDLE_TIMEOUT_S)
            assert post(url, idle, PING).status_code == 404
            assert post(url, active, PING).status_code == 200
    finally:
        stop_process(process)
