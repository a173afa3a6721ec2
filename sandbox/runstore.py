"""The run store: every experiment's record in SQLite (`.autoresearch/runs.db`).

One writer (the server) and any number of readers (other processes, a person with the
`sqlite3` shell) share the file: WAL mode lets readers see the last committed state while
the server writes. Inside the server, one connection is shared by all threads behind a lock;
every write is a single short statement or transaction.

The store is the source of every view of the runs (results.tsv, the leaderboard): a view
follows it with `wait_for_write`, on its own thread, instead of being called by the writers.

Locks: `_lock` guards the connection; `_writes` the write counter. Both are leaves (taken
last, after the workspace, git and scheduler locks; see docs/design.md) and held only for
one statement or one counter bump.
"""

from __future__ import annotations

import builtins
import json
import logging
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import pydantic

from autoresearch_mcp.nanochat.errors import UserError

log = logging.getLogger("autoresearch_mcp.sandbox")

Status = Literal["queued", "running", "succeeded", "crashed", "killed", "timed_out", "lost"]
Decision = Literal["keep", "discard"]
# experiment: an idea (a code change) to judge; repeat: the same commit again with another seed;
# noise: the kept best again with another seed (it measures the noise floor, never a keep);
# validation: a commit re-run at a larger scale (validate_experiment).
RunKind = Literal["experiment", "noise", "repeat", "validation"]
ACTIVE_STATUSES: tuple[Status, ...] = ("queued", "running")
FAILED_STATUSES: tuple[Status, ...] = ("crashed", "killed", "timed_out", "lost")


class RunRecord(pydantic.BaseModel):
    """One experiment, as the store keeps it."""

    id: str  # "r0001", "r0002", ... in launch order
    commit: str
    parent_commit: str | None
    description: str
    profile: str
    budget_seconds: float
    seed: int
    device: str | None = None  # the slot it ran on: "cpu", "cuda:0", ...
    requested_device: str | None = None
    status: Status = "queued"
    phase: str | None = None  # the run dir's `phase` file, as last seen
    decision: Decision | None = None
    note: str | None = None
    created_at: float
    started_at: float | None = None
    phase_started_at: float | None = None  # when the run entered `phase` (its limit clock restarts)
    finished_at: float | None = None
    decided_at: float | None = None
    exit_code: int | None = None
    error: str | None = None  # one-line reason for a failure
    summary: dict[str, Any] | None = None  # summary.json from the harness
    pid: int | None = None
    pid_create_time: float | None = None
    isolation: str | None = None  # "bubblewrap", or "none" for a run made unisolated (opted out)
    kind: RunKind = "experiment"
    experiment: str = ""  # the experiment the run counts toward: its own id (given as ""), or the one it repeats
    scale: float = 1.0  # model and budget scale (validation runs > 1); runs compare only at equal scale
    data_source: str | None = None  # the configured data at launch ("builtin", a path, ...); None: not recorded
    tree: str | None = None  # git tree of the commit: equal trees are the same code
    touched: list[str] | None = None  # what the commit changed against its parent (hyperparameters, functions)
    forced: bool = False  # kept although its verdict was not `better` (keep_experiment force=true)

    @property
    def finished(self) -> bool:
        return self.status not in ACTIVE_STATUSES

    @pydantic.model_validator(mode="after")
    def _own_experiment(self) -> RunRecord:
        if not self.experiment:
            self.experiment = self.id
        return self


class NoiseFloor(pydantic.BaseModel):
    """The seed-to-seed spread of val_bpb of one commit, for one profile, budget, data and scale."""

    commit: str
    experiment: str  # the experiment whose runs measured it
    profile: str
    budget_seconds: float
    scale: float
    data_source: str | None
    data_id: str | None
    runs: int
    mean: float
    std: float  # sample standard deviation (n - 1)
    mad: float  # median absolute deviation from the median
    run_ids: list[str]
    measured_at: float


_COLUMNS = tuple(name for name in RunRecord.model_fields if name != "id")
_JSON_COLUMNS = frozenset({"summary", "touched"})

# Each entry moves the schema one version up; the database's `user_version` says how many ran.
_MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE runs (
        seq INTEGER PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        commit_sha TEXT NOT NULL,
        parent_commit TEXT,
        description TEXT NOT NULL,
        profile TEXT NOT NULL,
        budget_seconds REAL NOT NULL,
        seed INTEGER NOT NULL,
        device TEXT,
        requested_device TEXT,
        status TEXT NOT NULL,
        phase TEXT,
        decision TEXT,
        note TEXT,
        created_at REAL NOT NULL,
        started_at REAL,
        phase_started_at REAL,
        finished_at REAL,
        exit_code INTEGER,
        error TEXT,
        summary TEXT,
        pid INTEGER,
        pid_create_time REAL
    );
    CREATE INDEX runs_by_status ON runs(status);
    """,
    # 2: the isolation a run was made with (issue 8's sandbox, or the opt-out).
    "ALTER TABLE runs ADD COLUMN isolation TEXT",
    # 3: research validity: run kinds grouped into experiments, scale and data identity, forced
    # keeps, and the noise floors measured so far. Existing runs become experiments of their own.
    """
    ALTER TABLE runs ADD COLUMN decided_at REAL;
    ALTER TABLE runs ADD COLUMN kind TEXT NOT NULL DEFAULT 'experiment';
    ALTER TABLE runs ADD COLUMN experiment TEXT;
    UPDATE runs SET experiment = id;
    ALTER TABLE runs ADD COLUMN scale REAL NOT NULL DEFAULT 1.0;
    ALTER TABLE runs ADD COLUMN data_source TEXT;
    ALTER TABLE runs ADD COLUMN tree TEXT;
    ALTER TABLE runs ADD COLUMN touched TEXT;
    ALTER TABLE runs ADD COLUMN forced INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX runs_by_experiment ON runs(experiment);
    CREATE TABLE noise_floors (
        commit_sha TEXT NOT NULL,
        experiment TEXT NOT NULL,
        profile TEXT NOT NULL,
        budget_seconds REAL NOT NULL,
        scale REAL NOT NULL,
        data_source TEXT,
        data_id TEXT,
        runs INTEGER NOT NULL,
        mean REAL NOT NULL,
        std REAL NOT NULL,
        mad REAL NOT NULL,
        run_ids TEXT NOT NULL,
        measured_at REAL NOT NULL
    );
    """,
)
# The columns that say which floor a row is: one row per commit and comparability key.
_FLOOR_KEY = ("commit_sha", "profile", "budget_seconds", "scale", "data_source", "data_id")
_FLOOR_COLUMNS = {name: ("commit_sha" if name == "commit" else name) for name in NoiseFloor.model_fields}

# `commit` is an SQL keyword; the column is called commit_sha and mapped here.
_SQL_NAME = {name: ("commit_sha" if name == "commit" else name) for name in _COLUMNS}


RUN_ID = re.compile(r"r\d{4,}")  # what run_id_for makes


class StoreFollower:
    """Calls `on_write()` on a thread of its own: once at start, then after each batch of writes.

    How a view of the runs (results.tsv, the noise floors) keeps up with the store without its
    writers calling it: a burst of writes that arrives while `on_write` runs is covered by the
    next pass. An exception in `on_write` is logged and the follower goes on.
    """

    def __init__(self, store: RunStore, on_write: Callable[[], None], name: str):
        self.store = store
        self.on_write = on_write
        self.name = name
        self._stopping = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        seen = self.store.wait_for_write(-1)  # the current count, at once
        self._call()
        self._stopping = False
        self._thread = threading.Thread(target=self._follow, args=(seen,), name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping = True
        self.store.wake_waiters()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _follow(self, seen: int) -> None:
        while not self._stopping:
            # The timeout covers a wake that comes between the check above and the wait.
            count = self.store.wait_for_write(seen, timeout=1.0)
            if count != seen and not self._stopping:
                seen = count
                self._call()

    def _call(self) -> None:
        try:
            self.on_write()
        except Exception:  # a full disk, say: the follower must live on for the next change
            log.exception("%s failed; it runs again on the next change", self.name)


def run_id_for(seq: int) -> str:
    return f"r{seq:04d}"


class RunStore:
    """Experiment records in the SQLite file `db_path` (created on first use).

    `read_only=True` opens an existing store for a reader in another process (the dashboard):
    no write reaches the records, and a schema this code does not know is refused. SQLite may
    still create the empty `-wal`/`-shm` companions a WAL reader needs to coordinate.
    """

    def __init__(self, db_path: Path, *, read_only: bool = False):
        self.db_path = Path(db_path)
        self._lock = threading.RLock()
        if read_only:
            uri = f"{self.db_path.absolute().as_uri()}?mode=ro"
            self._db = sqlite3.connect(uri, uri=True, check_same_thread=False, timeout=30)
            self._db.row_factory = sqlite3.Row
            self._check_schema()
            return
        # Autocommit mode: transactions are explicit, so none is left open between calls.
        self._db = sqlite3.connect(self.db_path, isolation_level=None, check_same_thread=False, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._migrate()
        self._writes = threading.Condition()
        self._write_count = 0

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ---- reads ------------------------------------------------------------------------

    def get(self, run_id: str) -> RunRecord:
        with self._lock:
            row = self._db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise UserError(f"no run {run_id!r}; run ids look like r0001, and list_experiments shows them all")
        return _record(row)

    def list(self, statuses: Iterable[Status] | None = None) -> list[RunRecord]:
        """Runs in launch order, optionally only those with one of `statuses`."""
        query = "SELECT * FROM runs"
        args: tuple[str, ...] = ()
        if statuses is not None:
            wanted = tuple(statuses)
            query += f" WHERE status IN ({', '.join('?' * len(wanted))})"
            args = wanted
        with self._lock:
            rows = self._db.execute(query + " ORDER BY seq", args).fetchall()
        return [_record(row) for row in rows]

    def wait_for_write(self, seen: int, timeout: float | None = None) -> int:
        """How many writes this store has made, waiting first while that is still `seen`.

        Returns after a write, after `timeout` seconds, or when `wake_waiters` is called,
        so a follower calls it in a loop. Pass 0 at first."""
        with self._writes:
            if self._write_count == seen:
                self._writes.wait(timeout)
            return self._write_count

    def wake_waiters(self) -> None:
        """Let every `wait_for_write` return now (a follower that is shutting down)."""
        with self._writes:
            self._writes.notify_all()

    # ---- writes -----------------------------------------------------------------------

    def create(
        self,
        *,
        commit: str,
        parent_commit: str | None,
        description: str,
        profile: str,
        budget_seconds: float,
        seed: int,
        requested_device: str | None = None,
        isolation: str | None = None,
        kind: RunKind = "experiment",
        experiment: str | None = None,
        scale: float = 1.0,
        data_source: str | None = None,
        tree: str | None = None,
        touched: builtins.list[str] | None = None,
    ) -> RunRecord:
        """A new `queued` run with the next id; `experiment` defaults to that id (a new experiment)."""
        with self._lock, self._transaction():
            (seq,) = self._db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM runs").fetchone()
            record = RunRecord(
                id=run_id_for(seq),
                commit=commit,
                parent_commit=parent_commit,
                description=description,
                profile=profile,
                budget_seconds=budget_seconds,
                seed=seed,
                requested_device=requested_device,
                isolation=isolation,
                created_at=time.time(),
                kind=kind,
                experiment=experiment or "",
                scale=scale,
                data_source=data_source,
                tree=tree,
                touched=touched,
            )
            values = {_SQL_NAME[name]: _to_sql(name, getattr(record, name)) for name in _COLUMNS}
            columns = ", ".join(["seq", "id", *values])
            marks = ", ".join("?" * (len(values) + 2))
            self._db.execute(f"INSERT INTO runs ({columns}) VALUES ({marks})", (seq, record.id, *values.values()))
        self._count_write()
        return record

    def update(self, run_id: str, **fields: Any) -> RunRecord:
        """Set `fields` on the run and return the updated record."""
        updated = self._update(run_id, {}, fields)
        assert updated is not None  # no condition to miss
        return updated

    def update_if(self, run_id: str, expected: dict[str, Any], **fields: Any) -> RunRecord | None:
        """Compare-and-set: set `fields` only while the run's columns hold `expected`.

        None means another thread or process changed the run first (or it does not hold
        those values): how a decision or a status move is made exactly once.
        """
        return self._update(run_id, expected, fields)

    # ---- noise floors -------------------------------------------------------------------

    def floors(self) -> builtins.list[NoiseFloor]:
        """Every stored noise floor, oldest measurement first."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM noise_floors ORDER BY measured_at").fetchall()
        return [_floor(row) for row in rows]

    def put_floor(self, floor: NoiseFloor) -> None:
        """Store `floor`, replacing the one measured before for the same commit and key."""
        values = {column: getattr(floor, name) for name, column in _FLOOR_COLUMNS.items()}
        values["run_ids"] = json.dumps(floor.run_ids)
        same_key = " AND ".join(f"{column} IS ?" for column in _FLOOR_KEY)
        with self._lock, self._transaction():
            self._db.execute(f"DELETE FROM noise_floors WHERE {same_key}", [values[c] for c in _FLOOR_KEY])
            self._db.execute(
                f"INSERT INTO noise_floors ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})",
                list(values.values()),
            )
        self._count_write()  # verdicts change with the floor: views follow

    # ---- internals --------------------------------------------------------------------

    def _update(self, run_id: str, expected: dict[str, Any], fields: dict[str, Any]) -> RunRecord | None:
        unknown = (set(fields) | set(expected)) - set(_COLUMNS)
        if unknown:
            raise ValueError(f"not run fields: {', '.join(sorted(unknown))}")
        with self._lock:
            checked = RunRecord.model_validate({**self.get(run_id).model_dump(), **fields})
            assignments = ", ".join(f"{_SQL_NAME[name]} = ?" for name in fields)
            conditions = "".join(f" AND {_SQL_NAME[name]} IS ?" for name in expected)
            values = [_to_sql(name, getattr(checked, name)) for name in fields]
            wanted = [_to_sql(name, value) for name, value in expected.items()]
            cursor = self._db.execute(
                f"UPDATE runs SET {assignments} WHERE id = ?{conditions}", (*values, run_id, *wanted)
            )
            if not cursor.rowcount:
                return None
            updated = self.get(run_id)
        self._count_write()
        return updated

    def _count_write(self) -> None:
        with self._writes:
            self._write_count += 1
            self._writes.notify_all()

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE takes the write lock up front, so an id read inside the
        transaction cannot be taken by another writer before the insert."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _migrate(self) -> None:
        with self._lock, self._transaction():
            version = self._schema_version()
            if version == len(_MIGRATIONS):
                return  # current: opening the store writes nothing
            for script in _MIGRATIONS[version:]:
                for statement in filter(str.strip, script.split(";")):
                    self._db.execute(statement)
            # PRAGMA takes no parameters; the value is our own integer.
            self._db.execute(f"PRAGMA user_version = {len(_MIGRATIONS)}")

    def _check_schema(self) -> None:
        if self._schema_version() != len(_MIGRATIONS):
            raise UserError(
                f"{self.db_path} has an older schema; start `autoresearch-mcp serve` on this workspace once to upgrade it"
            )

    def _schema_version(self) -> int:
        (version,) = self._db.execute("PRAGMA user_version").fetchone()
        if version > len(_MIGRATIONS):
            raise UserError(
                f"{self.db_path} was written by a newer autoresearch-mcp (schema {version}, this one knows "
                f"{len(_MIGRATIONS)}); upgrade autoresearch-mcp to use this workspace"
            )
        return version


def _to_sql(name: str, value: Any) -> Any:
    return json.dumps(value) if name in _JSON_COLUMNS and value is not None else value


def _floor(row: sqlite3.Row) -> NoiseFloor:
    fields = {name: row[column] for name, column in _FLOOR_COLUMNS.items()}
    fields["run_ids"] = json.loads(fields["run_ids"])
    return NoiseFloor(**fields)


def _record(row: sqlite3.Row) -> RunRecord:
    fields = {name: row[_SQL_NAME[name]] for name in _COLUMNS}
    for name in _JSON_COLUMNS:
        if fields[name] is not None:
            fields[name] = json.loads(fields[name])
    return RunRecord(id=row["id"], **fields)
