"""`harness competition advance|reveal|disqualify`: the organizers' steps of a competition run by
`harness serve --competition FILE` (phases.py), on its data folder, while it runs or not.

`advance` enters the next phase now (a final phase queues each finalist's final run); `reveal`
publishes the final ranking (the stages combined with the competition's weights) and writes it
under DATA/final/TRACK/; `disqualify` marks an entry with a reason (it is kept, and left out of
the final ranking). The running service notices and tells the teams (phase started, results
revealed).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from harness.cli._common import abort, print_leaderboard
from harness.errors import ConfigError, HarnessError
from harness.leaderboard import write_leaderboard
from harness.leaderboard.build import build_leaderboard
from harness.leaderboard.model import Leaderboard
from harness.service.core import labelled
from harness.service.db import ACTIVE, ServiceDB
from harness.service.phases import Competition, current_phase, enter_phase, final_entries
from harness.store import Store

EPILOG = """**Examples**

    harness competition advance --data /srv/harness      # the next phase starts now

    harness competition disqualify sub-0123456789ab --reason "trained on the test set" \\
        --data /srv/harness

    harness competition reveal --data /srv/harness
"""

app = typer.Typer(
    help="The organizers' steps of a competition: advance, disqualify, reveal.",
    epilog=EPILOG,
    no_args_is_help=True,
)
Data = Annotated[Path, typer.Option(help="The service's data folder (`harness serve --data`).")]


def _competition(db: ServiceDB) -> Competition:
    saved = db.state("competition")
    if saved is None:
        raise ConfigError(
            "this data folder has no competition: start `harness serve --competition FILE "
            "--data DIR` on it first"
        )
    return Competition.model_validate_json(saved)


@app.command("advance", epilog=EPILOG)
def advance(data: Data) -> None:
    """Enter the next phase now, whatever its start date; entering the final phase queues a final
    run of each team's selected entries (or its best published one)."""
    try:
        with ServiceDB(data) as db, Store(data / "results") as store:
            competition = _competition(db)
            phase = current_phase(competition, db.state("phase"), time.time())
            following = competition.next_phase(phase)
            if following is None:
                raise ConfigError(f"{phase.name!r} is the last phase: nothing to advance to")
            queued = enter_phase(db, store, competition, following)
    except HarnessError as exc:
        abort(exc)
    typer.echo(f"phase {following.name} started ({phase.name} ended)")
    for run in queued:
        typer.echo(f"queued final run {run}")


@app.command("disqualify", epilog=EPILOG)
def disqualify(
    sub_id: Annotated[str, typer.Argument(help="The submission (sub-...).")],
    reason: Annotated[str, typer.Option(help="Why: shown beside the entry.")],
    data: Data,
) -> None:
    """Mark a submission disqualified with a reason: it is kept, and ranked no more."""
    try:
        with ServiceDB(data) as db:
            db.disqualify(sub_id, reason)
    except HarnessError as exc:
        abort(exc)
    typer.echo(f"disqualified {sub_id}: {reason}")


def final_boards(db: ServiceDB, store: Store, competition: Competition) -> dict[str, Leaderboard]:
    """Each track's final leaderboard: its finalists ranked by the stages combined."""
    boards = {}
    for track in competition.tracks:
        entries = final_entries(db, track)
        if entries:
            board = build_leaderboard(store, entries=entries, track=track)
            boards[track] = labelled(board, {e: label for e, (label, _) in entries.items()})
    return boards


@app.command("reveal", epilog=EPILOG)
def reveal(data: Data) -> None:
    """Reveal the final results: every team sees every score, the leaderboard becomes the final
    ranking of the finalists, written under DATA/final/TRACK/."""
    console = Console()
    try:
        with ServiceDB(data) as db, Store(data / "results") as store:
            competition = _competition(db)
            phase = current_phase(competition, db.state("phase"), time.time())
            if not phase.final:
                raise ConfigError(
                    f"the phase is {phase.name!r}, not the final one: `harness competition "
                    "advance` to it first"
                )
            waiting = [s.id for s in db.submissions(states=ACTIVE) if s.final_run]
            if waiting:
                raise ConfigError(
                    f"{len(waiting)} final run(s) still queued or running ({', '.join(waiting)}): "
                    "reveal once they ended"
                )
            boards = final_boards(db, store, competition)
            db.set_state("revealed", datetime.now(UTC).isoformat(timespec="seconds"))
    except HarnessError as exc:
        abort(exc)
    for track, board in boards.items():
        console.print(f"final ranking, track {track}:", highlight=False)
        print_leaderboard(console, board, write_leaderboard(board, data / "final" / track))
