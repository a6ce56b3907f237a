"""`harness competition`: the organizers' steps on an evaluation service's data folder, while the
service runs or not.

`advance` enters the next phase of a competition run by `harness serve --competition FILE`
(phases.py) now: a final phase queues each finalist's final run. `disqualify` marks an entry with
a reason (it is kept, struck through with it, unranked). `reveal` shows the final ranking (the
stages combined with the competition's weights) and makes every score public; the running service
notices and tells the teams. `release` freezes the public leaderboard of every track (after the
reveal, the final ranking) into DATA/releases/VERSION (what `harness serve` serves at
/releases/VERSION), with a manifest holding every file's sha256; `verify` checks a release, or a
copy of one, against its manifest.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.text import Text

from harness.cli._common import (
    BaseImage,
    ExecutorName,
    RayAddress,
    abort,
    executor_factory,
    print_leaderboard,
)
from harness.errors import ConfigError, HarnessError
from harness.infra.lock import command_line, hold_results_lock
from harness.leaderboard.model import Leaderboard
from harness.leaderboard.release import check_version, read_manifest, verify_release, write_release
from harness.reproduce import top
from harness.reproduce.options import ReproduceOptions
from harness.service.core import (
    DEFAULT_QUOTA,
    ServiceConfig,
    current_leaderboard,
    final_leaderboard,
)
from harness.service.db import ACTIVE, DB_FILENAME, ServiceDB
from harness.service.phases import (
    Competition,
    current_phase,
    disqualifications,
    enter_phase,
    saved_competition,
    single_phase,
)
from harness.store import Store

EPILOG = """**Examples**

    harness competition advance --data /srv/harness      # the next phase starts now

    harness competition disqualify sub-0123456789ab --reason "trained on the test set" \\
        --data /srv/harness

    harness competition reveal --data /srv/harness --reproduce-top 3   # service stopped

    harness competition release v1 --data /srv/harness      # into /srv/harness/releases/v1

    harness competition verify /srv/harness/releases/v1

    harness competition verify ./v1-copy --manifest-sha256 3f5c...   # the published sha256
"""

app = typer.Typer(
    help="Run a competition on `harness serve`'s data: advance, disqualify, reveal, release, "
    "verify.",
    epilog=EPILOG,
    no_args_is_help=True,
)
Data = Annotated[
    Path, typer.Option(help="The service's data folder (as given to `harness serve`).")
]


def _competition(db: ServiceDB) -> Competition:
    competition = saved_competition(db)
    if competition is None:
        raise ConfigError(
            "this data folder has no competition: start `harness serve --competition FILE "
            "--data DIR` on it first"
        )
    return competition


def _check_data(data: Path) -> None:
    if not (data / DB_FILENAME).is_file():
        raise ConfigError(
            f"{data} holds no {DB_FILENAME}: give the folder `harness serve --data` uses"
        )


def _service_db(data: Path) -> ServiceDB:
    _check_data(data)
    return ServiceDB(data)


@app.command("advance", epilog=EPILOG)
def advance(data: Data) -> None:
    """Enter the next phase now, whatever its start date; entering the final phase queues a final
    run of each team's selected entries (or its best published one)."""
    try:
        with _service_db(data) as db, Store(ServiceConfig(data).results) as store:
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
    """Mark a submission disqualified with a reason: it is kept, shown struck through with the
    reason, and ranked no more."""
    try:
        with _service_db(data) as db:
            db.disqualify(sub_id, reason)
    except HarnessError as exc:
        abort(exc)
    typer.echo(f"disqualified {sub_id}: {reason}")


def _reveal(data: Path) -> tuple[Competition, dict[str, tuple[Leaderboard, dict[str, str]]]]:
    """Record the reveal, once the final phase's runs all ended; the competition and each
    track's final leaderboard with its rows' submission ids."""
    with _service_db(data) as db, Store(ServiceConfig(data).results) as store:
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
        out = disqualifications(db)
        boards = {
            track: final_leaderboard(db, store, competition, track, disqualified=out)
            for track in competition.tracks
        }
        db.set_state("revealed", datetime.now(UTC).isoformat(timespec="seconds"))
    return competition, boards


@app.command("reveal", epilog=EPILOG)
def reveal(
    data: Data,
    reproduce_top: int = typer.Option(
        0,
        help="Then reproduce the K best finalists of each track (`harness reproduce --top`: one "
        "GPU each, through --executor) against their final stage; the service must be stopped "
        "meanwhile (it holds the results folder): while it runs, nothing is revealed (exit 3).",
    ),
    base_image: BaseImage = None,
    executor: ExecutorName = "local",
    ray_address: RayAddress = "auto",
) -> None:
    """Reveal the final results: every team sees every score, and the leaderboard becomes the
    final ranking of the finalists (printed here; `release` freezes it), with each reproduced
    finalist's verdict."""
    console = Console()
    if reproduce_top < 0:
        abort(ConfigError(f"--reproduce-top must be 0 or more, got {reproduce_top}"))
    results = ServiceConfig(data).results
    # A reproduction writes the results folder, which a running service holds: refused before
    # anything changes, rather than revealed and then not reproduced. Held to the end (the
    # reproduction's own hold is then the same one).
    held = hold_results_lock(results, command_line()) if reproduce_top else nullcontext()
    try:
        _check_data(data)  # before the lock, which would make DATA/results
        with held:
            competition, boards = _reveal(data)
            for track, (board, ids) in boards.items():
                console.print(f"final ranking, track {track}:", highlight=False)
                print_leaderboard(console, board, [])
                if not reproduce_top:
                    continue
                final = competition.phases[-1]
                options = ReproduceOptions(
                    track=track,
                    results=results,
                    stage=final.harness_stage,
                    instances=final.instances,
                    base_image=base_image,
                )
                # The store names an entry by its submission; its zip is where the store says.
                ranked = [
                    (row.rank, ids[row.entry], ServiceConfig(data).zip_path(ids[row.entry]))
                    for row in board.rows
                    if row.rank is not None
                ]
                report = top.reproduce_top(
                    reproduce_top,
                    options,
                    executor=executor_factory(executor, ray_address, 1)(),
                    candidates=ranked,
                    on_progress=lambda entry, message: console.print(
                        f"{entry}: {message}", markup=False, highlight=False
                    ),
                )
                for entry in report.entries:
                    console.print(f"{entry.rank}. {entry.entry}: {entry.verdict}", highlight=False)
    except HarnessError as exc:
        abort(exc)


@app.command("release", epilog=EPILOG)
def release(
    version: str = typer.Argument(..., help="The release's name: v1, 2026-final, ..."),
    *,
    data: Data,
    out: Path | None = typer.Option(
        None,
        help="Where releases go; the release is OUT/VERSION. Default: DATA/releases, which "
        "`harness serve` serves at /releases/VERSION.",
    ),
) -> None:
    """Freeze every track's public leaderboard (after `reveal`, the final ranking) as JSON,
    Markdown and HTML with entry pages and figures, and a manifest: images, instance packs,
    versions, verdicts, every file's sha256."""
    try:
        check_version(version)
        config = ServiceConfig(data)
        boards: dict[str, Leaderboard] = {}
        ids: dict[str, dict[str, str]] = {}
        with _service_db(data) as db, Store(config.results, create=False) as store:
            competition = saved_competition(db) or single_phase(DEFAULT_QUOTA)
            for track in competition.tracks:
                boards[track], ids[track] = current_leaderboard(db, store, competition, track)
            folder = (out or config.releases) / version
            made = write_release(version, boards, store, folder, ids=ids)
    except HarnessError as exc:
        abort(exc)
    typer.echo(f"released {version} in {made.path}: {made.files} files and manifest.json")
    typer.echo(f"manifest sha256 (publish it): {made.manifest_sha256}")


@app.command("verify", epilog=EPILOG)
def verify(
    release_dir: Path = typer.Argument(..., help="A release folder, or a copy of one."),
    manifest_sha256: str | None = typer.Option(
        None, help="The manifest's published sha256: the manifest itself is checked too."
    ),
) -> None:
    """Check every file of a release against its manifest; exit 1 naming each changed, missing
    or extra file."""
    try:
        problems = verify_release(release_dir, manifest_sha256=manifest_sha256)
        files = len(read_manifest(release_dir)["files"]) if not problems else 0
    except HarnessError as exc:
        abort(exc)
    if problems:
        console = Console(stderr=True, highlight=False)
        for problem in problems:
            console.print(Text(str(problem)))  # a file name may hold rich's [brackets]
        console.print(f"{len(problems)} file(s) differ from the release's manifest")
        raise typer.Exit(1)
    typer.echo(f"ok: {files} files as released")
