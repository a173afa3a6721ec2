"""The run store: ids, round trips, compare-and-set, schema versions, and readers in other processes."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from autoresearch_mcp.nanochat.errors import UserError
from autoresearch_mcp.sandbox.runstore import _MIGRATIONS, NoiseFloor, RunStore


def create(store: RunStore, description: str = "baseline") -> str:
    record = store.create(
        commit="a" * 40, parent_commit="b" * 40, description=description, profile="cpu", budget_seconds=60, seed=42
    )
    return record.id


def test_ids_count_up_in_launch_order(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "runs.db")
    assert [create(store, f"run {n}") for n in range(3)] == ["r0001", "r0002", "r0003"]
    assert [record.description for record in store.list()] == ["run 0", "run 1", "run 2"]
    fresh = store.get("r0002")
    assert (fresh.status, fresh.decision, fresh.summary, fresh.device) == ("queued", None, None, None)


def test_ids_are_unique_across_threads_and_processes(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    store = RunStore(db)
    other_process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
            from pathlib import Path
            from autoresearch_mcp.sandbox.runstore import _MIGRATIONS, RunStore
            store = RunStore(Path({str(db)!r}))
            for n in range(20):
                store.create(commit="c", parent_commit=None, description="other process", profile="cpu", budget_seconds=1, seed=0)
        """),
        ]
    )
    threads = [threading.Thread(target=lambda: [create(store) for _ in range(10)]) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert other_process.wait(timeout=60) == 0
    ids = [record.id for record in store.list()]
    assert ids == [f"r{n:04d}" for n in range(1, 41)]


def test_update_round_trips_every_kind_of_field(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "runs.db")
    run_id = create(store)
    summary = {"val_bpb": 0.9979, "phases": {"setup": 1.5}, "depth": 8}
    store.update(run_id, status="succeeded", summary=summary, exit_code=0, device="cuda:0", pid_create_time=12.5)
    reopened = RunStore(tmp_path / "runs.db").get(run_id)
    assert (reopened.status, reopened.summary, reopened.exit_code, reopened.device) == (
        "succeeded",
        summary,
        0,
        "cuda:0",
    )
    assert reopened.finished


def test_update_refuses_values_a_record_cannot_hold(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "runs.db")
    run_id = create(store)
    with pytest.raises(ValueError):
        store.update(run_id, status="exploded")
    with pytest.raises(ValueError, match="not run fields: colour"):
        store.update(run_id, colour="red")
    assert store.get(run_id).status == "queued"


def test_update_if_sets_only_while_the_expected_values_hold(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "runs.db")
    run_id = create(store)
    assert store.update_if(run_id, {"decision": None}, decision="keep").decision == "keep"
    assert store.update_if(run_id, {"decision": None}, decision="discard") is None
    assert store.get(run_id).decision == "keep"


def test_a_follower_wakes_on_each_write_and_on_request(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "runs.db")
    seen = store.wait_for_write(-1)  # the count so far, at once
    assert store.wait_for_write(seen, timeout=0.05) == seen, "no write: the wait times out"
    threading.Timer(0.1, create, args=(store,)).start()
    seen = store.wait_for_write(seen, timeout=30)
    assert seen == 1
    store.update("r0001", status="running")
    assert store.wait_for_write(seen, timeout=30) == 2, "a write before the wait is not missed"
    assert store.update_if("r0001", {"status": "queued"}, status="killed") is None
    assert store.wait_for_write(2, timeout=0.05) == 2, "a compare-and-set that changed nothing is no write"
    threading.Timer(0.1, store.wake_waiters).start()
    assert store.wait_for_write(2, timeout=30) == 2, "woken without a write"


def test_opening_a_current_store_writes_nothing(tmp_path: Path) -> None:
    RunStore(tmp_path / "runs.db").close()
    before = (tmp_path / "runs.db").read_bytes()
    RunStore(tmp_path / "runs.db").close()
    assert (tmp_path / "runs.db").read_bytes() == before


def test_unknown_run_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no run 'r0042'.*list_experiments"):
        RunStore(tmp_path / "runs.db").get("r0042")


def test_schema_is_versioned_and_in_wal_mode(tmp_path: Path) -> None:
    RunStore(tmp_path / "runs.db").close()
    with sqlite3.connect(tmp_path / "runs.db") as db:
        assert db.execute("PRAGMA user_version").fetchone() == (len(_MIGRATIONS),)
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(UserError, match="newer autoresearch-mcp"):
        RunStore(tmp_path / "runs.db")


def test_a_version_1_database_gains_the_isolation_column(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "runs.db") as db:
        db.executescript(_MIGRATIONS[0] + "PRAGMA user_version = 1;")
        db.execute(
            "INSERT INTO runs (seq, id, commit_sha, description, profile, budget_seconds, seed, status, created_at) "
            "VALUES (1, 'r0001', 'c', 'old run', 'cpu', 60, 1, 'succeeded', 0)"
        )
    store = RunStore(tmp_path / "runs.db")
    assert store.get("r0001").isolation is None
    fresh = store.create(
        commit="c", parent_commit=None, description="new", profile="cpu", budget_seconds=1, seed=0, isolation="none"
    )
    assert fresh.isolation == "none"


def test_a_version_1_store_is_migrated_keeping_its_runs(tmp_path: Path) -> None:
    db_path = tmp_path / "runs.db"
    with sqlite3.connect(db_path) as db:
        db.executescript(_MIGRATIONS[0] + "PRAGMA user_version = 1;")
        db.execute(
            "INSERT INTO runs (seq, id, commit_sha, parent_commit, description, profile, budget_seconds, seed, status, "
            "decision, created_at, summary) VALUES (1, 'r0001', 'c1', NULL, 'baseline', 'cpu', 60, 42, 'succeeded', "
            "'keep', 100.0, '{\"val_bpb\": 1.5}')"
        )
    store = RunStore(db_path)

    old = store.get("r0001")
    assert (old.kind, old.experiment, old.scale, old.forced, old.decided_at, old.tree) == (
        "experiment",
        "r0001",
        1.0,
        False,
        None,
        None,
    )
    assert (old.decision, old.summary) == ("keep", {"val_bpb": 1.5}) and store.floors() == []
    assert create(store) == "r0002", "new runs follow the old ones"
    with sqlite3.connect(db_path) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (len(_MIGRATIONS),)


def test_noise_floors_round_trip_one_per_commit_and_key(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "runs.db")
    floor = NoiseFloor(
        commit="c1",
        experiment="r0001",
        profile="cpu",
        budget_seconds=60,
        scale=1.0,
        data_source="builtin",
        data_id=None,
        runs=3,
        mean=1.5,
        std=0.01,
        mad=0.005,
        run_ids=["r0001", "r0002", "r0003"],
        measured_at=10.0,
    )
    store.put_floor(floor)
    remeasured = floor.model_copy(
        update={"runs": 4, "std": 0.012, "run_ids": [*floor.run_ids, "r0004"], "measured_at": 20.0}
    )
    store.put_floor(remeasured)
    at_scale = floor.model_copy(update={"scale": 2.0, "budget_seconds": 120, "measured_at": 30.0})
    store.put_floor(at_scale)

    assert RunStore(tmp_path / "runs.db").floors() == [remeasured, at_scale]


def test_another_process_reads_while_the_server_writes(tmp_path: Path) -> None:
    """A reader in another process sees every committed row and never a locked database."""
    db = tmp_path / "runs.db"
    store = RunStore(db)
    reader = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
            import sqlite3, sys
            db = sqlite3.connect("file:{db}?mode=ro", uri=True, timeout=0.05)
            seen = 0
            while seen < 60:
                count, = db.execute("SELECT COUNT(*) FROM runs").fetchone()
                statuses = {{row[0] for row in db.execute("SELECT status FROM runs")}}
                assert count >= seen, (count, seen)
                assert statuses <= {{"queued", "running", "succeeded"}}, statuses
                seen = count
            print("reader saw", seen)
        """),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    for _ in range(60):
        run_id = create(store)
        store.update(run_id, status="running")
        store.update(run_id, status="succeeded", summary={"val_bpb": 1.0})
    out, err = reader.communicate(timeout=60)
    assert reader.returncode == 0, err
    assert "reader saw 60" in out
