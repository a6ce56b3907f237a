"""What the API and the web pages both do: submit, look up, publish, cancel, logs, leaderboard.

    DATA_DIR/service.sqlite     teams, sessions, submissions (db.py)
    DATA_DIR/uploads/ID.zip     the entries as received
    DATA_DIR/results/           the harness results store, logs and HELM runs, as `harness run`
                                writes them; an entry there is named by its submission id
    DATA_DIR/releases/VERSION/  frozen final leaderboards (leaderboard/release.py), read-only

Every lookup is scoped to the asking team: another team's submission does not exist for it (404),
whatever its visibility. Admins see every submission. The competition's phases (phases.py) decide
what an upload may be and cost, and who sees which scores: a phase whose visibility is
`organizers` shows teams how their entries ended but not their scores until the reveal.
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
from functools import cached_property
from pathlib import Path
from typing import Any

from fastapi import HTTPException, Request

from harness.competition import TRACK_NAMES
from harness.errors import ConfigError
from harness.leaderboard.build import build_leaderboard
from harness.leaderboard.intervals import ScoreInterval
from harness.leaderboard.model import Leaderboard
from harness.secrets import redact
from harness.service.accounts import Team
from harness.service.db import Allowance, QuotaExceeded, ServiceDB, State, Submission
from harness.service.phases import (
    Competition,
    Phase,
    current_phase,
    disqualifications,
    final_entries,
    single_phase,
    uploads_closed,
)
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
    quota: int = DEFAULT_QUOTA  # per team, per track, per day in `quota_timezone`
    quota_timezone: str = "UTC"
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    competition: Competition | None = None  # None: one open phase of `quota` a day

    @cached_property  # every page and upload asks; built once
    def phases(self) -> Competition:
        return self.competition or single_phase(self.quota, self.quota_timezone)

    def allowance(self, phase: Phase) -> Allowance:
        """`phase`'s quota as the database counts it."""
        quota = phase.quota
        return Allowance(quota.per_day, quota.failures_per_week, self.phases.quota_zone)

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
            phase = self.phase()
            if closed := uploads_closed(phase, time.time()):
                raise HTTPException(409, closed)
            tracks = self.config.phases.tracks
            track = upload.fields.get("track", "")
            if track not in tracks:
                raise HTTPException(422, f"track must be one of {', '.join(tracks)}")
            visibility = upload.fields.get("visibility") or "hidden"
            if visibility not in VISIBILITIES:
                raise HTTPException(422, f"visibility must be one of {', '.join(VISIBILITIES)}")
            facts = self.facts(upload.fields)
            allowance = self.config.allowance(phase)
            self.db.check_quota(team, track, allowance)
            findings = static_findings(partial) or None
            reason = _flag_reason(findings) if findings else ""
            sub = self.db.add_submission(
                team,
                track=track,
                visibility=visibility,
                filename=upload.filename,
                size=upload.size,
                allowance=allowance,
                phase=phase.name,
                facts=facts,
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

    def facts(self, fields: dict[str, str]) -> dict[str, Any]:
        """The upload's fact sheet, validated: a 422 names the field."""
        facts = {}
        for name, fact in self.config.phases.facts.items():
            try:
                facts[name] = fact.parse(name, fields.get(name))
            except ValueError as exc:
                raise HTTPException(422, {"message": str(exc), "field": name}) from None
        return facts

    # -- the competition --------------------------------------------------------------------------

    def phase(self) -> Phase:
        return current_phase(self.config.phases, self.db.state("phase"), time.time())

    @property
    def revealed(self) -> bool:
        return self.db.state("revealed") is not None

    def scores_hidden(self, sub: Submission, viewer: Team) -> bool:
        """Whether `viewer` may not see `sub`'s scores yet (its phase shows them to organizers
        only, and the results are not revealed)."""
        if viewer.admin or self.revealed:
            return False
        phase = next((p for p in self.config.phases.phases if p.name == sub.phase), None)
        return phase is not None and phase.visibility == "organizers"

    def standing(self, team: Team) -> dict[str, Any]:
        """The competition as `team` sees it: the current phase, its end, and per track what is
        left of the team's daily quota and failure allowance."""
        competition, phase, now = self.config.phases, self.phase(), time.time()
        following = competition.next_phase(phase)
        quota = phase.quota
        tracks = {}
        for track in competition.tracks:
            used = self.db.used(team, track, self.config.allowance(phase))
            allowed = quota.failures_per_week
            tracks[track] = {
                "per_day": quota.per_day,
                "left_today": max(0, quota.per_day - used.today),
                "next_slot_at": _iso(used.next_slot),
                "failures_per_week": allowed,
                "failures_used": used.failures,
                "failures_left": None if allowed is None else max(0, allowed - used.failures),
                "selected": sum(
                    1 for s in self.db.submissions(team=team) if s.track == track and s.selected
                ),
            }
        return {
            "competition": competition.name,
            "phase": phase.name,
            "stage": phase.harness_stage,
            "visibility": phase.visibility,
            "final": phase.final,
            "starts_at": _iso(phase.start.timestamp()) if phase.start else None,
            "ends_at": _iso(phase.end.timestamp()) if phase.end else None,
            "uploads_closed": uploads_closed(phase, now),
            "next_phase": following.name if following else None,
            "next_phase_starts_at": _iso(following.start.timestamp())
            if following and following.start
            else None,
            "selection": competition.phases[-1].selection,
            "revealed": self.revealed,
            "facts": {
                name: {"type": f.type, "required": f.required, "help": f.help}
                for name, f in competition.facts.items()
            },
            "quota_timezone": competition.quota_timezone,
            "tracks": tracks,
        }

    def select(self, team: Team, sub_id: str, *, chosen: bool = True) -> Submission:
        """Select (or unselect) a scored entry for the final; 409 when there is no final or
        it started already."""
        sub = self.owned(team, sub_id)
        final = self.config.phases.phases[-1]
        if final.selection is None:
            raise HTTPException(409, "this competition has no final phase to select entries for")
        if self.phase().final:
            raise HTTPException(409, "the final phase started: selections are closed")
        if chosen:
            try:
                self.db.select(sub.id, final.selection)
            except ConfigError as exc:
                raise HTTPException(409, str(exc)) from None
        else:
            self.db.unselect(sub.id)
        return self.owned(team, sub_id)

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

    def describe(self, sub: Submission, viewer: Team, *, details: bool = True) -> dict[str, Any]:
        """A submission as the API returns it to `viewer`; `status` is the state until a result
        exists; `charged` says what its ending cost the team (quota, failures, none; null while
        it may still run)."""
        position = self.db.position(sub)
        hidden = self.scores_hidden(sub, viewer)
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
            "phase": sub.phase,
            "final_of": sub.final_of,
            "charged": sub.charged,
            "requeues": sub.requeues,
            "selected": sub.selected,
            "facts": sub.facts,
            "disqualified": sub.disqualified,
            "scores_hidden": hidden,
        }
        stage = self.queue.options_for(sub).stage
        steps = self.store.latest_steps(sub.entry, stage) if sub.runs else {}
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
        shown = sub.runs and not hidden
        metrics = self.store.metrics(stage).get(sub.entry, []) if shown else []
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
        stage = self.queue.options_for(sub).stage
        for step, record in self.store.latest_steps(sub.entry, stage).items():
            if not record.log_path:
                continue
            path = self.config.results / record.log_path
            with contextlib.suppress(OSError), path.open("rb") as log:
                log.seek(max(0, path.stat().st_size - LOG_TAIL_BYTES))
                # Logs are redacted when kept; a log still being written is redacted here.
                logs[step.value] = redact(log.read().decode(errors="replace"))
        return logs

    def reproductions(self, viewer: Team) -> list[dict[str, Any]]:
        """The top finalists' reproductions as `viewer` may see them: another team's
        submission id is left out (for an organizer, none is)."""
        return [
            {
                "track": r.track,
                "rank": r.rank,
                "team": r.team,
                "submission": r.submission if viewer.admin or r.team == viewer.name else None,
                "state": r.state.value,
                "verdict": r.verdict,
                "reason": r.reason,
                "attempts": r.attempts,
                "queued_at": _iso(r.queued_at),
                "started_at": _iso(r.started_at),
                "finished_at": _iso(r.finished_at),
            }
            for r in self.db.reproductions()
        ]

    # -- changing ---------------------------------------------------------------------------------

    def publish(self, team: Team, sub_id: str) -> Submission:
        sub = self.owned(team, sub_id)
        self.db.publish(sub.id)
        return self.owned(team, sub_id)

    def cancel(self, team: Team, sub_id: str) -> Submission:
        sub = self.owned(team, sub_id)
        if sub.final_run and not team.admin:
            raise HTTPException(409, "a final run is the organizers' to cancel")
        by_organizer = team.admin and sub.team != team.name
        # An organizer's cancel of a running entry is an ending that is not the team's: as the
        # infrastructure's, it goes back to its place once, not counted, and the team is told
        # (then cancelled). Not running here (still queued, or claimed but not yet started):
        # a plain cancel, not counted.
        if by_organizer and sub.state is State.RUNNING:
            reason = "re-queued: cancelled by the organizers while it ran; not counted"
            if self.queue.end(sub.id, reason):
                return self.owned(team, sub_id)
        was = self.db.cancel(sub.id, by_organizer=by_organizer)
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
        self,
        track: str,
        viewer: Team | None = None,
        *,
        disqualified: Mapping[str, str] | None = None,
    ) -> Leaderboard:
        """`current_leaderboard` as `viewer` (None: the public) may see it."""
        admin = viewer is not None and viewer.admin
        return current_leaderboard(
            self.db, self.store, self.config.phases, track, admin=admin, disqualified=disqualified
        )[0]

    def board_phase(self) -> Phase:
        return board_phase(self.config.phases, self.phase())


def board_phase(competition: Competition, current: Phase) -> Phase:
    """The phase whose results the leaderboard shows before the reveal: the current one, or
    during the final the last open one (the final's scores wait for the reveal)."""
    return current if not current.final else competition.phases[-2]


def current_leaderboard(
    db: ServiceDB,
    store: Store,
    competition: Competition,
    track: str,
    *,
    admin: bool = False,
    disqualified: Mapping[str, str] | None = None,
) -> tuple[Leaderboard, dict[str, str]]:
    """The track's leaderboard as the public (or an organizer: `admin`) may see it now, and each
    row's submission id (label -> id): once the results are revealed, the final ranking
    (`final_leaderboard`); before, the published results of the phase the board shows
    (`published_leaderboard`), when that phase shows its scores publicly (or to an organizer).
    `disqualified` (submission id -> reason) defaults to the organizers' disqualifications."""
    if track not in TRACK_NAMES:
        raise HTTPException(404, f"no track {track!r}; tracks: {', '.join(TRACK_NAMES)}")
    if disqualified is None:
        disqualified = disqualifications(db)
    if db.state("revealed") is not None:
        return final_leaderboard(db, store, competition, track, disqualified=disqualified)
    phase = board_phase(competition, current_phase(competition, db.state("phase"), time.time()))
    if phase.visibility != "public" and not admin:
        return labelled(build_leaderboard(store, entries=(), track=track), {}, {}), {}
    return published_leaderboard(
        db, store, track, disqualified=disqualified, only_stages=[phase.harness_stage]
    )


def published_leaderboard(
    db: ServiceDB,
    store: Store,
    track: str,
    *,
    disqualified: Mapping[str, str] | None = None,
    only_stages: list[str] | None = None,
) -> tuple[Leaderboard, dict[str, str]]:
    """Published results of `track`, each team's best, ranked among themselves by the harness's
    own scoring (the same Leaderboard as `harness report`), and each row's submission id; the
    results of `only_stages` (default: every stage; a final run's are never among them).

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
        if sub.track == track and sub.visibility == "published" and not sub.final_run
    }
    out = {sub_id: reason for sub_id, reason in (disqualified or {}).items() if sub_id in published}
    best: dict[str, str] = {}
    field = build_leaderboard(
        store,
        entries=published,
        track=track,
        intervals=False,
        disqualified=out,
        only_stages=only_stages,
    )
    for row in field.rows:
        # Ranked rows come first, best first; then the disqualified, best first.
        if row.rank is not None or row.disqualified is not None:
            best.setdefault(published[row.entry].team, row.entry)
    board = build_leaderboard(
        store, entries=best.values(), track=track, disqualified=out, only_stages=only_stages
    )
    labels = {sub_id: published[sub_id].team for sub_id in best.values()}
    facts = {sub_id: published[sub_id].facts for sub_id in best.values()}
    return labelled(board, labels, facts), {team: sub_id for sub_id, team in labels.items()}


def final_leaderboard(
    db: ServiceDB,
    store: Store,
    competition: Competition,
    track: str,
    *,
    disqualified: Mapping[str, str] | None = None,
) -> tuple[Leaderboard, dict[str, str]]:
    """The finalists of `track` ranked by the competition's stages combined with their weights
    (1/3 open + 2/3 closed), and each row's submission id; a disqualified finalist is shown
    struck through with its reason, unranked."""
    entries = final_entries(db, track)
    out = {entry: reason for entry, reason in (disqualified or {}).items() if entry in entries}
    board = build_leaderboard(
        store, entries=entries, track=track, disqualified=out, only_stages=competition.stages
    )
    labels = {entry: label for entry, (label, _) in entries.items()}
    facts = {entry: sub.facts for entry, (_, sub) in entries.items()}
    return labelled(board, labels, facts), {label: sub.id for label, sub in entries.values()}


def labelled(
    board: Leaderboard, labels: dict[str, str], facts: Mapping[str, Mapping[str, Any]]
) -> Leaderboard:
    """Rows named by `labels` (entry -> team), without log links, with the fact sheet of
    `facts` (entry -> its submission's sheet) as text: the ranked and the disqualified ones."""
    rows = [
        replace(
            row,
            entry=labels[row.entry],
            facts={
                name: str(value)
                for name, value in facts.get(row.entry, {}).items()
                if value is not None
            },
            stages={
                stage: replace(
                    stage_row,
                    logs={},
                    steps=[replace(s, log=None) for s in stage_row.steps],
                    interval=_with_teams(stage_row.interval, labels),
                )
                for stage, stage_row in row.stages.items()
            },
        )
        for row in board.rows
        if row.rank is not None or row.disqualified is not None
    ]
    return replace(board, rows=rows)


def _with_teams(interval: ScoreInterval | None, labels: dict[str, str]) -> ScoreInterval | None:
    """An interval whose ties name teams, as the rows do, not submission ids."""
    if interval is None:
        return None
    return replace(interval, tied_with=tuple(labels.get(s, s) for s in interval.tied_with))


def leaderboard_json(board: Leaderboard, track: str) -> dict[str, Any]:
    """The JSON API's view of a Leaderboard: one row per team, per-scenario win-rate columns,
    and each row's fact sheet."""
    return {
        "track": track,
        "stages": board.stages,
        "scenarios": board.columns,
        "rows": [
            {
                "rank": row.rank,
                "team": row.entry,
                "score": row.final,
                "facts": row.facts,
                "disqualified": row.disqualified,
                "reproduction": row.reproduction,
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
