"""The teams in the service's database (db.py): their tokens, web sessions and webhooks.

Tokens and session ids are random 32-byte secrets, so a fast hash is right: only their sha256 is
stored, and a lookup by hash is followed by a constant-time comparison.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sqlite3
import time
from dataclasses import dataclass

from harness.errors import ConfigError
from harness.infra.sqlite import SQLiteFile

TOKEN_PREFIX = "hst_"
SESSION_S = 7 * 24 * 3600


def hash_secret(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


@dataclass(frozen=True)
class Team:
    id: int
    name: str
    email: str | None
    admin: bool
    created_at: float
    revoked_at: float | None


class TeamRecords(SQLiteFile):
    """ServiceDB's teams, sessions and webhooks tables; the schema is db.py's."""

    def add_team(self, name: str, email: str | None = None, *, admin: bool = False) -> str:
        """Create a team; returns its token, which is stored only as a hash."""
        if not name.strip() or len(name) > 100:
            raise ConfigError("a team name must be 1 to 100 characters")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        try:
            with self._write() as db:
                db.execute(
                    "INSERT INTO teams (name, email, token_hash, admin, created_at) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (name, email, hash_secret(token), int(admin), time.time()),
                )
        except sqlite3.IntegrityError as exc:
            raise ConfigError(f"a team named {name!r} exists already") from exc
        return token

    def set_webhook(self, name: str, url: str, secret: str) -> None:
        """Send the team's notifications to `url`, signed with `secret`."""
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"a webhook URL starts with http:// or https://; got {url!r}")
        if len(secret) < 16:
            raise ConfigError("a webhook secret has at least 16 characters")
        with self._write() as db:
            row = db.execute("SELECT id FROM teams WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise ConfigError(f"no team named {name!r}")
            db.execute(
                "INSERT INTO webhooks (team_id, url, secret) VALUES (?, ?, ?) ON CONFLICT "
                "(team_id) DO UPDATE SET url = excluded.url, secret = excluded.secret",
                (row["id"], url, secret),
            )

    def webhook(self, name: str) -> tuple[str, str] | None:
        """The team's webhook URL and secret, if it has one."""
        rows = self._read(
            "SELECT w.url, w.secret FROM webhooks w JOIN teams t ON t.id = w.team_id "
            "WHERE t.name = ?",
            name,
        )
        return (rows[0]["url"], rows[0]["secret"]) if rows else None

    def teams(self) -> list[Team]:
        rows = self._read(
            "SELECT id, name, email, admin, created_at, revoked_at FROM teams ORDER BY name"
        )
        return [Team(**{**dict(row), "admin": bool(row["admin"])}) for row in rows]

    def revoke_team(self, name: str) -> None:
        with self._write() as db:
            changed = db.execute(
                "UPDATE teams SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL",
                (time.time(), name),
            ).rowcount
            if changed:
                db.execute(
                    "DELETE FROM sessions WHERE team_id = (SELECT id FROM teams WHERE name = ?)",
                    (name,),
                )
        if not changed:
            raise ConfigError(f"no active team named {name!r}")

    def _team_by_hash(self, table: str, column: str, digest: str, extra: str = "") -> Team | None:
        rows = self._read(
            f"SELECT t.id, t.name, t.email, t.admin, t.created_at, t.revoked_at, x.{column} AS h "
            f"FROM {table} x JOIN teams t ON t.id = x.{'team_id' if table != 'teams' else 'id'} "
            f"WHERE x.{column} = ? AND t.revoked_at IS NULL {extra}",
            digest,
        )
        if not rows or not hmac.compare_digest(rows[0]["h"], digest):
            return None
        values = dict(rows[0])
        values.pop("h")
        return Team(**{**values, "admin": bool(values["admin"])})

    def team_for_token(self, token: str) -> Team | None:
        """The active team holding `token`, or None (unknown or revoked)."""
        return self._team_by_hash("teams", "token_hash", hash_secret(token))

    def start_session(self, team: Team) -> str:
        session = secrets.token_urlsafe(32)
        now = time.time()
        with self._write() as db:
            db.execute("DELETE FROM sessions WHERE expires_at < ?", (now,))
            db.execute(
                "INSERT INTO sessions (id_hash, team_id, expires_at) VALUES (?, ?, ?)",
                (hash_secret(session), team.id, now + SESSION_S),
            )
        return session

    def team_for_session(self, session: str) -> Team | None:
        return self._team_by_hash(
            "sessions", "id_hash", hash_secret(session), f"AND x.expires_at > {time.time()!r}"
        )

    def end_session(self, session: str) -> None:
        with self._write() as db:
            db.execute("DELETE FROM sessions WHERE id_hash = ?", (hash_secret(session),))
