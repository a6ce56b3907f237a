"""Telling teams what happened to their entries: a signed webhook and/or an email per event.

    notifier = Notifier(db, smtp=SmtpSettings("127.0.0.1", 25, "harness@example.org"))
    notifier.entry(sub, "scored")          # queued for delivery; returns at once
    notifier.close()

Events: `entry.scored`, `entry.failed` (any other result), `entry.flagged` (refused at upload),
`entry.requeued` (the infrastructure interrupted it: not the team's fault), `entry.cancelled`
(interrupted once too often; not counted); for a finalist reproduced after the reveal,
`reproduction.finished` (its verdict as `status`, and `rank`) or `reproduction.failed`. A
competition's events go to every team: `phase.started`, `phase.ended` and `results.revealed`, as
`{"event", "competition", "phase", "ends_at", "at"}`. A webhook is a JSON POST of

    {"event": "entry.scored", "submission": "sub-…", "team": "team-a", "track": "4090",
     "status": "scored", "reason": "…", "at": "2026-12-07T12:00:00+00:00"}

with `X-Harness-Event`, `X-Harness-Delivery` (one id per event, the same on every retry) and
`X-Harness-Signature-256: sha256=<hex HMAC-SHA256 of the body under the team's webhook secret>`.
It carries no token and no secret (reasons are redacted). A failed delivery is retried RETRIES
times with exponential backoff from BACKOFF_S, in a pool of its own: a receiver that is down
delays nothing in the queue. Email goes to the team's address through the SMTP server of
`harness serve --smtp-host`, when set.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import smtplib
import time
import uuid
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage

import httpx

from harness.secrets import redact
from harness.service.db import ServiceDB, Submission
from harness.service.reproductions import Reproduction

log = logging.getLogger("harness.service")
RETRIES = 5
BACKOFF_S = 1.0
TIMEOUT_S = 10.0
SIGNATURE_HEADER = "X-Harness-Signature-256"


@dataclass(frozen=True)
class SmtpSettings:
    host: str
    port: int
    sender: str


def signature(secret: str, body: bytes) -> str:
    """The value of SIGNATURE_HEADER for `body`; receivers compare theirs in constant time."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class Notifier:
    def __init__(
        self,
        db: ServiceDB,
        *,
        smtp: SmtpSettings | None = None,
        retries: int = RETRIES,
        backoff_s: float = BACKOFF_S,
    ) -> None:
        self.db, self.smtp, self.retries, self.backoff_s = db, smtp, retries, backoff_s
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="notify")

    def entry(self, sub: Submission, what: str) -> None:
        """Tell `sub`'s team that it was `what`: scored, failed, flagged or requeued."""
        payload = {
            "event": f"entry.{what}",
            "submission": sub.id,
            "team": sub.team,
            "track": sub.track,
            "status": sub.status or sub.state.value,
            "reason": redact(sub.reason),
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        self._send(sub.team, payload)

    def reproduction(self, request: Reproduction) -> None:
        """Tell a finalist's team how the reproduction of its entry ended: its verdict
        (`reproduction.finished`), or none (`reproduction.failed`: the infrastructure). Once
        its deliveries are done (or given up) the request is marked told; one cut short by a
        stopping service is told again when the service starts."""
        payload = {
            "event": f"reproduction.{request.state.value}",
            "submission": request.submission,
            "team": request.team,
            "track": request.track,
            "rank": str(request.rank),
            "status": request.verdict or request.state.value,
            "reason": redact(request.reason),
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        self._pool.submit(self._tell_reproduction, request.id, payload)

    def _tell_reproduction(self, request_id: int, payload: Mapping[str, str | None]) -> None:
        webhook, email = self._recipients(str(payload["team"]))
        if webhook is not None:
            self._post(*webhook, payload)
        if email is not None and self.smtp is not None:
            self._mail(self.smtp, email, payload)
        try:
            self.db.reproduction_told(request_id)
        except Exception:  # the service stopped meanwhile: told again when it starts
            log.warning("could not record that %s's team was told", payload["submission"])

    def untold_reproductions(self) -> int:
        """Tell of the reproductions that ended with nobody to tell them (a reveal that ran them
        with no service running, a service stopped before it told); how many."""
        untold = self.db.untold_reproductions()
        for request in untold:
            self.reproduction(request)
        return len(untold)

    def _recipients(self, team: str) -> tuple[tuple[str, str] | None, str | None]:
        """The team's webhook (url, secret) and email address, each None when it has none."""
        email = next((t.email for t in self.db.teams() if t.name == team), None)
        return self.db.webhook(team), email or None

    def _send(self, team: str, payload: Mapping[str, str | None]) -> None:
        webhook, email = self._recipients(team)
        if webhook is not None:
            self._pool.submit(self._post, *webhook, payload)
        if email is not None and self.smtp is not None:
            self._pool.submit(self._mail, self.smtp, email, payload)

    def competition(self, event: str, competition: str, phase: str, ends_at: str | None) -> None:
        """Tell every active team of a phase event or the reveal."""
        payload = {
            "event": event,
            "competition": competition,
            "phase": phase,
            "ends_at": ends_at,
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        for team in self.db.teams():
            if team.revoked_at is not None:
                continue
            if (webhook := self.db.webhook(team.name)) is not None:
                self._pool.submit(self._post, *webhook, {**payload, "team": team.name})
            if team.email and self.smtp is not None:
                self._pool.submit(self._mail, self.smtp, team.email, {**payload, "team": team.name})

    def _post(self, url: str, secret: str, payload: Mapping[str, str | None]) -> None:
        body = json.dumps(payload, sort_keys=True).encode()
        headers = {
            "Content-Type": "application/json",
            "X-Harness-Event": str(payload["event"]),
            "X-Harness-Delivery": str(uuid.uuid4()),
            SIGNATURE_HEADER: signature(secret, body),
        }
        for attempt in range(self.retries + 1):
            try:
                answer = httpx.post(url, content=body, headers=headers, timeout=TIMEOUT_S)
                if answer.is_success:
                    return
                problem = f"HTTP {answer.status_code}"
            except httpx.HTTPError as exc:
                problem = type(exc).__name__
            if attempt < self.retries:
                time.sleep(self.backoff_s * 2**attempt)
        log.warning("webhook of %s for %s gave up: %s", payload["team"], payload["event"], problem)

    def _mail(self, smtp: SmtpSettings, to: str, payload: Mapping[str, str | None]) -> None:
        message = EmailMessage()
        message["From"], message["To"] = smtp.sender, to
        if "submission" in payload:
            message["Subject"] = f"[harness] {payload['submission']}: {payload['status']}"
            message.set_content(
                f"Your entry {payload['submission']} ({payload['track']}) was "
                f"{payload['event']}.\nStatus: {payload['status']}\n{payload['reason']}\n"
            )
        else:
            message["Subject"] = f"[harness] {payload['competition']}: {payload['event']}"
            ends = f" It ends {payload['ends_at']}." if payload["ends_at"] else ""
            message.set_content(f"{payload['event']}: phase {payload['phase']}.{ends}\n")
        for attempt in range(self.retries + 1):
            try:
                with smtplib.SMTP(smtp.host, smtp.port, timeout=TIMEOUT_S) as server:
                    server.send_message(message)
                return
            except (OSError, smtplib.SMTPException) as exc:
                problem = type(exc).__name__
            if attempt < self.retries:
                time.sleep(self.backoff_s * 2**attempt)
        log.warning("email to %s for %s gave up: %s", payload["team"], payload["event"], problem)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
