"""The `[cluster]` table: how it is read and written, and that Ray is optional: a server whose
workspace does not ask for it never imports it, and one that asks without Ray installed says how
to install it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client

from autoresearch_mcp.nanochat.errors import UserError
from autoresearch_mcp.sandbox.config import ClusterConfig, WorkspaceConfig
from autoresearch_mcp.sandbox.ray_head import free_ports
from autoresearch_mcp.tests.cli_process import clean_env, cli_path
from autoresearch_mcp.tools.setup import init_workspace

CLOSED = f"http://127.0.0.1:{free_ports(1)[0]}"


def test_a_cluster_table_is_read_back_as_written(tmp_path: Path) -> None:
    cluster = ClusterConfig(backend="ray", address="http://head:8265", cpus_per_run=2.0, data_dir="/data/cache")
    path = tmp_path / "config.toml"
    path.write_text(WorkspaceConfig(cluster=cluster).to_toml())
    assert WorkspaceConfig.load(path).cluster == cluster
    path.write_text(WorkspaceConfig().to_toml())
    assert "# [cluster]" in path.read_text()  # the default: a commented example
    assert WorkspaceConfig.load(path).cluster == ClusterConfig()


@pytest.mark.parametrize(
    ("table", "refusal"),
    [
        ('backend = "slurm"', "backend = 'slurm' is not understood"),
        ('backend = "ray"\naddress = "head:8265"', "address = 'head:8265' is not understood"),
        ("cpus_per_run = 0", "cpus_per_run must be a number above 0"),
        ("workers = 4", "unknown [cluster] setting(s) workers"),
        ("data_dir = 3", "data_dir must be a string"),
    ],
)
def test_a_bad_cluster_table_is_refused_with_what_to_write(tmp_path: Path, table: str, refusal: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(f"[cluster]\n{table}\n")
    with pytest.raises(UserError, match=refusal.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        WorkspaceConfig.load(path)


def imported_by_serve(workspace: Path, tmp_path: Path) -> set[str]:
    """The modules a real `autoresearch-mcp serve` imported while it started and answered a few
    tool calls (from `python -X importtime`)."""
    stderr_path = tmp_path / "stderr.txt"

    async def session() -> None:
        params = StdioServerParameters(
            command=sys.executable,
            args=["-X", "importtime", cli_path(), "serve", "--workspace", str(workspace)],
            env=clean_env(),
        )
        with stderr_path.open("w") as stderr:
            async with Client(stdio_client(params, errlog=stderr), read_timeout_seconds=60) as client:
                for tool in ("gpu_status", "list_experiments", "training_status"):
                    assert not (await client.call_tool(tool, {})).is_error

    anyio.run(session)
    lines = stderr_path.read_text().splitlines()
    return {line.rsplit("|", 1)[1].strip() for line in lines if line.startswith("import time:") and "|" in line}


@pytest.mark.timeout(240)
def test_serve_never_imports_ray_unless_the_workspace_asks(tmp_path: Path) -> None:
    modules = imported_by_serve(init_workspace(tmp_path / "plain").root, tmp_path)
    assert "autoresearch_mcp.server.app" in modules  # the measurement sees our own imports
    assert not {m for m in modules if m == "ray" or m.startswith("ray.")}


@pytest.mark.timeout(240)
def test_serve_imports_ray_when_the_workspace_asks(tmp_path: Path) -> None:
    pytest.importorskip("ray", reason="Ray is not installed here (pip install 'autoresearch-mcp[ray]')")
    config = WorkspaceConfig(profile="cpu", cluster=ClusterConfig(backend="ray", address=CLOSED))
    modules = imported_by_serve(init_workspace(tmp_path / "on-ray", config).root, tmp_path)
    assert "ray.job_submission" in modules  # and the server serves, though the cluster does not answer


BLOCK_RAY = """
import sys

class NoRay:  # as if Ray were not installed
    def find_spec(self, name, path=None, target=None):
        if name == "ray" or name.startswith("ray."):
            raise ModuleNotFoundError(f"No module named {name!r}")

sys.meta_path.insert(0, NoRay())
from autoresearch_mcp.server.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_workspace_on_ray_without_ray_installed_says_how_to_install_it(tmp_path: Path) -> None:
    config = WorkspaceConfig(profile="cpu", cluster=ClusterConfig(backend="ray", address=CLOSED))
    workspace = init_workspace(tmp_path / "ws", config).root
    result = subprocess.run(
        [sys.executable, "-c", BLOCK_RAY, "call", "list_experiments", "--workspace", str(workspace)],
        capture_output=True,
        text=True,
        timeout=120,
        env=clean_env(),
    )
    assert result.returncode == 2, result.stderr
    assert "Ray is not installed here: pip install 'autoresearch-mcp[ray]'" in result.stderr
    assert "Traceback" not in result.stderr
