"""One SQLite file shared by the threads of one process, as the results store and the evaluation
service keep theirs: WAL, commits durable across power loss (synchronous=FULL), foreign keys,
and one transaction per write block, taken with BEGIN IMMEDIATE so that a read-then-write (a quota
count and the insert it allows) cannot interleave with another writer's, in this process or
another (SQLite serializes processes; `timeout` is how long one waits for the other).

A write that finds the disk full is rolled back whole and raises DiskFullError (exit code 3):
nothing is half-recorded, and the same write succeeds once space is freed.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Self

from harness.errors import ConfigError, disk_full


class SQLiteFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        # Autocommit mode: transactions are opened explicitly in `_write`, one per write.
        with self._disk_full_is_infrastructure():
            self._db = sqlite3.connect(
                path, isolation_level=None, check_same_thread=False, timeout=30.0
            )
            self._db.row_factory = sqlite3.Row
            self._lock = threading.Lock()
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = FULL")
            self._db.execute("PRAGMA foreign_keys = ON")

    @contextmanager
    def _disk_full_is_infrastructure(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            if (full := disk_full(exc, self.path.parent)) is not None:
                raise full from exc
            raise

    def _create_or_migrate(
        self,
        schema: str,
        version: int,
        migrations: Mapping[int, tuple[str, ...]] = {},
        what: str = "folder",
    ) -> None:
        """A new file gets `schema`; an older one the `migrations` from its version on (each
        key's statements bring version N to N + 1); a newer or unknown one is refused."""
        with self._write() as db:
            found = db.execute("PRAGMA user_version").fetchone()[0]
            if found == 0:
                for statement in schema.split(";"):
                    if statement.strip():
                        db.execute(statement)
            elif found in migrations:
                for from_version in range(found, version):
                    for statement in migrations[from_version]:
                        db.execute(statement)
                db.execute(f"PRAGMA user_version = {version}")
            elif found != version:
                raise ConfigError(
                    f"{self.path} has schema version {found}; this harness reads {version}. "
                    f"Use a new {what}."
                )

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock, self._disk_full_is_infrastructure():
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                # SQLite may have rolled back already (a full disk can do that, even on COMMIT).
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    def _read(self, sql: str, *params: Any) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()
