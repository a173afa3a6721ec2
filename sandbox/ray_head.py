"""A one-node Ray head on this machine, started and stopped by us (`address = "local"`, tests, bench).

`ray start --head --block` runs in a session of its own. While it lives, the head lives (the GCS,
the raylet, the dashboard that serves the Jobs API, and the workers they start, which share
their fate); on SIGTERM it drains and stops all of them. So one pid, with its creation time,
names the whole head, and a later server finds it again from the small JSON file it is
described in. Its temporary folder (sockets, logs, the unpacked job folders) is a short path
under the system's temp folder: Ray's socket paths must fit in 107 bytes.

No import of ray here: the `ray` command of the interpreter's own environment is run, and the
dashboard is asked over plain HTTP whether it answers.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from autoresearch_mcp.nanochat.errors import UserError

INSTALL_HINT = "pip install 'autoresearch-mcp[ray]'"
START_TIMEOUT_SECONDS = 120.0
STOP_TIMEOUT_SECONDS = 45.0  # `ray start --block` drains for up to 30 s on SIGTERM
PROBE_TIMEOUT_SECONDS = 3.0


@dataclass(frozen=True)
class LocalHead:
    """A head we started: its `ray start --block` process, its Jobs API address, its temp folder."""

    pid: int
    create_time: float
    address: str  # http://127.0.0.1:PORT, the dashboard (Jobs API)
    temp_dir: str

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self)) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> LocalHead | None:
        """The head described in `path`, if that file names one that is still running."""
        try:
            head = cls(**json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError):
            return None
        return head if head.running() else None

    def running(self) -> bool:
        try:
            process = psutil.Process(self.pid)
            return process.status() != psutil.STATUS_ZOMBIE and abs(process.create_time() - self.create_time) < 0.01
        except psutil.Error:
            return False

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> None:
        """Stop the head and every process of it, then remove its temp folder."""
        if self.running():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            give_up = time.monotonic() + timeout
            while self.running() and time.monotonic() < give_up:
                _reap(self.pid)
                time.sleep(0.2)
        # Whatever outlived the drain: the session's group, and anything naming our temp folder.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        for process in processes_of(self.temp_dir):
            with contextlib.suppress(psutil.Error):
                process.kill()
        _reap(self.pid)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def start_head(
    log_path: Path,
    *,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    env: dict[str, str] | None = None,
    timeout: float = START_TIMEOUT_SECONDS,
) -> LocalHead:
    """Start a one-node head (CPUs and GPUs as given, else as Ray detects them) and wait until its
    Jobs API answers. Its dashboard listens on 127.0.0.1 only; usage stats are off."""
    ray = ray_command()
    temp_dir = tempfile.mkdtemp(prefix="ar-ray-")
    gcs, dashboard, client, agent = free_ports(4)
    command = [
        ray, "start", "--head", "--block", "--disable-usage-stats",
        "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
        "--port", str(gcs), "--dashboard-port", str(dashboard),
        "--ray-client-server-port", str(client), "--dashboard-agent-listen-port", str(agent),
        "--temp-dir", temp_dir,
    ]  # fmt: skip
    if num_cpus is not None:
        command += ["--num-cpus", str(num_cpus)]
    if num_gpus is not None:
        command += ["--num-gpus", str(num_gpus)]
    # Job entrypoints say `python`: on this head, the interpreter whose environment has Ray and us.
    environment = dict(os.environ if env is None else env)
    environment["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{environment.get('PATH', '')}"
    environment["RAY_USAGE_STATS_ENABLED"] = "0"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=environment,
            start_new_session=True, close_fds=True,
        )  # fmt: skip
    head = LocalHead(process.pid, psutil.Process(process.pid).create_time(), f"http://127.0.0.1:{dashboard}", temp_dir)
    give_up = time.monotonic() + timeout
    while not (jobs_api_answers(head.address) and alive_nodes(head.address)):
        if process.poll() is not None or time.monotonic() > give_up:
            head.stop(timeout=5)
            said = log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-5:]
            raise UserError(
                f"the local Ray head did not start ({' / '.join(said) or 'no output'}); its log is {log_path}"
            )
        time.sleep(0.5)
    return head


def ray_command() -> str:
    """The `ray` command of this interpreter's environment (else the one on PATH)."""
    beside = Path(sys.executable).parent / "ray"
    found = str(beside) if beside.exists() else shutil.which("ray")
    if found is None:
        raise UserError(f"Ray is not installed for {sys.executable}; install it with `{INSTALL_HINT}`")
    return found


def jobs_api_answers(address: str, timeout: float = PROBE_TIMEOUT_SECONDS) -> bool:
    """Whether the Ray dashboard at `address` answers on its Jobs API."""
    return _get_json(f"{address.rstrip('/')}/api/jobs/", timeout) is not None


def alive_nodes(address: str, timeout: float = PROBE_TIMEOUT_SECONDS) -> int:
    """How many nodes the cluster's state API reports alive (0 until the head's raylet registered)."""
    answer = _get_json(f"{address.rstrip('/')}/api/v0/nodes", timeout)
    try:
        nodes = answer["data"]["result"]["result"]  # type: ignore[index]
        return sum(1 for node in nodes if node.get("state") == "ALIVE")
    except (KeyError, TypeError, AttributeError):
        return 0


def _get_json(url: str, timeout: float) -> object | None:
    """The JSON a GET of `url` answers with, or None when it does not answer (or not in JSON)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return json.loads(response.read())
    except (OSError, urllib.error.URLError, ValueError):
        return None


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports free on this machine now (the OS's ephemeral range, far from
    Ray's default worker ports)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def processes_of(temp_dir: str) -> list[psutil.Process]:
    """Processes whose command line names `temp_dir` (a head's GCS, raylet, dashboard, agents)."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if any(temp_dir in part for part in process.info["cmdline"] or ()):
                found.append(process)
    return found


def _reap(pid: int) -> None:
    """Collect `pid` if it is our exited child (so it does not linger as a zombie)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
