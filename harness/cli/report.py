"""`harness report`: write the leaderboard of a results folder and print it."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from harness.errors import HarnessError
from harness.report import build_leaderboard, to_rich, write_leaderboard
from harness.store import Store

EPILOG = """**Examples**

    harness report results/open

    harness report /srv/competition/results && python -m http.server -d /srv/competition/results
"""


def main(
    results_dir: Path = typer.Argument(..., help="The --out folder of `harness run`."),
) -> None:
    """Write leaderboard.md, leaderboard.json and leaderboard.html into RESULTS_DIR; print it."""
    console = Console()
    try:
        with Store(results_dir, create=False) as store:
            board = build_leaderboard(store)
    except HarnessError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(exc.exit_code) from exc
    paths = write_leaderboard(board, results_dir)
    console.print(to_rich(board))
    console.print("wrote " + ", ".join(f"[bold]{path}[/]" for path in paths))
