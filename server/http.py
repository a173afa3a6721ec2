"""Streamable HTTP transport: loopback by default, a bearer token on every request.

Two independent guards sit in front of the SDK's endpoint: our bearer check (any caller
without the token gets 401) and the SDK's DNS-rebinding check (a Host or Origin header
naming anything but the bound address gets 421/403), so a web page in the user's browser
can reach neither the tools nor the token.

The token is not OAuth: the OAuth discovery documents answer 404, so that clients which
try OAuth after a 401 (the MCP Inspector does) give up and say a token is needed. A token
we generate is kept in the workspace's state (mode 0600), so clients configured with it
keep working across restarts.
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
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from autoresearch_mcp.nanochat.errors import UserError

log = logging.getLogger(__name__)

TOKEN_ENV = "AUTORESEARCH_MCP_TOKEN"
TOKEN_FILE = "http_token"  # in the workspace's state folder
MIN_TOKEN_CHARS = 16
MCP_PATH = "/mcp"
REALM = "autoresearch-mcp"
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
# Discovery documents of OAuth (RFC 9728, RFC 8414) and OpenID Connect, at the root or under a path,
# and the endpoints MCP clients fall back to when there are none.
OAUTH_DISCOVERY_DOCUMENTS = ("oauth-protected-resource", "oauth-authorization-server", "openid-configuration")
OAUTH_DEFAULT_ENDPOINTS = ("/authorize", "/token", "/register")


@dataclass(frozen=True)
class HttpEndpoint:
    """A bound listening socket and the credentials and checks that guard it."""

    listener: socket.socket
    host: str
    port: int
    token: str
    token_generated: bool  # not from the environment, so it may be printed
    security: TransportSecuritySettings
    token_file: Path | None = None  # where the generated token is kept across restarts

    @property
    def base_url(self) -> str:
        return f"http://{_url_host(self.host)}:{self.port}"

    @property
    def url(self) -> str:
        return self.base_url + MCP_PATH


def open_endpoint(
    host: str,
    port: int,
    *,
    allow_remote: bool = False,
    allowed_hosts: Sequence[str] = (),
    token_file: Path | None = None,
) -> HttpEndpoint:
    """Check the options and bind, before anything else starts (port 0 picks a free port).

    The token: $AUTORESEARCH_MCP_TOKEN if set, else the one kept in `token_file`, else a new one
    (serve_http keeps it there).
    """
    remote = not _is_loopback(host)
    if remote and not allow_remote:
        raise UserError(
            f"{host} is not a loopback address: anyone who can reach it could drive this server. "
            "Bind 127.0.0.1 (the default), or pass --allow-remote together with a token in "
            f"{TOKEN_ENV}, behind TLS you trust"
        )
    token, generated = _token(must_be_chosen=remote, token_file=token_file)
    if _is_unspecified(host) and not allowed_hosts:
        raise UserError(
            f"--host {host} listens on every interface, so the Host header clients send cannot be checked "
            "against it; name each address clients will use with --allowed-host NAME[:PORT]"
        )
    listener = _bind(host, port)
    bound_port = listener.getsockname()[1]
    security = transport_security(host, bound_port, allowed_hosts)
    return HttpEndpoint(listener, host, bound_port, token, generated, security, token_file if generated else None)


def serve_http(mcp: MCPServer, endpoint: HttpEndpoint, workspace_root: Path, *, session_idle_timeout: float) -> None:
    """Serve `mcp` on `endpoint` at /mcp, and the workspace's dashboard at /dashboard, until interrupted.

    A client session with no request in flight and no open stream for `session_idle_timeout`
    seconds is ended (the SDK's own idle reaper), so sessions of clients that went away
    without saying so do not pile up; a client that comes back gets 404 and starts a new one.
    """
    from autoresearch_mcp.server import dashboard  # it builds on this module

    app: ASGIApp = BearerAuth(
        mcp.streamable_http_app(
            streamable_http_path=MCP_PATH,
            transport_security=endpoint.security,
            host=endpoint.host,
            session_idle_timeout=session_idle_timeout,
        ),
        endpoint.token,
    )
    app = dashboard.with_dashboard(app, workspace_root, endpoint)
    if endpoint.token_file is not None:
        keep_token(endpoint.token_file, endpoint.token)
    # Straight to stderr, never to the log file: the token is a secret.
    print(f"autoresearch-mcp: serving MCP at {endpoint.url}", file=sys.stderr, flush=True)
    if endpoint.token_generated:
        kept = f"kept in {endpoint.token_file}, readable only by you; " if endpoint.token_file else ""
        print(
            f"autoresearch-mcp: bearer token: {endpoint.token}  ({kept}set {TOKEN_ENV} to choose your own)",
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
        if is_oauth(scope["path"]):
            await PlainTextResponse(f"Not found: this server does not use OAuth. {SEND_TOKEN}\n", 404)(
                scope, receive, send
            )
            return
        header = Headers(scope=scope).get("authorization")
        scheme, _, presented = (header or "").partition(" ")
        if header is None or scheme.lower() != "bearer":
            await _unauthorized("no bearer token")(scope, receive, send)
            return
        if not hmac.compare_digest(presented.strip().encode("utf-8"), self._token):
            client = scope.get("client")
            log.warning("rejected a request with a wrong bearer token from %s", client[0] if client else "?")
            await _unauthorized("wrong bearer token", error="invalid_token")(scope, receive, send)
            return
        await self.app(scope, receive, send)


SEND_TOKEN = (
    "Send the token as the header `Authorization: Bearer <token>`: the token autoresearch-mcp printed at start "
    f"(kept in <workspace>/.autoresearch/{TOKEN_FILE}), or the one in ${TOKEN_ENV}."
)


def _unauthorized(problem: str, *, error: str | None = None) -> PlainTextResponse:
    challenge = f'Bearer realm="{REALM}"' + (f', error="{error}"' if error else "")
    return PlainTextResponse(
        f"401 Unauthorized: {problem}. {SEND_TOKEN}\n", status_code=401, headers={"WWW-Authenticate": challenge}
    )


def is_oauth(path: str) -> bool:
    """`path` is where an OAuth client looks: a discovery document (with or without a path after it),
    or a default endpoint."""
    _, well_known, document = path.partition("/.well-known/")
    return path in OAUTH_DEFAULT_ENDPOINTS or (
        bool(well_known) and document.split("/", 1)[0] in OAUTH_DISCOVERY_DOCUMENTS
    )


def keep_token(path: Path, token: str) -> None:
    """Keep a generated token in `path`, readable only by its owner (once per workspace)."""
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        if _kept_token(path) != token:  # another server on this workspace kept its own a moment ago
            log.warning("%s appeared while starting; this server keeps its own token until restarted", path)
        return
    with os.fdopen(descriptor, "w", encoding="utf-8") as sink:
        sink.write(token + "\n")


def _kept_token(path: Path) -> str | None:
    """The token kept in `path` (made owner-only if it was not), or None if there is none yet."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    with os.fdopen(descriptor, encoding="utf-8") as source:
        if os.fstat(source.fileno()).st_mode & 0o077:
            os.fchmod(source.fileno(), 0o600)
        token = source.read(1024).strip()
    if len(token) < MIN_TOKEN_CHARS:
        raise UserError(f"{path} holds no usable token; delete it and a new one is generated at the next start")
    return token


def _token(*, must_be_chosen: bool, token_file: Path | None) -> tuple[str, bool]:
    """The token to require, and whether it is ours (generated now or kept from before)."""
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
    kept = _kept_token(token_file) if token_file is not None else None
    return kept or secrets.token_urlsafe(32), True


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
