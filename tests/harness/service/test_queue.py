"""The queue when the Docker engine goes away or the disk fills up mid-evaluation, and when an
organizer or the team cancels a running entry.

Stopping the shared Docker engine is not something a test may do on a shared machine, so the
executor here is a stand-in that answers as LocalExecutor does when its engine is gone (the
InfrastructureError of the run pipeline); the database, the results store and the queue are real.
So is the full disk: a small filesystem mounted for the test.
"""

from __future__ import annotations

import sqlite3
from concurrent.futures import Future
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from harness.errors import InfrastructureError
from harness.run.executor import Heartbeat, Node
from harness.run.options import RunOptions
from harness.run.pipeline import Ending, EntryJob
from harness.service import queue as queue_module
from harness.service.core import Service, ServiceConfig
from harness.service.db import ServiceDB, State
from harness.service.notify import Notifier
from harness.service.queue import Queue, Slot
from harness.store import STORE_FILENAME, Status, Store
from tests._wait import until
from tests.conftest import fill_disk
from tests.harness.run.test_driver import write_conf
from tests.harness.service.conftest import SECRET, Receiver, queued


class EngineComesBack:
    """Fails every job as an engine that went away does, until `back` is set."""

    def __init__(self) -> None:
        self.back = False
        self.starts = 0
        self.refused = 0  # starts refused while the engine is away: the queue is waiting for it

    def start(self, options: RunOptions, run_id: str) -> None:
        if not self.back and self.starts:
            self.refused += 1
            raise InfrastructureError("no Docker engine is reachable")
        self.starts += 1

    def submit(self, job: EntryJob, recorder: Any) -> Future[Ending]:
        future: Future[Ending] = Future()
        if self.back:
            future.set_result(Ending(Status.SCORED, "1 run(s) scored"))
        else:
            future.set_exception(InfrastructureError("the Docker engine went away"))
        return future

    def interrupt(self) -> None: ...

    def cancel(self, name: str) -> None: ...

    def heartbeats(self) -> dict[str, Heartbeat]:
        return {}

    def nodes(self) -> list[Node]:
        return []

    def close(self) -> None: ...


def test_an_engine_gone_away_requeues_the_entry_and_waits_for_the_engine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(queue_module, "ENGINE_RETRY_S", 0.5)
    options = RunOptions(
        track="4090", stage="open", out=tmp_path / "results", run_specs=str(write_conf(tmp_path, 1))
    )
    executor = EngineComesBack()
    with ServiceDB(tmp_path) as db, Store(options.out) as store:
        team = db.add_team("team-a")
        found = db.team_for_token(team)
        assert found is not None
        subs = [queued(db, found) for _ in range(2)]
        queue = Queue(db, store, options, executor, lambda sub_id: tmp_path / f"{sub_id}.zip")
        queue.start()
        try:
            until(
                lambda: (db.submission(subs[0].id) or subs[0]).runs == 1, "the first entry ran once"
            )
            until(
                lambda: (db.submission(subs[0].id) or subs[0]).state is State.QUEUED,
                "the first entry was queued again",
            )
            first = db.submission(subs[0].id)
            assert first is not None and db.position(first) == 1
            assert store.results("open") == {}
            # The queue asked for the engine three times while it was away, and took nothing else.
            until(lambda: executor.refused >= 3, "the queue asked three times for the engine")
            assert (db.submission(subs[1].id) or subs[1]).runs == 0
            executor.back = True
            until(
                lambda: all(s.state is State.FINISHED for s in db.submissions()),
                "every entry finished",
            )
        finally:
            queue.close()
        assert [s.status for s in db.submissions()] == ["scored", "scored"]
        assert [s.runs for s in db.submissions()] == [1, 2]  # newest first
        assert set(store.results("open")) == {subs[0].id, subs[1].id}


class EndsWhenTold:
    """Keeps each job's future for the test to end, as LocalExecutor's would end."""

    def __init__(self) -> None:
        self.submitted: list[tuple[EntryJob, Future[Ending]]] = []

    def start(self, options: RunOptions, run_id: str) -> None: ...

    def submit(self, job: EntryJob, recorder: Any) -> Future[Ending]:
        future: Future[Ending] = Future()
        self.submitted.append((job, future))
        return future

    def interrupt(self) -> None: ...

    def cancel(self, name: str) -> None: ...

    def heartbeats(self) -> dict[str, Heartbeat]:
        return {}

    def nodes(self) -> list[Node]:
        return []

    def close(self) -> None: ...


def test_a_full_disk_requeues_the_entry_and_the_queue_goes_on_once_space_is_freed(
    small_disk: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The data folder on a real filesystem that fills up while an entry is evaluated: its
    ending cannot be recorded, in the store or the service's database; the queue keeps it and
    waits, and once space is freed the entry runs again from its place, each recorded once."""
    monkeypatch.setattr(queue_module, "DISK_RETRY_S", 0.5)
    options = RunOptions(
        track="4090",
        stage="open",
        out=small_disk / "results",
        run_specs=str(write_conf(tmp_path, 1)),
    )
    executor = EndsWhenTold()
    with ServiceDB(small_disk) as db, Store(options.out) as store:
        team = db.team_for_token(db.add_team("team-a"))
        assert team is not None
        subs = [queued(db, team) for _ in range(2)]
        queue = Queue(db, store, options, executor, lambda sub_id: tmp_path / f"{sub_id}.zip")
        queue.start()
        try:
            until(lambda: len(executor.submitted) == 1, "one entry was submitted")
            filler = fill_disk(small_disk)
            executor.submitted[0][1].set_result(Ending(Status.SCORED, "1 run(s) scored"))
            assert queue.workers() == [Slot(1, None)]  # the slot is free, nothing was recorded
            assert store.results("open") == {}
            assert (db.submission(subs[0].id) or subs[0]).state is State.RUNNING

            filler.unlink()
            until(lambda: len(executor.submitted) == 2, "two entries were submitted")
            assert executor.submitted[1][0].name == subs[0].id  # again, from the head
            executor.submitted[1][1].set_result(Ending(Status.SCORED, "1 run(s) scored"))
            until(lambda: len(executor.submitted) == 3, "three entries were submitted")
            executor.submitted[2][1].set_result(Ending(Status.SCORED, "1 run(s) scored"))
            until(
                lambda: all(s.state is State.FINISHED for s in db.submissions()),
                "every entry finished",
            )
        finally:
            queue.close()
        assert [(s.status, s.runs) for s in db.submissions()] == [("scored", 1), ("scored", 2)]
        assert set(store.results("open")) == {subs[0].id, subs[1].id}
    with closing(sqlite3.connect(options.out / STORE_FILENAME)) as raw:
        recorded = dict(
            raw.execute(
                "SELECT entry, COUNT(*) FROM attempts WHERE status IS NOT NULL GROUP BY entry"
            )
        )
    assert recorded == {subs[0].id: 1, subs[1].id: 1}


def test_an_organizers_cancel_requeues_a_running_entry_once_and_a_teams_own_cancel_does_not(
    tmp_path: Path, receiver: Receiver
) -> None:
    """An organizer's cancel of a running entry is no ending of the team's (issue 23): the entry
    goes back to its place once, not counted, its team told by its webhook; cancelled by an
    organizer again, it ends cancelled, charged nothing. A team's own cancel of its running
    entry is a plain cancel that takes its slot of the day."""
    config = ServiceConfig(tmp_path)
    options = RunOptions(
        track="4090", stage="open", out=config.results, run_specs=str(write_conf(tmp_path, 1))
    )
    executor = EndsWhenTold()
    with ServiceDB(tmp_path) as db, Store(options.out) as store:
        team = db.team_for_token(db.add_team("team-a"))
        organizer = db.team_for_token(db.add_team("organizers", admin=True))
        assert team is not None and organizer is not None
        db.set_webhook("team-a", receiver.url, SECRET)
        notifier = Notifier(db, retries=2, backoff_s=0.05)
        subs = [queued(db, team) for _ in range(2)]
        queue = Queue(db, store, options, executor, config.zip_path, notifier=notifier)
        service = Service(config, db, store, queue)
        queue.start()
        try:
            first, second = (sub.id for sub in subs)
            until(lambda: len(executor.submitted) == 1, "the first entry was submitted")
            assert executor.submitted[0][0].name == first
            requeued = service.cancel(organizer, first)
            assert (requeued.state, requeued.requeues, requeued.charged) == (State.QUEUED, 1, None)
            assert "cancelled by the organizers" in requeued.reason
            until(lambda: len(executor.submitted) == 2, "the entry ran again")
            assert executor.submitted[1][0].name == first  # from its place, before the other
            # The cancelled run's ending arrives late and is not the entry's result.
            executor.submitted[0][1].set_result(Ending(Status.SCORED, "1 run(s) scored"))
            assert (db.submission(first) or requeued).state is State.RUNNING

            ended = service.cancel(organizer, first)
            assert (ended.state, ended.charged) == (State.CANCELLED, "none")
            assert "interrupted 2 times (never by the team)" in ended.reason

            until(lambda: len(executor.submitted) == 3, "the second entry was submitted")
            assert executor.submitted[2][0].name == second
            own = service.cancel(team, second)
            assert (own.state, own.requeues, own.charged) == (State.CANCELLED, 0, "quota")
            executor.submitted[2][1].set_result(Ending(Status.SCORED, "1 run(s) scored"))
            assert len(executor.submitted) == 3  # nothing runs again
            delivered = until(
                lambda: (
                    [(d["event"], d["submission"]) for d in receiver.deliveries]
                    if len(receiver.deliveries) >= 2
                    else None
                ),
                "the team was told twice",
            )
        finally:
            queue.close()
            notifier.close()
        assert sorted(delivered or []) == [("entry.cancelled", first), ("entry.requeued", first)]
        assert {s.id: s.state for s in db.submissions()} == {
            first: State.CANCELLED,
            second: State.CANCELLED,
        }
