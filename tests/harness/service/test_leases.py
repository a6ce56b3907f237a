"""No entry stays running forever: leases renewed while the evaluation lives, lapsed when it is
frozen (SIGSTOP), and a hard ceiling.

The first tests drive the queue with a stand-in executor whose "evaluation" is a real process
working in the entry's HELM folder (what the lease watches), so that freezing it needs neither
Docker nor HELM; the last one freezes a real helm-run under a real `harness serve`."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from concurrent.futures import Future
from contextlib import suppress
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness.run import processes
from harness.run.executor import Heartbeat
from harness.run.options import RunOptions
from harness.run.pipeline import Ending, EntryJob
from harness.service import leases
from harness.service.db import ServiceDB, State
from harness.service.notify import Notifier
from harness.service.queue import Queue
from harness.store import Status, Store
from tests._wait import until
from tests.harness.run.test_driver import write_conf
from tests.harness.service.conftest import SECRET, Receiver, Serve, queued, stand_in_zip
from tests.harness.service.test_service_docker import containers, evaluating


class RunsAProcess:
    """Each job runs `sleep` in the entry's HELM folder, as helm-run would; its future ends when
    the process does (killed, say), with an ending the queue should then discard."""

    def __init__(self) -> None:
        self.processes: list[subprocess.Popen[bytes]] = []
        self.futures: list[Future[Ending]] = []

    def start(self, options: RunOptions, run_id: str) -> None: ...

    def submit(self, job: EntryJob, recorder: Any) -> Future[Ending]:
        job.helm_dir.mkdir(parents=True, exist_ok=True)
        process = subprocess.Popen(["sleep", "600"], cwd=job.helm_dir, start_new_session=True)
        future: Future[Ending] = Future()
        self.processes.append(process)
        self.futures.append(future)
        return future

    def end(self, index: int, ending: Ending = Ending(Status.EVAL_FAILED, "killed")) -> None:
        """The job's process ends (killed if still running) and its future with `ending`."""
        process = self.processes[index]
        if process.poll() is None:
            process.kill()
        process.wait()
        self.futures[index].set_result(ending)

    def interrupt(self) -> None: ...

    def cancel(self, name: str) -> None: ...

    def heartbeats(self) -> dict[str, Heartbeat]:
        return {}  # its processes run on this machine

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait()


def _queue(tmp_path: Path, db: ServiceDB, store: Store, executor: Any, **kwargs: Any) -> Queue:
    options = RunOptions(
        track="4090", stage="open", out=tmp_path / "results", run_specs=str(write_conf(tmp_path, 1))
    )
    return Queue(db, store, options, executor, lambda s: tmp_path / f"{s}.zip", **kwargs)


def test_a_frozen_evaluation_lapses_and_goes_back_to_its_place(
    tmp_path: Path, receiver: Receiver
) -> None:
    executor = RunsAProcess()
    with ServiceDB(tmp_path) as db, Store(tmp_path / "results") as store:
        team = db.team_for_token(db.add_team("team-a"))
        assert team is not None
        db.set_webhook("team-a", receiver.url, SECRET)
        sub = queued(db, team)
        notifier = Notifier(db, retries=2, backoff_s=0.05)
        queue = _queue(tmp_path, db, store, executor, lease_s=2.0, notifier=notifier)
        queue.start()
        try:
            until(lambda: len(executor.processes) == 1, "the entry started")
            first = executor.processes[0]
            # Alive: the lease is renewed, and the admin page sees who runs it.
            until(
                lambda: (db.submission(sub.id) or sub).heartbeat_at != sub.heartbeat_at,
                "a heartbeat renewed the lease",
            )
            worker, beat = queue.leases()[sub.id]
            assert worker == queue.worker and beat is not None
            time.sleep(queue.lease_s * 1.5)  # a lease's length: a live evaluation keeps it
            assert (db.submission(sub.id) or sub).runs == 1

            os.kill(first.pid, signal.SIGSTOP)
            until(
                lambda: len(executor.processes) == 2,
                "the entry started again",
                timeout_s=queue.lease_s * 4,
            )
            # Killed (a stopped process dies of SIGKILL), and run again from its place.
            assert first.wait(timeout=10) == -signal.SIGKILL
            again = db.submission(sub.id)
            assert again is not None and again.runs == 2 and again.state is State.RUNNING
            assert again.counts  # still the one slot it took: re-runs are not counted
            until(lambda: len(receiver.deliveries) == 1, "the team was told")
            told = receiver.deliveries[0]
            assert (told["event"], told["submission"]) == ("entry.requeued", sub.id)
            assert "not counted against the team" in told["reason"]
            # The first run's late ending is discarded: the second run's is the result.
            executor.end(0, Ending(Status.SCORED, "late"))
            executor.end(1)
            until(
                lambda: (db.submission(sub.id) or sub).state is State.FINISHED, "the entry finished"
            )
            assert (db.submission(sub.id) or sub).status == "eval-failed"
        finally:
            queue.close()
            notifier.close()
            executor.close()


def test_an_entry_past_its_ceiling_is_stopped_with_that_reason(tmp_path: Path) -> None:
    executor = RunsAProcess()
    with ServiceDB(tmp_path) as db, Store(tmp_path / "results") as store:
        team = db.team_for_token(db.add_team("team-a"))
        assert team is not None
        sub = queued(db, team)
        queue = _queue(tmp_path, db, store, executor, ceiling_s=1.0)
        queue.start()
        try:
            until(
                lambda: (db.submission(sub.id) or sub).state is State.FINISHED, "the entry finished"
            )
            ended = db.submission(sub.id)
            assert ended is not None and ended.status == "eval-timeout"
            assert "stopped at its ceiling of 1 s" in ended.reason
            assert store.results("open")[sub.id].status is Status.EVAL_TIMEOUT
            assert executor.processes[0].wait(timeout=10) == -signal.SIGKILL
            executor.end(0, Ending(Status.SCORED, "late"))
            assert (db.submission(sub.id) or sub).status == "eval-timeout"
        finally:
            queue.close()
            executor.close()


def test_the_ceiling_adds_up_the_limits() -> None:
    options = RunOptions(track="4090", stage="closed", out=Path("/tmp/x"))
    expected = 2 * 3600 + 10 * 120 + 600 * 60 + 600 + leases.CEILING_MARGIN_S
    assert leases.ceiling_s(options) == expected


def _is_helm_run(pid: int) -> bool:
    try:
        return b"helm-run" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:  # gone meanwhile
        return False


def signed_in(browser: httpx.Client, token: str) -> httpx.Client:
    csrf = re.search(r'name="csrf" value="([^"]+)"', browser.get("/signin").text)
    assert csrf is not None
    browser.post("/signin", data={"token": token, "csrf": csrf.group(1)})
    return browser


@pytest.mark.docker
@pytest.mark.helm
def test_sigstop_of_helm_run_requeues_the_entry_with_its_containers_gone(
    serve: Serve, tmp_path: Path, base_image: str, docker_client: Any, helm_bin: Path
) -> None:
    served = serve(*evaluating(["--lease-seconds", "6"], base_image, tmp_path))
    token, admin = served.add_team("team-a"), served.add_team("organizers", admin=True)
    sub = served.submit(token, stand_in_zip(tmp_path, "slow", "slow")).json()
    helm = served.data / "results" / "helm"

    def helm_run_and_its_container() -> tuple[list[int], set[str]] | None:
        # Not any process in the HELM folder: the fit check (helm/fit.py) works there too,
        # before the entry's container exists; helm-run starts once it is served.
        pids = leases.entry_processes(helm)
        served_by = {c.id for c in containers(docker_client, served)}
        return (pids, served_by) if served_by and any(map(_is_helm_run, pids)) else None

    frozen, served_by = until(
        helm_run_and_its_container,
        "helm-run evaluates the served entry",
        timeout_s=180,
        check=lambda: None if served.process.poll() is None else served.log.read_text()[-3000:],
    )
    # The admin page shows who runs it and its last heartbeat.
    with httpx.Client(base_url=served.url) as organizer:
        page = signed_in(organizer, admin).get("/admin").text
    assert f"{socket.gethostname()}/{served.process.pid}" in page
    assert re.search(r"\d+ s ago \(lease 6 s\)", page), page
    for pid in frozen:
        with suppress(ProcessLookupError):  # a short-lived child of helm-run
            os.kill(pid, signal.SIGSTOP)

    answer = served.wait_for(token, sub["id"], lambda a: a["finished"])
    assert answer["status"] == "scored", answer  # the second run
    log = served.log.read_text()
    assert f"{sub['id']}: re-queued: its evaluation sent no heartbeat for 6 s" in log
    for pid in frozen:  # killed, not left stopped
        assert not Path(f"/proc/{pid}").exists() or processes.state(pid) == "Z"
    with ServiceDB(served.data) as db:
        ended = db.submission(sub["id"])
    assert ended is not None and ended.runs == 2 and ended.counts
    assert served_by and not served_by & {c.id for c in containers(docker_client, served)}
    assert containers(docker_client, served) == []
