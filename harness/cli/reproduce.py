"""`harness reproduce`: re-run an entry's training, rebuild and re-score it, compare; with
`--top K`, the K best entries of a results folder as jobs of an executor."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import typer
from rich.console import Console

from harness.cli._common import (
    INTERRUPTED,
    ExecutorName,
    RayAddress,
    SharedStorage,
    abort,
    executor_factory,
    parse_mounts,
)
from harness.competition import tracks_text
from harness.errors import ConfigError, HarnessError
from harness.infra.gpus import parse_gpus
from harness.reproduce.curves import DEFAULT_LOSS_TOLERANCE
from harness.reproduce.flow import reproduce_entry
from harness.reproduce.options import DEFAULT_TOLERANCE, ReproduceOptions, parse_duration
from harness.reproduce.top import PASSING, reproduce_top
from harness.run.executor import TaskExecutor

EPILOG = """**Examples**

    harness reproduce entries/team-a --track 4090 --results results/

    HF_TOKEN=hf_... harness reproduce entries/team-b.zip --track A100 --results results/ \\
        --time-limit 24h --tolerance 0.02 --stage closed

    harness reproduce submissions/tiny --track 4090 --results results/ --time-limit 10m \\
        --base-image harness-base:bookworm --mount /srv/models/tiny:/base

    harness reproduce entries/team-a --track 4090 --results results/ --replay

    harness reproduce entries/team-a --track 4090 --results results/ --runs 5

    harness reproduce --top 3 results/ --track 4090 --time-limit 24h

    harness reproduce --top 10 results/ --track A100 --runs 5 --executor ray \
        --ray-address auto
"""


def main(
    entry: Path = typer.Argument(
        ..., help="The entry: a folder or .zip file; with --top, the results folder."
    ),
    track: str = typer.Option(..., help=f"{tracks_text()}."),
    results: Path | None = typer.Option(
        None, help="The original run's results folder (--out of run); not with --top."
    ),
    top: int | None = typer.Option(
        None,
        min=1,
        help="Reproduce the K best entries of the results folder ENTRY, one job each, and "
        "write one report; a rerun keeps the ones already finished.",
    ),
    executor: ExecutorName = "local",
    ray_address: RayAddress = "auto",
    shared_storage: SharedStorage = False,
    jobs: int = typer.Option(1, min=1, help="With --top and --executor local: entries at once."),
    force: bool = typer.Option(False, help="With --top: redo entries already reproduced."),
    stage: str = typer.Option("open", help="The stage whose run and scores are reproduced."),
    time_limit: str = typer.Option("24h", help="Training time limit, e.g. 24h, 90m, 30s."),
    tolerance: float = typer.Option(
        DEFAULT_TOLERANCE,
        help="Largest shortfall of a scenario's mean main metric that counts "
        "as reproduced (absolute).",
    ),
    replay: bool = typer.Option(
        False,
        "--replay",
        help="Re-run the entry's logged seed with determinism on and check "
        "its loss curve step by step (needs the entry's training/ record).",
    ),
    loss_tolerance: float = typer.Option(
        DEFAULT_LOSS_TOLERANCE,
        help="Relative difference of a step's loss at which a replay has parted from the original.",
    ),
    runs: int | None = typer.Option(
        None,
        min=1,
        help="Train N times with fresh seeds and judge their mean against the "
        "original with a one-sided Welch test [default: once, with the logged seed].",
    ),
    base_image: str | None = typer.Option(None, help="BASE_IMAGE build argument for both images."),
    mount: list[str] = typer.Option(
        [], help="HOST_DIR:/path mounted read-only into training (e.g. a model cache)."
    ),
    build_timeout_minutes: float = typer.Option(120, help="Limit of one docker build."),
    gpus: str | None = typer.Option(
        None, help="GPU indexes (the first is used), or none [default: the engine's first]."
    ),
    instances: Path | None = typer.Option(
        None, help="The instance pack the original run used (`harness run --instances`)."
    ),
) -> None:
    """Re-run ENTRY's training under the time limit, rebuild and re-score it, compare with its
    original scores; writes reproduction.md, .html and .json to RESULTS/reproduce/ENTRY/."""
    console = Console()
    try:
        if top is not None and results is not None:
            raise ConfigError("with --top, the results folder is the argument: leave out --results")
        results = entry if top is not None else results
        if results is None:
            raise ConfigError("give the original run's results folder: --results RESULTS_DIR")
        options = ReproduceOptions(
            track=track,
            results=results,
            stage=stage,
            time_limit_s=parse_duration(time_limit),
            tolerance=tolerance,
            base_image=base_image,
            mounts=parse_mounts(mount),
            build_timeout_s=build_timeout_minutes * 60,
            gpus=None if gpus is None else parse_gpus(gpus),
            instances=instances,
            replay=replay,
            loss_tolerance=loss_tolerance,
            runs=runs,
        )
        if top is not None:
            make_executor = executor_factory(
                executor, ray_address, jobs, shared_storage=shared_storage
            )
            _top(console, top, options, make_executor, force)
        with console.status("reproducing") as status:
            result = reproduce_entry(
                entry, options, on_progress=lambda step: status.update(f"{entry.name}: {step}")
            )
    except HarnessError as exc:
        abort(exc)
    color = "green" if result.exit_code == 0 else "red"
    console.print(f"[{color}]{result.verdict.value}[/]: {result.reason}")
    if result.log_tail:
        console.print(result.log_tail, markup=False, highlight=False)
    console.print(f"wrote {result.folder / 'reproduction.md'}, .html and .json")
    raise typer.Exit(result.exit_code)


def _top(
    console: Console,
    top: int,
    options: ReproduceOptions,
    make_executor: Callable[[], TaskExecutor],
    force: bool,
) -> NoReturn:
    def progress(entry: str, message: str) -> None:
        console.print(f"{entry}: {message}", markup=False, highlight=False)

    try:
        report = reproduce_top(
            top, options, executor=make_executor(), force=force, on_progress=progress
        )
    except KeyboardInterrupt:
        console.print("interrupted: the running reproductions were stopped; rerun to resume")
        # Worker threads may still be unwinding from their removed containers: none of them may
        # write a verdict now.
        os._exit(INTERRUPTED)
    if report.note:
        console.print(report.note)
    for entry in report.entries:
        color = "green" if entry.verdict in PASSING else "red"
        console.print(f"{entry.rank}. {entry.entry}: [{color}]{entry.verdict}[/]")
    console.print(
        f"wrote {', '.join(str(p) for p in report.paths)}; the leaderboard shows the verdicts"
    )
    raise typer.Exit(report.exit_code)
