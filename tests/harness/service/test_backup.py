"""Backups of a real `harness serve` process's databases while 20 teams upload, and restores:
`harness serve backup`, `--backup-every`, `harness serve restore`, through the command line."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import sqlite3
import subprocess
import threading
from contextlib import closing
from pathlib import Path

import pytest

from harness.service.backup import backups, check, take_backup
from harness.service.db import DB_FILENAME, SCHEMA_VERSION, ServiceDB
from harness.store import STORE_FILENAME, Store
from tests.harness.service.conftest import HARNESS, Serve, stand_in_zip

TEAMS = 20
UPLOADS = 3  # per team: the default daily quota


def harness(*args: str) -> subprocess.CompletedProcess[str]:
    # Wide enough that rich does not wrap a message (it wraps at 80 columns off a terminal).
    env = {**os.environ, "COLUMNS": "1000"}
    return subprocess.run(
        [str(HARNESS), *args], capture_output=True, text=True, timeout=120, env=env
    )


def submission_ids(backup: Path) -> set[str]:
    with closing(sqlite3.connect(backup / DB_FILENAME)) as db:
        return {row[0] for row in db.execute("SELECT id FROM submissions")}


def test_backups_under_concurrent_uploads_restore_what_they_hold(
    serve: Serve, tmp_path: Path
) -> None:
    served = serve("--jobs", "0", "--backup-every", "1s", "--backup-keep", "2")
    tokens = [served.add_team(f"team-{k}") for k in range(TEAMS)]
    body = stand_in_zip(tmp_path, "e")
    manual = tmp_path / "manual"
    uploading = threading.Event()

    def upload(token: str) -> list[int]:
        uploading.set()
        return [served.submit(token, body).status_code for _ in range(UPLOADS)]

    with concurrent.futures.ThreadPoolExecutor(TEAMS) as pool:
        answers = [pool.submit(upload, token) for token in tokens]
        uploading.wait()
        done = harness("serve", "backup", "--data", str(served.data), "--backup-dir",
                       str(manual), "--keep", "1000")  # fmt: skip
        assert done.returncode == 0, done.stderr
        taken = [Path(done.stdout.strip())]
        while not all(answer.done() for answer in answers):  # more, as fast as they go
            taken.append(take_backup(served.data, manual, keep=1000))
        codes = [code for answer in answers for code in answer.result()]
    assert codes == [201] * TEAMS * UPLOADS
    final = take_backup(served.data, manual, keep=1000)

    everything = submission_ids(final)
    assert len(everything) == TEAMS * UPLOADS
    sizes = []
    for backup in [*taken, final]:
        assert check(backup / DB_FILENAME) == SCHEMA_VERSION
        assert check(backup / STORE_FILENAME) >= 1
        held = submission_ids(backup)
        assert held <= everything
        sizes.append(len(held))
    assert sizes == sorted(sizes)  # each backup is the database at one moment, in order
    assert backups(manual) == sorted([*taken, final])
    # The scheduled ones: a new one every second, the newest two kept.
    scheduled = backups(served.data / "backups")
    assert 1 <= len(scheduled) <= 2
    earliest = taken[0]

    # Not while the service runs: it holds the data folder.
    refused = harness("serve", "restore", str(earliest), "--data", str(served.data))
    assert refused.returncode == 3 and "in use by" in refused.stderr
    os.killpg(served.process.pid, signal.SIGTERM)
    assert served.process.wait(timeout=60) == 0

    restored = harness("serve", "restore", str(earliest), "--data", str(served.data))
    assert restored.returncode == 0, restored.stderr
    assert submission_ids(served.data) == submission_ids(earliest)
    # What the folder held before is kept, whole.
    [before] = backups(served.data / "before-restore")
    assert submission_ids(before) == everything
    again = serve("--jobs", "0", data=served.data)
    with again.client(tokens[0]) as client:
        listed = {s["id"] for s in client.get("/api/v1/submissions").json()}
    assert listed <= submission_ids(earliest)


def test_a_damaged_backup_is_refused_and_restores_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with ServiceDB(data) as db, Store(data / "results"):
        db.add_team("team-a")
    backup = take_backup(data, tmp_path / "b")
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / DB_FILENAME).write_bytes((backup / DB_FILENAME).read_bytes()[:2048])
    (damaged / STORE_FILENAME).write_bytes((backup / STORE_FILENAME).read_bytes())
    before = (data / DB_FILENAME).read_bytes()

    refused = harness("serve", "restore", str(damaged), "--data", str(data))
    assert refused.returncode == 2
    assert "damaged/service.sqlite is not a readable SQLite database" in refused.stderr
    assert (data / DB_FILENAME).read_bytes() == before
    missing = harness("serve", "restore", str(tmp_path / "nothing"), "--data", str(data))
    assert missing.returncode == 2 and "is not a backup" in missing.stderr
    empty = harness("serve", "backup", "--data", str(tmp_path / "elsewhere"))
    assert empty.returncode == 2 and "nothing to back up" in empty.stderr
    bad = harness("serve", "--data", str(data), "--backup-every", "soon")
    assert bad.returncode == 2 and "--backup-every" in bad.stderr


@pytest.mark.parametrize("keep", [1, 3])
def test_backups_beyond_keep_are_removed_oldest_first(tmp_path: Path, keep: int) -> None:
    data = tmp_path / "data"
    with ServiceDB(data) as db, Store(data / "results"):
        db.add_team("team-a")
    made = [take_backup(data, tmp_path / "b", keep=keep) for _ in range(4)]
    assert backups(tmp_path / "b") == made[-keep:]
