"""A run as a Ray job, on the node the cluster placed it on: the job's entrypoint (no import of ray).

    python -m autoresearch_mcp.sandbox.ray_job --job ID --slot cpu|cuda:0 --profile P
        [--data-dir DIR] [--data-source SRC] -- COMMAND ...

Ray starts it in the job's working_dir, which holds the run's snapshot as one archive, with the GPU
it reserved for the job (if any) in CUDA_VISIBLE_DEVICES. It is trusted, like the supervisor it starts, and it is the
only writer of the job's log, framed as sandbox/job_stream.py says. It

1. reports where it runs;
2. refuses a node whose data is not prepared, naming the `prepare` command: runs use the node's
   own cache, which the supervisor verifies against its sha256 as on any machine;
3. makes the run's folder on this node (private, under the temp folder), unpacks the snapshot in,
   and runs COMMAND there (the supervisor, with `--run-dir .`) in the environment a local run
   gets, pinned to the job's GPU; a node without the sandbox is refused by the supervisor itself;
4. relays everything the run prints, and reports its phase and new step metrics as they change;
5. reports the exit code and the summary, removes the folder, and exits with the same code.

The supervisor stays in the job's process group and dies with this process, so stopping the job
(Ray signals every process of it) or losing its node takes the whole run down.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path
from typing import TextIO

import psutil

from autoresearch_mcp.nanochat import contract
from autoresearch_mcp.nanochat.contract import Phase, RunExit
from autoresearch_mcp.nanochat.data import prepare_data
from autoresearch_mcp.nanochat.errors import UserError
from autoresearch_mcp.nanochat.profiles import default_data_dir, resolve_profile
from autoresearch_mcp.sandbox import untrusted
from autoresearch_mcp.sandbox.job_stream import (
    ENDED,
    JOB_PREFIX,
    METRICS,
    MIRRORED_METRICS_BYTES,
    PHASE,
    SNAPSHOT_ARCHIVE,
    STARTED,
    Framer,
    report_line,
)
from autoresearch_mcp.sandbox.runner import CUDA_PREFIX, read_phase, read_summary, run_environment

OWNER_FILE = ".ray-job-owner"  # in a job's folder on the node: the wrapper's pid and start time
WATCH_SECONDS = 0.25
READ_BYTES = 64 * 1024
METRICS_READ_BYTES = 1024**2  # per look: a step's line is ~200 bytes
PR_SET_PDEATHSIG = 1


class Channel:
    """The job's log (this process's stdout), written whole lines at a time from any thread."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def write(self, text: str) -> None:
        if text:
            with self._lock:
                self._stream.write(text)
                self._stream.flush()

    def report(self, kind: str, **fields: object) -> None:
        self.write(report_line(kind, **fields))


class Watcher(threading.Thread):
    """Reports the run's phase (the supervisor's `phase` file) and the step metrics train.py appends
    to out/metrics.jsonl (untrusted: read as data, whole lines, bounded)."""

    def __init__(self, run_dir: Path, channel: Channel) -> None:
        super().__init__(name="autoresearch-job-watcher", daemon=True)
        self.run_dir = run_dir
        self.channel = channel
        self._phase: str | None = None
        self._offset = 0  # bytes of metrics.jsonl reported
        self._reported = 0  # bytes of metrics reported in all (bounded like the mirror)
        self._reset = False
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(WATCH_SECONDS):
            self.look()

    def finish(self) -> None:
        """Stop watching, after a last look (so the final phase and steps are reported)."""
        self._done.set()
        self.join()
        self.look()

    def look(self) -> None:
        state = read_phase(self.run_dir)
        if state is not None and state[0] != self._phase:
            self._phase = state[0]
            self.channel.report(PHASE, phase=self._phase)
        self._look_at_metrics()

    def _look_at_metrics(self) -> None:
        path = self.run_dir / contract.OUT_DIR / contract.METRICS
        found = untrusted.read_from(path, self._offset, METRICS_READ_BYTES)
        if found is None:
            return
        size, data = found
        if size < self._offset:  # train.py started the file over
            self._offset, self._reset = 0, True
            return
        complete = data[: data.rfind(b"\n") + 1]
        if not complete or self._reported + len(complete) > MIRRORED_METRICS_BYTES:
            return
        self.channel.report(METRICS, text=complete.decode("utf-8", errors="replace"), reset=self._reset)
        self._offset += len(complete)
        self._reported += len(complete)
        self._reset = False


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    channel = Channel(sys.stdout)
    gpus = os.environ.get("CUDA_VISIBLE_DEVICES") if args.slot.startswith(CUDA_PREFIX) else None
    channel.report(STARTED, node=socket.gethostname(), ip=node_ip(), gpus=gpus, time=time.time())
    # Ray signals every process of the job to stop it: the supervisor gets its own SIGTERM and stops
    # its sandbox; this process keeps relaying what it prints meanwhile.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        prepare_data(resolve_profile(args.profile), args.data_dir, args.data_source, build=False)
    except UserError as error:
        return refuse(channel, f"node {socket.gethostname()} cannot run it: {error}")
    sweep_stale_folders()
    run_dir = Path(tempfile.mkdtemp(prefix=f"{args.job}-"))
    (run_dir / OWNER_FILE).write_text(_identity(os.getpid()), encoding="utf-8")
    try:
        with zipfile.ZipFile(Path.cwd() / SNAPSHOT_ARCHIVE) as archive:
            archive.extractall(run_dir / contract.SNAPSHOT_DIR)  # names are kept inside the folder
        return relay(args.command, supervisor_environment(args.slot), run_dir, channel)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def relay(command: list[str], env: dict[str, str], run_dir: Path, channel: Channel) -> int:
    """Run `command` in `run_dir`, relaying its output and its progress; its exit code."""
    process = subprocess.Popen(
        command,
        cwd=run_dir,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        preexec_fn=_die_with_parent,
    )
    assert process.stdout is not None
    watcher = Watcher(run_dir, channel)
    watcher.start()
    framer = Framer()
    while chunk := process.stdout.read1(READ_BYTES):  # type: ignore[attr-defined]
        channel.write(framer.feed(chunk))
    channel.write(framer.feed(b"", final=True))
    code = process.wait()
    watcher.finish()
    channel.report(ENDED, exit_code=code, summary=read_summary(run_dir), time=time.time())
    return code


def sweep_stale_folders() -> None:
    """Remove the folders of this node's jobs whose wrapper is gone without removing its own (a job
    killed outright, or its node's processes): each run's folder can hold a model's weights."""
    for folder in Path(tempfile.gettempdir()).glob(f"{JOB_PREFIX}*"):
        owner = folder / OWNER_FILE
        with contextlib.suppress(OSError, ValueError):
            pid = int(owner.read_text(encoding="utf-8").split()[0])
            if _identity(pid) != owner.read_text(encoding="utf-8"):
                shutil.rmtree(folder, ignore_errors=True)


def _identity(pid: int) -> str:
    """`pid` and when it started ("" once it is gone): names one process for good."""
    try:
        return f"{pid} {psutil.Process(pid).create_time()}"
    except psutil.Error:
        return ""


def supervisor_environment(slot: str) -> dict[str, str]:
    """What a local run's supervisor gets (runner.run_environment), pinned to the job's GPU, without
    the job's working_dir, which Ray put first on PYTHONPATH."""
    env = run_environment(slot)
    here = os.path.realpath(os.getcwd())
    kept = [entry for entry in env.get("PYTHONPATH", "").split(os.pathsep) if entry and os.path.realpath(entry) != here]
    env.pop("PYTHONPATH", None)
    if kept:
        env["PYTHONPATH"] = os.pathsep.join(kept)
    return env


def refuse(channel: Channel, reason: str) -> int:
    channel.write(f"{contract.FAILURE_MARK}{reason}\n")
    channel.report(PHASE, phase=Phase.FAILED.value)
    channel.report(ENDED, exit_code=int(RunExit.SETUP_FAILED), summary=None, time=time.time())
    return RunExit.SETUP_FAILED


def node_ip() -> str:
    """This node's address as the head sees it: the interface a packet to the head would leave by."""
    head = os.environ.get("RAY_ADDRESS", "").rpartition(":")[0]
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((head or "192.0.2.1", 9))  # a UDP connect sends nothing
        return str(probe.getsockname()[0])
    return socket.gethostname()


def _die_with_parent() -> None:
    """In the supervisor before exec: SIGTERM when this process dies (it then stops its sandbox)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m autoresearch_mcp.sandbox.ray_job",
        description="Run one experiment as a Ray job on this node (started by Ray, not by hand).",
    )
    parser.add_argument("--job", required=True, help="the job's submission id (names the run's folder here)")
    parser.add_argument("--slot", required=True, help="cpu, or cuda:0 for the GPU the cluster gave the job")
    parser.add_argument("--profile", required=True)
    parser.add_argument("--data-dir", type=Path, help="the data cache on this node (default: its per-user cache)")
    parser.add_argument("--data-source", help="builtin, climbmix, or local files (the profile's data by default)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the supervisor's command line")
    args = parser.parse_args(argv)
    args.command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not args.command:
        parser.error("the supervisor's command line is missing (after --)")
    args.data_dir = (args.data_dir or default_data_dir()).expanduser()
    return args


if __name__ == "__main__":
    sys.exit(main())
