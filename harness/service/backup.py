"""Backups of the service's state: its database and the results store, each copied with SQLite's
online backup API (a consistent snapshot, taken while the service goes on writing), checked with
`PRAGMA integrity_check`, the newest `keep` kept.

    DATA_DIR/service.sqlite            ->  BACKUP_DIR/20261207T120000.123456Z/service.sqlite
    DATA_DIR/results/results.sqlite    ->  BACKUP_DIR/20261207T120000.123456Z/results.sqlite

    path = take_backup(data_dir, backup_dir, keep=7)   # `harness serve backup`, or on a schedule
    restore(path, data_dir)                            # `harness serve restore`, service stopped
    Scheduled(data_dir, backup_dir, every_s=3600, keep=7)   # a thread of `harness serve`

The service database is copied first: the queue writes an ending to the results store before the
database, so a submission the copied database calls finished has its result in the copied store.
A backup is written beside and renamed when whole: a folder without the `.partial` suffix is
complete. Uploads and logs are plain files in DATA_DIR, not in the backup (copy them with rsync).
"""

from __future__ import annotations

import logging
import shutil
import sqlite3
import threading
import time
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

from harness.errors import ConfigError
from harness.infra.lock import command_line, hold_results_lock
from harness.service import db as service_db
from harness.store import SCHEMA_VERSION as STORE_SCHEMA_VERSION
from harness.store import STORE_FILENAME

log = logging.getLogger("harness.service")
DEFAULT_KEEP = 7
PARTIAL = ".partial"
RESULTS = "results"  # the results store's folder in DATA_DIR (ServiceConfig.results)
# file in a backup -> its place in DATA_DIR, in the order they are copied (see the docstring)
FILES = {
    service_db.DB_FILENAME: Path(service_db.DB_FILENAME),
    STORE_FILENAME: Path(RESULTS) / STORE_FILENAME,
}
# file -> the schema versions this harness opens (older ones are migrated on open)
VERSIONS = {
    service_db.DB_FILENAME: range(1, service_db.SCHEMA_VERSION + 1),
    STORE_FILENAME: range(1, STORE_SCHEMA_VERSION + 1),
}


def _copy(source: Path, destination: Path) -> None:
    """Copy a live SQLite file with the online backup API, in one step: one read transaction, so
    the copy is the database as it was at one moment (WAL: writers are not blocked)."""
    with (
        closing(sqlite3.connect(f"{source.as_uri()}?mode=ro", uri=True, timeout=30)) as src,
        closing(sqlite3.connect(destination, timeout=30)) as dst,
    ):
        src.backup(dst)


def check(path: Path) -> int:
    """The schema version of a backed-up SQLite file; ConfigError when it is not sound."""
    name = path.name
    try:
        with closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as db:
            problems = [row[0] for row in db.execute("PRAGMA integrity_check")]
            version = int(db.execute("PRAGMA user_version").fetchone()[0])
    except sqlite3.Error as exc:
        raise ConfigError(f"{path} is not a readable SQLite database: {exc}") from exc
    if problems != ["ok"]:
        raise ConfigError(f"{path} fails SQLite's integrity check: {'; '.join(problems[:3])}")
    if version not in VERSIONS[name]:
        raise ConfigError(
            f"{path} has schema version {version}; this harness reads "
            f"{VERSIONS[name].start}..{VERSIONS[name].stop - 1}"
        )
    return version


def take_backup(data_dir: Path, backup_dir: Path, *, keep: int = DEFAULT_KEEP) -> Path:
    """Back up DATA_DIR's databases into a new folder of `backup_dir`; returns it. Backups beyond
    the newest `keep` are removed (keep >= 1)."""
    if keep < 1:
        raise ConfigError("a backup keeps at least 1 copy (--backup-keep)")
    missing = [str(data_dir / p) for p in FILES.values() if not (data_dir / p).is_file()]
    if missing:
        raise ConfigError(
            f"nothing to back up: no {', '.join(missing)} (is {data_dir} a data folder?)"
        )
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    final = backup_dir / stamp
    partial = backup_dir / (stamp + PARTIAL)
    partial.mkdir(parents=True)
    try:
        for name, place in FILES.items():
            _copy(data_dir / place, partial / name)
            check(partial / name)
        partial.rename(final)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    for old in backups(backup_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def backups(backup_dir: Path) -> list[Path]:
    """The complete backups in `backup_dir`, oldest first."""
    if not backup_dir.is_dir():
        return []
    return sorted(
        path
        for path in backup_dir.iterdir()
        if path.is_dir() and not path.name.endswith(PARTIAL) and (path / STORE_FILENAME).is_file()
    )


def restore(backup: Path, data_dir: Path) -> Path:
    """Bring `backup` back into DATA_DIR, after checking every file of it; the service must be
    stopped (its lock on the results folder is taken for the restore). What DATA_DIR held is
    backed up first, into DATA_DIR/before-restore/, and that folder is returned."""
    for name in FILES:
        if not (backup / name).is_file():
            raise ConfigError(f"{backup} is not a backup: it has no {name}")
        check(backup / name)
    with hold_results_lock(data_dir / RESULTS, command_line()):
        saved = data_dir / "before-restore"
        if all((data_dir / place).is_file() for place in FILES.values()):
            saved = take_backup(data_dir, saved, keep=DEFAULT_KEEP)
        for name, place in FILES.items():
            (data_dir / place).parent.mkdir(parents=True, exist_ok=True)
            # Through SQLite, not a file copy: the live file's WAL is taken into account.
            _copy(backup / name, data_dir / place)
    return saved


class Scheduled:
    """Takes a backup every `every_s` seconds in a thread of the service; a failed backup is
    logged and the next one tried on time (the service goes on)."""

    def __init__(self, data_dir: Path, backup_dir: Path, *, every_s: float, keep: int) -> None:
        if every_s <= 0:
            raise ConfigError("--backup-every must be positive")
        self.data_dir, self.backup_dir, self.every_s, self.keep = (
            data_dir,
            backup_dir,
            every_s,
            keep,
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="backups", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            started = time.monotonic()
            try:
                path = take_backup(self.data_dir, self.backup_dir, keep=self.keep)
            except Exception:
                log.exception(
                    "the scheduled backup failed; the next one is due in %.0f s", self.every_s
                )
                continue
            log.info("backed up to %s in %.1f s", path, time.monotonic() - started)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)
