"""Around the real Ray head of the cluster tests: workspaces that run on it, the processes of a job
on the node, and a proxy that can cut the server off from the cluster (the network boundary)."""

from __future__ import annotations

import contextlib
import socket
import threading
from pathlib import Path
from typing import Any

import psutil

from autoresearch_mcp.nanochat.errors import UserError
from autoresearch_mcp.sandbox.config import ClusterConfig, WorkspaceConfig
from autoresearch_mcp.sandbox.engine import ExperimentEngine
from autoresearch_mcp.sandbox.workspace import Workspace
from autoresearch_mcp.tools.setup import init_workspace


def cluster_workspace(
    root: Path,
    train_py: str | None,
    address: str,
    *,
    profile: str = "cpu",
    data_source: str | None = None,
    **cluster: Any,
) -> Workspace:
    """A real workspace whose runs go to the Ray cluster at `address`, with `train_py` (None: the
    template's); `cluster` holds the other [cluster] settings."""
    config = WorkspaceConfig(
        profile=profile, data_source=data_source, cluster=ClusterConfig(backend="ray", address=address, **cluster)
    )
    workspace = init_workspace(root, config)
    if train_py is not None:
        (root / "train.py").write_text(train_py, encoding="utf-8")
    return workspace


def stop_everything(engine: ExperimentEngine) -> None:
    """Stop the engine's queued and running runs (queued first: none starts), then the engine."""
    for record in reversed(engine.store.list(["queued", "running"])):
        with contextlib.suppress(UserError):  # it ended meanwhile
            engine.stop(record.id)
    engine.shutdown()


def job_processes(job_id: str) -> list[psutil.Process]:
    """The processes of a job on this node: the wrapper (its command line names the job) and all
    that run in the job's own folder (the supervisor and train.py, wherever they went)."""
    found = []
    for process in psutil.process_iter(["cmdline", "cwd"]):
        with contextlib.suppress(psutil.Error):
            cmdline = " ".join(process.info["cmdline"] or ())
            if (job_id in cmdline and "ray_job" in cmdline) or f"/{job_id}-" in (process.info["cwd"] or ""):
                found.append(process)
    return found


class Proxy:
    """Forwards TCP connections from a local port to `target` until `cut` (then refuses them all)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._open: list[socket.socket] = []
        self._cut = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cut(self) -> None:
        self._cut = True
        self._listener.close()
        for sock in self._open:
            with contextlib.suppress(OSError):
                sock.close()

    def _accept(self) -> None:
        while not self._cut:
            try:
                client, _ = self._listener.accept()
                server = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                return
            self._open += [client, server]
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)
