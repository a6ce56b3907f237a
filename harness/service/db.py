"""The service's own database: teams, sessions and submissions, in DATA_DIR/service.sqlite.
The submissions' queries are here; the teams' (tokens, sessions, webhooks) are accounts.py's and
the competition's (phase, reveal, selection, disqualification) records.py's and the
reproductions' reproductions.py's, all mixed into
ServiceDB over the same file, schema and lock.

Evaluation results live in the harness results store beside it (DATA_DIR/results, the same format
as `harness run`); this file only says who submitted what, where it is in the queue and how it
ended. Every state change is its own transaction (WAL, synchronous=FULL): a killed service loses
nothing it had answered.

    teams        name, email, sha256 of the token, admin flag, revoked time
    sessions     sha256 of a web session id -> team, expiry
    webhooks     a team's webhook URL and the secret its deliveries are signed with
    submissions  id, team, track, visibility, state, result status and reason, times, quota flag,
                 and while running its lease: the worker running it and its last heartbeat;
                 the competition's phase it ran in, what it was charged (`charged`), its
                 automatic re-queues, its fact sheet, the team's selection for the final, a
                 disqualification's reason, and for a final run the submission it re-runs
    competition  the phase entered and the reveal (key -> value; phases.py)
    reproductions  the top finalists' reproductions asked by the reveal (reproductions.py)

What an entry costs its team (`charged`): nothing yet while it is queued or running (it holds a
slot of the day meanwhile), `quota` once scored, `failures` once it failed on its own (the failure
allowance when the phase has one, else the daily quota), `none` when the infrastructure or an
organizer ended it, for a final run, and for a cancel before it started.

A submission's `state` is where it is in the service (queued -> running -> finished, or cancelled,
or flagged at upload and never queued); `status` and `reason` are the harness's result when it
finished.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from datetime import time as clock
from enum import StrEnum
from pathlib import Path
from typing import Any

from harness.competition import TRACK_NAMES
from harness.service.accounts import Team, TeamRecords
from harness.service.records import CompetitionRecords
from harness.service.reproductions import TABLE as REPRODUCTIONS_TABLE
from harness.service.reproductions import TOLD_BEFORE as REPRODUCTIONS_TOLD_BEFORE
from harness.service.reproductions import TOLD_COLUMN as REPRODUCTIONS_TOLD
from harness.service.reproductions import ReproductionRecords

DB_FILENAME = "service.sqlite"
SCHEMA_VERSION = 6
# Statements that bring a database of version N (the key) to N + 1.
_MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        "ALTER TABLE submissions ADD COLUMN worker TEXT",
        "ALTER TABLE submissions ADD COLUMN heartbeat_at REAL",
    ),
    2: ("CREATE TABLE IF NOT EXISTS webhooks (team_id INTEGER PRIMARY KEY "
        "REFERENCES teams(id), url TEXT NOT NULL, secret TEXT NOT NULL)",),
    3: (
        *(f"ALTER TABLE submissions ADD COLUMN {column}" for column in (
            "phase TEXT NOT NULL DEFAULT ''", "final_of TEXT", "charged TEXT", "disqualified TEXT",
            "selected INTEGER NOT NULL DEFAULT 0", "requeues INTEGER NOT NULL DEFAULT 0",
            "facts TEXT NOT NULL DEFAULT '{}'",
        )),
        "CREATE TABLE IF NOT EXISTS competition (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        "UPDATE submissions SET charged = CASE WHEN counts = 0 THEN 'none' WHEN status = "
        "'scored' THEN 'quota' ELSE 'failures' END WHERE state NOT IN ('queued', 'running')",
    ),
    4: (REPRODUCTIONS_TABLE,),
    5: (REPRODUCTIONS_TOLD, REPRODUCTIONS_TOLD_BEFORE),
}  # fmt: skip
# An entry ended by the infrastructure (or an organizer's cancel) goes back to the queue this
# many times on its own.
MAX_REQUEUES = 1
WEEK_S = 7 * 24 * 3600


class State(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    FINISHED = "finished"
    CANCELLED = "cancelled"
    FLAGGED = "flagged"  # refused at upload by the static checks: never queued


ACTIVE = (State.QUEUED, State.RUNNING)

_SCHEMA = f"""
CREATE TABLE teams (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    email TEXT,
    token_hash TEXT NOT NULL UNIQUE,
    admin INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    revoked_at REAL
);
CREATE TABLE sessions (
    id_hash TEXT PRIMARY KEY,
    team_id INTEGER NOT NULL REFERENCES teams(id),
    expires_at REAL NOT NULL
);
CREATE TABLE submissions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    team_id INTEGER NOT NULL REFERENCES teams(id),
    track TEXT NOT NULL CHECK (track IN ({", ".join(repr(t) for t in TRACK_NAMES)})),
    visibility TEXT NOT NULL CHECK (visibility IN ('hidden', 'published')),
    state TEXT NOT NULL CHECK (state IN ({", ".join(repr(s.value) for s in State)})),
    status TEXT,
    reason TEXT NOT NULL DEFAULT '',
    findings TEXT NOT NULL DEFAULT '[]',
    filename TEXT NOT NULL,
    size INTEGER NOT NULL,
    counts INTEGER NOT NULL,
    runs INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    queued_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    worker TEXT,
    heartbeat_at REAL,
    phase TEXT NOT NULL DEFAULT '',
    final_of TEXT,
    selected INTEGER NOT NULL DEFAULT 0,
    charged TEXT,
    requeues INTEGER NOT NULL DEFAULT 0,
    facts TEXT NOT NULL DEFAULT '{{}}',
    disqualified TEXT
);
CREATE TABLE competition (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE webhooks (
    team_id INTEGER PRIMARY KEY REFERENCES teams(id),
    url TEXT NOT NULL,
    secret TEXT NOT NULL
);
{REPRODUCTIONS_TABLE};
{REPRODUCTIONS_TOLD};
CREATE INDEX submissions_by_queue ON submissions (state, queued_at, seq);
CREATE INDEX submissions_by_team ON submissions (team_id, track, created_at);
PRAGMA user_version = {SCHEMA_VERSION};
"""


def _charged_at_upload(flagged: bool, failures_per_week: int | None) -> str | None:
    """What an upload costs when received: nothing yet when queued (its ending decides);
    flagged by the checks, a failure where the phase counts failures apart, else nothing."""
    if not flagged:
        return None
    return "failures" if failures_per_week is not None else "none"


def day_start(now: float, zone: tzinfo = UTC) -> float:
    """Midnight, in `zone`, of the day `now` falls in: quotas count per calendar day there."""
    return datetime.combine(datetime.fromtimestamp(now, zone).date(), clock(0), zone).timestamp()


def next_day(now: float, zone: tzinfo = UTC) -> float:
    """The next midnight in `zone` (a day of 23 or 25 hours where the clocks change)."""
    day = datetime.fromtimestamp(now, zone).date() + timedelta(days=1)
    return datetime.combine(day, clock(0), zone).timestamp()


@dataclass(frozen=True)
class Submission:
    seq: int
    id: str
    team: str
    track: str
    visibility: str
    state: State
    status: str | None
    reason: str
    findings: list[dict[str, Any]]
    filename: str
    size: int
    counts: bool
    runs: int
    created_at: float
    queued_at: float
    started_at: float | None
    finished_at: float | None
    worker: str | None = None  # while running: who runs it (host/pid)
    heartbeat_at: float | None = None  # while running: the lease's last renewal
    phase: str = ""
    final_of: str | None = None  # a final run: the submission it re-runs
    selected: bool = False
    charged: str | None = None  # quota | failures | none; None while it may still run
    requeues: int = 0
    facts: dict[str, Any] = field(default_factory=dict)
    disqualified: str | None = None  # the reason

    @property
    def entry(self) -> str:
        """Its name in the results store: a final run's results sit beside its original's, under
        the final's stage, so that the stages combine."""
        return self.final_of or self.id

    @property
    def final_run(self) -> bool:
        return self.final_of is not None


class QuotaExceeded(Exception):
    """The team used its daily submissions (or its failure allowance) on this track;
    `next_slot` is when one frees up."""

    def __init__(self, message: str, next_slot: float) -> None:
        super().__init__(message)
        self.next_slot = next_slot


@dataclass(frozen=True)
class Allowance:
    """A phase's quota as the database counts it (phases.Quota)."""

    per_day: int
    failures_per_week: int | None = None
    zone: tzinfo = UTC  # whose calendar days `per_day` counts


@dataclass(frozen=True)
class Used:
    """What a team used on a track: today's slots, and its failures of the last 7 days."""

    today: int
    failures: int
    next_slot: float  # when a slot of the day frees (the next midnight in the quota's zone)
    next_failure_slot: float | None  # when the oldest counted failure ages out


_SUBMISSION_COLUMNS = (
    "s.seq, s.id, t.name AS team, s.track, s.visibility, s.state, s.status, s.reason, "
    "s.findings, s.filename, s.size, s.counts, s.runs, s.created_at, s.queued_at, "
    "s.started_at, s.finished_at, s.worker, s.heartbeat_at, s.phase, s.final_of, s.selected, "
    "s.charged, s.requeues, s.facts, s.disqualified"
)


def _submission(row: sqlite3.Row) -> Submission:
    values = dict(row)
    values["state"] = State(values["state"])
    values["findings"] = json.loads(values["findings"])
    values["counts"] = bool(values["counts"])
    values["selected"] = bool(values["selected"])
    values["facts"] = json.loads(values["facts"])
    return Submission(**values)


class ServiceDB(TeamRecords, CompetitionRecords, ReproductionRecords):
    """The service's database; safe to share between threads of one process (one lock)."""

    def __init__(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        super().__init__(data_dir / DB_FILENAME)
        self._create_or_migrate(_SCHEMA, SCHEMA_VERSION, _MIGRATIONS, what="data folder")

    # -- submissions ------------------------------------------------------------------------------

    def add_submission(
        self,
        team: Team,
        *,
        track: str,
        visibility: str,
        filename: str,
        size: int,
        allowance: Allowance,
        phase: str = "",
        facts: dict[str, Any] | None = None,
        findings: list[dict[str, Any]] | None = None,
        reason: str = "",
    ) -> Submission:
        """Queue a submission, or record one flagged at upload when `findings` is given.

        The quota count and the insert are one transaction: concurrent uploads of one team cannot
        both take its last slot. Flagged entries take no slot of the day (they never reach a
        GPU); where the phase has a failure allowance they count against it (their own failure).
        """
        now = time.time()
        sub_id = "sub-" + secrets.token_hex(6)
        flagged = findings is not None
        with self._write() as db:
            if not flagged:
                self._check_quota(db, team, track, allowance, now)
            db.execute(
                "INSERT INTO submissions (id, team_id, track, visibility, state, status, reason, "
                "findings, filename, size, counts, created_at, queued_at, phase, facts, charged, "
                "finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    sub_id,
                    team.id,
                    track,
                    visibility,
                    State.FLAGGED if flagged else State.QUEUED,
                    "flagged" if flagged else None,
                    reason,
                    json.dumps(findings or []),
                    filename,
                    size,
                    int(not flagged),
                    now,
                    now,
                    phase,
                    json.dumps(facts or {}),
                    _charged_at_upload(flagged, allowance.failures_per_week),
                    now if flagged else None,
                ),
            )
        found = self.submission(sub_id)
        assert found is not None
        return found

    def _used(
        self, db: sqlite3.Connection, team: Team, track: str, allowance: Allowance, now: float
    ) -> Used:
        # Pending entries hold a slot of the day; failures take one only without an allowance.
        charged = "('quota', 'failures')" if allowance.failures_per_week is None else "('quota')"
        today = db.execute(
            "SELECT COUNT(*) FROM submissions WHERE team_id = ? AND track = ? AND counts = 1 "
            f"AND created_at >= ? AND (charged IS NULL OR charged IN {charged})",
            (team.id, track, day_start(now, allowance.zone)),
        ).fetchone()[0]
        failures = db.execute(
            "SELECT COUNT(*), MIN(finished_at) FROM submissions WHERE team_id = ? AND track = ? "
            "AND charged = 'failures' AND finished_at >= ?",
            (team.id, track, now - WEEK_S),
        ).fetchone()
        oldest = failures[1]
        next_slot = next_day(now, allowance.zone)
        return Used(today, failures[0], next_slot, oldest + WEEK_S if oldest else None)

    def _check_quota(
        self, db: sqlite3.Connection, team: Team, track: str, allowance: Allowance, now: float
    ) -> None:
        used = self._used(db, team, track, allowance, now)
        if used.today >= allowance.per_day:
            raise QuotaExceeded(
                f"{used.today} of {allowance.per_day} submissions used today on this track",
                used.next_slot,
            )
        allowed = allowance.failures_per_week
        if allowed is not None and used.failures >= allowed:
            raise QuotaExceeded(
                f"{used.failures} of {allowed} failures allowed in 7 days used on this track",
                used.next_failure_slot or used.next_slot,
            )

    def check_quota(self, team: Team, track: str, allowance: Allowance) -> None:
        """Raise QuotaExceeded now, before an upload is read (the insert checks again)."""
        with self._lock:
            self._check_quota(self._db, team, track, allowance, time.time())

    def used(self, team: Team, track: str, allowance: Allowance) -> Used:
        with self._lock:
            return self._used(self._db, team, track, allowance, time.time())

    def submission(self, sub_id: str) -> Submission | None:
        rows = self._read(
            f"SELECT {_SUBMISSION_COLUMNS} FROM submissions s JOIN teams t ON t.id = s.team_id "
            "WHERE s.id = ?",
            sub_id,
        )
        return _submission(rows[0]) if rows else None

    def submissions(
        self, *, team: Team | None = None, states: tuple[State, ...] = ()
    ) -> list[Submission]:
        """A team's submissions, newest first (every team's when `team` is None)."""
        where: list[str] = ["1"]
        params: list[Any] = []
        if team is not None:
            where.append("s.team_id = ?")
            params.append(team.id)
        if states:
            where.append(f"s.state IN ({', '.join('?' * len(states))})")
            params += [s.value for s in states]
        rows = self._read(
            f"SELECT {_SUBMISSION_COLUMNS} FROM submissions s JOIN teams t ON t.id = s.team_id "
            f"WHERE {' AND '.join(where)} ORDER BY s.seq DESC",
            *params,
        )
        return [_submission(row) for row in rows]

    def queue(self) -> list[Submission]:
        """Queued submissions in the order they will run."""
        rows = self._read(
            f"SELECT {_SUBMISSION_COLUMNS} FROM submissions s JOIN teams t ON t.id = s.team_id "
            "WHERE s.state = ? ORDER BY s.queued_at, s.seq",
            State.QUEUED.value,
        )
        return [_submission(row) for row in rows]

    def position(self, sub: Submission) -> int | None:
        """1 = next to run; None when not queued."""
        if sub.state is not State.QUEUED:
            return None
        rows = self._read(
            "SELECT COUNT(*) FROM submissions WHERE state = ? AND (queued_at < ? OR "
            "(queued_at = ? AND seq < ?))",
            State.QUEUED.value,
            sub.queued_at,
            sub.queued_at,
            sub.seq,
        )
        return int(rows[0][0]) + 1

    def recent_durations(self, limit: int = 20) -> list[float]:
        rows = self._read(
            "SELECT finished_at - started_at FROM submissions WHERE state = ? AND "
            "started_at IS NOT NULL ORDER BY finished_at DESC LIMIT ?",
            State.FINISHED.value,
            limit,
        )
        return [float(row[0]) for row in rows]

    def claim_next(self, worker: str | None = None) -> Submission | None:
        """Move the first queued submission to running, its lease held by `worker` from now;
        None when the queue is empty."""
        with self._write() as db:
            row = db.execute(
                "SELECT id FROM submissions WHERE state = ? ORDER BY queued_at, seq LIMIT 1",
                (State.QUEUED.value,),
            ).fetchone()
            if row is None:
                return None
            now = time.time()
            db.execute(
                "UPDATE submissions SET state = ?, started_at = ?, runs = runs + 1, worker = ?, "
                "heartbeat_at = ? WHERE id = ?",
                (State.RUNNING.value, now, worker, now, row["id"]),
            )
        return self.submission(row["id"])

    def beat(self, sub_ids: list[str], worker: str, at: float | None = None) -> None:
        """Renew the leases of these running submissions: `worker` still ran them `at`
        (default: now)."""
        if not sub_ids:
            return
        with self._write() as db:
            db.execute(
                "UPDATE submissions SET heartbeat_at = ?, worker = ? WHERE state = ? "
                f"AND id IN ({', '.join('?' * len(sub_ids))})",
                (time.time() if at is None else at, worker, State.RUNNING.value, *sub_ids),
            )

    def lapsed(self, before: float) -> list[Submission]:
        """Running submissions whose lease was last renewed before `before` (a timestamp)."""
        return [
            _submission(row)
            for row in self._read(
                f"SELECT {_SUBMISSION_COLUMNS} FROM submissions s JOIN teams t ON t.id = s.team_id "
                "WHERE s.state = ? AND COALESCE(s.heartbeat_at, s.started_at) < ?",
                State.RUNNING.value,
                before,
            )
        ]

    def finish(self, sub_id: str, status: str, reason: str) -> bool:
        """Record a running submission's result, and charge it: scored to the quota, any other
        ending to the failure allowance (a final run, to nothing). False when it was no longer
        running."""
        with self._write() as db:
            changed = db.execute(
                "UPDATE submissions SET state = ?, status = ?, reason = ?, finished_at = ?, "
                "charged = CASE WHEN final_of IS NOT NULL THEN 'none' WHEN ? = 'scored' THEN "
                "'quota' ELSE 'failures' END WHERE id = ? AND state = ?",
                (State.FINISHED.value, status, reason, time.time(), status, sub_id,
                 State.RUNNING.value),
            ).rowcount  # fmt: skip
        return bool(changed)

    def cancel(self, sub_id: str, *, by_organizer: bool = False) -> State | None:
        """Cancel a queued or running submission; returns the state it was in, None if neither.

        A cancel before the start gives the quota slot back; a running one cancelled by its team
        keeps it used; an organizer's cancel never counts.
        """
        with self._write() as db:
            row = db.execute("SELECT state FROM submissions WHERE id = ?", (sub_id,)).fetchone()
            if row is None or row["state"] not in ACTIVE:
                return None
            was = State(row["state"])
            counts = was is State.RUNNING and not by_organizer
            who = " by the organizers (not counted)" if by_organizer else ""
            db.execute(
                "UPDATE submissions SET state = ?, reason = ?, finished_at = ?, counts = ?, "
                "charged = ? WHERE id = ?",
                (State.CANCELLED.value, f"cancelled{who} while {was.value}", time.time(),
                 int(counts), "quota" if counts else "none", sub_id),
            )  # fmt: skip
        return was

    def requeue(
        self, sub_id: str, *, keep_place: bool, reason: str = "", infrastructure: bool = False
    ) -> bool:
        """Queue a submission again: a running one interrupted by a restart keeps its place; an
        admin's re-run of a finished or cancelled one goes to the end. False when not allowed.
        `reason` says why, to the team, until it runs again; `infrastructure` counts it among the
        entry's automatic re-queues (MAX_REQUEUES)."""
        fields = (
            "state = ?, status = NULL, reason = ?, started_at = NULL, finished_at = NULL, "
            "worker = NULL, heartbeat_at = NULL, requeues = requeues + ?"
        )
        params: list[Any] = [State.QUEUED.value, reason, int(infrastructure)]
        if not keep_place:
            # An admin's re-run is charged again by its new ending (a final run never is).
            fields += ", queued_at = ?, charged = IIF(final_of IS NULL, NULL, 'none')"
            params.append(time.time())
        allowed = (State.RUNNING,) if keep_place else (State.FINISHED, State.CANCELLED)
        with self._write() as db:
            changed = db.execute(
                f"UPDATE submissions SET {fields} WHERE id = ? AND state IN (?, ?)",
                (*params, sub_id, allowed[0].value, allowed[-1].value),
            ).rowcount
        return bool(changed)

    def give_up(self, sub_id: str, reason: str) -> bool:
        """End a running submission the infrastructure interrupted once too often: cancelled,
        not counted. False when it was no longer running."""
        with self._write() as db:
            changed = db.execute(
                "UPDATE submissions SET state = ?, reason = ?, finished_at = ?, counts = 0, "
                "charged = 'none' WHERE id = ? AND state = ?",
                (State.CANCELLED.value, reason, time.time(), sub_id, State.RUNNING.value),
            ).rowcount
        return bool(changed)

    def publish(self, sub_id: str) -> None:
        with self._write() as db:
            db.execute("UPDATE submissions SET visibility = 'published' WHERE id = ?", (sub_id,))
