"""`harness run`: build, serve and score every entry of a folder; then write the leaderboard."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

from harness.cli.report import print_leaderboard
from harness.errors import ConfigError, HarnessError
from harness.executor import Executor, LocalExecutor
from harness.gpus import detect_gpus, parse_gpus
from harness.health import HealthSchedule
from harness.report import build_leaderboard, write_leaderboard
from harness.run import RunOptions, exit_code, run_entries
from harness.store import Store
from harness.tiers import Tiers, run_tiers

EPILOG = """**Examples**

    harness run entries/ --track 4090 --stage open --out results/

    harness run entries/ --track A100 --stage closed --out results/ --jobs 2 --budget 600

    harness run entries/ --track 4090 --stage open --out results/ --instances packs/open-600

    harness run entries/ --track 4090 --stage open --out results/ --run-specs offline \\
        --max-eval-instances 5 --base-image harness-base:bookworm --deadline-minutes 10

    harness run entries/ --track 4090 --stage open --out results/ --gpus 0,1,2,3

    harness run entries/ --track 4090 --stage open --out /shared/results/ --executor ray \\
        --ray-address auto --tiers 100,600 --keep-top 20
"""


def _secrets(values: list[str]) -> dict[str, Path]:
    secrets = {}
    for value in values:
        secret_id, sep, path = value.partition("=")
        if not sep or not Path(path).is_file():
            raise ConfigError(f"--build-secret takes ID=FILE with an existing file, got {value!r}")
        secrets[secret_id] = Path(path)
    return secrets


@contextmanager
def progress_lines(console: Console) -> Iterator[Callable[[str, str], None]]:
    """Shows each entry's step as it starts (the callback takes entry and step): a spinner line
    per entry on a terminal; elsewhere (CI logs, `| tee`, a file) one plain, timed line per
    step, never a spinner frame."""
    if not console.is_terminal:
        started = time.monotonic()

        def line(entry: str, step: str) -> None:
            elapsed = time.strftime("%H:%M:%S", time.gmtime(time.monotonic() - started))
            console.print(
                f"{elapsed} {entry}: {step}", markup=False, highlight=False, soft_wrap=True
            )

        yield line
        return
    columns = SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn()
    with Progress(*columns, console=console) as progress:
        tasks: dict[str, TaskID] = {}

        def update(entry: str, step: str) -> None:
            if entry not in tasks:
                tasks[entry] = progress.add_task(entry)
            progress.update(tasks[entry], description=f"{entry}: {step}")

        yield update


def executor_factory(name: str, ray_address: str, jobs: int) -> Callable[[], Executor]:
    """What `--executor` names (shared by `harness run` and `harness serve`)."""
    if name == "local":
        return lambda: LocalExecutor(jobs)
    if name == "ray":
        from harness.ray_executor import RayExecutor  # Ray is imported only when asked for

        return lambda: RayExecutor(ray_address)
    raise ConfigError(f"--executor takes local or ray, got {name!r}")


def main(
    entries_dir: Path = typer.Argument(..., help="One entry per subfolder or .zip file."),
    track: str = typer.Option(..., help="4090 (24 GB) or A100 (40 GB)."),
    stage: str = typer.Option(..., help="open (300 min) or closed (600 min)."),
    out: Path = typer.Option(..., help="Results folder (SQLite store, logs, leaderboard)."),
    jobs: int | None = typer.Option(
        None, help="Entries built and evaluated at once [default: one per GPU, else 1]."
    ),
    gpus: str | None = typer.Option(
        None, help="GPU indexes, one per entry at a time: 0,1,2,3 or none [default: all]."
    ),
    executor: str = typer.Option("local", help="local (this machine) or ray (a Ray cluster)."),
    ray_address: str = typer.Option("auto", help="With --executor ray: auto or ray://HOST:PORT."),
    tiers: str | None = typer.Option(
        None, help="Coarse-to-fine budgets, e.g. 100,600: all entries on the first, then fewer."
    ),
    keep: float | None = typer.Option(None, help="With --tiers: the top fraction kept [0.3]."),
    keep_top: int | None = typer.Option(None, help="With --tiers: the top N kept instead."),
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
    instances: Path | None = typer.Option(
        None,
        help="An instance pack (`harness instances build`): score exactly its instances, "
        "offline; --budget takes the first of them, --max-eval-instances is not applied.",
    ),
    build_secret: list[str] = typer.Option(
        [], help="ID=FILE: a BuildKit secret for entries' builds (e.g. hf_token=~/.hf_token)."
    ),
) -> None:
    """Build, serve and score every entry with HELM under the stage's time limit."""
    console = Console()
    try:
        gpu_list = None if gpus is None else parse_gpus(gpus)
        if jobs is None:
            jobs = max(1, len(detect_gpus() if gpu_list is None else gpu_list))
        plan = None if tiers is None else Tiers.parse(tiers, keep=keep, keep_top=keep_top)
        if plan is None and (keep is not None or keep_top is not None):
            raise ConfigError("--keep and --keep-top go with --tiers")
        if plan is not None and budget is not None:
            raise ConfigError("--tiers sets the budgets: leave out --budget")
        make_executor = executor_factory(executor, ray_address, jobs)
        options = RunOptions(
            track=track,
            stage=stage,
            out=out,
            jobs=jobs,
            gpus=gpu_list,
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
            instances=instances,
        )
        with progress_lines(console) as on_progress:
            if plan is None:
                outcomes = run_entries(
                    entries_dir, options, executor=make_executor(), on_progress=on_progress
                )
            else:
                outcomes = run_tiers(
                    entries_dir, options, plan, executor=make_executor, on_progress=on_progress
                )
    except HarnessError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(exc.exit_code) from exc
    except KeyboardInterrupt:
        console.print("[yellow]interrupted:[/] containers removed; finished results are stored")
        # Worker threads may still wait on a build or HELM subprocess: do not wait for them.
        os._exit(130)
    with Store(out) as store:
        board = build_leaderboard(store, track=track)
    print_leaderboard(console, board, write_leaderboard(board, out))
    skipped = sum(o.skipped for o in outcomes)
    console.print(f"{len(outcomes)} entries ({skipped} already finished, kept)")
    raise typer.Exit(exit_code(outcomes))
