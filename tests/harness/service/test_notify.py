"""Notifications: signed webhooks to a receiver on 127.0.0.1 that verifies every signature, and
emails to a real SMTP server (aiosmtpd); a receiver that is down delays nothing in the queue.
The queue's executor is a stand-in that ends each job when told (no evaluation is needed to
tell a team about its ending); the database, the store, the HTTP and SMTP traffic are real."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from email import message_from_bytes
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from harness.errors import ConfigError
from harness.run.options import RunOptions
from harness.run.pipeline import Ending
from harness.service.db import DB_FILENAME, ServiceDB, State
from harness.service.notify import Notifier, SmtpSettings
from harness.service.queue import Queue
from harness.service.reproductions import ReproductionState
from harness.store import Status, Store
from tests._wait import until
from tests.harness.run.test_driver import write_conf
from tests.harness.service.conftest import SECRET, Receiver, free_port, queued
from tests.harness.service.test_queue import EndsWhenTold

LEAKED = "hf_xQ7pLm2Rt9VbN4kZs8WcY1dF6gHj3KaE5u"  # a token quoted by a build log


class Inbox:
    def __init__(self) -> None:
        self.messages: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append((envelope.rcpt_tos, message_from_bytes(envelope.content)))
        return "250 OK"


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, SmtpSettings]]:
    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    yield inbox, SmtpSettings("127.0.0.1", port, "harness@localhost")
    controller.stop()


def test_each_event_is_one_signed_delivery_and_an_email(
    tmp_path: Path, receiver: Receiver, smtp: tuple[Inbox, SmtpSettings]
) -> None:
    inbox, settings = smtp
    executor = EndsWhenTold()
    options = RunOptions(
        track="4090", stage="open", out=tmp_path / "results", run_specs=str(write_conf(tmp_path, 1))
    )
    with ServiceDB(tmp_path) as db, Store(options.out) as store:
        token_a = db.add_team("team-a", "a@example.org")
        db.set_webhook("team-a", receiver.url, SECRET)
        token_b = db.add_team("team-b")  # its receiver is down: nothing listens there
        db.set_webhook("team-b", f"http://127.0.0.1:{free_port()}/hook", "another-secret-16ch")
        team_a, team_b = db.team_for_token(token_a), db.team_for_token(token_b)
        assert team_a is not None and team_b is not None
        notifier = Notifier(db, smtp=settings, retries=2, backoff_s=0.05)
        queue = Queue(db, store, options, executor, lambda s: tmp_path / f"{s}.zip",
                      notifier=notifier)  # fmt: skip
        subs = [queued(db, team) for team in (team_b, team_a, team_a)]
        queue.start()
        try:
            # team-b's receiver is down: its ending is recorded at once, and the next entry runs.
            until(lambda: len(executor.submitted) == 1, "one entry was submitted")
            executor.submitted[0][1].set_result(Ending(Status.SCORED, "1 run(s) scored"))
            assert (db.submission(subs[0].id) or subs[0]).state is State.FINISHED
            until(lambda: len(executor.submitted) == 2, "two entries were submitted")
            executor.submitted[1][1].set_result(Ending(Status.SCORED, "1 run(s) scored"))
            until(lambda: len(executor.submitted) == 3, "three entries were submitted")
            executor.submitted[2][1].set_result(
                Ending(Status.BUILD_FAILED, f"dependency-resolution: token {LEAKED}")
            )
            until(
                lambda: len(receiver.deliveries) == 2 and len(inbox.messages) == 2,
                "two webhooks and two emails arrived",
            )
        finally:
            queue.close()
            notifier.close()

    assert receiver.bad_signatures == 0
    assert all(count == 2 for count in receiver.seen.values())  # a 500, then the retry
    events = {d["submission"]: d for d in receiver.deliveries}
    assert events[subs[1].id]["event"] == "entry.scored"
    failed = events[subs[2].id]
    assert failed["event"] == "entry.failed" and failed["status"] == "build-failed"
    assert LEAKED[5:-4] not in json.dumps(receiver.deliveries)  # redacted
    assert SECRET not in json.dumps(receiver.deliveries) and token_a not in json.dumps(events)
    assert {rcpt[0] for rcpt, _ in inbox.messages} == {"a@example.org"}
    subjects = sorted(message["Subject"] for _, message in inbox.messages)
    assert subjects == sorted(
        [f"[harness] {subs[1].id}: scored", f"[harness] {subs[2].id}: build-failed"]
    )


def test_a_webhook_needs_a_url_and_a_long_secret(tmp_path: Path) -> None:
    with ServiceDB(tmp_path) as db:
        db.add_team("team-a")
        with pytest.raises(ConfigError, match="http:// or https://"):
            db.set_webhook("team-a", "ftp://x", SECRET)
        with pytest.raises(ConfigError, match="16 characters"):
            db.set_webhook("team-a", "https://x", "short")
        with pytest.raises(ConfigError, match="no team named"):
            db.set_webhook("team-z", "https://x", SECRET)
        db.set_webhook("team-a", "https://x", SECRET)
        assert db.webhook("team-a") == ("https://x", SECRET)
        assert db.webhook("team-b") is None


def test_a_reproduction_ended_with_nobody_to_tell_is_told_once_in_a_migrated_database(
    tmp_path: Path, receiver: Receiver
) -> None:
    def reproduced(db: ServiceDB, rank: int, verdict: str) -> None:
        team = db.team_for_token(db.add_team(f"team-{rank}"))
        assert team is not None
        db.set_webhook(team.name, receiver.url, SECRET)
        [request] = db.add_reproductions([("4090", rank, queued(db, team).id, team.name)], {})
        assert db.claim_reproduction("a reveal") is not None
        assert db.untold_reproductions() == []  # running: nothing to tell yet
        db.end_reproduction(request.id, ReproductionState.FINISHED, "a reason", verdict)

    with ServiceDB(tmp_path) as db:
        reproduced(db, 2, "reproduced")  # ended, and told, before this harness
    with sqlite3.connect(tmp_path / DB_FILENAME) as raw:  # as schema 5 left it: no told_at
        raw.execute("ALTER TABLE reproductions DROP COLUMN told_at")
        raw.execute("PRAGMA user_version = 5")
    with ServiceDB(tmp_path) as db:
        assert db.untold_reproductions() == []  # the migration takes it as told
        reproduced(db, 1, "within-noise")
        notifier = Notifier(db, retries=2, backoff_s=0.05)
        try:
            assert notifier.untold_reproductions() == 1
            until(lambda: not db.untold_reproductions(), "team-a was told")
            assert notifier.untold_reproductions() == 0
        finally:
            notifier.close()
    assert [(d["event"], d["status"], d["rank"]) for d in receiver.deliveries] == [
        ("reproduction.finished", "within-noise", "1")
    ]
