"""The web pages: server-rendered Jinja templates and static assets shipped in the package.

Signing in exchanges a team token for a random session id in an HttpOnly, SameSite=Strict cookie
(Secure behind HTTPS); only its hash is stored. Every form carries a CSRF token that must equal
the `harness_csrf` cookie (double submit), compared in constant time. Pages of a submission that
is still queued or running refresh themselves every few seconds: no script is needed to follow it.
"""

from __future__ import annotations

import hmac
import secrets
import time
from pathlib import Path
from typing import Any

import jinja2
from fastapi import FastAPI, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from markupsafe import Markup

from harness.leaderboard.html import to_html
from harness.service.accounts import Team
from harness.service.core import Service
from harness.service.db import ACTIVE

HERE = Path(__file__).parent
SESSION_COOKIE = "harness_session"
CSRF_COOKIE = "harness_csrf"
REFRESH_S = 3

templates = Jinja2Templates(directory=HERE / "templates")
# The leaderboard body's own styles, from the templates `harness report` renders with.
_BOARD_CSS = (
    jinja2.Environment(loader=jinja2.PackageLoader("harness.leaderboard", "templates"))
    .get_template("style.css.j2")
    .render()
)


def _csrf(request: Request) -> str:
    """The CSRF token for this browser: its cookie's value, or a new one set on the response."""
    return request.cookies.get(CSRF_COOKIE) or request.state.__dict__.setdefault(
        "new_csrf", secrets.token_urlsafe(32)
    )


def _check_csrf(request: Request, sent: str | None) -> None:
    cookie = request.cookies.get(CSRF_COOKIE, "")
    if not cookie or not sent or not hmac.compare_digest(cookie.encode(), sent.encode()):
        raise HTTPException(403, "the form is stale or came from another site: reload the page")


def _cookie(response: Response, request: Request, name: str, value: str, max_age: int) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )


def register(app: FastAPI, service: Service) -> None:
    def signed_in(request: Request) -> Team | None:
        session = request.cookies.get(SESSION_COOKIE)
        return service.db.team_for_session(session) if session else None

    def require(request: Request) -> Team:
        team = signed_in(request)
        if team is None:
            raise HTTPException(303, headers={"Location": "/signin"})
        return team

    def page(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        team = signed_in(request)
        # Every page of a signed-in team says where the competition stands for it.
        standing = service.standing(team) if team is not None else None
        context.update(
            team=team, csrf=_csrf(request), tracks=service.config.phases.tracks, standing=standing
        )
        response = templates.TemplateResponse(request, name, context, status_code=status)
        if new := request.state.__dict__.get("new_csrf"):
            _cookie(response, request, CSRF_COOKIE, new, 7 * 24 * 3600)
        return response

    @app.middleware("http")
    async def headers(request: Request, call_next: Any) -> Response:
        response: Response = await call_next(request)
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        return response

    @app.get("/", include_in_schema=False)
    def home() -> RedirectResponse:
        return RedirectResponse(f"/leaderboard/{service.config.phases.tracks[0]}", status_code=303)

    @app.get("/leaderboard/{track}", include_in_schema=False)
    def leaderboard(request: Request, track: str) -> HTMLResponse:
        viewer = signed_in(request)
        board = service.leaderboard(track, viewer)
        # `harness report`'s own rendering, embedded: entries link nowhere (logs are private).
        body = to_html(board, standalone=False, entry_link=lambda entry: None)
        return page(
            request,
            "leaderboard.html",
            track=track,
            board=Markup(body),
            ranked=bool(board.rows),
            phase=service.board_phase(),
            final=service.phase().final,
            revealed=service.revealed,
        )

    @app.get("/static/board.css", include_in_schema=False)
    def board_css() -> Response:
        return Response(_BOARD_CSS, media_type="text/css")

    # Mounted after the routes: the mount would otherwise answer /static/board.css too.
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    @app.get("/signin", include_in_schema=False)
    def signin_form(request: Request) -> HTMLResponse:
        return page(request, "signin.html")

    @app.post("/signin", include_in_schema=False)
    def signin(request: Request, token: str = Form(""), csrf: str = Form("")) -> Response:
        _check_csrf(request, csrf)
        team = service.db.team_for_token(token.strip())
        if team is None:
            return page(request, "signin.html", 401, error="That token is not valid.")
        response = RedirectResponse("/admin" if team.admin else "/submissions", status_code=303)
        _cookie(response, request, SESSION_COOKIE, service.db.start_session(team), 7 * 24 * 3600)
        return response

    @app.post("/signout", include_in_schema=False)
    def signout(request: Request, csrf: str = Form("")) -> Response:
        _check_csrf(request, csrf)
        if session := request.cookies.get(SESSION_COOKIE):
            service.db.end_session(session)
        response = RedirectResponse("/signin", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    def my_submissions(request: Request, team: Team, status: int = 200, **extra: Any) -> Response:
        subs = [service.describe(s, team, details=False) for s in service.db.submissions(team=team)]
        active = any(not s["finished"] for s in subs)
        return page(
            request,
            "submissions.html",
            status,
            submissions=subs,
            refresh=REFRESH_S if active else None,
            **extra,
        )

    @app.get("/submissions", include_in_schema=False)
    def submissions(request: Request) -> Response:
        return my_submissions(request, require(request))

    @app.post("/submissions", include_in_schema=False)
    async def upload(request: Request) -> Response:
        team = require(request)
        try:
            sub = await service.submit(
                team, request, fields_check=lambda fields: _check_csrf(request, fields.get("csrf"))
            )
        except HTTPException as exc:
            if exc.status_code == 403:
                raise
            detail = exc.detail if isinstance(exc.detail, str) else exc.detail.get("message")
            next_slot = exc.detail.get("next_slot_at") if isinstance(exc.detail, dict) else None
            error = f"{detail} (next free slot: {next_slot})" if next_slot else detail
            return my_submissions(request, team, exc.status_code, error=error)
        return RedirectResponse(f"/submissions/{sub.id}", status_code=303)

    @app.get("/submissions/{sub_id}", include_in_schema=False)
    def submission(request: Request, sub_id: str) -> Response:
        team = require(request)
        sub = service.owned(team, sub_id)
        return page(
            request,
            "submission.html",
            sub=service.describe(sub, team),
            logs=service.logs(sub),
            refresh=REFRESH_S if sub.state in ACTIVE else None,
        )

    @app.post("/submissions/{sub_id}/{action}", include_in_schema=False)
    def act(request: Request, sub_id: str, action: str, csrf: str = Form("")) -> Response:
        team = require(request)
        _check_csrf(request, csrf)
        if action == "publish":
            service.publish(team, sub_id)
        elif action == "cancel":
            service.cancel(team, sub_id)
        elif action in ("select", "unselect"):
            service.select(team, sub_id, chosen=action == "select")
        elif action == "rerun" and team.admin:
            service.owned(team, sub_id)
            service.rerun(sub_id)
        else:
            raise HTTPException(404, "no such action")
        back = "/admin" if team.admin else f"/submissions/{sub_id}"
        return RedirectResponse(back, status_code=303)

    @app.get("/admin", include_in_schema=False)
    def admin(request: Request) -> Response:
        team = require(request)
        if not team.admin:
            raise HTTPException(404, "not found")
        return page(
            request,
            "admin.html",
            queue=[service.describe(s, team, details=False) for s in service.db.queue()],
            workers=service.queue.workers(),
            leases=service.queue.leases(),
            nodes=service.queue.nodes(),
            lease_s=service.queue.lease_s,
            now=time.time(),
            recent=[
                service.describe(s, team, details=False) for s in service.db.submissions()[:50]
            ],
            teams=service.db.teams(),
            reproductions=service.reproductions(team),
            refresh=REFRESH_S * 2,
        )
