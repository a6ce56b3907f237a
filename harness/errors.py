"""The harness's one error tree.

    HarnessError                 anything the harness reports instead of a traceback
    ├── ConfigError              bad usage or configuration (exit code 2)
    ├── EntryError               one entry is malformed or unusable; the batch goes on
    └── InfrastructureError      Docker, HELM or another outside tool is unavailable (exit code 3)
        └── DiskFullError        no space left where the results are written (exit code 3)

Docker and subprocess exceptions are translated into these where they are called, at one boundary
per tool; nothing else in the harness catches them. A full disk is an infrastructure failure, not
the fault of the entry being evaluated when it happens: `disk_full` recognizes one (ENOSPC, EDQUOT,
SQLITE_FULL) where the harness writes (the SQLite files, an entry's logs and HELM folder).
"""

from __future__ import annotations

import errno
import sqlite3
from pathlib import Path


class HarnessError(Exception):
    """Base of every error the harness raises on purpose."""

    exit_code = 1


class ConfigError(HarnessError):
    """Bad command-line usage or configuration."""

    exit_code = 2


class EntryError(HarnessError):
    """One entry is malformed or cannot be processed; other entries are unaffected."""

    exit_code = 1


class InfrastructureError(HarnessError):
    """An outside tool (Docker engine, HELM) is missing or not answering."""

    exit_code = 3


class DiskFullError(InfrastructureError):
    """No space left on the disk the harness writes its results to. What was recorded before is
    kept, the write that failed is not (each is one transaction): a rerun after space is freed
    goes on from there."""

    @classmethod
    def on(cls, where: Path, cause: str) -> DiskFullError:
        return cls(
            f"no space left on the disk of {where} ({cause}): free space there and run the same "
            "command again; everything recorded so far is kept"
        )


def disk_full(exc: BaseException, where: Path) -> DiskFullError | None:
    """A DiskFullError naming `where` when `exc` says its disk is full (the OS's ENOSPC or
    EDQUOT, SQLite's SQLITE_FULL); None for any other exception."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFullError.on(
            where, f"{exc.strerror} writing {exc.filename}" if exc.filename else str(exc.strerror)
        )
    if isinstance(exc, sqlite3.Error) and getattr(exc, "sqlite_errorcode", None) == (
        sqlite3.SQLITE_FULL
    ):
        return DiskFullError.on(where, str(exc))
    return None
