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

import json
import re
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import pydantic

from autoresearch_mcp.nanochat.errors import UserError

Status = Literal["queued", "running", "succeeded", "crashed", "killed", "timed_out", "lost"]
Decision = Literal["keep", "discard"]
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
    exit_code: int | None = None
    error: str | None = None  # one-line reason for a failure
    summary: dict[str, Any] | None = None  # summary.json from the harness
    pid: int | None = None
    pid_create_time: float | None = None
    isolation: str | None = None  # "bubblewrap", or "none" for a run made unisolated (opted out)

    @property
    def finished(self) -> bool:
        return self.status not in ACTIVE_STATUSES


_COLUMNS = tuple(name for name in RunRecord.model_fields if name != "id")
_JSON_COLUMNS = frozenset({"summary"})

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
    "ALTER TABLE runs ADD COLUMN isolation TEXT",
)

# `commit` is an SQL keyword; the column is called commit_sha and mapped here.
_SQL_NAME = {name: ("commit_sha" if name == "commit" else name) for name in _COLUMNS}


RUN_ID = re.compile(r"r\d{4,}")  # what run_id_for makes


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
    ) -> RunRecord:
        """A new `queued` run with the next id."""
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


def _record(row: sqlite3.Row) -> RunRecord:
    fields = {name: row[_SQL_NAME[name]] for name in _COLUMNS}
    for name in _JSON_COLUMNS:
        if fields[name] is not None:
            fields[name] = json.loads(fields[name])
    return RunRecord(id=row["id"], **fields)
