"""A real `harness serve` process per test, on a free local port, and stand-in entries as zips."""

from __future__ import annotations

import hmac
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol

import httpx
import pytest

from harness.service.accounts import Team
from harness.service.db import Allowance, ServiceDB, Submission
from harness.service.notify import SIGNATURE_HEADER, signature
from harness.store import RUN_LABEL, results_id
from tests._wait import until
from tests.conftest import REPO
from tests.harness.run.test_driver import make_entry

HARNESS = Path(sys.executable).parent / "harness"
SECRET = "webhook-secret-of-team-a"  # the Receiver's webhook secret


def quota_zone(hour: int = 12) -> str:
    """A time zone where it is `hour` o'clock now (and some minutes). At noon the daily quota's
    day cannot end during a test, as it could in UTC for a test that runs across midnight (its
    slots would free mid-test)."""
    offset = (hour - datetime.now(UTC).hour + 11) % 24 - 11  # hours ahead of UTC, -11..12
    return f"Etc/GMT{-offset:+d}"  # the Etc zones' signs are POSIX's: Etc/GMT-5 is UTC+5


def queued(
    db: ServiceDB, team: Team, allowance: Allowance = Allowance(3), **fields: Any
) -> Submission:
    """A submission queued as an upload is (4090, hidden, e.zip unless `fields` say otherwise),
    for the tests that drive the database without the HTTP service."""
    upload: dict[str, Any] = {"track": "4090", "visibility": "hidden", "filename": "e.zip"}
    return db.add_submission(team, size=1, allowance=allowance, **{**upload, **fields})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def zip_folder(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(folder).as_posix())
    return buffer.getvalue()


def stand_in_zip(tmp: Path, name: str, behaviour: str = "answer-a", **kwargs: Any) -> bytes:
    """A zipped stand-in entry (tests/harness/data/entries/server.py): it builds in seconds."""
    return zip_folder(make_entry(tmp / "entries", name, behaviour, **kwargs))


@dataclass
class Served:
    """One `harness serve` process and its data folder."""

    url: str
    data: Path
    process: subprocess.Popen[bytes]
    log: Path
    args: list[str] = field(default_factory=list)

    def add_team(self, name: str, *, admin: bool = False) -> str:
        with ServiceDB(self.data) as db:
            return db.add_team(name, admin=admin)

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)

    def submit(
        self, token: str, body: bytes, *, track: str = "4090", visibility: str = "hidden"
    ) -> httpx.Response:
        with self.client(token) as client:
            return client.post(
                "/api/v1/submissions",
                files={"file": ("entry.zip", body, "application/zip")},
                data={"track": track, "visibility": visibility},
            )

    def wait_for(self, token: str, sub_id: str, done: Any, timeout_s: float = 300) -> Any:
        """Poll a submission until `done(answer)`; returns the answer."""
        seen: list[Any] = []

        def answer() -> Any:
            seen.append(client.get(f"/api/v1/submissions/{sub_id}").json())
            return seen[-1] if done(seen[-1]) else None

        def service_died() -> str | None:
            return None if self.process.poll() is None else self.log.read_text()[-3000:]

        with self.client(token) as client:
            try:
                return until(
                    answer, f"{sub_id} is done", timeout_s=timeout_s, interval_s=0.5,
                    check=service_died,
                )  # fmt: skip
            except AssertionError as exc:
                raise AssertionError(f"{exc}; last answer: {seen[-1:]}") from None

    def kill(self) -> None:
        """kill -9, the whole process group (no clean-up of any kind)."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)


class Serve(Protocol):
    def __call__(self, *args: str, data: Path | None = None) -> Served: ...


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    """Start `harness serve --data DIR ARGS...` (default: --jobs 0, no evaluation) and wait."""
    started: list[Served] = []

    def start(*args: str, data: Path | None = None) -> Served:
        data = data or tmp_path / "data"
        port = free_port()
        log = tmp_path / f"serve-{len(started)}.log"
        extra = list(args) or ["--jobs", "0"]
        # A competition file's own quota_timezone replaces this one.
        command = [str(HARNESS), "serve", "--data", str(data), "--port", str(port), *extra]
        with log.open("w") as out:
            process = subprocess.Popen(
                [*command, "--quota-timezone", quota_zone()],
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        served = Served(f"http://127.0.0.1:{port}", data, process, log, extra)
        started.append(served)

        def healthy() -> bool:
            try:
                return httpx.get(f"{served.url}/api/v1/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        def exited() -> str | None:
            return None if process.poll() is None else log.read_text()

        until(healthy, "the service answered /api/v1/health", timeout_s=60, check=exited)
        return served

    yield start
    for served in started:
        if served.process.poll() is None:
            os.killpg(served.process.pid, signal.SIGTERM)
            try:
                served.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                served.kill()
    evaluated = {s.data for s in started if s.args[:2] != ["--jobs", "0"]}
    if evaluated:
        _remove_containers(evaluated)


def _remove_containers(data_dirs: set[Path]) -> None:
    """Containers a service of this test left (killed with -9 and not restarted, say): they
    carry the service's run label, not the test session's."""
    from harness.infra.docker import client

    sdk = client()
    for data in data_dirs:
        label = f"{RUN_LABEL}={results_id(data / 'results')}"
        for container in sdk.containers.list(all=True, filters={"label": label}):
            container.remove(force=True)
    sdk.close()


class Receiver(ThreadingHTTPServer):
    """Answers 500 to the first delivery of each event (so it is retried), then 200; keeps the
    deliveries whose signature verifies and counts those that do not."""

    def __init__(self) -> None:
        self.deliveries: list[dict[str, Any]] = []
        self.seen: dict[str, int] = {}
        self.bad_signatures = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                expected = signature(SECRET, body)
                if not hmac.compare_digest(self.headers.get(SIGNATURE_HEADER, ""), expected):
                    receiver.bad_signatures += 1
                    self.send_response(401)
                    self.end_headers()
                    return
                delivery = self.headers["X-Harness-Delivery"]
                receiver.seen[delivery] = receiver.seen.get(delivery, 0) + 1
                if receiver.seen[delivery] == 1:
                    self.send_response(500)
                else:
                    receiver.deliveries.append(json.loads(body))
                    self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None: ...

        super().__init__(("127.0.0.1", 0), Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
