"""Reproductions queued to a running `harness serve`, on the real engine and HELM: a stand-in
entry (it builds in seconds) whose training image only sleeps, so that its reproduction is still
training when the service is killed with -9; the restarted service runs it again from the start
(the killed one's training container removed), the training meets the asked time limit, and the
verdict, `train-timeout`, is in the API, on the leaderboard, and told to the team.

The request is recorded as `harness competition reveal --reproduce-top` records it while a
service runs (ServiceDB.add_reproductions with queued.asked); the reveal itself is walked in
test_competition_docker.py.
"""

from __future__ import annotations

import re
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness.infra.lock import hold_results_lock
from harness.reproduce.queued import QueuedReproducer, asked
from harness.run.executor import LocalExecutor
from harness.run.options import RunOptions
from harness.service.core import ServiceConfig
from harness.service.db import ServiceDB
from harness.service.reproductions import Reproduction, Reproductions
from harness.store import RUN_LABEL, entry_slug, results_id
from tests._wait import until
from tests.harness.reproduce.test_flow import cleanup  # noqa: F401
from tests.harness.run.test_driver import make_entry
from tests.harness.service.conftest import SECRET, Receiver, Serve, Served, zip_folder
from tests.harness.service.test_api import sign_in
from tests.harness.service.test_service_docker import containers, evaluating, finished

pytestmark = [pytest.mark.docker, pytest.mark.helm]
# A training that never ends on its own: the reproduction's time limit ends it.
SLEEPER = (
    "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\n"
    'LABEL org.harness.test-step="test_reproductions sleeper"\n'
    'CMD ["sleep", "600"]\n'
)


@dataclass
class Training:
    """A scored stand-in whose reproduction (asked with a 20 s limit) is training now."""

    served: Served
    sub_id: str
    folder: Path  # RESULTS_DIR/reproduce/<slug>
    label: dict[str, str]  # the reproduction's containers' filter
    container: Any  # the running training's

    def running(self, docker_client: Any) -> list[Any]:
        found = docker_client.containers.list(filters=self.label)
        return [c for c in found if c.status == "running"]


def _training(
    served: Served, alice: str, tmp_path: Path, base_image: str, docker_client: Any
) -> Training:
    entry = make_entry(tmp_path / "entries", "sleeper", "answer-a")
    (entry / "Dockerfile.train").write_text(SLEEPER)
    sub = served.submit(alice, zip_folder(entry), visibility="published").json()
    assert served.wait_for(alice, sub["id"], finished)["status"] == "scored"
    with ServiceDB(served.data) as db:
        queued = db.add_reproductions(
            [("4090", 1, sub["id"], "alice")], asked(base_image=base_image, time_limit_s=20)
        )
        # Asked twice (a reveal run again): queued once.
        assert db.add_reproductions([("4090", 1, sub["id"], "alice")], asked()) == []
    assert [r.state.value for r in queued] == ["queued"]
    folder = served.data / "results" / "reproduce" / entry_slug(sub["id"])
    label = {"label": f"{RUN_LABEL}={results_id(folder)}"}
    found = Training(served, sub["id"], folder, label, None)
    first = until(
        lambda: found.running(docker_client), "the reproduction's training runs",
        timeout_s=300, interval_s=0.5,
    )  # fmt: skip
    found.container = first[0]
    return found


def test_a_queued_reproduction_survives_a_killed_service_and_ends_with_its_verdict(
    serve: Serve,
    tmp_path: Path,
    base_image: str,
    docker_client: Any,
    helm_bin: Path,
    receiver: Receiver,
    cleanup: list[str],  # noqa: F811
) -> None:
    served = serve(*evaluating([], base_image, tmp_path))
    alice, admin = served.add_team("alice"), served.add_team("organizers", admin=True)
    bob = served.add_team("bob")
    with ServiceDB(served.data) as db:
        db.set_webhook("alice", receiver.url, SECRET)
    training = _training(served, alice, tmp_path, base_image, docker_client)
    cleanup.append(entry_slug(training.sub_id))

    with served.client(admin) as client:
        running = client.get("/api/v1/reproductions").json()
    assert [(r["state"], r["attempts"], r["submission"]) for r in running] == [
        ("running", 1, training.sub_id)
    ]
    with httpx.Client(base_url=served.url) as organizer:
        sign_in(organizer, admin)
        page = organizer.get("/admin").text
    shown = re.search(r'<table id="reproductions">.*?</table>', page, re.DOTALL)
    assert shown is not None and training.sub_id in shown[0] and "running" in shown[0]
    # Its worker slot is taken, and says by what.
    slots = re.search(r'<table id="workers">.*?</table>', page, re.DOTALL)
    link = f'reproduction of <a href="/submissions/{training.sub_id}"'
    assert slots is not None and link in slots[0]
    served.kill()
    # kill -9 cleans up nothing
    assert [c.id for c in training.running(docker_client)] == [training.container.id]

    served = serve(*served.args, data=served.data)

    def ended() -> dict[str, Any] | None:
        with served.client(admin) as client:
            found = client.get("/api/v1/reproductions").json()
        return found[0] if found and found[0]["state"] not in ("queued", "running") else None

    verdict = until(ended, "the reproduction ended", timeout_s=300, interval_s=1)
    assert verdict is not None  # for mypy: `until` returns what `ended` found
    assert (verdict["state"], verdict["verdict"], verdict["attempts"]) == (
        "finished",
        "train-timeout",
        2,
    )
    assert "stopped at the 20 s limit" in verdict["reason"], verdict["reason"]
    # The killed service's training was removed before the second one started; none is left.
    assert training.container.id not in [c.id for c in docker_client.containers.list(all=True)]
    assert docker_client.containers.list(all=True, filters=training.label) == []
    assert containers(docker_client, served) == []
    with served.client(bob) as client:
        theirs = client.get("/api/v1/reproductions").json()
        board = client.get("/api/v1/leaderboard/4090").json()
    # Another team sees the verdict, not the submission's id.
    assert [(r["team"], r["submission"], r["verdict"]) for r in theirs] == [
        ("alice", None, "train-timeout")
    ]
    assert [(r["team"], r["reproduction"]) for r in board["rows"]] == [("alice", "train-timeout")]
    with served.client() as client:  # the public web page: the same rendering as `harness report`
        assert "train-timeout" in client.get("/leaderboard/4090").text
    told = until(
        lambda: [d for d in receiver.deliveries if d["event"].startswith("reproduction.")],
        "alice was told of the verdict",
        timeout_s=60,
    )
    assert [(d["event"], d["status"], d["submission"]) for d in told] == [
        ("reproduction.finished", "train-timeout", training.sub_id)
    ]


def test_a_stopped_service_removes_the_training_and_a_reveal_without_it_runs_it_again(
    serve: Serve,
    tmp_path: Path,
    base_image: str,
    docker_client: Any,
    helm_bin: Path,
    receiver: Receiver,
    cleanup: list[str],  # noqa: F811
) -> None:
    served = serve(*evaluating([], base_image, tmp_path))
    training = _training(served, served.add_team("alice"), tmp_path, base_image, docker_client)
    cleanup.append(entry_slug(training.sub_id))
    served.process.send_signal(signal.SIGTERM)
    assert served.process.wait(timeout=120) == 0
    assert docker_client.containers.list(all=True, filters=training.label) == []
    with ServiceDB(served.data) as db:
        [stopped] = db.reproductions()
    assert (stopped.state.value, stopped.attempts) == ("queued", 1)
    assert stopped.reason == "queued again: the service stopped"

    # What `harness competition reveal --reproduce-top` does when no service runs: drain the
    # queued requests here. The stopped training's folder is not taken as a verdict.
    results = served.data / "results"
    reproducer = QueuedReproducer(
        results, "open", ServiceConfig(served.data).zip_path, base_image=base_image
    )
    executor = LocalExecutor(1)
    executor.start(RunOptions(track="4090", stage="open", out=results), results_id(results))
    told: list[Reproduction] = []
    with ServiceDB(served.data) as db, hold_results_lock(results, "test"):
        assert reproducer.kept(stopped) is None
        ended = Reproductions(db, reproducer, executor, "here", on_end=told.append).drain(1)
    executor.close()
    assert [(r.state.value, r.verdict, r.attempts) for r in ended] == [
        ("finished", "train-timeout", 2)
    ]
    assert told == ended
    assert docker_client.containers.list(all=True, filters=training.label) == []
    # Asked again, the finished reproduction is kept, not redone.
    assert reproducer.kept(ended[0]) == ("train-timeout", ended[0].reason)
    # The reveal had nobody to tell: the service tells alice when it starts, once.
    with ServiceDB(served.data) as db:
        db.set_webhook("alice", receiver.url, SECRET)

    def untold() -> list[Reproduction]:
        with ServiceDB(served.data) as db:
            return db.untold_reproductions()

    logs = []
    for _ in range(2):
        again = serve("--jobs", "0", data=served.data)
        until(lambda: not untold(), "the service told alice", timeout_s=60)
        again.process.send_signal(signal.SIGTERM)
        assert again.process.wait(timeout=120) == 0
        logs.append(again.log.read_text())
    assert ["told 1 team(s) how the reproduction" in log for log in logs] == [True, False]
    assert [(d["event"], d["status"], d["rank"]) for d in receiver.deliveries] == [
        ("reproduction.finished", "train-timeout", "1")
    ]
