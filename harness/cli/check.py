"""`harness check`: static checks of every entry before any GPU time is spent on it."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from harness.checks import EntryReport, check_entries
from harness.cli._common import abort
from harness.errors import ConfigError

EPILOG = """**Examples**

    harness check entries/

    harness check entries/ --format json > checks.json

Exit status: 0 when no entry has an error finding, 1 when one does, 2 on a usage error.
"""

_STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}


class Format(StrEnum):
    text = "text"
    json = "json"


def _table(reports: list[EntryReport]) -> Table:
    table = Table(title="harness check", show_lines=False)
    for column in ("entry", "severity", "rule"):
        table.add_column(column, no_wrap=True)
    table.add_column("where", overflow="fold")
    table.add_column("message", overflow="fold", ratio=1)
    for report in reports:
        status = "[green]ok[/]" if report.status == "ok" else "[bold red]flagged[/]"
        dockerfile = report.dockerfile or "no Dockerfile"
        table.add_row(f"[bold]{report.entry}[/]", status, "", dockerfile, "", end_section=False)
        for f in report.findings:
            where = f.path if f.line is None else f"{f.path}:{f.line}"
            style = _STYLE[f.severity]
            table.add_row("", f"[{style}]{f.severity}[/]", f.rule, where, f.message)
        table.add_section()
    return table


def main(
    entries_dir: Path = typer.Argument(..., help="Folder with one entry per subfolder or .zip."),
    output_format: Format = typer.Option(Format.text, "--format", help="text (a table) or json."),
) -> None:
    """Check every entry for leaked secrets, unpinned dependencies, missing artifacts and more.

    Rules: no-dockerfile, leaked-secret, secret-placeholder, secret-in-image-config,
    unpinned-dependency, unpinned-base-image, missing-artifact, local-path, remote-artifact,
    malformed-entry, skipped-file, internal-error. An entry is flagged by an error finding.
    """
    console = Console(stderr=True)
    try:
        if output_format is Format.json:
            reports = check_entries(entries_dir)
            typer.echo(json.dumps({"entries": [r.to_json() for r in reports]}, indent=2))
        else:
            with Progress(console=console, transient=True) as progress:
                task = progress.add_task("checking entries", total=None)
                reports = check_entries(entries_dir, on_report=lambda _: progress.advance(task))
            Console().print(_table(reports))
    except ConfigError as exc:
        abort(exc)
    raise typer.Exit(1 if any(r.status == "flagged" for r in reports) else 0)
