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

from harness.competition import TRACK_NAMES
from harness.service.core import Service, leaderboard_json
from harness.service.db import Team

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
    scenarios: dict[str, float | None]  # scenario -> mean win rate
    intervals: dict[str, ScoreInterval]  # stage -> its intervals (none: nothing resampled)
    disqualified: str | None = None  # the organizers' reason; such a row has no rank


class LeaderboardOut(BaseModel):
    track: str
    stages: list[str]
    scenarios: list[str]  # `stage/scenario` when both stages are scored
    rows: list[LeaderboardRow]
    bootstrap: dict[str, Bootstrap]  # stage -> how its intervals were drawn


_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "track"],
                    "properties": {
                        "file": {"type": "string", "format": "binary", "description": "a zip"},
                        "track": {"type": "string", "enum": list(TRACK_NAMES)},
                        "visibility": {
                            "type": "string",
                            "enum": ["hidden", "published"],
                            "default": "hidden",
                        },
                    },
                }
            }
        },
    }
}

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
        openapi_extra=_UPLOAD_BODY,
        responses={
            **_ERRORS,
            413: {"description": "the upload is over the size limit"},
            422: {"description": "not a zip, a bad field, or flagged by the static checks"},
            429: {"description": "the daily quota is used; `next_slot_at` says when it frees"},
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
        return service.describe(sub, details=False)

    @router.get("/submissions", response_model=list[SubmissionSummary], responses=_ERRORS)
    def mine(team: Authed) -> list[dict[str, Any]]:
        """The team's own submissions, newest first."""
        return [service.describe(sub, details=False) for sub in service.db.submissions(team=team)]

    @router.get("/submissions/{sub_id}", response_model=SubmissionDetail, responses=_ERRORS)
    def detail(sub_id: str, team: Authed) -> dict[str, Any]:
        """Status, place in the queue, steps, metrics and score."""
        return service.describe(service.owned(team, sub_id))

    @router.get("/submissions/{sub_id}/logs", response_model=dict[str, str], responses=_ERRORS)
    def logs(sub_id: str, team: Authed) -> dict[str, str]:
        """Build, container and evaluation logs (their tails, credentials redacted)."""
        return service.logs(service.owned(team, sub_id))

    @router.post(
        "/submissions/{sub_id}/publish", response_model=SubmissionSummary, responses=_ERRORS
    )
    def publish(sub_id: str, team: Authed) -> dict[str, Any]:
        """Show the result on the track's public leaderboard (the team's best one counts)."""
        return service.describe(service.publish(team, sub_id), details=False)

    @router.post(
        "/submissions/{sub_id}/cancel",
        response_model=SubmissionSummary,
        responses={**_ERRORS, 409: {"description": "already finished"}},
    )
    def cancel(sub_id: str, team: Authed) -> dict[str, Any]:
        """Cancel a queued submission (its quota slot is given back) or a running one."""
        return service.describe(service.cancel(team, sub_id), details=False)

    @router.get("/leaderboard/{track}", response_model=LeaderboardOut)
    def leaderboard(track: Track) -> dict[str, Any]:
        """Public: published results only, each team's best, per-scenario win rates."""
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
