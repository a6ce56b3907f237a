"""`harness teams add|list|revoke|webhook`: the teams of an evaluation service (`harness serve`)."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from harness.cli._common import abort
from harness.errors import ConfigError, HarnessError
from harness.service.db import ServiceDB

EPILOG = """**Examples**

    harness teams add team-a --data /srv/harness --email a@example.org

    harness teams add organizers --data /srv/harness --admin

    harness teams list --data /srv/harness

    harness teams revoke team-a --data /srv/harness

    harness teams webhook team-a --url https://ci.team-a.org/hook --secret-file hook.secret \\
        --data /srv/harness
"""

app = typer.Typer(
    help="Add, list and revoke the service's teams.", epilog=EPILOG, no_args_is_help=True
)
DATA = typer.Option(..., help="The service's data folder (as given to `harness serve`).")


@app.command("add", epilog=EPILOG)
def add(
    name: str = typer.Argument(..., help="The team's name, shown on the leaderboard."),
    data: Path = DATA,
    email: str | None = typer.Option(None, help="A contact address (shown to admins only)."),
    admin: bool = typer.Option(False, help="An organizer: sees every submission, the admin page."),
) -> None:
    """Add a team and print its token once, alone on the last line (only its hash is kept)."""
    try:
        with ServiceDB(data) as db:
            token = db.add_team(name, email, admin=admin)
    except HarnessError as exc:
        abort(exc)
    typer.echo(f"added {'admin ' if admin else ''}team {name}; its token (shown only now):")
    typer.echo(token)


@app.command("list", epilog=EPILOG)
def list_teams(data: Path = DATA) -> None:
    """List the teams (never their tokens)."""
    with ServiceDB(data) as db:
        teams = db.teams()
    table = Table("Team", "Email", "Admin", "Added", "Revoked")
    for team in teams:
        table.add_row(
            team.name,
            team.email or "",
            "yes" if team.admin else "",
            time.strftime("%Y-%m-%d %H:%M", time.gmtime(team.created_at)),
            time.strftime("%Y-%m-%d %H:%M", time.gmtime(team.revoked_at))
            if team.revoked_at
            else "",
        )
    Console().print(table)


@app.command("revoke", epilog=EPILOG)
def revoke(name: str = typer.Argument(..., help="The team to revoke."), data: Path = DATA) -> None:
    """Revoke a team's token and sign it out; its submissions and results are kept."""
    try:
        with ServiceDB(data) as db:
            db.revoke_team(name)
    except HarnessError as exc:
        abort(exc)
    typer.echo(f"revoked team {name}")


@app.command("webhook", epilog=EPILOG)
def webhook(
    name: str = typer.Argument(..., help="The team."),
    url: str = typer.Option(..., help="Where its notifications are POSTed."),
    secret_file: Path = typer.Option(
        ..., help="A file holding the secret deliveries are signed with (16+ characters)."
    ),
    data: Path = DATA,
) -> None:
    """Send a team's notifications (scored, failed, flagged, re-queued) to a webhook, each signed
    with HMAC-SHA256 of its body (header X-Harness-Signature-256)."""
    try:
        try:
            secret = secret_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"cannot read --secret-file {secret_file}: {exc.strerror}") from exc
        with ServiceDB(data) as db:
            db.set_webhook(name, url, secret)
    except HarnessError as exc:
        abort(exc)
    typer.echo(f"team {name}: notifications go to {url}")
