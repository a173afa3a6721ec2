"""Streamable HTTP transport: loopback by default, a bearer token on every request.

Two independent guards sit in front of the SDK's endpoint: our bearer check (any caller
without the token gets 401) and the SDK's DNS-rebinding check (a Host or Origin header
naming anything but the bound address gets 421/403), so a web page in the user's browser
can reach neither the tools nor the token.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import secrets
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mcp.server import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from autoresearch_mcp.nanochat.errors import UserError

log = logging.getLogger(__name__)

TOKEN_ENV = "AUTORESEARCH_MCP_TOKEN"
MIN_TOKEN_CHARS = 16
MCP_PATH = "/mcp"
REALM = "autoresearch-mcp"
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")


@dataclass(frozen=True)
class HttpEndpoint:
    """A bound listening socket and the credentials and checks that guard it."""

    listener: socket.socket
    host: str
    port: int
    token: str
    token_generated: bool
    security: TransportSecuritySettings

    @property
    def base_url(self) -> str:
        return f"http://{_url_host(self.host)}:{self.port}"

    @property
    def url(self) -> str:
        return self.base_url + MCP_PATH


def open_endpoint(
    host: str, port: int, *, allow_remote: bool = False, allowed_hosts: Sequence[str] = ()
) -> HttpEndpoint:
    """Check the options and bind, before anything else starts (port 0 picks a free port)."""
    remote = not _is_loopback(host)
    if remote and not allow_remote:
        raise UserError(
            f"{host} is not a loopback address: anyone who can reach it could drive this server. "
            "Bind 127.0.0.1 (the default), or pass --allow-remote together with a token in "
            f"{TOKEN_ENV}, behind TLS you trust"
        )
    token, generated = _token(must_be_chosen=remote)
    if _is_unspecified(host) and not allowed_hosts:
        raise UserError(
            f"--host {host} listens on every interface, so the Host header clients send cannot be checked "
            "against it; name each address clients will use with --allowed-host NAME[:PORT]"
        )
    listener = _bind(host, port)
    bound_port = listener.getsockname()[1]
    security = transport_security(host, bound_port, allowed_hosts)
    return HttpEndpoint(listener, host, bound_port, token, generated, security)


def serve_http(mcp: MCPServer, endpoint: HttpEndpoint, workspace_root: Path) -> None:
    """Serve `mcp` on `endpoint` at /mcp, and the workspace's dashboard at /dashboard, until interrupted."""
    from autoresearch_mcp.server import dashboard  # it builds on this module

    app = BearerAuth(
        mcp.streamable_http_app(
            streamable_http_path=MCP_PATH, transport_security=endpoint.security, host=endpoint.host
        ),
        endpoint.token,
    )
    app = dashboard.with_dashboard(app, workspace_root, endpoint)
    # Straight to stderr, never to the log file: the token is a secret.
    print(f"autoresearch-mcp: serving MCP at {endpoint.url}", file=sys.stderr, flush=True)
    if endpoint.token_generated:
        print(
            f"autoresearch-mcp: bearer token: {endpoint.token}  (set {TOKEN_ENV} to choose your own)",
            file=sys.stderr,
            flush=True,
        )
    else:
        print(f"autoresearch-mcp: bearer token: from {TOKEN_ENV}", file=sys.stderr, flush=True)
    dashboard.announce(endpoint)
    log.info("serving streamable HTTP at %s", endpoint.url)
    run_asgi(app, endpoint)


def run_asgi(app: ASGIApp, endpoint: HttpEndpoint) -> None:
    """Run `app` on the endpoint's socket until interrupted."""
    import uvicorn

    # log_config=None: uvicorn's records go through our handlers (stderr + server.log).
    config = uvicorn.Config(app, log_config=None, lifespan="on", timeout_graceful_shutdown=3)
    uvicorn.Server(config).run(sockets=[endpoint.listener])


def transport_security(host: str, port: int, extra_hosts: Sequence[str] = ()) -> TransportSecuritySettings:
    """The SDK's Host/Origin allow-lists for exactly the address we are bound to."""
    names = list(LOOPBACK_NAMES)
    if not _is_unspecified(host):
        names.append(_url_host(host))
    hosts = [_with_port(name, port) for name in [*names, *extra_hosts]]
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=sorted(set(hosts)),
        allowed_origins=sorted({f"http://{h}" for h in hosts} | {f"https://{h}" for h in hosts}),
    )


class BearerAuth:
    """ASGI middleware: every HTTP request must carry `Authorization: Bearer <token>`."""

    def __init__(self, app: ASGIApp, token: str):
        self.app = app
        self._token = token.encode("utf-8")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan events carry no credentials
            await self.app(scope, receive, send)
            return
        header = Headers(scope=scope).get("authorization")
        scheme, _, presented = (header or "").partition(" ")
        if header is None or scheme.lower() != "bearer":
            await _unauthorized("missing bearer token: send `Authorization: Bearer <token>`")(scope, receive, send)
            return
        if not hmac.compare_digest(presented.strip().encode("utf-8"), self._token):
            client = scope.get("client")
            log.warning("rejected a request with a wrong bearer token from %s", client[0] if client else "?")
            response = _unauthorized("wrong bearer token", error="invalid_token")
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _unauthorized(description: str, *, error: str | None = None) -> JSONResponse:
    challenge = f'Bearer realm="{REALM}"' + (f', error="{error}"' if error else "")
    body = {"error": error or "unauthorized", "error_description": description}
    return JSONResponse(body, status_code=401, headers={"WWW-Authenticate": challenge})


def _token(*, must_be_chosen: bool) -> tuple[str, bool]:
    """The token to require, and whether we generated it."""
    chosen = os.environ.get(TOKEN_ENV, "").strip()
    if must_be_chosen and not chosen:
        raise UserError(
            f"--allow-remote needs a token you chose: set {TOKEN_ENV} (e.g. from `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
        )
    if chosen and len(chosen) < MIN_TOKEN_CHARS:
        raise UserError(
            f"{TOKEN_ENV} is {len(chosen)} characters long; use at least {MIN_TOKEN_CHARS} random characters"
        )
    if chosen:
        return chosen, False
    return secrets.token_urlsafe(32), True


def _bind(host: str, port: int) -> socket.socket:
    family, kind, proto, _, address = _resolve(host, host, port, flags=socket.AI_PASSIVE)[0]
    listener = socket.socket(family, kind, proto)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(address)
    except OSError as exc:
        listener.close()
        raise UserError(
            f"cannot listen on {host}:{port}: {exc.strerror}; pick another --port (0 picks a free one)"
        ) from None
    listener.set_inheritable(False)
    return listener


def _addresses(host: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    infos = _resolve(host, host.strip("[]"), None)
    return [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]


def _resolve(option: str, host: str, port: int | None, flags: int = 0) -> list[tuple]:
    """getaddrinfo for `host` (as given in --host `option`), with a refusal a person can act on."""
    try:
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=flags)
    except socket.gaierror as exc:
        raise UserError(
            f"cannot resolve --host {option}: {exc.strerror}; use an address such as 127.0.0.1 or a name this machine resolves"
        ) from None


def _is_loopback(host: str) -> bool:
    return all(address.is_loopback for address in _addresses(host))


def _is_unspecified(host: str) -> bool:
    return any(address.is_unspecified for address in _addresses(host))


def _with_port(name: str, port: int) -> str:
    """`name` as a Host header value: keep an explicit port, add ours otherwise."""
    if name.startswith("["):
        return name if "]:" in name else f"{name}:{port}"
    if name.count(":") > 1:  # a bare IPv6 address
        return f"[{name}]:{port}"
    return name if ":" in name else f"{name}:{port}"


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
