"""The `autoresearch-mcp` command line: init, serve, call, prepare, demo, doctor, dashboard.

Heavy modules (the MCP SDK, GitPython, uvicorn) are imported inside the subcommands, so
`--help` is instant and `serve` loads only what serving needs.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from autoresearch_mcp.nanochat.errors import UserError

PROG = "autoresearch-mcp"
WORKSPACE_ENV = "AUTORESEARCH_MCP_WORKSPACE"
DEFAULT_HTTP_PORT = 8765
DEFAULT_DASHBOARD_PORT = 8766  # beside an HTTP server's default port, so both can run
DEFAULT_SESSION_IDLE_SECONDS = 600.0


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; returns the process exit status."""
    try:
        check_platform(sys.platform)
        parser = build_parser()
        args, rest = parser.parse_known_args(argv)
        if args.handler is _call:  # KEY=VALUE pairs given after an option land in `rest`
            args.arguments += [item for item in rest if not item.startswith("-")]
            rest = [item for item in rest if item.startswith("-")]
        if rest and args.handler is not _demo:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        args.rest = rest
        return args.handler(args)
    except UserError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the last guard: a file system refusal is one line, never a traceback
        where = f": {exc.filename}" if exc.filename else ""
        print(f"{PROG}: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def check_platform(platform: str) -> None:
    """Refuse native Windows up front: the sandbox needs fcntl, dir_fd/O_NOFOLLOW and process groups."""
    if platform == "win32":
        raise UserError(f"{PROG} needs Linux or macOS; on Windows use WSL2")


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(PROG)
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"


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
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    workspace_option = argparse.ArgumentParser(add_help=False)
    workspace_option.add_argument(
        "--workspace",
        type=Path,
        metavar="DIR",
        help=f"an existing workspace (default: ${WORKSPACE_ENV}, else {default_workspace()}, created on first use)",
    )
    create_option = argparse.ArgumentParser(add_help=False)
    create_option.add_argument(
        "--create", action="store_true", help="create the --workspace folder as a new workspace if it does not exist"
    )

    init = commands.add_parser("init", help="create a workspace: git repo, template train.py and program.md, config")
    init.add_argument("directory", nargs="?", type=Path, metavar="DIR", help="where (default: the per-user workspace)")
    init.add_argument("--profile", default="auto", help="auto (by hardware), h100, gpu or cpu (default: auto)")
    init.add_argument(
        "--budget", type=budget_seconds, metavar="SECONDS", help="training time per experiment (default: the profile's)"
    )
    init.add_argument(
        "--editable",
        action="append",
        metavar="FILE",
        help="a template file the agent may change (repeat for several; default: train.py)",
    )
    init.set_defaults(handler=_init)

    serve = commands.add_parser(
        "serve", parents=[workspace_option, create_option], help="run the MCP server (stdio by default)"
    )
    serve.add_argument("--transport", choices=("stdio", "http"), default="stdio", help="default: stdio")
    serve.add_argument("--host", default="127.0.0.1", help="HTTP bind address (default: 127.0.0.1)")
    serve.add_argument(
        "--port",
        type=port_number,
        default=DEFAULT_HTTP_PORT,
        help=f"HTTP port, 1-65535; 0 picks a free one (default: {DEFAULT_HTTP_PORT})",
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
    serve.add_argument(
        "--session-idle-timeout",
        type=positive_seconds,
        default=DEFAULT_SESSION_IDLE_SECONDS,
        metavar="SECONDS",
        help="HTTP: end a client session after this long without a request in flight or an open stream "
        f"(default: {DEFAULT_SESSION_IDLE_SECONDS:g})",
    )
    serve.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    serve.set_defaults(handler=_serve)

    call = commands.add_parser(
        "call",
        parents=[workspace_option, create_option],
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
        type=port_number,
        default=DEFAULT_DASHBOARD_PORT,
        help=f"port, 1-65535; 0 picks a free one (default: {DEFAULT_DASHBOARD_PORT})",
    )
    dashboard.set_defaults(handler=_dashboard)
    return parser


def port_number(text: str) -> int:
    """argparse type: a TCP port, 1-65535, or 0 for a free one."""
    port = _converted(text, int, "a port number (1-65535, or 0 for a free one)")
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is outside 1-65535 (0 picks a free port)")
    return port


def positive_seconds(text: str) -> float:
    """argparse type: a finite number of seconds above 0."""
    seconds = _converted(text, float, "a number of seconds")
    if not (math.isfinite(seconds) and seconds > 0):
        raise argparse.ArgumentTypeError(f"{text} is not a positive number of seconds")
    return seconds


def _converted(text: str, convert: Callable[[str], Any], what: str) -> Any:
    try:
        return convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None


def budget_seconds(text: str) -> float:
    """argparse type: a training budget, as launch_training accepts it."""
    from autoresearch_mcp.sandbox.engine import MAX_BUDGET_SECONDS

    seconds = positive_seconds(text)
    if seconds > MAX_BUDGET_SECONDS:
        raise argparse.ArgumentTypeError(f"{text} s is over the {MAX_BUDGET_SECONDS:g} s a budget may be")
    return seconds


def _workspace_root(args: argparse.Namespace) -> Path:
    return (args.workspace or default_workspace()).expanduser().absolute()


def _is_implicit_default(args: argparse.Namespace) -> bool:
    """The workspace is the per-user default, named by neither --workspace nor the environment."""
    return args.workspace is None and not os.environ.get(WORKSPACE_ENV)


def chosen_workspace(args: argparse.Namespace) -> Path:
    """The workspace root to serve: an existing workspace, or one this command may create.

    Only the per-user default (no --workspace, no $AUTORESEARCH_MCP_WORKSPACE) or an explicit
    --create may be created, so a mistyped path never silently starts a fresh, empty research.
    """
    from autoresearch_mcp.sandbox.workspace import STATE_DIR

    root = _workspace_root(args)
    if (root / STATE_DIR).is_dir():
        return root
    refuse_non_directory(root)
    if _is_implicit_default(args) or getattr(args, "create", False):
        return root
    hint = " (or add --create)" if hasattr(args, "create") else ""
    if not root.exists():
        raise UserError(f"no workspace at {root}; create one with `{PROG} init {root}`{hint}")
    if any(root.iterdir()):
        raise UserError(
            f"{root} is not a workspace (no {STATE_DIR}/ in it) and not empty; "
            f"create a workspace in a new folder with `{PROG} init DIR`"
        )
    raise UserError(f"{root} is an empty folder, not a workspace; create one there with `{PROG} init {root}`{hint}")


def refuse_non_directory(path: Path, role: str = "a workspace") -> None:
    """A path that must be a folder (or not exist yet) but is a file gets a refusal, not a traceback."""
    if path.exists() and not path.is_dir():
        raise UserError(f"{path} is a file, not a folder; {role} is a folder")


def _init(args: argparse.Namespace) -> int:
    from autoresearch_mcp.nanochat.profiles import resolve_profile
    from autoresearch_mcp.sandbox.config import DEFAULT_EDITABLE, WorkspaceConfig
    from autoresearch_mcp.tools.setup import init_workspace

    if args.profile != "auto":
        resolve_profile(args.profile)
    editable = template_editable(args.editable or list(DEFAULT_EDITABLE))
    root = (args.directory or default_workspace()).expanduser().absolute()
    refuse_non_directory(root)
    config = WorkspaceConfig(profile=args.profile, budget_seconds=args.budget, editable=editable)
    workspace = init_workspace(root, config)
    print(f"created workspace {workspace.root}")
    if DEFAULT_EDITABLE[0] not in editable:
        print(
            f"note: {DEFAULT_EDITABLE[0]} is read-only to agents here (editable: {', '.join(editable)}); "
            f"add --editable {DEFAULT_EDITABLE[0]} to let them change it"
        )
    print(f"serve it with: {PROG} serve --workspace {workspace.root}")
    return 0


def template_editable(names: list[str]) -> list[str]:
    """The --editable names, each a file of the template (in order, once each)."""
    from autoresearch_mcp.tools.setup import TEMPLATE_FILES

    unknown = [name for name in names if name not in TEMPLATE_FILES]
    if unknown:
        raise UserError(
            f"--editable {unknown[0]}: no such file in the template; the template's files are "
            f"{', '.join(TEMPLATE_FILES)}"
        )
    return list(dict.fromkeys(names))


def _serve(args: argparse.Namespace) -> int:
    from autoresearch_mcp.sandbox.workspace import STATE_DIR
    from autoresearch_mcp.server.app import build_server
    from autoresearch_mcp.server.logs import setup_logging
    from autoresearch_mcp.tools.setup import ensure_workspace

    root = chosen_workspace(args)
    endpoint = None
    if args.transport == "http":
        from autoresearch_mcp.server.http import TOKEN_FILE, open_endpoint, serve_http

        endpoint = open_endpoint(
            args.host,
            args.port,
            allow_remote=args.allow_remote,
            allowed_hosts=args.allowed_host,
            token_file=root / STATE_DIR / TOKEN_FILE,
        )
    workspace = ensure_workspace(root)
    setup_logging(workspace.state_dir, level=args.log_level)
    server = build_server(workspace)
    if endpoint is None:
        logging.getLogger(__name__).info("serving %s over stdio", workspace.root)
        server.run()
    else:
        serve_http(server, endpoint, workspace.root, session_idle_timeout=args.session_idle_timeout)
    return 0


def _call(args: argparse.Namespace) -> int:
    import anyio

    from autoresearch_mcp.server.app import build_server
    from autoresearch_mcp.server.logs import setup_logging
    from autoresearch_mcp.tools.setup import ensure_workspace

    arguments = parse_tool_arguments(args.arguments, args.json_arguments)
    workspace = ensure_workspace(chosen_workspace(args))
    setup_logging(workspace.state_dir, stderr_level="WARNING")
    result = anyio.run(_call_tool, build_server(workspace), args.tool, arguments)
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
            parsed = json.loads(json_object, parse_constant=_refuse_constant)
        except ValueError as exc:
            raise UserError(f'--json is not valid JSON ({exc}); e.g. --json \'{{"path": "train.py"}}\'') from None
        if not isinstance(parsed, dict):
            raise UserError('--json must be a JSON object, e.g. --json \'{"path": "train.py"}\'')
        return parsed
    arguments: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserError(f"argument {pair!r} is not KEY=VALUE; e.g. path=train.py")
        if key in arguments:
            raise UserError(f"argument {key!r} is given twice; give each argument once")
        try:
            arguments[key] = json.loads(value, parse_constant=_refuse_constant)
        except ValueError:  # not JSON (or NaN/Infinity, which JSON has not): the text itself
            arguments[key] = value
    return arguments


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


async def _call_tool(server: Any, tool: str, arguments: dict[str, Any]) -> Any:
    """The call's result, once the tool and its arguments check out against what the server lists."""
    from mcp import Client

    async with Client(server) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        refusal = _argument_refusal(tools, tool, arguments)
        result = None if refusal else await client.call_tool(tool, arguments)
    if refusal:
        raise UserError(refusal)
    return result


def _argument_refusal(tools: dict[str, Any], tool: str, arguments: dict[str, Any]) -> str | None:
    """One plain sentence on what is wrong with calling `tool` with `arguments`, or None."""
    import jsonschema

    if tool not in tools:
        return f"unknown tool {tool!r}; the tools are: {', '.join(sorted(tools)) or '(none)'}"
    schema = tools[tool].input_schema
    properties: dict[str, Any] = schema.get("properties", {})
    required = schema.get("required", [])
    listing = ", ".join(name if name in required else f"{name} (optional)" for name in properties) or "(none)"
    unknown = [name for name in arguments if name not in properties]
    if unknown:
        return f"{tool} has no argument {', '.join(map(repr, unknown))}; its arguments are: {listing}"
    missing = [name for name in required if name not in arguments]
    if missing:
        return f"{tool} needs {', '.join(f'{name}=...' for name in missing)}; its arguments are: {listing}"
    for name, value in arguments.items():
        rule = {**properties[name], "$defs": schema.get("$defs", {})}
        if not jsonschema.validators.validator_for(rule)(rule).is_valid(value):
            return (
                f"{tool}: {name}={json.dumps(value)} is not valid; {name} must be {describe_schema(properties[name])}"
            )
    return None


def describe_schema(schema: dict[str, Any]) -> str:
    """What a JSON schema accepts, in words: "an integer >= 1", "one of 'launch', 'val_bpb'"."""
    if "anyOf" in schema:
        options = [describe_schema(option) for option in schema["anyOf"] if option.get("type") != "null"]
        return " or ".join(options) or "null"
    if "enum" in schema:
        return "one of " + ", ".join(json.dumps(value) for value in schema["enum"])
    kinds = {"integer": "an integer", "number": "a number", "string": "a string", "boolean": "true or false"}
    words = [kinds.get(schema.get("type", ""), "a JSON " + schema.get("type", "object"))]
    signs = (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="), ("exclusiveMaximum", "<"))
    bounds = [f"{sign} {schema[key]:g}" for key, sign in signs if key in schema]
    if bounds:
        words.append(" and ".join(bounds))
    if "minLength" in schema:
        words.append(f"of at least {schema['minLength']} characters")
    if "maxLength" in schema:
        words.append(f"of at most {schema['maxLength']} characters")
    return " ".join(words)


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
    refuse_non_directory(data_dir, "the data cache (--data-dir)")
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

    findings = run_checks(_workspace_root(args), created_on_first_use=_is_implicit_default(args))
    print(render(findings))
    return 1 if any(f.status == "FAIL" for f in findings) else 0


def _dashboard(args: argparse.Namespace) -> int:
    from autoresearch_mcp.server.dashboard import serve_dashboard
    from autoresearch_mcp.server.logs import setup_logging

    setup_logging(None)  # stderr only: the dashboard writes nothing into the workspace
    root = _workspace_root(args)
    refuse_non_directory(root)
    serve_dashboard(root, args.port)
    return 0
