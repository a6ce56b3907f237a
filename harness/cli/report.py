"""`harness report`: write the leaderboard of a results folder and print it."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from harness.errors import HarnessError
from harness.report import (
    Leaderboard,
    build_leaderboard,
    parse_prices,
    to_plain_text,
    to_rich,
    write_leaderboard,
)
from harness.store import Store

EPILOG = """**Examples**

    harness report results/open

    harness report results/open --track A100 --price A100=1.2

    harness report /srv/competition/results && python -m http.server -d /srv/competition/results
"""


def print_leaderboard(console: Console, board: Leaderboard, paths: list[Path]) -> None:
    """The leaderboard as a table on a terminal; elsewhere (CI logs, `| tee`, a file), where rich
    would fold every cell into 80 columns, as Markdown: one line per entry."""
    if console.is_terminal:
        console.print(to_rich(board))
    else:
        console.print(to_plain_text(board), markup=False, highlight=False, soft_wrap=True)
    console.print(
        "wrote " + ", ".join(str(path) for path in paths), highlight=False, soft_wrap=True
    )


def main(
    results_dir: Path = typer.Argument(..., help="The --out folder of `harness run`."),
    track: str | None = typer.Option(
        None, help="The track the entries ran on (4090, A100), to price their GPU-hours."
    ),
    price: list[str] = typer.Option(
        [], help="TRACK=USD per GPU-hour, over the defaults 4090=0.35 and A100=1 (repeatable)."
    ),
) -> None:
    """Write leaderboard.md, .json, .html (with a page per entry and the figures) into
    RESULTS_DIR; print it."""
    console = Console()
    try:
        prices = parse_prices(price)
        with Store(results_dir, create=False) as store:
            board = build_leaderboard(store, track=track, prices=prices)
    except HarnessError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(exc.exit_code) from exc
    print_leaderboard(console, board, write_leaderboard(board, results_dir))
