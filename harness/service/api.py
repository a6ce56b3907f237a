"""The JSON API, versioned under /api/v1 and documented in its OpenAPI schema.

The schema is at /api/v1/openapi.json. Every route but the leaderboard takes `Authorization:
Bearer TOKEN`; no token, a wrong one or a revoked one is a 401. A team only ever sees its own
submissions: another team's is a 404.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel

from harness.service.accounts import Team
from harness.service.core import Service, leaderboard_json

_bearer = HTTPBearer(auto_error=False, description="The team's token (`harness teams add`).")


class Finding(BaseModel):
    rule: str
    severity: str
    path: str | None
    line: int | None
    message: str


class Step(BaseModel):
    step: str
    status: str
    started_at: str | None
    finished_at: str | None
    detail: str


class Metric(BaseModel):
    run_spec: str
    scenario: str
    metric: str
    value: float | None


class SubmissionSummary(BaseModel):
    id: str
    team: str
    track: str
    visibility: str
    status: str  # queued | running | cancelled | flagged | a harness status (scored, oom, ...)
    finished: bool
    position: int | None  # 1 = next to run; None when not queued
    eta_seconds: float | None
    step: str | None  # the step running now: check | build | serve | evaluate
    reason: str
    filename: str
    created_at: str
    started_at: str | None
    finished_at: str | None
    phase: str  # the competition phase it was submitted in (or re-run for, a final run)
    final_of: str | None  # a final run: the submission it re-runs
    # What its ending cost the team: quota (scored), failures (failed on its own), none (the
    # infrastructure or an organizer ended it, a final run); null while it may still run.
    charged: str | None
    requeues: int  # times the infrastructure interrupted it and it went back to the queue
    selected: bool  # chosen by the team for the final
    facts: dict[str, str | int | float | None]  # its fact sheet
    disqualified: str | None  # the organizers' reason
    scores_hidden: bool  # its phase shows scores to the organizers only, until the reveal


class SubmissionDetail(SubmissionSummary):
    findings: list[Finding]
    steps: list[Step]
    metrics: list[Metric]
    scenarios: dict[str, float]  # scenario -> mean of its run specs' main metric
    score: float | None  # mean over scenarios; the leaderboard ranks by win rates instead


class ScoreInterval(BaseModel):
    """A stage score's and rank's 95% bootstrap intervals; `tied_with`: teams whose order
    against this one the evaluated instances cannot tell apart."""

    low: float
    high: float
    rank_low: int
    rank_high: int
    tied: bool
    tied_with: list[str]


class Bootstrap(BaseModel):
    resamples: int
    seed: int
    confidence: float
    instances: int


class LeaderboardRow(BaseModel):
    rank: int | None
    team: str
    score: float | None
    facts: dict[str, str]  # the entry's fact sheet as the board's columns show it
    scenarios: dict[str, float | None]  # scenario -> mean win rate
    intervals: dict[str, ScoreInterval]  # stage -> its intervals (none: nothing resampled)
    disqualified: str | None = None  # the organizers' reason; such a row has no rank
    reproduction: str | None = None  # its reproduction's verdict, once reproduced


class LeaderboardOut(BaseModel):
    track: str
    stages: list[str]
    scenarios: list[str]  # `stage/scenario` when both stages are scored
    rows: list[LeaderboardRow]
    bootstrap: dict[str, Bootstrap]  # stage -> how its intervals were drawn


class ReproductionOut(BaseModel):
    """A top finalist's reproduction (`harness competition reveal --reproduce-top`)."""

    track: str
    rank: int
    team: str
    submission: str | None  # the team's own, or any for an organizer
    state: str  # queued | running | finished (with a verdict) | failed (the infrastructure)
    verdict: str | None  # reproduced | within-noise | differs | train-timeout | ...
    reason: str
    attempts: int  # times it started (an interrupted one starts again)
    queued_at: str
    started_at: str | None
    finished_at: str | None


class TrackStanding(BaseModel):
    per_day: int
    left_today: int
    next_slot_at: str
    failures_per_week: int | None  # null: failures count against the daily quota
    failures_used: int
    failures_left: int | None
    selected: int


class FactField(BaseModel):
    type: str
    required: bool
    help: str


class Standing(BaseModel):
    """The competition as the asking team sees it."""

    competition: str
    phase: str
    stage: str
    visibility: str  # organizers | team | public
    final: bool
    starts_at: str | None
    ends_at: str | None
    uploads_closed: str | None  # why no upload is taken now
    next_phase: str | None
    next_phase_starts_at: str | None
    selection: int | None  # entries a team takes to the final
    revealed: bool
    facts: dict[str, FactField]  # the fact sheet each upload carries
    quota_timezone: str  # whose calendar days the daily quotas count (an IANA name)
    tracks: dict[str, TrackStanding]


def _upload_body(service: Service) -> dict[str, Any]:
    """The upload's OpenAPI form, the competition's fact sheet fields included."""
    form: dict[str, Any] = {
        "type": "object",
        "required": ["file", "track"],
        "properties": {
            "file": {"type": "string", "format": "binary", "description": "a zip"},
            "track": {"type": "string", "enum": list(service.config.phases.tracks)},
            "visibility": {"type": "string", "enum": ["hidden", "published"], "default": "hidden"},
        },
    }
    for name, fact in service.config.phases.facts.items():
        kind = {"text": "string", "int": "integer", "float": "number"}[fact.type]
        form["properties"][name] = {"type": kind, "description": fact.help or name}
        if fact.required:
            form["required"].append(name)
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": form}}}}


_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "no token, a wrong one or a revoked one"},
    404: {"description": "no such submission for this team"},
}


def _team(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Team:
    service: Service = request.app.state.service
    found = service.db.team_for_token(credentials.credentials) if credentials else None
    if found is None:
        raise HTTPException(
            401, "a valid team token is required", headers={"WWW-Authenticate": "Bearer"}
        )
    return found


Authed = Annotated[Team, Depends(_team)]
# A Literal for the OpenAPI schema; tests/harness/test_competition.py checks it is TRACK_NAMES.
Track = Literal["4090", "A100"]


def api_router(service: Service) -> APIRouter:
    router = APIRouter(prefix="/api/v1", tags=["v1"])

    @router.get("/health", include_in_schema=False)
    def health() -> dict[str, bool]:
        return {"ok": True}

    @router.get("/limits")
    def limits() -> dict[str, int]:
        """Public: the largest upload accepted, so a client refuses a bigger one before sending."""
        return {"max_upload_bytes": service.config.max_upload_bytes}

    @router.post(
        "/submissions",
        status_code=201,
        response_model=SubmissionSummary,
        openapi_extra=_upload_body(service),
        responses={
            **_ERRORS,
            413: {"description": "the upload is over the size limit"},
            409: {"description": "the phase takes no uploads now"},
            422: {
                "description": "not a zip, a bad field (a fact sheet's: `field` names it), or "
                "flagged by the static checks"
            },
            429: {
                "description": "the daily quota or the failure allowance is used; "
                "`next_slot_at` says when a slot frees"
            },
        },
    )
    async def submit(request: Request, team: Authed) -> dict[str, Any]:
        """Upload a zipped entry: it is checked at once and queued; flagged entries are not."""
        sub = await service.submit(team, request)
        if sub.findings:
            raise HTTPException(
                422,
                {
                    "id": sub.id,
                    "status": "flagged",
                    "message": sub.reason,
                    "findings": sub.findings,
                },
            )
        return service.describe(sub, team, details=False)

    @router.get("/submissions", response_model=list[SubmissionSummary], responses=_ERRORS)
    def mine(team: Authed) -> list[dict[str, Any]]:
        """The team's own submissions, newest first."""
        return [
            service.describe(sub, team, details=False) for sub in service.db.submissions(team=team)
        ]

    @router.get("/submissions/{sub_id}", response_model=SubmissionDetail, responses=_ERRORS)
    def detail(sub_id: str, team: Authed) -> dict[str, Any]:
        """Status, place in the queue, steps, metrics and score."""
        return service.describe(service.owned(team, sub_id), team)

    @router.get("/submissions/{sub_id}/logs", response_model=dict[str, str], responses=_ERRORS)
    def logs(sub_id: str, team: Authed) -> dict[str, str]:
        """Build, container and evaluation logs (their tails, credentials redacted)."""
        return service.logs(service.owned(team, sub_id))

    @router.post(
        "/submissions/{sub_id}/publish", response_model=SubmissionSummary, responses=_ERRORS
    )
    def publish(sub_id: str, team: Authed) -> dict[str, Any]:
        """Show the result on the track's public leaderboard (the team's best one counts)."""
        return service.describe(service.publish(team, sub_id), team, details=False)

    @router.post(
        "/submissions/{sub_id}/cancel",
        response_model=SubmissionSummary,
        responses={**_ERRORS, 409: {"description": "already finished"}},
    )
    def cancel(sub_id: str, team: Authed) -> dict[str, Any]:
        """Cancel a queued submission (its quota slot is given back) or a running one."""
        return service.describe(service.cancel(team, sub_id), team, details=False)

    @router.post(
        "/submissions/{sub_id}/select",
        response_model=SubmissionSummary,
        responses={**_ERRORS, 409: {"description": "not scored, too many, or no final"}},
    )
    def select(sub_id: str, team: Authed) -> dict[str, Any]:
        """Take a scored entry to the final (up to the final phase's `selection` per track);
        without a choice, the team's best published entry goes."""
        return service.describe(service.select(team, sub_id), team, details=False)

    @router.post(
        "/submissions/{sub_id}/unselect",
        response_model=SubmissionSummary,
        responses={**_ERRORS, 409: {"description": "the final started"}},
    )
    def unselect(sub_id: str, team: Authed) -> dict[str, Any]:
        """Take an entry out of the team's selection for the final."""
        return service.describe(service.select(team, sub_id, chosen=False), team, details=False)

    @router.get("/competition", response_model=Standing, responses=_ERRORS)
    def competition(team: Authed) -> dict[str, Any]:
        """The current phase, its end, and what is left of the team's quota and failures."""
        return service.standing(team)

    @router.get("/reproductions", response_model=list[ReproductionOut], responses=_ERRORS)
    def reproductions(team: Authed) -> list[dict[str, Any]]:
        """The top finalists' reproductions and their verdicts, by track and rank (another
        team's submission id is left out)."""
        return service.reproductions(team)

    @router.get("/leaderboard/{track}", response_model=LeaderboardOut)
    def leaderboard(track: Track) -> dict[str, Any]:
        """Public: published results only, each team's best, per-scenario win rates, when the
        phase shows its scores publicly; after the reveal, the final ranking. A disqualified
        entry's row has its reason and no rank."""
        return leaderboard_json(service.leaderboard(track), track)

    return router


def create_app(service: Service, *, metrics_token: str | None = None) -> FastAPI:
    """The service's app; `metrics_token` lets a scraper from elsewhere than the loopback
    interface read /metrics."""
    from harness.service import metrics, releases, web

    app = FastAPI(
        title="harness serve",
        version="1",
        description="Queue competition entries for evaluation; see the leaderboard.",
        openapi_url="/api/v1/openapi.json",
        docs_url=None,  # Swagger UI loads from a CDN; the schema is the documentation
        redoc_url=None,
    )
    app.state.service = service
    app.include_router(api_router(service))
    web.register(app, service)
    metrics.register(app, service, metrics_token)
    releases.register(app, service.config.releases)
    return app
