"""`harness tasks import`: the closed stage's tasks from their public releases to local tasks."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from harness.cli._common import abort
from harness.errors import HarnessError
from harness.helm.tasks import CONVERTERS, import_task

EPILOG = """**Examples**

    harness tasks import samsum samsum/test.json --out closed/samsum.jsonl

    harness tasks import corr2cause corr2cause/test.csv --out closed/corr2cause.jsonl

    harness tasks import ethics ethics/commonsense/cm_test.csv --out closed/ethics.jsonl

    harness tasks import math MATH/test --out closed/math.jsonl
"""

app = typer.Typer(
    no_args_is_help=True, help="Convert held-out tasks into local task files.", epilog=EPILOG
)


@app.command("import", epilog=EPILOG)
def import_(
    kind: str = typer.Argument(..., help=" | ".join(CONVERTERS)),
    source: Path = typer.Argument(..., help="The task's public release (file or folder)."),
    out: Path = typer.Option(..., help="The local task file (JSONL) to write."),
) -> None:
    """Convert SOURCE, in KIND's public format, into a local task file for run-spec confs."""
    console = Console()
    try:
        count = import_task(kind, source, out)
    except HarnessError as exc:
        abort(exc)
    console.print(f"wrote {count} {kind} instances to [bold]{out}[/]")
