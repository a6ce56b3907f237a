"""`harness select`: take a scored entry to a competition's final (or out of it, `--unselect`)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from harness.cli._common import Server, Token, abort, describe, refusal
from harness.errors import HarnessError
from harness.service.client import ServiceClient

EPILOG = """**Examples**

    export HARNESS_TOKEN=hst_...

    harness select sub-0123456789ab --server https://eval.example.org

    harness select sub-0123456789ab --server https://eval.example.org --unselect
"""


def main(
    sub_id: Annotated[str, typer.Argument(help="The scored submission (sub-...).")],
    server: Server,
    token: Token,
    unselect: bool = typer.Option(False, help="Take it out of the selection instead."),
) -> None:
    """Select a scored entry for the final; without a choice, the team's best published entry
    goes. The final phase's `selection` says how many a team may take, per track."""
    try:
        with ServiceClient(server, token) as client:
            sub = client.select(sub_id, chosen=not unselect)
    except HarnessError as exc:
        abort(exc, *refusal(exc))
    Console(stderr=True).print(
        f"{describe(sub)}: {'selected' if sub['selected'] else 'not selected'} for the final",
        highlight=False,
    )
