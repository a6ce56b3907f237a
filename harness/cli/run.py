"""`harness run`: build, serve and score every entry of a folder; then write the leaderboard."""

from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

from harness.errors import ConfigError, HarnessError
from harness.health import HealthSchedule
from harness.report import build_leaderboard, to_rich, write_leaderboard
from harness.run import RunOptions, exit_code, run_entries
from harness.store import Store

EPILOG = """**Examples**

    harness run entries/ --track 4090 --stage open --out results/

    harness run entries/ --track A100 --stage closed --out results/ --jobs 2 --budget 600

    harness run entries/ --track 4090 --stage open --out results/ --run-specs offline \\
        --max-eval-instances 5 --base-image harness-base:bookworm --deadline-minutes 10
"""


def _secrets(values: list[str]) -> dict[str, Path]:
    secrets = {}
    for value in values:
        secret_id, sep, path = value.partition("=")
        if not sep or not Path(path).is_file():
            raise ConfigError(f"--build-secret takes ID=FILE with an existing file, got {value!r}")
        secrets[secret_id] = Path(path)
    return secrets


def main(
    entries_dir: Path = typer.Argument(..., help="One entry per subfolder or .zip file."),
    track: str = typer.Option(..., help="4090 (24 GB) or A100 (40 GB)."),
    stage: str = typer.Option(..., help="open (300 min) or closed (600 min)."),
    out: Path = typer.Option(..., help="Results folder (SQLite store, logs, leaderboard)."),
    jobs: int = typer.Option(1, help="Entries built and evaluated at once."),
    max_eval_instances: int = typer.Option(100, help="Instances per run spec, at most."),
    budget: int | None = typer.Option(None, help="Instances per stage, spread over scenarios."),
    run_specs: str | None = typer.Option(
        None, help="open | closed | offline, or a HELM conf file [default: the stage's]."
    ),
    base_image: str | None = typer.Option(None, help="BASE_IMAGE build argument for entries."),
    force: bool = typer.Option(False, help="Redo entries and steps that already finished."),
    evaluate_flagged: bool = typer.Option(False, help="Evaluate entries with error findings."),
    build_timeout_minutes: float = typer.Option(120, help="Limit of one docker build."),
    deadline_minutes: float | None = typer.Option(
        None, help="Evaluation time limit [default: the stage's]."
    ),
    health_tries: int = typer.Option(10, help="Health checks before an entry is unhealthy."),
    health_interval: float = typer.Option(120, help="Seconds between health checks."),
    allow_network: bool = typer.Option(False, help="Let entries reach the network while served."),
    mem_limit: str | None = typer.Option(None, help="Container memory limit, e.g. 64g."),
    max_sequence_length: int = typer.Option(4096, help="Context HELM fits prompts into."),
    build_secret: list[str] = typer.Option(
        [], help="ID=FILE: a BuildKit secret for entries' builds (e.g. hf_token=~/.hf_token)."
    ),
) -> None:
    """Build, serve and score every entry with HELM under the stage's time limit."""
    console = Console()
    try:
        options = RunOptions(
            track=track,
            stage=stage,
            out=out,
            jobs=jobs,
            max_eval_instances=max_eval_instances,
            budget=budget,
            run_specs=run_specs,
            base_image=base_image,
            force=force,
            evaluate_flagged=evaluate_flagged,
            build_timeout_s=build_timeout_minutes * 60,
            deadline_s=deadline_minutes * 60 if deadline_minutes is not None else None,
            health=HealthSchedule(tries=health_tries, interval_s=health_interval),
            allow_network=allow_network,
            mem_limit=mem_limit,
            max_sequence_length=max_sequence_length,
            build_secrets=_secrets(build_secret),
        )
        with Progress(
            SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console
        ) as progress:
            tasks: dict[str, TaskID] = {}

            def on_progress(entry: str, step: str) -> None:
                if entry not in tasks:
                    tasks[entry] = progress.add_task(entry)
                progress.update(tasks[entry], description=f"{entry}: {step}")

            outcomes = run_entries(entries_dir, options, on_progress=on_progress)
    except HarnessError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(exc.exit_code) from exc
    except KeyboardInterrupt:
        console.print("[yellow]interrupted:[/] containers removed; finished results are stored")
        # Worker threads may still wait on a build or HELM subprocess: do not wait for them.
        os._exit(130)
    with Store(out) as store:
        board = build_leaderboard(store, track=track)
    paths = write_leaderboard(board, out)
    console.print(to_rich(board))
    skipped = sum(o.skipped for o in outcomes)
    console.print(
        f"{len(outcomes)} entries ({skipped} already finished, kept); wrote "
        + ", ".join(str(p) for p in paths)
    )
    raise typer.Exit(exit_code(outcomes))
