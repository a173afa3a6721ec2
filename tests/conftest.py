"""Fixtures shared across test modules.

cpu_data_dir / prepared_cpu_data
    The real `cpu` profile's data (built-in corpus, BPE tokenizer, token shards), prepared
    once per session in pytest's cache directory, so later sessions only load it (about a
    second's work; prepare_data keys its cache by content, so it is never stale). Pass
    `cpu_data_dir` wherever a data directory is expected (e.g. `run --data-dir`); a
    prepare_data(PROFILES["cpu"], cpu_data_dir) there returns at once. Treat it as
    read-only: a test that damages data prepares its own under tmp_path.
no_minimum_noise_floor
    The profiles' minimum noise floors set to 0 in this process, for tests whose verdicts are
    arithmetic on the stand-in harness's exact spreads (tests/test_research.py covers the minimum).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from autoresearch_mcp.nanochat.data import PreparedData, prepare_data
from autoresearch_mcp.nanochat.profiles import PROFILES


@pytest.fixture(scope="session")
def cpu_data_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = getattr(request.config, "cache", None)  # absent when run with -p no:cacheprovider
    return cache.mkdir("autoresearch-mcp-data") if cache is not None else tmp_path_factory.mktemp("data")


@pytest.fixture(scope="session")
def prepared_cpu_data(cpu_data_dir: Path) -> PreparedData:
    return prepare_data(PROFILES["cpu"], cpu_data_dir)


@pytest.fixture
def no_minimum_noise_floor(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, profile in list(PROFILES.items()):
        monkeypatch.setitem(PROFILES, name, replace(profile, min_noise_std=0.0))


# ---- workspaces and an in-memory MCP client (file tools) ---------------------------------------
#
# make_workspace(files=..., editable=...)
#     A real workspace (init_workspace) in tmp_path whose `best` commit holds `files`
#     (path -> str or bytes) instead of the template, so tests never depend on the template's text.
# call_tool(workspace, name, **arguments)
#     One tool call through the real MCP protocol, in memory, against the real server for the
#     workspace; returns the CallToolResult (refusals come back as is_error).

from collections.abc import Callable  # noqa: E402

import anyio  # noqa: E402
from mcp import Client  # noqa: E402
from mcp.types import CallToolResult  # noqa: E402

from autoresearch_mcp.sandbox.config import WorkspaceConfig  # noqa: E402
from autoresearch_mcp.sandbox.history import open_history  # noqa: E402
from autoresearch_mcp.sandbox.workspace import Workspace  # noqa: E402
from autoresearch_mcp.server.app import build_server  # noqa: E402
from autoresearch_mcp.tools.setup import init_workspace  # noqa: E402

SAMPLE_TRAIN = "".join(f"line {n}\n" for n in range(1, 41))


@pytest.fixture
def make_workspace(tmp_path: Path) -> Callable[..., Workspace]:
    def make(files: dict[str, str | bytes] | None = None, editable: tuple[str, ...] = ("train.py",)) -> Workspace:
        root = tmp_path / "workspace"
        init_workspace(root, WorkspaceConfig(editable=list(editable)))
        for name, content in (files or {"train.py": SAMPLE_TRAIN}).items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            data = content.encode("utf-8") if isinstance(content, str) else content
            (root / name).write_bytes(data)
        repo = open_history(root)
        repo.index.add(list(files or {"train.py": SAMPLE_TRAIN}))
        repo.index.commit("test files")
        return Workspace(root)

    return make


@pytest.fixture
def call_tool() -> Callable[..., CallToolResult]:
    def call(workspace: Workspace, name: str, **arguments: object) -> CallToolResult:
        async def run() -> CallToolResult:
            async with Client(build_server(workspace)) as client:
                return await client.call_tool(name, arguments)

        return anyio.run(run)

    return call
