"""`harness report`: write the leaderboard of a results folder and print it."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from harness.cli._common import abort, print_leaderboard
from harness.competition import TRACKS
from harness.errors import HarnessError
from harness.leaderboard import write_leaderboard
from harness.leaderboard.build import build_leaderboard, parse_prices
from harness.store import Store

EPILOG = """**Examples**

    harness report results/open

    harness report results/open --track A100 --price A100=1.2

    harness report /srv/competition/results && python -m http.server -d /srv/competition/results
"""


_DEFAULT_PRICES = " and ".join(f"{t.name}={t.price_per_hour:g}" for t in TRACKS.values())


def main(
    results_dir: Path = typer.Argument(..., help="The --out folder of `harness run`."),
    track: str | None = typer.Option(
        None, help=f"The track the entries ran on ({', '.join(TRACKS)}), to price their GPU-hours."
    ),
    price: list[str] = typer.Option(
        [],
        help=f"TRACK=USD per GPU-hour, over the defaults {_DEFAULT_PRICES} (repeatable).",
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
        abort(exc)
    print_leaderboard(console, board, write_leaderboard(board, results_dir))
