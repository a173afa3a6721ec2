"""The `autoresearch-mcp` command line: init, serve, call, prepare, demo, doctor, dashboard.

Heavy modules (the MCP SDK, GitPython, uvicorn) are imported inside the subcommands, so
`--help` is instant and `serve` loads only what serving needs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from autoresearch_mcp.nanochat.errors import UserError

PROG = "autoresearch-mcp"
WORKSPACE_ENV = "AUTORESEARCH_MCP_WORKSPACE"
DEFAULT_HTTP_PORT = 8765
DEFAULT_DASHBOARD_PORT = 8766  # beside an HTTP server's default port, so both can run


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; returns the process exit status."""
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest and args.handler is not _demo:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    args.rest = rest
    try:
        return args.handler(args)
    except UserError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def default_workspace() -> Path:
    """$AUTORESEARCH_MCP_WORKSPACE, else a per-user data directory."""
    override = os.environ.get(WORKSPACE_ENV)
    if override:
        return Path(override).expanduser()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / PROG / "workspace"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="MCP tool server for the autoresearch loop: edit train.py, train for a fixed budget, "
        "measure val_bpb, keep or discard.",
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    workspace_option = argparse.ArgumentParser(add_help=False)
    workspace_option.add_argument(
        "--workspace",
        type=Path,
        metavar="DIR",
        help=f"the workspace (default: ${WORKSPACE_ENV}, else {default_workspace()})",
    )

    init = commands.add_parser("init", help="create a workspace: git repo, template train.py and program.md, config")
    init.add_argument("directory", nargs="?", type=Path, metavar="DIR", help="where (default: the per-user workspace)")
    init.add_argument("--profile", default="auto", help="auto (by hardware), h100, gpu or cpu (default: auto)")
    init.add_argument(
        "--budget", type=float, metavar="SECONDS", help="training time per experiment (default: the profile's)"
    )
    init.add_argument(
        "--editable",
        action="append",
        metavar="FILE",
        help="a file the agent may change (repeat for several; default: train.py)",
    )
    init.set_defaults(handler=_init)

    serve = commands.add_parser("serve", parents=[workspace_option], help="run the MCP server (stdio by default)")
    serve.add_argument("--transport", choices=("stdio", "http"), default="stdio", help="default: stdio")
    serve.add_argument("--host", default="127.0.0.1", help="HTTP bind address (default: 127.0.0.1)")
    serve.add_argument(
        "--port",
        type=int,
        default=DEFAULT_HTTP_PORT,
        help=f"HTTP port; 0 picks a free one (default: {DEFAULT_HTTP_PORT})",
    )
    serve.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow a non-loopback --host (requires a token in $AUTORESEARCH_MCP_TOKEN)",
    )
    serve.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME[:PORT]",
        help="another Host header value clients may use (DNS-rebinding protection); repeatable",
    )
    serve.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    serve.set_defaults(handler=_serve)

    call = commands.add_parser(
        "call",
        parents=[workspace_option],
        help="call one tool through the MCP protocol (in memory) and print the result",
        description="Call one tool and print its result: structured results as JSON, text otherwise. "
        "Values are parsed as JSON where they parse (start_line=3 is a number), else taken as strings.",
    )
    call.add_argument("tool", help="tool name, e.g. list_files")
    call.add_argument("arguments", nargs="*", metavar="KEY=VALUE", help="tool arguments")
    call.add_argument(
        "--json", dest="json_arguments", metavar="OBJECT", help="all arguments as one JSON object instead"
    )
    call.set_defaults(handler=_call)

    prepare = commands.add_parser(
        "prepare",
        help="download (ClimbMix, for GPU profiles) and tokenize a profile's data ahead of the first run",
        description="Fetch and tokenize the data a profile trains on, into the shared cache. GPU profiles need this "
        "once (network); the cpu profile builds its corpus offline and does not.",
    )
    prepare.add_argument("--profile", default="auto", help="auto (by hardware), h100, gpu or cpu (default: auto)")
    prepare.add_argument(
        "--data-dir",
        type=Path,
        metavar="DIR",
        help="the data cache (default: $AUTORESEARCH_MCP_CACHE, else ~/.cache/autoresearch-mcp); "
        "use the workspace's `data_dir` if its config sets one",
    )
    prepare.add_argument(
        "--source",
        metavar="PATH",
        help="train on your own text instead: a .parquet (text column), .jsonl (text field) or .txt file, or a "
        "folder of them (the last file in sorted order is the validation split); set the same path as "
        "`data_source` in the workspace's config so runs use it",
    )
    prepare.set_defaults(handler=_prepare)

    # The demo parses its own options (demo.add_arguments), so that its module, which imports
    # the MCP client, loads only when the demo runs.
    demo = commands.add_parser(
        "demo", add_help=False, help="a scripted agent session end to end: baseline, a few ideas, keep or discard"
    )
    demo.set_defaults(handler=_demo)

    doctor = commands.add_parser(
        "doctor", parents=[workspace_option], help="check python, torch, CUDA, NVML, git, workspace and data"
    )
    doctor.set_defaults(handler=_doctor)

    dashboard = commands.add_parser(
        "dashboard",
        parents=[workspace_option],
        help="a live, read-only web dashboard of a workspace (for stdio users; `serve --transport http` has its own)",
        description="Serve the research dashboard of a workspace on 127.0.0.1, reading it while a server runs it. "
        "It only reads: it starts no runs and writes nothing. Open the link it prints (it carries the token; "
        "set $AUTORESEARCH_MCP_TOKEN to choose the token).",
    )
    dashboard.add_argument(
        "--port",
        type=int,
        default=DEFAULT_DASHBOARD_PORT,
        help=f"port; 0 picks a free one (default: {DEFAULT_DASHBOARD_PORT})",
    )
    dashboard.set_defaults(handler=_dashboard)
    return parser


def _workspace_root(args: argparse.Namespace) -> Path:
    return (args.workspace or default_workspace()).expanduser().absolute()


def _init(args: argparse.Namespace) -> int:
    from autoresearch_mcp.nanochat.profiles import resolve_profile
    from autoresearch_mcp.sandbox.config import DEFAULT_EDITABLE, WorkspaceConfig
    from autoresearch_mcp.tools.setup import init_workspace

    if args.profile != "auto":
        resolve_profile(args.profile)
    if args.budget is not None and args.budget <= 0:
        raise UserError(f"--budget {args.budget:g}: the time budget must be a positive number of seconds")
    config = WorkspaceConfig(
        profile=args.profile, budget_seconds=args.budget, editable=args.editable or list(DEFAULT_EDITABLE)
    )
    workspace = init_workspace(args.directory or default_workspace(), config)
    print(f"created workspace {workspace.root}")
    print(f"serve it with: {PROG} serve --workspace {workspace.root}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from autoresearch_mcp.server.app import build_server
    from autoresearch_mcp.server.logs import setup_logging
    from autoresearch_mcp.tools.setup import ensure_workspace

    endpoint = None
    if args.transport == "http":
        from autoresearch_mcp.server.http import open_endpoint, serve_http

        endpoint = open_endpoint(args.host, args.port, allow_remote=args.allow_remote, allowed_hosts=args.allowed_host)
    workspace = ensure_workspace(_workspace_root(args))
    setup_logging(workspace.state_dir, level=args.log_level)
    server = build_server(workspace)
    if endpoint is None:
        logging.getLogger(__name__).info("serving %s over stdio", workspace.root)
        server.run()
    else:
        serve_http(server, endpoint, workspace.root)
    return 0


def _call(args: argparse.Namespace) -> int:
    import anyio

    from autoresearch_mcp.server.app import build_server
    from autoresearch_mcp.server.logs import setup_logging
    from autoresearch_mcp.tools.setup import ensure_workspace

    arguments = parse_tool_arguments(args.arguments, args.json_arguments)
    workspace = ensure_workspace(_workspace_root(args))
    setup_logging(workspace.state_dir, stderr_level="WARNING")
    names, result = anyio.run(_call_tool, build_server(workspace), args.tool, arguments)
    if result is None:
        raise UserError(f"unknown tool {args.tool!r}; the tools are: {', '.join(names) or '(none)'}")
    text = "\n".join(_render_block(block) for block in result.content)
    if result.is_error:
        print(f"{PROG}: {args.tool} failed: {text}", file=sys.stderr)
        return 1
    if result.structured_content is not None:
        print(json.dumps(result.structured_content, indent=2, ensure_ascii=False))
    else:
        print(text)
    return 0


def parse_tool_arguments(pairs: Sequence[str], json_object: str | None) -> dict[str, Any]:
    """`key=value` pairs (values as JSON where they parse) or one JSON object."""
    if pairs and json_object is not None:
        raise UserError("give the arguments either as KEY=VALUE pairs or as --json, not both")
    if json_object is not None:
        try:
            arguments = json.loads(json_object)
        except json.JSONDecodeError as exc:
            raise UserError(f'--json is not valid JSON ({exc}); e.g. --json \'{{"path": "train.py"}}\'') from None
        if not isinstance(arguments, dict):
            raise UserError('--json must be a JSON object, e.g. --json \'{"path": "train.py"}\'')
        return arguments
    arguments: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserError(f"argument {pair!r} is not KEY=VALUE; e.g. path=train.py")
        if key in arguments:
            raise UserError(f"argument {key!r} is given twice; give each argument once")
        try:
            arguments[key] = json.loads(value)
        except json.JSONDecodeError:
            arguments[key] = value
    return arguments


async def _call_tool(server: Any, tool: str, arguments: dict[str, Any]) -> tuple[list[str], Any]:
    """The server's tool names, and the call's result (None for an unknown tool)."""
    from mcp import Client

    async with Client(server) as client:
        names = sorted(t.name for t in (await client.list_tools()).tools)
        return names, (await client.call_tool(tool, arguments) if tool in names else None)


def _render_block(block: Any) -> str:
    if block.type == "text":
        return block.text
    if block.type in ("image", "audio"):
        return f"[{block.type} {block.mime_type}, {len(block.data) * 3 // 4} bytes]"
    return json.dumps(block.model_dump(mode="json", by_alias=True, exclude_none=True), ensure_ascii=False)


def _prepare(args: argparse.Namespace) -> int:
    from autoresearch_mcp.nanochat import download
    from autoresearch_mcp.nanochat.data import prepare_data
    from autoresearch_mcp.nanochat.profiles import default_data_dir, resolve_profile
    from autoresearch_mcp.server.logs import setup_logging

    setup_logging(None)
    profile = resolve_profile(args.profile)
    data_dir = (args.data_dir or default_data_dir()).expanduser().absolute()
    source = str(Path(args.source).expanduser().absolute()) if args.source else profile.data_source
    if source == "climbmix":
        print(
            f"downloading {profile.climbmix_train_shards} ClimbMix training shards and the validation shard into {data_dir}"
        )
        download.download_climbmix(data_dir, profile.climbmix_train_shards)
    data = prepare_data(profile, data_dir, source)
    print(
        f"{profile.name} data ready in {data.root}: {data.train_tokens:,} training and {data.val_tokens:,} "
        f"validation tokens, vocabulary {data.vocab_size:,}"
    )
    return 0


def _demo(args: argparse.Namespace) -> int:
    from autoresearch_mcp.server import demo

    parser = argparse.ArgumentParser(
        prog=f"{PROG} demo", description=demo.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    demo.add_arguments(parser)
    return demo.main(parser.parse_args(args.rest))


def _doctor(args: argparse.Namespace) -> int:
    from autoresearch_mcp.server.doctor import render, run_checks

    findings = run_checks(_workspace_root(args))
    print(render(findings))
    return 1 if any(f.status == "FAIL" for f in findings) else 0


def _dashboard(args: argparse.Namespace) -> int:
    from autoresearch_mcp.server.dashboard import serve_dashboard
    from autoresearch_mcp.server.logs import setup_logging

    setup_logging(None)  # stderr only: the dashboard writes nothing into the workspace
    serve_dashboard(_workspace_root(args), args.port)
    return 0
