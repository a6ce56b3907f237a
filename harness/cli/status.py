"""`harness status`: where a submission to an evaluation service stands."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console

from harness.cli._common import Server, Token, abort, describe, refusal
from harness.errors import HarnessError
from harness.service.client import ServiceClient

EPILOG = """**Examples**

    harness status sub-0123456789ab --server https://eval.example.org

    harness status sub-0123456789ab --server https://eval.example.org --json --logs
"""


def main(
    sub_id: Annotated[str, typer.Argument(help="The submission's ID (printed by harness submit).")],
    server: Server,
    token: Token,
    as_json: bool = typer.Option(False, "--json", help="Print the whole answer as JSON."),
    logs: bool = typer.Option(False, help="Also print its logs (build, container, evaluation)."),
) -> None:
    """Print a submission's status, queue position, steps and scores."""
    console = Console()
    try:
        with ServiceClient(server, token) as client:
            sub = client.status(sub_id)
            texts = client.logs(sub_id) if logs else {}
    except HarnessError as exc:
        abort(exc, *refusal(exc))
    if as_json:
        typer.echo(json.dumps({**sub, **({"logs": texts} if logs else {})}, indent=2))
        return
    console.print(describe(sub), highlight=False)
    for step in sub["steps"]:
        console.print(f"  {step['step']:<9} {step['status']:<11} {step['detail']}", highlight=False)
    for name, value in sub["scenarios"].items():
        console.print(f"  {name}: {value:.3f}", highlight=False)
    for name, text in texts.items():
        console.rule(f"{name} log")
        console.print(text, markup=False, highlight=False)
