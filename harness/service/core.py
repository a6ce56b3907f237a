"""What the API and the web pages both do: submit, look up, publish, cancel, logs, leaderboard.

    DATA_DIR/service.sqlite     teams, sessions, submissions (db.py)
    DATA_DIR/uploads/ID.zip     the entries as received
    DATA_DIR/results/           the harness results store, logs and HELM runs, as `harness run`
                                writes them; an entry there is named by its submission id
    DATA_DIR/releases/VERSION/  frozen final leaderboards (leaderboard/release.py), read-only

Every lookup is scoped to the asking team: another team's submission does not exist for it (404),
whatever its visibility. Admins see every submission.
"""

from __future__ import annotations

import contextlib
import datetime
import math
import secrets
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from fastapi import HTTPException, Request

from harness.competition import TRACK_NAMES
from harness.leaderboard.build import build_leaderboard
from harness.leaderboard.intervals import ScoreInterval
from harness.leaderboard.model import Leaderboard
from harness.secrets import redact
from harness.service.db import QuotaExceeded, ServiceDB, State, Submission, Team
from harness.service.queue import Queue
from harness.service.uploads import DEFAULT_MAX_UPLOAD_BYTES, receive, static_findings
from harness.store import Store

DEFAULT_QUOTA = 3
# Without history, an evaluation is guessed to take this long (the ETA improves as runs finish).
DEFAULT_RUN_S = 600.0
LOG_TAIL_BYTES = 256 * 1024
VISIBILITIES = ("hidden", "published")


@dataclass(frozen=True)
class ServiceConfig:
    data_dir: Path
    stage: str = "open"
    quota: int = DEFAULT_QUOTA  # per team, per track, per UTC day
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES

    @property
    def uploads(self) -> Path:
        return self.data_dir / "uploads"

    @property
    def results(self) -> Path:
        return self.data_dir / "results"

    @property
    def releases(self) -> Path:
        """Frozen releases (`harness competition release`), served at /releases/VERSION."""
        return self.data_dir / "releases"

    def zip_path(self, sub_id: str) -> Path:
        return self.uploads / f"{sub_id}.zip"


class Service:
    def __init__(self, config: ServiceConfig, db: ServiceDB, store: Store, queue: Queue) -> None:
        self.config = config
        self.db = db
        self.store = store
        self.queue = queue
        config.uploads.mkdir(parents=True, exist_ok=True)

    # -- submitting -------------------------------------------------------------------------------

    async def submit(
        self,
        team: Team,
        request: Request,
        *,
        fields_check: Callable[[dict[str, str]], None] | None = None,
    ) -> Submission:
        """Receive, check and queue an upload. Raises HTTPException: 413, 422, 429.

        `fields_check(fields)` runs on the form fields before anything is kept (the web form's
        CSRF token); a flagged entry is recorded (state flagged) and answered with a 422.
        """
        partial = self.config.uploads / f".partial-{secrets.token_hex(8)}.zip"
        try:
            upload = await receive(request, partial, self.config.max_upload_bytes)
            if fields_check is not None:
                fields_check(upload.fields)
            track = upload.fields.get("track", "")
            if track not in TRACK_NAMES:
                raise HTTPException(422, f"track must be one of {', '.join(TRACK_NAMES)}")
            visibility = upload.fields.get("visibility") or "hidden"
            if visibility not in VISIBILITIES:
                raise HTTPException(422, f"visibility must be one of {', '.join(VISIBILITIES)}")
            self.db.check_quota(team, track, self.config.quota)
            findings = static_findings(partial) or None
            reason = _flag_reason(findings) if findings else ""
            sub = self.db.add_submission(
                team,
                track=track,
                visibility=visibility,
                filename=upload.filename,
                size=upload.size,
                quota=self.config.quota,
                findings=findings,
                reason=reason,
            )
            if sub.state is State.QUEUED:
                partial.replace(self.config.zip_path(sub.id))
                self.queue.wake()
            else:
                self.queue.notify(sub.id, "flagged")
            return sub
        except QuotaExceeded as exc:
            raise HTTPException(
                429,
                {"message": str(exc), "next_slot_at": _iso(exc.next_slot)},
                headers={"Retry-After": str(max(1, math.ceil(exc.next_slot - time.time())))},
            ) from exc
        finally:
            partial.unlink(missing_ok=True)

    # -- reading ----------------------------------------------------------------------------------

    def owned(self, team: Team, sub_id: str) -> Submission:
        """The team's own submission (any for an admin), or 404: others' do not exist for it."""
        sub = self.db.submission(sub_id)
        if sub is None or (sub.team != team.name and not team.admin):
            raise HTTPException(404, "no such submission")
        return sub

    def eta_seconds(self, position: int | None) -> float | None:
        if position is None:
            return None
        durations = self.db.recent_durations()
        typical = statistics.median(durations) if durations else DEFAULT_RUN_S
        return typical * math.ceil(position / max(1, self.queue.jobs))

    def describe(self, sub: Submission, *, details: bool = True) -> dict[str, Any]:
        """A submission as the API returns it; `status` is the state until a result exists."""
        position = self.db.position(sub)
        data: dict[str, Any] = {
            "id": sub.id,
            "team": sub.team,
            "track": sub.track,
            "visibility": sub.visibility,
            "status": sub.status if sub.state is State.FINISHED else sub.state.value,
            "finished": sub.state not in (State.QUEUED, State.RUNNING),
            "position": position,
            "eta_seconds": self.eta_seconds(position),
            "reason": sub.reason,
            "filename": sub.filename,
            "created_at": _iso(sub.created_at),
            "started_at": _iso(sub.started_at),
            "finished_at": _iso(sub.finished_at),
        }
        steps = self.store.latest_steps(sub.id, self.config.stage) if sub.runs else {}
        running = [s.step.value for s in steps.values() if s.status.value == "running"]
        data["step"] = running[-1] if running and sub.state is State.RUNNING else None
        if not details:
            return data
        data["findings"] = sub.findings
        data["steps"] = [
            {
                "step": record.step.value,
                "status": record.status.value,
                "started_at": _iso(record.started_at),
                "finished_at": _iso(record.finished_at),
                "detail": record.detail,
            }
            for record in steps.values()
        ]
        metrics = self.store.metrics(self.config.stage).get(sub.id, []) if sub.runs else []
        data["metrics"] = [
            {"run_spec": m.run_spec, "scenario": m.scenario, "metric": m.metric, "value": m.value}
            for m in metrics
        ]
        by_scenario: dict[str, list[float]] = {}
        for m in metrics:
            by_scenario.setdefault(m.scenario, []).append(m.value or 0.0)
        data["scenarios"] = {name: statistics.fmean(v) for name, v in by_scenario.items()}
        data["score"] = statistics.fmean(data["scenarios"].values()) if by_scenario else None
        return data

    def logs(self, sub: Submission) -> dict[str, str]:
        """The latest attempt's build, container and evaluation logs (tails, redacted)."""
        if not sub.runs:
            return {}
        logs: dict[str, str] = {}
        for step, record in self.store.latest_steps(sub.id, self.config.stage).items():
            if not record.log_path:
                continue
            path = self.config.results / record.log_path
            with contextlib.suppress(OSError), path.open("rb") as log:
                log.seek(max(0, path.stat().st_size - LOG_TAIL_BYTES))
                # Logs are redacted when kept; a log still being written is redacted here.
                logs[step.value] = redact(log.read().decode(errors="replace"))
        return logs

    # -- changing ---------------------------------------------------------------------------------

    def publish(self, team: Team, sub_id: str) -> Submission:
        sub = self.owned(team, sub_id)
        self.db.publish(sub.id)
        return self.owned(team, sub_id)

    def cancel(self, team: Team, sub_id: str) -> Submission:
        sub = self.owned(team, sub_id)
        was = self.db.cancel(sub.id)
        if was is None:
            raise HTTPException(409, f"the submission is {sub.state.value}: nothing to cancel")
        if was is State.RUNNING:
            self.queue.stop(sub.id)
        return self.owned(team, sub_id)

    def rerun(self, sub_id: str) -> None:
        if not self.config.zip_path(sub_id).exists() or not self.db.requeue(
            sub_id, keep_place=False
        ):
            raise HTTPException(409, "only a finished or cancelled submission can run again")
        self.queue.wake()

    # -- the leaderboard --------------------------------------------------------------------------

    def leaderboard(
        self, track: str, *, disqualified: Mapping[str, str] | None = None
    ) -> Leaderboard:
        """Published results of `track`, each team's best: `published_leaderboard`'s board."""
        return published_leaderboard(self.db, self.store, track, disqualified=disqualified)[0]


def published_leaderboard(
    db: ServiceDB, store: Store, track: str, *, disqualified: Mapping[str, str] | None = None
) -> tuple[Leaderboard, dict[str, str]]:
    """Published results of `track`, each team's best, ranked among themselves by the harness's
    own scoring (the same Leaderboard as `harness report`), and each row's submission id.

    Entries are the submission ids in the store; rows are relabelled with the team's name and
    lose their log links (logs are private to the team). `disqualified` (submission id -> the
    organizers' reason): such an entry is never a team's best; a team whose every ranked entry
    is disqualified is shown once, struck through with the reason, unranked.
    """
    if track not in TRACK_NAMES:
        raise HTTPException(404, f"no track {track!r}; tracks: {', '.join(TRACK_NAMES)}")
    published = {
        sub.id: sub
        for sub in db.submissions(states=(State.FINISHED,))
        if sub.track == track and sub.visibility == "published"
    }
    out = {sub_id: reason for sub_id, reason in (disqualified or {}).items() if sub_id in published}
    best: dict[str, str] = {}
    field = build_leaderboard(
        store, entries=published, track=track, intervals=False, disqualified=out
    )
    for row in field.rows:
        # Ranked rows come first, best first; then the disqualified, best first.
        if row.rank is not None or row.disqualified is not None:
            best.setdefault(published[row.entry].team, row.entry)
    board = build_leaderboard(store, entries=best.values(), track=track, disqualified=out)
    rows = [
        replace(
            row,
            entry=published[row.entry].team,
            stages={
                stage: replace(
                    stage_row,
                    logs={},
                    steps=[replace(s, log=None) for s in stage_row.steps],
                    interval=_with_teams(stage_row.interval, published),
                )
                for stage, stage_row in row.stages.items()
            },
        )
        for row in board.rows
        if row.rank is not None or row.disqualified is not None
    ]
    return replace(board, rows=rows), {published[sub_id].team: sub_id for sub_id in best.values()}


def _with_teams(
    interval: ScoreInterval | None, published: dict[str, Submission]
) -> ScoreInterval | None:
    """An interval whose ties name teams, as the rows do, not submission ids."""
    if interval is None:
        return None
    return replace(interval, tied_with=tuple(published[s].team for s in interval.tied_with))


def leaderboard_json(board: Leaderboard, track: str) -> dict[str, Any]:
    """The JSON API's view of a Leaderboard: one row per team, per-scenario win-rate columns."""
    return {
        "track": track,
        "stages": board.stages,
        "scenarios": board.columns,
        "rows": [
            {
                "rank": row.rank,
                "team": row.entry,
                "score": row.final,
                "disqualified": row.disqualified,
                "scenarios": {
                    name: result.win_rate if (result := row.scenarios.get(name)) else None
                    for name in board.columns
                },
                "intervals": {
                    stage: {
                        **asdict(interval),
                        "tied_with": list(interval.tied_with),
                        "tied": interval.tied,
                    }
                    for stage, stage_row in row.stages.items()
                    if (interval := stage_row.interval) is not None
                },
            }
            for row in board.rows
        ],
        "bootstrap": {stage: asdict(method) for stage, method in board.bootstrap.items()},
    }


def _flag_reason(findings: list[dict[str, Any]]) -> str:
    rules = sorted({f["rule"] for f in findings})
    return f"{len(findings)} error finding(s): {', '.join(rules)}; fix them and submit again"


def _iso(stamp: float | None) -> str | None:
    if stamp is None:
        return None
    return datetime.datetime.fromtimestamp(stamp, datetime.UTC).isoformat(timespec="seconds")
