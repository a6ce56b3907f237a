"""`harness submit`: queue an entry on an evaluation service (`harness serve`) and follow it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from harness.cli._common import Server, Token, Track, abort, describe, refusal
from harness.errors import HarnessError
from harness.service.client import ServiceClient

EPILOG = """**Examples**

    export HARNESS_TOKEN=hst_...          # from the organizers; keeps it out of shell history

    harness submit submissions/my-entry --server https://eval.example.org --track 4090

    harness submit my-entry.zip --server https://eval.example.org --track A100 --publish --wait
"""

POLL_S = 5.0


def main(
    entry: Annotated[
        Path,
        typer.Argument(
            help="The entry's folder (its Docker build context is zipped here) or a zip file."
        ),
    ],
    server: Server,
    token: Token,
    track: Track,
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
        abort(exc, *refusal(exc))
    console.print(describe(sub), highlight=False)
    raise typer.Exit(0 if sub["status"] == "scored" else 1)
