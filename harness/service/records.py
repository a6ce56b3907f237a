"""The competition's records in the service's database (db.py): the phase entered, the reveal,
the teams' selections for the final, the final runs, disqualifications.

    competition  key -> value: `phase` (the phase entered, never going back), `revealed` (when
                 the final results were revealed), `announced` (the last phase event notified)
"""

from __future__ import annotations

import secrets
import time

from harness.errors import ConfigError
from harness.infra.sqlite import SQLiteFile


class CompetitionRecords(SQLiteFile):
    """ServiceDB's competition tables; the submissions' columns are db.py's."""

    def state(self, key: str) -> str | None:
        rows = self._read("SELECT value FROM competition WHERE key = ?", key)
        return str(rows[0]["value"]) if rows else None

    def set_state(self, key: str, value: str) -> None:
        with self._write() as db:
            db.execute(
                "INSERT INTO competition (key, value) VALUES (?, ?) ON CONFLICT (key) "
                "DO UPDATE SET value = excluded.value",
                (key, value),
            )

    def enter_phase(self, name: str, order: list[str]) -> bool:
        """Make `name` the phase entered, unless a later one of `order` was; True if it changed."""
        with self._write() as db:
            row = db.execute("SELECT value FROM competition WHERE key = 'phase'").fetchone()
            if row is not None and order.index(row["value"]) >= order.index(name):
                return False
            db.execute(
                "INSERT INTO competition (key, value) VALUES ('phase', ?) ON CONFLICT (key) "
                "DO UPDATE SET value = excluded.value",
                (name,),
            )
        return True

    def select(self, sub_id: str, limit: int) -> None:
        """Select a scored submission for the final; ConfigError past `limit` per team and track."""
        with self._write() as db:
            row = db.execute(
                "SELECT team_id, track, status, final_of FROM submissions WHERE id = ?", (sub_id,)
            ).fetchone()
            if row is None or row["status"] != "scored" or row["final_of"] is not None:
                raise ConfigError("only a scored submission can be selected for the final")
            chosen = db.execute(
                "SELECT COUNT(*) FROM submissions WHERE team_id = ? AND track = ? AND selected = 1 "
                "AND id != ?",
                (row["team_id"], row["track"], sub_id),
            ).fetchone()[0]
            if chosen >= limit:
                raise ConfigError(
                    f"{chosen} of {limit} entries already selected on this track: unselect one"
                )
            db.execute("UPDATE submissions SET selected = 1 WHERE id = ?", (sub_id,))

    def unselect(self, sub_id: str) -> None:
        with self._write() as db:
            db.execute("UPDATE submissions SET selected = 0 WHERE id = ?", (sub_id,))

    def add_final_run(self, sub_id: str, phase: str) -> str | None:
        """Queue submission `sub_id` again for the final `phase`, charged nothing; returns the
        final run's id, None if it is queued already."""
        now = time.time()
        run_id = "sub-" + secrets.token_hex(6)
        with self._write() as db:
            if db.execute(
                "SELECT 1 FROM submissions WHERE final_of = ? AND phase = ?", (sub_id, phase)
            ).fetchone():
                return None
            db.execute(
                "INSERT INTO submissions (id, team_id, track, visibility, state, findings, "
                "filename, size, counts, created_at, queued_at, phase, final_of, charged, facts) "
                "SELECT ?, team_id, track, visibility, ?, '[]', filename, size, 0, ?, ?, ?, id, "
                "'none', facts FROM submissions WHERE id = ?",
                (run_id, "queued", now, now, phase, sub_id),
            )
        return run_id

    def disqualify(self, sub_id: str, reason: str) -> None:
        """Mark a submission (and its final runs) disqualified with `reason`; it is kept."""
        if not reason.strip():
            raise ConfigError("a disqualification needs a reason (--reason)")
        with self._write() as db:
            changed = db.execute(
                "UPDATE submissions SET disqualified = ? WHERE id = ? OR final_of = ?",
                (reason.strip(), sub_id, sub_id),
            ).rowcount
        if not changed:
            raise ConfigError(f"no submission {sub_id!r}")
