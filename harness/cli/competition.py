"""`harness competition`: the organizers' steps on an evaluation service's data folder, while the
service runs or not.

`advance` enters the next phase of a competition run by `harness serve --competition FILE`
(phases.py) now: a final phase queues each finalist's final run. `disqualify` marks an entry with
a reason (it is kept, struck through with it, unranked). `reveal` shows the final ranking (the
stages combined with the competition's weights) and makes every score public; the running service
notices and tells the teams; with `--reproduce-top K` it queues the K best finalists'
reproductions, which the running service runs (service/reproductions.py) or, with none
running, `reveal` itself. `release` freezes the public leaderboard of every track (after the
reveal, the final ranking) into DATA/releases/VERSION (what `harness serve` serves at
/releases/VERSION), with a manifest holding every file's sha256; `verify` checks a release, or a
copy of one, against its manifest.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.text import Text

from harness.cli._common import (
    BaseImage,
    ExecutorName,
    RayAddress,
    abort,
    executor_factory,
    parse_mounts,
    print_leaderboard,
)
from harness.errors import ConfigError, HarnessError, InfrastructureError
from harness.infra.lock import command_line, hold_results_lock
from harness.leaderboard.model import Leaderboard
from harness.leaderboard.release import check_version, read_manifest, verify_release, write_release
from harness.reproduce.options import parse_duration
from harness.reproduce.queued import QueuedReproducer, asked
from harness.run.executor import TaskExecutor
from harness.run.options import RunOptions
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
from harness.service.queue import worker_name
from harness.service.reproductions import Reproductions
from harness.store import Store, results_id

EPILOG = """**Examples**

    harness competition advance --data /srv/harness      # the next phase starts now

    harness competition disqualify sub-0123456789ab --reason "trained on the test set" \\
        --data /srv/harness

    harness competition reveal --data /srv/harness --reproduce-top 3   # queued to the service

    harness competition reveal --data /srv/harness --reproduce-top 1 --time-limit 24h \\
        --mount /srv/models:/models      # training reads the base model there, read-only

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
        help="Then reproduce the K best finalists of each track (`harness reproduce --top`'s "
        "job: one GPU each) against the final phase's stage: queued to the running `harness "
        "serve`, which runs them through its executor and shows each verdict on the final "
        "leaderboard; with no service running, run here, through --executor.",
    ),
    time_limit: str = typer.Option("24h", help="A reproduction's training time limit."),
    mount: list[str] = typer.Option(
        [], help="HOST_DIR:/path mounted read-only into training (e.g. a model cache)."
    ),
    base_image: BaseImage = None,
    executor: ExecutorName = "local",
    ray_address: RayAddress = "auto",
) -> None:
    """Reveal the final results: every team sees every score, and the leaderboard becomes the
    final ranking of the finalists (printed here; `release` freezes it), with each reproduced
    finalist's verdict."""
    console = Console()
    try:
        if reproduce_top < 0:
            raise ConfigError(f"--reproduce-top must be 0 or more, got {reproduce_top}")
        # Checked before anything is revealed.
        wanted = asked(
            base_image=base_image,
            time_limit_s=parse_duration(time_limit),
            mounts=parse_mounts(mount),
        )
        competition, boards = _reveal(data)
        finalists = []
        for track, (board, ids) in boards.items():
            console.print(f"final ranking, track {track}:", highlight=False)
            print_leaderboard(console, board, [])
            ranked = [row for row in board.rows if row.rank is not None][:reproduce_top]
            finalists += [(track, row.rank, ids[row.entry]) for row in ranked if row.rank]
        if finalists:
            factory = executor_factory(executor, ray_address, 1)
            _reproduce(data, competition, finalists, wanted, factory, console)
    except HarnessError as exc:
        abort(exc)


def _reproduce(
    data: Path,
    competition: Competition,
    finalists: list[tuple[str, int, str]],
    wanted: dict[str, Any],
    make_executor: Callable[[], TaskExecutor],
    console: Console,
) -> None:
    """Queue the finalists' reproductions (track, rank, submission); run them here unless a
    service holds the results folder (then it runs them)."""
    config = ServiceConfig(data)
    final = competition.phases[-1]
    with _service_db(data) as db, ExitStack() as held:
        subs = {sub_id: db.submission(sub_id) for _, _, sub_id in finalists}
        db.add_reproductions(
            [
                (track, rank, sub_id, sub.team)
                for track, rank, sub_id in finalists
                if (sub := subs[sub_id]) is not None
            ],
            wanted,
        )
        try:
            held.enter_context(hold_results_lock(config.results, command_line()))
        except InfrastructureError as exc:
            console.print(
                f"reproductions of {len(finalists)} finalist(s) queued to the service ({exc}); "
                "each verdict shows on the final leaderboard and at /api/v1/reproductions",
                highlight=False,
            )
            return
        machine = make_executor()
        machine.start(
            RunOptions(track=finalists[0][0], stage=final.harness_stage, out=config.results),
            results_id(config.results),
        )
        runner = Reproductions(
            db,
            QueuedReproducer(
                config.results, final.harness_stage, config.zip_path, instances=final.instances
            ),
            machine,
            worker_name(),
            on_end=lambda ended: console.print(
                f"{ended.rank}. {ended.submission}: {ended.verdict or ended.state.value}\n"
                f"   {ended.reason}",
                markup=False,
                highlight=False,
            ),
        )
        try:
            runner.drain(1)
        except BaseException:  # an interrupt: what runs is stopped and queued again
            runner.close()
            machine.interrupt()
            raise
        machine.close()
        console.print(
            "the finalists' teams are told of these verdicts when `harness serve` starts next "
            "(it has the notification settings)",
            highlight=False,
        )


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
