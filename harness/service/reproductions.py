"""Reproductions of the top finalists: `harness competition reveal --reproduce-top K` records one
request per finalist here, and the service's queue runs them through its own executor, each on
one GPU and one worker slot as an entry is (Ray as for entries); with no service running, the
reveal itself drains the same requests with the same code (`Reproductions.drain`).

    reproductions  id, track, rank, submission (the finalist: its name in the results store),
                   team, state (queued | running | finished | failed), verdict and reason,
                   attempts, what the reveal asked (`options`, JSON: base image, time limit,
                   mounts), the worker running it, and the times it was queued, started, ended
                   and its team told of its ending

The work itself is harness/reproduce's (top.py's `QueuedReproducer`), which this layer may not
import: `harness serve` and `reveal` hand in a `Reproducer`. Its verdict is written where
`harness reproduce --top` writes it (RESULTS_DIR/reproduce/<slug>/reproduction.json, whole and
last), so every rendering of the final leaderboard and the release manifest show it.

A reproduction ends with a verdict (reproduced, within-noise, differs, train-timeout,
train-failed, build-failed: the entry's own outcomes), or `failed` when the infrastructure
interrupted it once more than MAX_REQUEUES allows. An interruption (the service killed or stopped,
the engine or a Ray node lost, a harness crash) puts it back in the queue, counted in `attempts`;
a service that starts finds what a dead one left running and queues it again, unless it finished
before the service died (its reproduction.json of the same request): then that verdict is kept.
A reproduction stopped with its service (SIGTERM) has its containers removed (`Reproducer.stop`),
and what it writes afterwards is never taken as its verdict. No lease lapses under a reproduction
that runs here: each of its steps has its own limit (the build limit, the training's time limit,
the stage's evaluation deadline), and its end is recorded whatever it is. The team is told of
each ending once (`reproduction.finished`, `reproduction.failed`: notify.py), by the service,
which has the notification settings: what a reveal ran with no service running is told when the
service starts.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from harness.errors import InfrastructureError
from harness.infra.sqlite import SQLiteFile
from harness.run.executor import Task, TaskExecutor

log = logging.getLogger("harness.service")
# Interruptions by the infrastructure a reproduction survives (as an entry's MAX_REQUEUES).
MAX_REQUEUES = 1

TABLE = """CREATE TABLE IF NOT EXISTS reproductions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    track TEXT NOT NULL,
    rank INTEGER NOT NULL,
    submission TEXT NOT NULL,
    team TEXT NOT NULL,
    state TEXT NOT NULL,
    verdict TEXT,
    reason TEXT NOT NULL DEFAULT '',
    attempts INTEGER NOT NULL DEFAULT 0,
    options TEXT NOT NULL DEFAULT '{}',
    worker TEXT,
    queued_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    UNIQUE (track, submission)
)"""
TOLD_COLUMN = "ALTER TABLE reproductions ADD COLUMN told_at REAL"  # schema 6 (db.py)
# Migrating to schema 6: what ended before was told then (or, ended by a reveal, never will be).
TOLD_BEFORE = "UPDATE reproductions SET told_at = finished_at WHERE state IN ('finished', 'failed')"


class ReproductionState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    FINISHED = "finished"  # with a verdict
    FAILED = "failed"  # interrupted by the infrastructure too often: no verdict


@dataclass(frozen=True)
class Reproduction:
    id: int
    track: str
    rank: int
    submission: str  # the finalist's name in the results store (its original submission)
    team: str
    state: ReproductionState
    verdict: str | None
    reason: str
    attempts: int  # times it started
    options: dict[str, Any]  # what the reveal asked (Reproducer reads it)
    worker: str | None
    queued_at: float
    started_at: float | None
    finished_at: float | None
    told_at: float | None = None  # when its team was told of its ending


def _reproduction(row: Any) -> Reproduction:
    values = dict(row)
    values["state"] = ReproductionState(values["state"])
    values["options"] = json.loads(values["options"])
    return Reproduction(**values)


class ReproductionRecords(SQLiteFile):
    """ServiceDB's reproductions table (db.py mixes it in)."""

    def add_reproductions(
        self, finalists: list[tuple[str, int, str, str]], options: dict[str, Any]
    ) -> list[Reproduction]:
        """Queue a reproduction of each (track, rank, submission, team) not asked for before;
        returns the new requests."""
        now = time.time()
        added = []
        with self._write() as db:
            for track, rank, submission, team in finalists:
                cursor = db.execute(
                    "INSERT INTO reproductions (track, rank, submission, team, state, options, "
                    "queued_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                    (track, rank, submission, team, ReproductionState.QUEUED.value,
                     json.dumps(options), now),
                )  # fmt: skip
                if cursor.rowcount:
                    added.append(cursor.lastrowid)
        return [r for r in self.reproductions() if r.id in added]

    def reproductions(self, *states: ReproductionState) -> list[Reproduction]:
        """By track and rank; only those in `states` when given."""
        where = f"WHERE state IN ({', '.join('?' * len(states))})" if states else ""
        rows = self._read(
            f"SELECT * FROM reproductions {where} ORDER BY track, rank",
            *(s.value for s in states),
        )
        return [_reproduction(row) for row in rows]

    def reproduction(self, request_id: int) -> Reproduction | None:
        rows = self._read("SELECT * FROM reproductions WHERE id = ?", request_id)
        return _reproduction(rows[0]) if rows else None

    def untold_reproductions(self) -> list[Reproduction]:
        """The requests that ended (finished or failed) and whose team was not told yet."""
        rows = self._read(
            "SELECT * FROM reproductions WHERE state IN (?, ?) AND told_at IS NULL ORDER BY id",
            ReproductionState.FINISHED.value,
            ReproductionState.FAILED.value,
        )
        return [_reproduction(row) for row in rows]

    def reproduction_told(self, request_id: int) -> None:
        with self._write() as db:
            db.execute(
                "UPDATE reproductions SET told_at = ? WHERE id = ?", (time.time(), request_id)
            )

    def claim_reproduction(self, worker: str) -> Reproduction | None:
        """Move the first queued request (by queueing, then rank) to running; None if none."""
        with self._write() as db:
            row = db.execute(
                "SELECT id FROM reproductions WHERE state = ? ORDER BY queued_at, rank, id LIMIT 1",
                (ReproductionState.QUEUED.value,),
            ).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE reproductions SET state = ?, started_at = ?, attempts = attempts + 1, "
                "worker = ? WHERE id = ?",
                (ReproductionState.RUNNING.value, time.time(), worker, row["id"]),
            )
        return self.reproduction(row["id"])

    def end_reproduction(
        self, request_id: int, state: ReproductionState, reason: str, verdict: str | None = None
    ) -> bool:
        """A running request ends: finished with `verdict`, failed, or queued again (keeping
        its place); False when it was not running."""
        with self._write() as db:
            changed = db.execute(
                "UPDATE reproductions SET state = ?, verdict = ?, reason = ?, finished_at = ?, "
                "worker = NULL, told_at = NULL WHERE id = ? AND state = ?",
                (state.value, verdict, reason,
                 None if state is ReproductionState.QUEUED else time.time(), request_id,
                 ReproductionState.RUNNING.value),
            ).rowcount  # fmt: skip
        return bool(changed)


class Reproducer(Protocol):
    """The reproduction of one finalist (harness/reproduce/top.py's QueuedReproducer)."""

    def kept(self, request: Reproduction) -> tuple[str, str] | None:
        """(verdict, reason) of this request's reproduction when it finished earlier (a service
        killed between its end and its record), else None."""
        ...

    def task(self, request: Reproduction, shared_storage: bool) -> Task[Any]:
        """The job to run through the executor: task(gpu) -> a result for `verdict`."""
        ...

    def verdict(self, request: Reproduction, result: Any, shared_storage: bool) -> tuple[str, str]:
        """(verdict, reason) of a finished task's result, its reports written here."""
        ...

    def stop(self, request: Reproduction) -> None:
        """A running reproduction was stopped: remove its containers, and make sure that what
        it may still write is not taken as its verdict (`kept` is then None)."""
        ...


class Reproductions:
    """Runs the queued reproductions through `executor`, one per call of `launch`."""

    def __init__(
        self,
        db: ReproductionRecords,
        reproducer: Reproducer,
        executor: TaskExecutor,
        worker: str,
        *,
        on_end: Callable[[Reproduction], None] = lambda request: None,
        on_engine_lost: Callable[[], None] = lambda: None,
    ) -> None:
        """`on_end(request)`: each request that finished or failed (the team is told);
        `on_engine_lost()`: a task failed with the engine (the queue waits for it)."""
        self.db, self.reproducer, self.executor, self.worker = db, reproducer, executor, worker
        self.on_end, self.on_engine_lost = on_end, on_engine_lost
        self._running: dict[int, Future[Any]] = {}
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self.changed = threading.Event()  # set whenever one ends

    @property
    def running(self) -> list[int]:
        with self._lock:
            return list(self._running)

    def recover(self) -> None:
        """What a dead service (or reveal) left running: its kept verdict, else the queue."""
        for request in self.db.reproductions(ReproductionState.RUNNING):
            if request.id not in self.running:
                self._interrupted(request, "the service stopped while it ran")

    def launch(self) -> bool:
        """Start the next queued reproduction; False when none is queued."""
        request = self.db.claim_reproduction(self.worker)
        if request is None:
            return False
        if (kept := self.reproducer.kept(request)) is not None:
            self._finish(request, *kept)
            return True
        try:
            future = self.executor.submit_task(
                self.reproducer.task(request, self.executor.shared_storage), track=request.track
            )
        except Exception as exc:  # its inputs could not be packed, say: the harness's failure
            log.exception("reproduction of %s could not start", request.submission)
            self._interrupted(request, f"it could not start ({type(exc).__name__}: {exc})")
            return True
        with self._lock:
            self._running[request.id] = future
        future.add_done_callback(lambda done: self._ended(request, done))
        return True

    def _ended(self, request: Reproduction, future: Future[Any]) -> None:
        try:
            if not self._closing.is_set():  # else stopped with the service: `close` queued it
                self._record(request, future)
        finally:
            # Running until recorded: `drain` ends only once every verdict is in the database.
            with self._lock:
                self._running.pop(request.id, None)
            self.changed.set()

    def _record(self, request: Reproduction, future: Future[Any]) -> None:
        try:
            verdict, reason = self.reproducer.verdict(
                request, future.result(), self.executor.shared_storage
            )
        except InfrastructureError as exc:  # EntryLost included: a node died
            self._interrupted(request, f"the infrastructure failed: {exc}")
            self.on_engine_lost()
        except Exception as exc:
            log.exception("reproduction of %s crashed", request.submission)
            self._interrupted(request, f"the harness crashed ({type(exc).__name__})")
        else:
            self._finish(request, verdict, reason)

    def _finish(self, request: Reproduction, verdict: str, reason: str) -> None:
        if self.db.end_reproduction(request.id, ReproductionState.FINISHED, reason, verdict):
            self._told(request.id)

    def _interrupted(self, request: Reproduction, why: str) -> None:
        """Not the entry's doing: its kept verdict if it finished, else back in the queue
        MAX_REQUEUES times, then failed."""
        if (kept := self.reproducer.kept(request)) is not None:
            self._finish(request, *kept)
        elif request.attempts <= MAX_REQUEUES:
            self.db.end_reproduction(
                request.id, ReproductionState.QUEUED, f"queued again: {why}; not the entry's"
            )
        elif self.db.end_reproduction(
            request.id,
            ReproductionState.FAILED,
            f"{why}; interrupted {request.attempts} times by the infrastructure, so not run "
            "again: `harness competition reveal --reproduce-top` queues it anew",
        ):
            self._told(request.id)

    def _told(self, request_id: int) -> None:
        if (ended := self.db.reproduction(request_id)) is not None:
            try:
                self.on_end(ended)
            except Exception:
                log.exception("the team of %s could not be told", ended.submission)

    def close(self) -> list[Future[Any]]:
        """Stop what runs (its containers removed) and queue it again at its place; returns
        the futures of what ran, which may take a while to end."""
        self._closing.set()
        with self._lock:
            stopped = list(self._running.values())
        for request_id in self.running:
            if (request := self.db.reproduction(request_id)) is not None:
                try:
                    self.reproducer.stop(request)
                except Exception:
                    log.warning("could not stop %s's reproduction", request.submission)
        for request in self.db.reproductions(ReproductionState.RUNNING):
            # A stopped one's verdict is never kept; attempts are the infrastructure's.
            if request.attempts <= MAX_REQUEUES:
                self.db.end_reproduction(
                    request.id, ReproductionState.QUEUED, "queued again: the service stopped"
                )
            else:
                self._interrupted(request, "the service stopped while it ran")
        return stopped

    def drain(self, slots: int) -> list[Reproduction]:
        """Run every queued reproduction here, `slots` at a time, until none is left (the
        reveal with no service running); the requests as they ended."""
        self.recover()
        while True:
            while len(self.running) < slots and self.launch():
                pass
            if not self.running:
                break
            self.changed.wait(timeout=5)
            self.changed.clear()
        return self.db.reproductions()
