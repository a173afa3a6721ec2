"""Device slots, a FIFO queue, and the thread that starts, watches and ends runs.

Each slot (one GPU, or the host) trains one experiment at a time; launches beyond that wait in
launch order, a run that asked for a particular slot waiting for that one. While a slot's run is
being evaluated, the next one starts held: it sets up, and trains once that run has ended. A few times a
second the thread reads every running run's `phase` file, enforces the runner's one backstop (the supervisor owns each phase's limit),
escalates stops from SIGTERM to SIGKILL, and records how each run ended. Every status or
phase change is recorded in the store and announced on one Condition, which `wait` blocks on.

The scheduler owns no process it cannot find again: pids and creation times are in the
store, so after a restart `recover` re-adopts what still runs and settles what does not.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import psutil

from autoresearch_mcp.nanochat import contract
from autoresearch_mcp.nanochat.contract import Phase
from autoresearch_mcp.sandbox import limits
from autoresearch_mcp.sandbox.runner import Exit, RunHandle, Runner, outcome, read_phase
from autoresearch_mcp.sandbox.runstore import ACTIVE_STATUSES, RunRecord, RunStore

log = logging.getLogger("autoresearch_mcp.sandbox")

StopReason = Literal["killed", "timed_out"]  # the status of a run we ended


@dataclass
class _Running:
    record: RunRecord  # as last written
    slot: str
    process: RunHandle
    stop_reason: StopReason | None = None
    sigkill_at: float | None = None  # when a stop escalates to SIGKILL


class Scheduler:
    def __init__(
        self,
        store: RunStore,
        runner: Runner,
        slots: Sequence[str],
        *,
        poll_seconds: float = 0.25,
    ):
        if not slots:
            raise ValueError("a scheduler needs at least one device slot")
        self.store = store
        self.runner = runner
        self.slots = list(slots)
        self.poll_seconds = poll_seconds
        # Guards everything below (the queue, the running table, the change counters) and wakes
        # the long-polls. Taken after the workspace and git locks, before the store's (docs/design.md);
        # the scheduler calls nothing above sandbox/ while holding it.
        self._changed = threading.Condition()
        self._queue: list[str] = []
        self._running: dict[str, _Running] = {}
        self._versions: dict[str, int] = {}  # per run: bumped on every status or phase change
        self._version = 0  # bumped on any change
        self._thread: threading.Thread | None = None
        self._stopping = False

    # ---- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        """Settle what a previous server left behind, then run the scheduler thread."""
        with self._changed:
            if self._thread is not None:
                return
            self._recover()
            self._stopping = False
            self._thread = threading.Thread(target=self._loop, name="autoresearch-scheduler", daemon=True)
            self._thread.start()

    def shutdown(self) -> None:
        """Stop the thread; running processes go on and the next server re-adopts them."""
        with self._changed:
            thread, self._thread = self._thread, None
            self._stopping = True
            self._changed.notify_all()
        if thread is not None:
            thread.join()

    # ---- requests ---------------------------------------------------------------------

    def submit(self, run_id: str) -> None:
        """Queue a run; it starts now if a slot it may use is free."""
        with self._changed:
            self._queue.append(run_id)
            if self._thread is not None:
                self._dispatch()

    def stop(self, run_id: str, timeout: float | None = None) -> None:
        """Stop a queued or running run and wait (up to `timeout`) until its group is gone."""
        grace = self.runner.limits.kill_grace_seconds
        with self._changed:
            if run_id in self._queue:
                self._queue.remove(run_id)
                self._record(run_id, status="killed", finished_at=time.time(), error="stopped before it started")
                return
            running = self._running.get(run_id)
            if running is None:
                return
            self._begin_stop(running, "killed")
            give_up = time.monotonic() + (timeout or grace + 5)
            self._changed.wait_for(lambda: run_id not in self._running, timeout=give_up - time.monotonic())
        # Killed members linger a moment until their new parent (init) reaps them.
        while running.process.group_alive() and time.monotonic() < give_up:
            time.sleep(0.02)

    def set_slots(self, slots: Sequence[str]) -> None:
        """Schedule on these slots from now on (a cluster grew or shrank); a run on a slot that went
        keeps it until it ends."""
        if not slots:
            raise ValueError("a scheduler needs at least one device slot")
        with self._changed:
            self.slots = list(slots)
            if self._thread is not None:
                self._dispatch()

    def queue_position(self, run_id: str) -> int | None:
        """1 for the next run to start, 2 after it, ...; None if the run is not queued."""
        with self._changed:
            return self._queue.index(run_id) + 1 if run_id in self._queue else None

    def wait(self, run_id: str | None, timeout: float) -> None:
        """Block until the run (or, with None, any run) changes status or phase, or `timeout`.

        Returns at once when there is nothing to wait for: the run has finished, or (None)
        no run is queued or running.
        """
        with self._changed:
            if run_id is None:
                if not self._queue and not self._running:
                    return
                seen = self._version
                self._changed.wait_for(lambda: self._version != seen or self._stopping, timeout)
                return
            if self.store.get(run_id).status not in ACTIVE_STATUSES:
                return
            seen = self._versions.get(run_id, 0)
            self._changed.wait_for(lambda: self._versions.get(run_id, 0) != seen or self._stopping, timeout)

    # ---- the thread -------------------------------------------------------------------

    def _loop(self) -> None:
        with self._changed:
            while not self._stopping:
                try:
                    self._tick()
                except Exception:  # one bad run must not stop the watch over all others
                    log.exception("scheduler tick failed")
                self._changed.wait(self.poll_seconds)

    def _tick(self) -> None:
        for running in list(self._running.values()):
            self._watch(running)
        self._dispatch()

    def _watch(self, running: _Running) -> None:
        exit = running.process.poll()
        if exit is not None:
            self._finish(running, exit)
            return
        self._follow_phase(running)
        now = time.time()
        if running.stop_reason is None:
            deadline = self.runner.limits.deadline(running.record)
            if deadline is not None and now >= deadline:
                self._begin_stop(running, "timed_out")
        elif running.sigkill_at is not None and now >= running.sigkill_at:
            running.process.signal_group(signal.SIGKILL)
            running.sigkill_at = None

    def _follow_phase(self, running: _Running) -> None:
        state = read_phase(self.runner.run_dir(running.record.id))
        if state is None or state[0] == running.record.phase:
            return
        phase, entered = state
        running.record = self._record(running.record.id, phase=phase, phase_started_at=entered)

    def _begin_stop(self, running: _Running, reason: StopReason) -> None:
        if running.stop_reason is not None:
            return
        running.stop_reason = reason
        running.sigkill_at = time.time() + self.runner.limits.kill_grace_seconds
        running.process.signal_group(signal.SIGTERM)

    def _finish(self, running: _Running, exit: Exit) -> None:
        # Whatever the leader left behind in its group (a train.py it spawned) goes with it.
        running.process.signal_group(signal.SIGKILL)
        run_dir = self.runner.run_dir(running.record.id)
        state = read_phase(run_dir)
        if running.stop_reason is None:
            fields = outcome(run_dir, exit)
        else:
            fields = {"status": running.stop_reason, "exit_code": exit.code, "error": self._stop_message(running)}
            _note_in_log(run_dir, fields["error"])
        del self._running[running.record.id]
        self._record(
            running.record.id, finished_at=time.time(), phase=state[0] if state else running.record.phase, **fields
        )

    def _stop_message(self, running: _Running) -> str:
        if running.stop_reason == "timed_out":
            return f"timed out: {self.runner.limits.describe(running.record)}; the whole process group was killed"
        return "stopped by stop_training; the whole process group was killed"

    def _dispatch(self) -> None:
        """Start queued runs, oldest first, on free slots they may use. On a slot whose run is being
        evaluated the next run starts held: it sets up and imports torch now, and trains once that run
        has ended (the supervisor waits for it), so the slot goes from one run's training to the next's
        with only the evaluation between."""
        on_slot: dict[str, list[_Running]] = {}
        for running in self._running.values():
            on_slot.setdefault(running.slot, []).append(running)
        free = [slot for slot in self.slots if slot not in on_slot]
        behind = {
            slot: runs[0] for slot, runs in on_slot.items() if slot in self.slots and self._may_start_behind(runs)
        }
        for run_id in list(self._queue):
            if not free and not behind:
                return
            record = self.store.get(run_id)
            # A preference for a slot that no longer exists (the config changed) is dropped.
            wanted = record.requested_device if record.requested_device in self.slots else None
            candidates = [wanted] if wanted else free + list(behind)  # a free slot before a held start
            slot = next((s for s in candidates if s in free or s in behind), None)
            if slot is None:
                continue
            self._queue.remove(run_id)
            after = behind.pop(slot, None)
            if after is None:
                free.remove(slot)
            self._launch(record, slot, None if after is None else after.process)

    def _may_start_behind(self, runs: list[_Running]) -> bool:
        """Whether a run may start held behind `runs`, the runs on one slot: one run, being evaluated, not
        being stopped, where the host has memory to spare for a second interpreter with torch imported."""
        if not self.runner.holds_starts or len(runs) != 1:
            return False
        run = runs[0]
        if run.record.phase != Phase.EVALUATING or run.stop_reason is not None:
            return False
        return psutil.virtual_memory().available >= limits.HELD_START_MEMORY_BYTES

    def _launch(self, record: RunRecord, slot: str, after: RunHandle | None = None) -> None:
        try:
            process = self.runner.start(record, slot, after)
        except Exception as error:  # whatever it was, the run must not stay queued forever
            log.exception("could not start %s", record.id)
            self._record(
                record.id,
                status="crashed",
                device=slot,
                finished_at=time.time(),
                error=f"could not start the run: {error}",
            )
            return
        record = self._record(
            record.id,
            status="running",
            device=slot,
            started_at=time.time(),
            pid=process.pid,
            pid_create_time=process.create_time,
        )
        self._running[record.id] = _Running(record, slot, process)

    def _recover(self) -> None:
        """Re-adopt runs still alive from a previous server, settle the dead, re-queue the rest."""
        for record in self.store.list(ACTIVE_STATUSES):
            if record.status == "queued":
                if record.id not in self._queue:
                    self._queue.append(record.id)
                continue
            if record.id in self._running:
                continue
            process = self.runner.adopt(record)
            if process is not None:
                self._running[record.id] = _Running(record, record.device or "", process)
                continue
            fields = outcome(self.runner.run_dir(record.id), Exit(code=None))
            self._record(record.id, finished_at=time.time(), **fields)

    def _record(self, run_id: str, **fields: object) -> RunRecord:
        """Write a change and wake everyone waiting for one."""
        record = self.store.update(run_id, **fields)
        self._version += 1
        self._versions[run_id] = self._versions.get(run_id, 0) + 1
        self._changed.notify_all()
        return record


def _note_in_log(run_dir: Path, message: str) -> None:
    """Say at the end of the run's log why it ends there (a reader of the log sees no other sign)."""
    try:
        with open(run_dir / contract.LOG, "a", encoding="utf-8") as log_file:
            log_file.write(f"\n[autoresearch-mcp] {message}\n")
    except OSError:
        log.warning("could not append to the log of %s", run_dir)
