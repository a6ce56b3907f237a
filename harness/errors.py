"""The harness's one error tree.

    HarnessError                 anything the harness reports instead of a traceback (exit code 1)
    ├── ConfigError              bad usage or configuration (exit code 2)
    │   └── PackError            a pack that is not what its manifest says (helm/packs.py)
    ├── Refused                  the evaluation service said no (service/client.py)
    ├── ServerError              a model's server did not come up or died (evaluate/local.py)
    └── InfrastructureError      Docker, HELM or another outside tool is unavailable (exit code 3)
        ├── DiskFullError        no space left where the results are written (exit code 3)
        └── EntryLost            the machine evaluating an entry was lost (a Ray node died)

A malformed or failing entry is not an error: it ends with a status and a reason, and the batch
goes on. Docker exceptions are translated into these in infra/docker.py, subprocess ones where
each tool is run (helm/runner.py, helm/packs.py); the CLI prints them on stderr and exits with
their code (cli/_common.py: abort). A full disk is an infrastructure failure, not
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


class InfrastructureError(HarnessError):
    """An outside tool (Docker engine, HELM) is missing or not answering."""

    exit_code = 3


class EntryLost(InfrastructureError):
    """The machine evaluating an entry went away with it (a Ray node died, its task was lost):
    the entry did nothing wrong, and the other machines are not affected."""


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
