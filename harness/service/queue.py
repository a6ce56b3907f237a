"""The worker loop: queued submissions run in order through the shared per-entry pipeline.

One thread takes the first queued submission whenever a worker slot is free, records an attempt in
the results store and hands the entry to the executor (the same seam as `harness run`: local
threads by default, a fleet elsewhere). When the executor's future ends, the result is written to
the results store first and to the service database second.

On start, submissions left running by a service that died are put back in the queue at their
place, unless the results store already holds their result (the service died between the two
writes): then that result is kept, so nothing runs twice to completion. Containers of the dead
service carry its run label (the data folder's) and are removed before anything runs again,
whatever `--jobs` (0 included: a queue-only restart must not leave a GPU held); another data
folder's containers carry another label and are left alone. A service that is stopped (`close`:
SIGTERM, SIGINT) removes the containers of what it was running and puts those submissions back
at their place, the head of the queue. An engine that goes
away is not the entry's fault: the entry goes back to its place and the queue waits for the
engine (preparing the executor again every ENGINE_RETRY_S) before it takes anything more. Nor is
a full disk under the data folder: an entry whose start or ending cannot be recorded goes back
to its place (as soon as the service's database can be written again), and the queue takes
nothing for DISK_RETRY_S after each write that found no space.

No entry stays running forever. Each running entry holds a lease in the database, renewed every
heartbeat by this queue while its evaluation is not frozen (leases.py: a process in its HELM folder
stopped by a signal), or, for an entry on another machine (a Ray node), from the heartbeats its
task sends (`Executor.heartbeats`); a lease that lapses (`lease_s` without renewal) ends the
entry: its processes are killed, the executor stops it where it runs (its containers removed),
and it goes back to its place, an infrastructure failure that does not count against the team
(its reason says so until it runs again). So does an entry whose machine the executor reports
lost (EntryLost: its Ray node died), without waiting for the lease. An entry that the
infrastructure interrupts (a lapsed lease, a lost node or engine, a killed service, a harness
crash), or that an organizer cancels while it runs, goes back to the queue MAX_REQUEUES time(s)
on its own and its team is told; the next time it is cancelled, not counted, and the team asked
to submit it again. An entry running
past its ceiling (leases.ceiling_s) is stopped the same way and ends `eval-timeout` with that
reason. The ending its worker sends later is discarded.

The top finalists' reproductions (`harness competition reveal --reproduce-top`: reproductions.py)
take worker slots from the same executor, ahead of queued entries: each holds a slot and a GPU
as an entry does until its verdict is recorded; a stopped service stops them too and a restarted
one queues again what a dead one left running.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, wait
from contextlib import suppress
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

from harness.errors import DiskFullError, EntryLost, InfrastructureError
from harness.infra import docker as engine
from harness.run.executor import Executor, Node
from harness.run.options import RunOptions
from harness.run.pipeline import Ending, EntryJob
from harness.run.recorder import StoreRecorder
from harness.secrets import redact
from harness.service import leases
from harness.service.db import MAX_REQUEUES, ServiceDB, State, Submission
from harness.service.notify import Notifier
from harness.service.reproductions import Reproductions
from harness.store import RUN_LABEL, Attempt, Status, Store, results_id

log = logging.getLogger("harness.service")
POLL_S = 1.0
# After the engine went away: how long the queue waits before preparing the executor again.
ENGINE_RETRY_S = 30.0
# After a write found the disk full: how long the queue waits before it takes anything again.
DISK_RETRY_S = 30.0
# How long a stopping service waits for its interrupted evaluations to end (their containers are
# removed first, so they end within seconds unless a build or HELM does not notice).
STOP_WAIT_S = 20.0
# A running entry's lease: how long it lasts without renewal, and the most between renewals.
LEASE_S = 120.0
HEARTBEAT_S = 10.0


class Slot(NamedTuple):
    """A worker slot, for the admin page: what runs there, an entry or a finalist reproduced."""

    number: int
    submission: str | None
    reproduction: bool = False


class Queue:
    def __init__(
        self,
        db: ServiceDB,
        store: Store,
        options: RunOptions,
        executor: Executor | None,
        zip_path: Callable[[str], Path],
        *,
        lease_s: float = LEASE_S,
        ceiling_s: float | None = None,
        notifier: Notifier | None = None,
        phase_options: Mapping[str, RunOptions] | None = None,
        on_tick: Callable[[], None] | None = None,
        reproductions: Reproductions | None = None,
    ) -> None:
        """`options` are the evaluation's, for every track (the track is the submission's);
        `phase_options` a competition phase's own (its stage, run specs or pack), by phase name;
        `executor` None (`--jobs 0`) accepts submissions and runs none. `ceiling_s` defaults to
        the longest leases.ceiling_s of the options. `on_tick()` runs on each turn of the loop
        (the competition's clock). `reproductions`: the top finalists' reproductions, run on
        the same executor and worker slots as entries (first, when both wait)."""
        self.db = db
        self.store = store
        self.options = options
        self.executor = executor
        self.jobs = options.jobs if executor is not None else 0
        self.zip_path = zip_path
        self.run_id = results_id(options.out)
        self.phase_options = dict(phase_options or {})
        self.on_tick = on_tick
        self._packs = {
            name: pack.sha256 if (pack := opts.pack()) else None
            for name, opts in {"": options, **self.phase_options}.items()
        }
        self._running: dict[str, Future[Ending]] = {}
        self._attempts: dict[str, Attempt] = {}
        # Futures of entries ended by their lease or ceiling: what they end with is discarded.
        self._abandoned: set[Future[Ending]] = set()
        self.lease_s = lease_s
        self.heartbeat_s = min(HEARTBEAT_S, lease_s / 4)
        self.ceiling_s = (
            ceiling_s
            if ceiling_s is not None
            else max(leases.ceiling_s(o) for o in [options, *self.phase_options.values()])
        )
        self.worker = worker_name()
        self.notifier = notifier
        self.reproductions = reproductions
        self._next_beat = 0.0
        self._retry_at: float | None = None  # set while the engine is away
        self._disk_retry_at = 0.0  # after a write found the disk full
        # Running in the database, not here: a full disk kept their ending from being recorded.
        self._unsettled: set[str] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="queue", daemon=True)

    def start(self) -> None:
        # The containers a killed service left behind (they carry the data folder's run label).
        if self.executor is not None:
            self.executor.start(self.options, self.run_id)
        else:
            try:
                _remove_containers({"label": f"{RUN_LABEL}={self.run_id}"})
            except InfrastructureError as exc:  # a queue-only service may have no engine at all
                log.warning("no containers of an earlier service removed: %s", exc)
        self.recover()
        if self.reproductions is not None:
            self.reproductions.recover()
        self._thread.start()

    def recover(self) -> None:
        """Settle what a dead service left running: its result if stored, else the queue."""
        self.store.mark_interrupted()
        for sub in self.db.submissions(states=(State.RUNNING,)):
            self._settle(sub)

    def _settle(self, sub: Submission) -> None:
        """A submission the database says runs, and nothing runs: its result if it was stored
        since it started, else back to its place in the queue."""
        stored = self.store.results(self.options_for(sub).stage).get(sub.entry)
        if stored is not None and sub.started_at and stored.updated_at >= sub.started_at:
            self.db.finish(sub.id, stored.status.value, stored.reason)
        else:
            self._requeue(sub.id, "re-queued: the service stopped while it ran")

    def options_for(self, sub: Submission) -> RunOptions:
        """The evaluation's options for `sub`: its phase's, else the service's."""
        return self.phase_options.get(sub.phase, self.options)

    def _requeue(self, sub_id: str, reason: str) -> None:
        """The infrastructure (or an organizer) ended it: back to its place, not counted,
        MAX_REQUEUES times; then cancelled, not counted. Its team is told either way."""
        sub = self.db.submission(sub_id)
        if sub is None:
            return
        # Neither when it was cancelled meanwhile (a cancelled Ray task ends as lost).
        if sub.requeues < MAX_REQUEUES:
            if self.db.requeue(sub_id, keep_place=True, reason=reason, infrastructure=True):
                self.notify(sub_id, "requeued")
        elif self.db.give_up(
            sub_id,
            f"{reason}; interrupted {sub.requeues + 1} times (never by the team), so it is not "
            "run again: not counted, submit it again",
        ):
            self.notify(sub_id, "cancelled")

    def wake(self) -> None:
        self._wake.set()

    def workers(self) -> list[Slot]:
        """Each worker slot and what runs there, for the admin page."""
        with self._lock:
            running: list[tuple[str | None, bool]] = [(sub_id, False) for sub_id in self._running]
        if (reproductions := self.reproductions) is not None:
            for request_id in reproductions.running:
                if (request := reproductions.db.reproduction(request_id)) is not None:
                    running.append((request.submission, True))
        running += [(None, False)] * (self.jobs - len(running))
        return [Slot(number, *what) for number, what in enumerate(running, start=1)]

    def nodes(self) -> list[Node]:
        """The fleet's machines, idle ones too, for the admin page (none when the fleet does
        not answer: the page shows what it can)."""
        try:
            return self.executor.nodes() if self.executor is not None else []
        except Exception:
            log.warning("the fleet's machines could not be listed", exc_info=True)
            return []

    def stop(self, sub_id: str) -> None:
        """A running submission was cancelled: remove its container, so that its health wait or
        HELM run fails fast; its ending is then not recorded as the submission's result.

        (A build under way runs to its end.)
        """
        with self._lock:
            if sub_id not in self._running:
                return
        self._cancel(sub_id)

    def _job(self, sub_id: str) -> EntryJob:
        sub = self.db.submission(sub_id)
        if sub is None:
            return EntryJob(sub_id, self.zip_path(sub_id), self.options, self.run_id)
        return EntryJob(sub.entry, self.zip_path(sub.entry), self.options_for(sub), self.run_id)

    def _cancel(self, sub_id: str) -> None:
        assert self.executor is not None  # something runs
        try:
            self.executor.cancel(self._job(sub_id).name)
        except Exception:  # the result is discarded anyway
            log.warning("could not stop %s where it runs", sub_id, exc_info=True)

    def leases(self) -> dict[str, tuple[str | None, float | None]]:
        """submission id -> (worker, last heartbeat) of what runs, for the admin page."""
        return {
            sub.id: (sub.worker, sub.heartbeat_at)
            for sub in self.db.submissions(states=(State.RUNNING,))
        }

    def close(self) -> bool:
        """Stop taking submissions and stop what runs: its containers are removed and its
        submissions queued again at their place (the head of the queue).

        Returns False when evaluations were still in flight after STOP_WAIT_S: their worker
        threads may wait on a build or a HELM subprocess for minutes, so the caller should not
        wait for them.
        """
        self._closing.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        # Its containers go first: what the reproductions write afterwards is discarded.
        stopped = self.reproductions.close() if self.reproductions is not None else []
        if self.executor is None:
            return True
        with self._lock:
            running = [*self._running.values(), *stopped]
        self.executor.interrupt()
        _, pending = wait(running, timeout=STOP_WAIT_S)
        # A worker may have started a container while the executor was being stopped.
        with suppress(InfrastructureError):  # no local engine (a fleet's): the executor's own
            _remove_containers({"label": f"{RUN_LABEL}={self.run_id}"})
        # As on a restart: a result stored in the meantime is kept, the rest queued again.
        self.recover()
        if not pending:
            self.executor.close()
        return not pending

    # -- the loop ---------------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._closing.is_set():
            try:
                self._fill()
                self._watch()
            except Exception:  # a failing database or engine must not end the service's queue
                log.exception("the queue loop failed; retrying")
            self._wake.wait(POLL_S)
            self._wake.clear()

    def _engine_ready(self) -> bool:
        """False while the engine is away; prepares the executor again once it is time to."""
        assert self.executor is not None
        if self._retry_at is None:
            return True
        if time.monotonic() < self._retry_at:
            return False
        try:
            self.executor.start(self.options, self.run_id)
        except InfrastructureError as exc:
            log.warning("the engine is still away (%s); retrying later", exc)
            self._retry_at = time.monotonic() + ENGINE_RETRY_S
            return False
        self._retry_at = None
        return True

    def _fill(self) -> None:
        if time.monotonic() < self._disk_retry_at:
            return
        try:
            for sub_id in list(self._unsettled):
                if (sub := self.db.submission(sub_id)) and sub.state is State.RUNNING:
                    self._settle(sub)
                self._unsettled.discard(sub_id)
            if self.on_tick is not None:
                self.on_tick()
            while self.executor is not None and not self._closing.is_set() and self._engine_ready():
                with self._lock:
                    busy = len(self._running)
                if self.reproductions is not None:
                    busy += len(self.reproductions.running)
                if busy >= self.jobs:
                    return
                if self.reproductions is not None and self.reproductions.launch():
                    continue
                sub = self.db.claim_next(self.worker)
                if sub is None:
                    return
                try:
                    self._launch(sub)
                except DiskFullError:
                    self._unsettled.add(sub.id)
                    raise
        except DiskFullError as exc:
            log.error("the queue waits %.0f s: %s", DISK_RETRY_S, exc)
            self._disk_retry_at = time.monotonic() + DISK_RETRY_S

    def _watch(self) -> None:
        """Renew the leases of what runs here and is not frozen; end what lapsed or ran past its
        ceiling."""
        with self._lock:
            running = list(self._running)
        if time.monotonic() >= self._next_beat:
            self._next_beat = time.monotonic() + self.heartbeat_s
            # Heartbeats name jobs: a final run's job is named by the entry it re-runs.
            jobs = {sub_id: self._job(sub_id) for sub_id in running}
            elsewhere = self.executor.heartbeats() if self.executor is not None else {}
            alive = [
                sub_id
                for sub_id, job in jobs.items()
                if job.name not in elsewhere
                and not leases.frozen(leases.entry_processes(job.helm_dir))
            ]
            self.db.beat(alive, self.worker)
            for sub_id, job in jobs.items():
                if (beat := elsewhere.get(job.name)) is not None:
                    self.db.beat([sub_id], beat.where, at=beat.at)
        for sub in self.db.lapsed(time.time() - self.lease_s):
            if sub.id in running:
                self.end(
                    sub.id,
                    f"re-queued: its evaluation sent no heartbeat for {self.lease_s:g} s "
                    "(frozen or gone); an infrastructure failure, not counted against the team",
                )
        now = time.time()
        for sub in self.db.submissions(states=(State.RUNNING,)):
            if sub.id in running and sub.started_at and now - sub.started_at > self.ceiling_s:
                self.end(
                    sub.id,
                    f"stopped at its ceiling of {self.ceiling_s:g} s (build limit, health "
                    "checks, the stage's limit and a margin)",
                    status=Status.EVAL_TIMEOUT,
                )

    def end(self, sub_id: str, reason: str, *, status: Status | None = None) -> bool:
        """Stop a running entry here: its processes killed, its containers removed; then back to
        its place in the queue (`status` None: an ending that is not the entry's, as a lapsed
        lease or an organizer's cancel) or finished with `status`. False when it does not run
        here."""
        with self._lock:
            future = self._running.pop(sub_id, None)
            attempt = self._attempts.pop(sub_id, None)
            if future is None or attempt is None:
                return False
            self._abandoned.add(future)
        log.warning("%s: %s", sub_id, reason)
        leases.kill(leases.entry_processes(self._job(sub_id).helm_dir))
        self._cancel(sub_id)
        if status is None:
            self.store.finish_attempt(attempt)
            self._requeue(sub_id, reason)
        else:
            self.store.record_status(attempt, status, reason)
            self.db.finish(sub_id, status.value, reason)
            self.notify(sub_id, "failed")
        self._wake.set()
        return True

    def engine_lost(self) -> None:
        """The engine went away under a reproduction: wait for it as for an entry."""
        self._retry_at = time.monotonic() + ENGINE_RETRY_S

    def notify(self, sub_id: str, what: str) -> None:
        """Tell the submission's team (notify.py), when the service notifies: queued for
        delivery elsewhere, so that a failing receiver never holds up the queue."""
        if self.notifier is None or (sub := self.db.submission(sub_id)) is None:
            return
        try:
            self.notifier.entry(sub, what)
        except Exception:
            log.exception("%s: the team could not be notified", sub_id)

    def _disk_full(self, sub_id: str, attempt: Attempt, exc: DiskFullError) -> None:
        """The ending could not be recorded: the submission goes back to its place once the
        database can be written, and the queue waits DISK_RETRY_S."""
        log.error("%s re-queued: %s", sub_id, exc)
        self._disk_retry_at = time.monotonic() + DISK_RETRY_S
        with suppress(DiskFullError):  # left open, it is closed on the next start
            self.store.finish_attempt(attempt)
        self._unsettled.add(sub_id)

    def _launch(self, sub: Submission) -> None:
        assert self.executor is not None
        path = self.zip_path(sub.entry)
        options = self.options_for(sub)
        self.store.add_entry(sub.entry, path)
        attempt = self.store.start_attempt(
            sub.entry, options.stage, instances_sha256=self._packs.get(sub.phase, self._packs[""])
        )
        job = EntryJob(
            name=sub.entry,
            path=path,
            options=replace(options, track=sub.track),
            run_id=self.run_id,
            reuse_build=sub.final_run and _reuse_image(sub, job_stage=options.stage),
        )
        future = self.executor.submit(job, StoreRecorder(self.store, attempt))
        with self._lock:
            self._running[sub.id] = future
            self._attempts[sub.id] = attempt
        future.add_done_callback(lambda done: self._finished(sub.id, attempt, done))

    def _finished(self, sub_id: str, attempt: Attempt, future: Future[Ending]) -> None:
        with self._lock:
            if future in self._abandoned:  # ended by its lease or ceiling already
                self._abandoned.discard(future)
                return
        if self._closing.is_set():
            # Stopped by the service's own shutdown: not the entry's result. It stays running in
            # the database and is queued again at its place on the next start.
            return
        try:
            status, reason = future.result()
        except DiskFullError as exc:
            self._disk_full(sub_id, attempt, exc)
            self._done(sub_id)
            return
        except EntryLost as exc:
            # Its machine went away, not the engine of the others: no waiting for it.
            self.end(
                sub_id,
                f"re-queued: {exc}; an infrastructure failure, not counted against the team",
            )
            with self._lock:
                self._abandoned.discard(future)
            return
        except InfrastructureError as exc:
            # The engine went away, not the entry: it goes back to its place in the queue, and
            # the queue waits for the engine before it takes anything again.
            log.warning("%s re-queued: %s", sub_id, exc)
            self.store.finish_attempt(attempt)
            self._requeue(sub_id, f"re-queued: the engine went away ({redact(str(exc))})")
            self._retry_at = time.monotonic() + ENGINE_RETRY_S
            self._done(sub_id)
            return
        except Exception as exc:  # a bug in the harness, not the entry's fault: the queue goes on
            log.exception("%s: the evaluation crashed", sub_id)
            self.store.finish_attempt(attempt)
            self._requeue(sub_id, f"re-queued: the harness crashed ({type(exc).__name__})")
            self._done(sub_id)
            return
        reason = redact(reason)
        # The store first: a service killed between the two writes finds the result on restart.
        try:
            self.store.record_status(attempt, status, reason)
        except DiskFullError as exc:
            self._disk_full(sub_id, attempt, exc)
            self._done(sub_id)
            return
        try:
            # False when it was cancelled meanwhile
            if self.db.finish(sub_id, status.value, reason):
                self.notify(sub_id, "scored" if status is Status.SCORED else "failed")
        except DiskFullError as exc:
            log.error("%s: %s", sub_id, exc)
            self._disk_retry_at = time.monotonic() + DISK_RETRY_S
            self._unsettled.add(sub_id)  # finished from the stored result later
        self._done(sub_id)

    def _done(self, sub_id: str) -> None:
        with self._lock:
            self._running.pop(sub_id, None)
            self._attempts.pop(sub_id, None)
        self._wake.set()


def worker_name() -> str:
    """Who runs an entry or a reproduction, as its lease names it: host/pid."""
    return f"{socket.gethostname()}/{os.getpid()}"


def _reuse_image(sub: Submission, *, job_stage: str, from_stage: str = "open") -> bool:
    """Tag a final run's image from its original's, so that the final runs the very image that
    was scored (no rebuild) when this machine's engine kept it; False when it did not."""
    source = EntryJob(sub.entry, Path(), RunOptions(sub.track, from_stage, Path()), "").image
    target = EntryJob(sub.entry, Path(), RunOptions(sub.track, job_stage, Path()), "").image
    try:
        sdk = engine.client()
    except InfrastructureError:
        return False
    try:
        repository, tag = target.rsplit(":", 1)
        return bool(sdk.images.get(source).tag(repository, tag))
    except Exception:  # not kept (or another machine's): the final run builds it again
        return False
    finally:
        sdk.close()


def _remove_containers(filters: dict[str, str]) -> None:
    """Remove the containers matching `filters` from this machine's engine; InfrastructureError
    when there is no engine."""
    sdk = engine.client()
    try:
        engine.remove_containers(sdk, filters)
    finally:
        sdk.close()
