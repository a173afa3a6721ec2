"""Hostile train.py files, one per class of attack, run through the real engine and the real sandbox.

Each hostile train.py is the template (tiny, a fixed number of steps, so that an honest run's
weights and val_bpb are the same every time) with attack code added. Every attack tells what it
managed on PROBE lines of the run log (out/ is emptied when training ends); the test then checks that it managed nothing, that the recorded
val_bpb equals the honest baseline's (or that the run was stopped with a clear reason), and that
no file outside the run's out/ folder changed: the workspace, its git history, the data cache,
the installed package, and a decoy folder outside the workspace (standing in for $HOME).

The attack code is given the real host paths of everything it goes after, which an attacker
would have to guess: the strongest form of each attack.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from autoresearch_mcp.nanochat import contract
from autoresearch_mcp.nanochat.data import PreparedData
from autoresearch_mcp.sandbox.config import WorkspaceConfig
from autoresearch_mcp.sandbox.engine import ExperimentEngine
from autoresearch_mcp.sandbox.isolation import availability, harness_package_dir
from autoresearch_mcp.sandbox.runstore import RunRecord
from autoresearch_mcp.tests.engine_helpers import finish, until
from autoresearch_mcp.tests.nanochat_runs import make_snapshot
from autoresearch_mcp.tools import experiments
from autoresearch_mcp.tools.setup import init_workspace

pytestmark = pytest.mark.skipif(not availability().available, reason=f"no sandbox here: {availability().reason}")

FIXED_STEPS = ("while not run.done:", "while run.step < 4:")
PROBE_MARK = "PROBE "  # a line of the run log: what the attack managed (out/ is emptied after a run)
SURVIVOR_MARK = "autoresearch-survivor-3f9c"
SECRET = "the-secret-outside-the-sandbox"
MEMORY_LIMIT_GB = 2.5
PROCESS_LIMIT = 48

# What every attack starts with: how to report (a PROBE line in the log), and the host paths it goes after.
PREAMBLE = """
import json as _json, os as _os
_T = _json.loads({targets!r})

def _report(name, value):
    print("PROBE " + _json.dumps({{name: value}}), flush=True)

def _try(action):
    try:
        return "done: " + repr(action())[:200]
    except BaseException as _error:
        return "refused: " + type(_error).__name__
"""

# ---- the attacks (code that runs before training, in train.py's main guard) ----------------

READ_VALIDATION = """
import hashlib, glob
def _sha(path):  # regular files of a plausible size only: /proc/kcore or /dev/zero never end
    import stat
    info = _os.stat(path)
    if not stat.S_ISREG(info.st_mode) or info.st_size > 2**28 or path.startswith(("/proc/kcore", "/sys")):
        raise OSError("not a data file")
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()
_found = []
# by path: the real one, and guesses next to the train split it is given
for _path in [_T["val_shard"], *glob.glob(_os.environ["AUTORESEARCH_TRAIN_DIR"] + "/../val/*"),
              *glob.glob(_os.environ["AUTORESEARCH_TRAIN_DIR"] + "/../../*/val/*")]:
    if _try(lambda: _sha(_path)).startswith("done") and _sha(_path) in _T["val_hashes"]:
        _found.append(_path)
# through /proc: paths named in every process's environ, cmdline and mounts, with the train split's
# folder swapped for the validation split's; every process's cwd, root and open files
for _pid in [p for p in _os.listdir("/proc") if p.isdigit()]:
    for _what in ("environ", "cmdline", "mountinfo"):
        try:
            _words = open(f"/proc/{_pid}/{_what}", "rb").read().decode().replace("\\0", " ").split()
        except OSError:
            continue
        for _word in _words:
            for _guess in glob.glob(_word.replace("/train", "/val") + "/*"):
                if _try(lambda: _sha(_guess)).startswith("done") and _sha(_guess) in _T["val_hashes"]:
                    _found.append(_guess)
    for _link in ("cwd", "root"):
        _maybe = f"/proc/{_pid}/{_link}" + _T["val_shard"]
        if _try(lambda: _sha(_maybe)).startswith("done"):
            _found.append(_maybe)
    for _fd in glob.glob(f"/proc/{_pid}/fd/*"):
        if _try(lambda: _sha(_fd)).startswith("done") and _sha(_fd) in _T["val_hashes"]:
            _found.append(_fd)
# by scanning the whole file system view for any file with a validation shard's content
for _root, _dirs, _files in _os.walk("/"):
    _dirs[:] = [d for d in _dirs if _os.path.join(_root, d) not in ("/proc", "/sys", "/usr", "/dev")]
    for _name in _files:
        if _name.endswith(".npy"):
            _path = _os.path.join(_root, _name)
            if _try(lambda: _sha(_path)).startswith("done") and _sha(_path) in _T["val_hashes"]:
                _found.append(_path)
_report("validation files read", _found)
_report("processes seen", sorted(int(p) for p in _os.listdir("/proc") if p.isdigit()))
"""

PARENT_ENVIRONMENT = """
_leaks = []
for _source in ["/proc/self/environ", "/proc/1/environ", "/proc/2/environ"]:
    try:
        _text = open(_source, "rb").read().decode()
    except OSError:
        continue
    for _needle in [_T["secret_variable"], _T["cache"], _T["workspace"], _T["decoy"]]:
        if _needle in _text:
            _leaks.append(_source)
for _name, _value in _os.environ.items():
    for _needle in [_T["secret_variable"], _T["cache"], _T["workspace"], _T["decoy"]]:
        if _needle in _value:
            _leaks.append(_name)
_report("environment leaks", _leaks)
_report("home", _os.environ.get("HOME"))
_report("variables", sorted(_os.environ))
"""


def _writes(paths_expression: str) -> str:
    return f"""
_results = {{}}
_payload = _os.environ["AUTORESEARCH_RUN_DIR"] + "/payload"
for _path in {paths_expression}:
    open(_payload, "w").write("pwned")
    _results[_path] = _try(lambda: open(_path, "a").write("pwned"))
    _results[_path + " (replace)"] = _try(lambda: _os.replace(_payload, _path))
    _results[_path + " (mkdir)"] = _try(lambda: _os.makedirs(_os.path.dirname(_path) + "/pwned"))
_report("writes", _results)
"""


WRITE_RECORDS = _writes('_T["records"]')
WRITE_CACHE_AND_PACKAGE = _writes(
    '[_T["val_shard"], _T["train_shard"], _T["manifest"], _T["package_file"],'
    ' _os.environ["AUTORESEARCH_TRAIN_DIR"] + "/shard_00000.npy",'
    ' _os.environ["AUTORESEARCH_TOKENIZER_DIR"] + "/tokenizer.json",'
    ' _os.environ["AUTORESEARCH_SNAPSHOT"] + "/train.py"]'
)
WRITE_OUTSIDE = _writes('[_T["decoy_file"], _T["home"] + "/autoresearch-pwned", "/etc/passwd", "/usr/pwned"]')

NETWORK = """
import socket
_report("interfaces", [name for _, name in socket.if_nameindex()])
_report("routes", _try(lambda: open("/proc/net/route").read().splitlines()[1:]))
_report("loopback server", _try(lambda: socket.create_connection(("127.0.0.1", _T["port"]), timeout=2).recv(100)))
"""

SIGNALS = """
import signal
_report("server", _try(lambda: _os.kill(_T["server_pid"], 0)))
_report("parent", _try(lambda: _os.kill(_os.getppid(), signal.SIGKILL)))
_report("init", _try(lambda: _os.kill(1, signal.SIGKILL)))
"""

SURVIVOR = f"""
import sys, time
if _os.fork() == 0:
    _os.setsid()
    if _os.fork() == 0:
        _os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(600)  # {SURVIVOR_MARK}"])
    _os._exit(0)
time.sleep(0.5)
_report("spawned", True)
"""

FORK_BOMB = """
import time
for _level in range(8):  # 256 processes at most: small, and far past the run's limit
    _os.fork()
time.sleep(60)
"""

MEMORY_HOG = """
import time
_hog = []
for _ in range(40):  # up to 10 GB, in 256 MB steps: stopped long before
    _hog.append(bytearray(256 * 1024 * 1024))
    time.sleep(0.05)
time.sleep(60)
"""

TMPFS_HOG = """
import time
for _folder in ("/tmp", "/dev/shm"):  # in-memory folders: no process's RSS, but memory all the same
    for _n in range(6):
        with open(f"{_folder}/hog{_n}", "wb") as _f:
            _f.write(b"x" * 256 * 1024 * 1024)
time.sleep(60)
"""

# ---- planted after the hand-back: what the server reads from out/ ------------------------------

PLANT_SYMLINK = """
_os.replace(_os.environ["AUTORESEARCH_RUN_DIR"] + "/metrics.jsonl", _os.environ["AUTORESEARCH_RUN_DIR"] + "/real.jsonl")
_os.symlink(_T["secret_file"], _os.environ["AUTORESEARCH_RUN_DIR"] + "/metrics.jsonl")
"""
PLANT_FIFO = """
_os.unlink(_os.environ["AUTORESEARCH_RUN_DIR"] + "/metrics.jsonl")
_os.mkfifo(_os.environ["AUTORESEARCH_RUN_DIR"] + "/metrics.jsonl")
"""
HUGE_METRICS = """
with open(_os.environ["AUTORESEARCH_RUN_DIR"] + "/metrics.jsonl", "a") as _f:
    _f.write("[" * 50_000_000 + "\\n")  # one 50 MB line, deeply nested
    for _ in range(20_000):
        _f.write('{"step": 1, "loss": NaN, "progress": 1e999}\\n')
"""
HANDBACK_LINK = """
_stats = _os.environ["AUTORESEARCH_RUN_DIR"] + "/train_stats.json"
_os.replace(_stats, _stats + ".real")
_os.symlink(_T["secret_file"], _stats)
"""


# ---- the setting: one workspace, one engine, one honest baseline per module ----------------------


class Setting:
    def __init__(self, engine: ExperimentEngine, data: PreparedData, cache: Path, decoy: Path, port: int):
        self.engine = engine
        self.data = data
        self.cache = cache
        self.decoy = decoy
        self.port = port
        self.baseline: RunRecord | None = None

    @property
    def root(self) -> Path:
        return self.engine.workspace.root

    def targets(self) -> dict[str, object]:
        runs = self.root / ".autoresearch" / "runs"
        state = self.root / ".autoresearch"
        val_shards = sorted(self.data.val_dir.glob("*.npy"))
        return {
            "cache": str(self.cache),
            "workspace": str(self.root),
            "decoy": str(self.decoy),
            "decoy_file": str(self.decoy / "decoy.txt"),
            "secret_file": str(self.decoy / "secret.txt"),
            "home": str(Path.home()),
            "secret_variable": os.environ["AUTORESEARCH_TEST_SECRET"],
            "val_shard": str(val_shards[0]),
            "val_hashes": [hashlib.sha256(p.read_bytes()).hexdigest() for p in val_shards],
            "train_shard": str(sorted(self.data.train_dir.glob("*.npy"))[0]),
            "manifest": str(self.data.root / "manifest.json"),
            "package_file": str(harness_package_dir() / "harness.py"),
            "records": [
                str(state / "runs.db"),
                str(state / "config.toml"),
                str(self.root / "results.tsv"),
                str(self.root / "program.md"),
                str(self.root / ".git" / "refs" / "heads" / "best"),
                str(self.root / ".git" / "HEAD"),
                *[str(path) for path in runs.glob("*/summary.json")],
                *[str(path) for path in runs.glob("*/phase")],
                *[str(path) for path in runs.glob("*/snapshot/train.py")],
                str(runs / "r9999" / "summary.json"),
            ],
            "port": self.port,
            "server_pid": os.getpid(),
        }

    def launch(self, before: str = "", after: str = "", description: str = "attack") -> RunRecord:
        code = PREAMBLE.format(targets=json.dumps(self.targets())) + before
        guarded = "if __name__ == '__main__':\n" + _indent(code) if before else ""
        appended = (
            ("if __name__ == '__main__':\n" + _indent(PREAMBLE.format(targets=json.dumps(self.targets())) + after))
            if after
            else ""
        )
        scratch = self.root.parent / "scratch"
        snapshot = make_snapshot(scratch, [FIXED_STEPS], prepend=guarded, append="\n" + appended)
        (self.root / "train.py").write_text((snapshot / "train.py").read_text())
        return self.engine.launch(description, budget_seconds=30)

    def run(self, before: str = "", after: str = "") -> tuple[RunRecord, dict]:
        record = finish(self.engine, self.launch(before, after).id, timeout=600)
        return record, self.probe(record.id)

    def probe(self, run_id: str) -> dict:
        """What the run reported on its PROBE lines (later ones win)."""
        log = self.engine.run_dir(run_id) / contract.LOG
        found: dict = {}
        for line in log.read_text(encoding="utf-8", errors="replace").splitlines() if log.is_file() else []:
            if line.startswith(PROBE_MARK):
                found.update(json.loads(line[len(PROBE_MARK) :]))
        return found


def _indent(code: str) -> str:
    return "".join("    " + line + "\n" for line in code.strip("\n").splitlines())


@pytest.fixture(scope="module")
def setting(
    tmp_path_factory: pytest.TempPathFactory, prepared_cpu_data: PreparedData, cpu_data_dir: Path
) -> Iterator[Setting]:
    base = tmp_path_factory.mktemp("attacks")
    decoy = base / "decoy-home"
    decoy.mkdir()
    (decoy / "decoy.txt").write_text("outside the workspace\n")
    (decoy / "secret.txt").write_text(SECRET + "\n")
    saved = {name: os.environ.get(name) for name in ("OMP_NUM_THREADS", "AUTORESEARCH_TEST_SECRET")}
    # One thread: bit-reproducible CPU training, so every honest run scores the same.
    os.environ.update(OMP_NUM_THREADS="1", AUTORESEARCH_TEST_SECRET="sk-" + "x" * 20)
    config = WorkspaceConfig(
        profile="cpu",
        devices="cpu",
        data_dir=str(cpu_data_dir),
        memory_limit_gb=MEMORY_LIMIT_GB,
        process_limit=PROCESS_LIMIT,
    )
    workspace = init_workspace(base / "workspace", config)
    listener = socket.create_server(("127.0.0.1", 0))
    threading.Thread(target=_serve, args=(listener,), daemon=True).start()
    try:
        with ExperimentEngine(workspace) as engine:
            setting = Setting(engine, prepared_cpu_data, cpu_data_dir, decoy, listener.getsockname()[1])
            setting.baseline = finish(engine, setting.launch(description="honest baseline").id, timeout=600)
            assert setting.baseline.status == "succeeded", setting.baseline.error
            yield setting
    finally:
        listener.close()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _serve(listener: socket.socket) -> None:
    """A loopback server that answers anyone who connects (nobody in a sandbox should)."""
    while True:
        try:
            connection, _ = listener.accept()
        except OSError:
            return
        with connection:
            connection.sendall(b"reached the host's loopback")


def fingerprint(setting: Setting, run_id: str) -> dict[str, str]:
    """Every file, link and folder the run must leave alone, with a hash of its content or target.

    Left out: what the server itself writes for a launch (the run's own folder, runs.db, the
    snapshot commit and its ref, the working copy's base) and bytecode caches.
    """
    server_writes = {
        setting.root / ".autoresearch" / "runs" / run_id,
        setting.root / ".autoresearch" / "base",
        setting.root / ".git" / "objects",
        setting.root / ".git" / "refs" / "autoresearch",
        setting.root / ".git" / "logs",
        setting.root / "train.py",
    }
    seen = {}
    for root in (setting.root, setting.cache, harness_package_dir(), setting.decoy):
        for folder, subfolders, names in os.walk(root):
            subfolders[:] = [n for n in subfolders if n != "__pycache__" and Path(folder, n) not in server_writes]
            for name in subfolders + names:
                path = Path(folder, name)
                if path in server_writes or name.startswith("runs.db") or name == ".verified.json":
                    continue
                if path.is_symlink():
                    seen[str(path)] = "link:" + os.readlink(path)
                elif path.is_dir():
                    seen[str(path)] = "folder"
                elif path.is_file():
                    seen[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
                else:  # a FIFO an earlier attack left in its out/ folder: never opened
                    seen[str(path)] = "special"
    return seen


def attacked(setting: Setting, before: str = "", after: str = "") -> tuple[RunRecord, dict]:
    """Run one attack; check that nothing outside its out/ folder changed."""
    next_id = f"r{len(setting.engine.store.list()) + 1:04d}"
    files_before = fingerprint(setting, next_id)
    record, probe = setting.run(before, after)
    assert record.id == next_id
    assert fingerprint(setting, next_id) == files_before
    assert not list(_survivors()), "a process of the run outlived it"
    return record, probe


def _survivors() -> Iterator[psutil.Process]:
    for process in psutil.process_iter(["cmdline"]):
        if any(SURVIVOR_MARK in part for part in process.info["cmdline"] or ()):
            yield process


def assert_honest(setting: Setting, record: RunRecord) -> None:
    assert record.status == "succeeded", record.error
    assert record.summary["val_bpb"] == setting.baseline.summary["val_bpb"]
    assert record.summary["isolation"] == "bubblewrap" and record.isolation == "bubblewrap"


# ---- the table ------------------------------------------------------------------------------------


def check_validation(probe: dict) -> None:
    assert probe["validation files read"] == []
    # Its own PID namespace: the sandbox's init (bwrap) and train.py, nothing of the host.
    assert probe["processes seen"][:2] == [1, 2] and len(probe["processes seen"]) <= 3


def check_environment(probe: dict) -> None:
    assert probe["environment leaks"] == []
    # HOME is the sandbox's private /tmp; the one host path named is the interpreter's (PATH), bound read-only.
    assert probe["home"] == "/tmp"
    assert "AUTORESEARCH_MCP_CACHE" not in probe["variables"] and "VIRTUAL_ENV" not in probe["variables"]


def check_writes(probe: dict) -> None:
    # A path under /tmp (pytest's folders) lands in the sandbox's own private /tmp, which is not the
    # host's: the fingerprint shows the real file unchanged. Everything else must be refused.
    reached = {path: outcome for path, outcome in probe["writes"].items() if not outcome.startswith("refused")}
    assert probe["writes"] and all(path.startswith("/tmp/") for path in reached), reached


def check_network(probe: dict) -> None:
    assert probe["interfaces"] == ["lo"]
    assert probe["routes"] == "done: []"  # no route to any address: nothing outside can be reached
    assert probe["loopback server"].startswith("refused")


def check_signals(probe: dict) -> None:
    assert probe["server"] == "refused: ProcessLookupError"  # the server's pid does not exist in here
    assert probe["parent"] == "done: None" and probe["init"] == "done: None"  # init ignores what it has no handler for


def check_survivor(probe: dict) -> None:
    assert probe["spawned"] is True


HONEST_ATTACKS: dict[str, tuple[str, Callable[[dict], None]]] = {
    "read-validation": (READ_VALIDATION, check_validation),
    "parent-environment": (PARENT_ENVIRONMENT, check_environment),
    "write-records": (WRITE_RECORDS, check_writes),
    "write-cache-and-package": (WRITE_CACHE_AND_PACKAGE, check_writes),
    "write-outside-and-home": (WRITE_OUTSIDE, check_writes),
    "network": (NETWORK, check_network),
    "signal-server-and-supervisor": (SIGNALS, check_signals),
    "setsid-double-fork-survivor": (SURVIVOR, check_survivor),
}


@pytest.mark.parametrize("name", HONEST_ATTACKS)
def test_an_attack_reaches_nothing_and_the_score_stays_honest(setting: Setting, name: str) -> None:
    code, check = HONEST_ATTACKS[name]
    record, probe = attacked(setting, before=code)
    assert_honest(setting, record)
    check(probe)


@pytest.mark.parametrize(
    ("code", "limit"),
    [
        (FORK_BOMB, f"over its limit of {PROCESS_LIMIT} (process_limit"),
        (MEMORY_HOG, "GB of memory, over its limit"),
        (TMPFS_HOG, "GB of memory, over its limit"),
    ],
    ids=["fork-bomb", "memory-hog", "tmpfs-hog"],
)
def test_a_run_over_its_limits_is_stopped_with_the_reason(setting: Setting, code: str, limit: str) -> None:
    record, _ = attacked(setting, before=code)
    assert record.status == "crashed" and record.exit_code == contract.RunExit.OVER_LIMIT
    assert limit in record.error and "config.toml" in record.error
    assert record.summary is None


def test_a_link_planted_as_metrics_is_not_followed(setting: Setting) -> None:
    record, _ = attacked(setting, after=PLANT_SYMLINK)
    assert_honest(setting, record)
    report = experiments.read_metrics(setting.engine, record.id)
    assert report.logged_steps == 0 and SECRET not in report.model_dump_json()


def test_a_fifo_planted_as_metrics_does_not_block_the_server(setting: Setting) -> None:
    record, _ = attacked(setting, after=PLANT_FIFO)
    assert_honest(setting, record)
    done = threading.Event()
    threading.Thread(
        target=lambda: (experiments.read_metrics(setting.engine, record.id), done.set()), daemon=True
    ).start()
    assert done.wait(30), "read_metrics blocked on a FIFO"


def test_a_huge_metrics_file_is_read_bounded_and_strictly(setting: Setting) -> None:
    record, _ = attacked(setting, after=HUGE_METRICS)
    assert_honest(setting, record)
    report = experiments.read_metrics(setting.engine, record.id)
    assert report.logged_steps == 0  # the tail holds only junk, and none of it is believed


def test_a_hand_back_file_replaced_by_a_link_is_refused(setting: Setting) -> None:
    record, _ = attacked(setting, after=HANDBACK_LINK)
    assert record.status == "crashed" and record.exit_code == contract.RunExit.NO_MODEL
    assert "train_stats.json in the run's output folder is not a regular file" in record.error


def test_stop_training_leaves_no_process_of_the_run(setting: Setting) -> None:
    forever = SURVIVOR + "\nimport time\ntime.sleep(600)\n"
    record = setting.launch(before=forever)
    until(lambda: "spawned" in setting.probe(record.id), timeout=120, what="the survivor started")
    assert list(_survivors())  # it runs while the run does
    stopped = setting.engine.stop(record.id)
    assert stopped.status == "killed"
    until(lambda: not list(_survivors()), timeout=10, what="no process of the run left")
    with pytest.raises(ProcessLookupError):
        os.killpg(stopped.pid, 0)
