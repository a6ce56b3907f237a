"""`harness submit`: queue an entry on an evaluation service (`harness serve`) and follow it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from harness.errors import HarnessError
from harness.service.client import Refused, ServiceClient

EPILOG = """**Examples**

    export HARNESS_TOKEN=hst_...          # from the organizers; keeps it out of shell history

    harness submit submissions/my-entry --server https://eval.example.org --track 4090

    harness submit my-entry.zip --server https://eval.example.org --track A100 --publish --wait
"""

SERVER = typer.Option(..., envvar="HARNESS_SERVER", help="The service's URL.")
TOKEN = typer.Option(..., envvar="HARNESS_TOKEN", help="Your team's token.", show_default=False)
POLL_S = 5.0


def describe(sub: dict[str, Any]) -> str:
    """One line: status, step or queue place, reason."""
    parts = [f"{sub['id']}: {sub['status']}"]
    if sub.get("step"):
        parts.append(f"step {sub['step']}")
    if sub.get("position"):
        eta = sub.get("eta_seconds")
        parts.append(f"position {sub['position']}" + (f", ~{eta / 60:.0f} min" if eta else ""))
    if sub.get("score") is not None:
        parts.append(f"score {sub['score']:.3f}")
    if sub.get("reason"):
        parts.append(sub["reason"])
    return " · ".join(parts)


def fail(console: Console, exc: HarnessError) -> typer.Exit:
    console.print(f"[red]error:[/] {exc}", highlight=False)
    if isinstance(exc, Refused):
        for finding in exc.answer.get("findings", []):
            where = finding["path"] + (f":{finding['line']}" if finding.get("line") else "")
            console.print(f"  {finding['rule']} {where}: {finding['message']}", highlight=False)
        if exc.answer.get("next_slot_at"):
            console.print(f"  next free slot: {exc.answer['next_slot_at']}")
    return typer.Exit(exc.exit_code)


def main(
    entry: Path = typer.Argument(
        ..., help="The entry's folder (its Docker build context is zipped here) or a zip file."
    ),
    server: str = SERVER,
    token: str = TOKEN,
    track: str = typer.Option(..., help="4090 or A100."),
    publish: bool = typer.Option(False, help="Show the result on the public leaderboard."),
    wait: bool = typer.Option(False, help="Follow it until it ends; exit 0 only when scored."),
) -> None:
    """Upload an entry: it is checked at once, then queued; prints its ID and queue position."""
    console = Console(stderr=True)
    try:
        with ServiceClient(server, token) as client:
            sub = client.submit(
                entry,
                track=track,
                publish=publish,
                on_size=lambda size, limit: console.print(
                    f"uploading {size / 1024**2:.1f} MiB (the server takes up to "
                    f"{limit / 1024**2:.0f} MiB)",
                    highlight=False,
                ),
            )
            console.print(describe(sub), highlight=False)
            typer.echo(sub["id"])
            if not wait:
                return
            with console.status(describe(sub)) as progress:
                while not sub["finished"]:
                    time.sleep(POLL_S)
                    sub = client.status(sub["id"])
                    progress.update(describe(sub))
    except HarnessError as exc:
        raise fail(console, exc) from exc
    console.print(describe(sub), highlight=False)
    raise typer.Exit(0 if sub["status"] == "scored" else 1)
