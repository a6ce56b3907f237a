"""The queue when the Docker engine goes away mid-evaluation.

Stopping the shared Docker engine is not something a test may do on a shared machine, so the
executor here is a stand-in that answers as LocalExecutor does when its engine is gone (the
InfrastructureError of the run pipeline); the database, the results store and the queue are real.
"""

from __future__ import annotations

import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from harness.errors import InfrastructureError
from harness.run.options import RunOptions
from harness.run.pipeline import Ending, EntryJob
from harness.service import queue as queue_module
from harness.service.db import ServiceDB, State
from harness.service.queue import Queue
from harness.store import Status, Store
from tests.harness.run.test_driver import write_conf


class EngineComesBack:
    """Fails every job as an engine that went away does, until `back` is set."""

    def __init__(self) -> None:
        self.back = False
        self.starts = 0

    def start(self, options: RunOptions, run_id: str) -> None:
        if not self.back and self.starts:
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

    def close(self) -> None: ...


def wait(condition: Any, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.05)


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
        subs = [
            db.add_submission(
                found, track="4090", visibility="hidden", filename="e.zip", size=1, quota=3
            )
            for _ in range(2)
        ]
        queue = Queue(db, store, options, executor, lambda sub_id: tmp_path / f"{sub_id}.zip")
        queue.start()
        try:
            wait(lambda: (db.submission(subs[0].id) or subs[0]).runs == 1)
            wait(lambda: (db.submission(subs[0].id) or subs[0]).state is State.QUEUED)
            first = db.submission(subs[0].id)
            assert first is not None and db.position(first) == 1
            assert store.results("open") == {}
            time.sleep(1.5)  # the engine is still away: nothing else was taken
            assert (db.submission(subs[1].id) or subs[1]).runs == 0
            executor.back = True
            wait(lambda: all(s.state is State.FINISHED for s in db.submissions()))
        finally:
            queue.close()
        assert [s.status for s in db.submissions()] == ["scored", "scored"]
        assert [s.runs for s in db.submissions()] == [1, 2]  # newest first
        assert set(store.results("open")) == {subs[0].id, subs[1].id}
