"""`harness run`: build, serve and score every entry of a folder; then write the leaderboard."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from harness.cli._common import (
    INTERRUPTED,
    BaseImage,
    Budget,
    BuildNetwork,
    BuildTimeoutMinutes,
    Confidence,
    DeadlineMinutes,
    ExecutorName,
    Gpus,
    HealthInterval,
    HealthTries,
    Instances,
    Keep,
    KeepTop,
    MaxEvalInstances,
    MaxSequenceLength,
    MemLimit,
    RayAddress,
    RunSpecs,
    SharedStorage,
    Stage,
    TargetTop,
    TierBudgets,
    Track,
    abort,
    executor_factory,
    print_leaderboard,
    progress_lines,
    run_options,
    schedule_option,
)
from harness.errors import ConfigError, HarnessError, disk_full
from harness.infra.gpus import detect_gpus, parse_gpus
from harness.leaderboard import write_leaderboard
from harness.leaderboard.build import build_leaderboard
from harness.run.adaptive import Adaptive, run_adaptive
from harness.run.driver import exit_code, run_entries
from harness.run.tiers import Tiers, run_tiers
from harness.store import Store

EPILOG = """**Examples**

    harness run entries/ --track 4090 --stage open --out results/

    harness run entries/ --track A100 --stage closed --out results/ --jobs 2 --budget 600

    harness run entries/ --track 4090 --stage open --out results/ --instances packs/open-600

    harness run entries/ --track 4090 --stage open --out results/ --run-specs offline \\
        --max-eval-instances 5 --base-image harness-base:bookworm --deadline-minutes 10

    harness run entries/ --track 4090 --stage open --out results/ --gpus 0,1,2,3

    harness run entries/ --track 4090 --stage open --out results/ --executor ray \\
        --ray-address auto --tiers 100,600 --keep-top 20

    harness run /nfs/entries/ --track 4090 --stage open --out /nfs/results/ --executor ray \\
        --shared-storage

    harness run entries/ --track 4090 --stage open --out results/ --tiers adaptive \\
        --budget 1200 --target-top 10 --confidence 0.95
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
    entries_dir: Annotated[Path, typer.Argument(help="One entry per subfolder or .zip file.")],
    track: Track,
    stage: Stage,
    out: Annotated[Path, typer.Option(help="Results folder (SQLite store, logs, leaderboard).")],
    jobs: int | None = typer.Option(
        None, help="Entries built and evaluated at once [default: one per GPU, else 1]."
    ),
    gpus: Gpus = None,
    executor: ExecutorName = "local",
    ray_address: RayAddress = "auto",
    shared_storage: SharedStorage = False,
    tiers: TierBudgets = None,
    target_top: TargetTop = None,
    confidence: Confidence = None,
    keep: Keep = None,
    keep_top: KeepTop = None,
    max_eval_instances: MaxEvalInstances = 100,
    budget: Budget = None,
    run_specs: RunSpecs = None,
    instances: Instances = None,
    base_image: BaseImage = None,
    build_network: BuildNetwork = None,
    force: bool = typer.Option(False, help="Redo entries and steps that already finished."),
    evaluate_flagged: bool = typer.Option(False, help="Evaluate entries with error findings."),
    build_timeout_minutes: BuildTimeoutMinutes = 120,
    deadline_minutes: DeadlineMinutes = None,
    health_tries: HealthTries = 10,
    health_interval: HealthInterval = 120,
    allow_network: bool = typer.Option(False, help="Let entries reach the network while served."),
    mem_limit: MemLimit = None,
    max_sequence_length: MaxSequenceLength = 4096,
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
        plan = schedule_option(
            tiers,
            keep=keep,
            keep_top=keep_top,
            budget=budget,
            target_top=target_top,
            confidence=confidence,
        )
        if isinstance(plan, Tiers) and budget is not None:
            raise ConfigError("--tiers sets the budgets: leave out --budget")
        make_executor = executor_factory(executor, ray_address, jobs, shared_storage=shared_storage)
        options = run_options(
            track=track,
            stage=stage,
            out=out,
            jobs=jobs,
            gpus=gpus,
            max_eval_instances=max_eval_instances,
            budget=budget,
            run_specs=run_specs,
            instances=instances,
            base_image=base_image,
            build_network=build_network,
            build_timeout_minutes=build_timeout_minutes,
            deadline_minutes=deadline_minutes,
            health_tries=health_tries,
            health_interval=health_interval,
            mem_limit=mem_limit,
            max_sequence_length=max_sequence_length,
            force=force,
            evaluate_flagged=evaluate_flagged,
            allow_network=allow_network,
            build_secrets=_secrets(build_secret),
        )
        with progress_lines(console) as on_progress:
            if plan is None:
                outcomes = run_entries(
                    entries_dir, options, executor=make_executor(), on_progress=on_progress
                )
            elif isinstance(plan, Adaptive):
                outcomes = run_adaptive(
                    entries_dir, options, plan, executor=make_executor, on_progress=on_progress
                )
            else:
                outcomes = run_tiers(
                    entries_dir, options, plan, executor=make_executor, on_progress=on_progress
                )
        with Store(out) as store:
            board = build_leaderboard(store, track=track)
        paths = write_leaderboard(board, out)
    except OSError as exc:  # the lock file, the results folder, the leaderboard's files
        if (full := disk_full(exc, out)) is None:
            raise
        abort(full)
    except HarnessError as exc:
        abort(exc)
    except KeyboardInterrupt:
        Console(stderr=True).print(
            "[yellow]interrupted:[/] containers removed; finished results are stored"
        )
        # Worker threads may still wait on a build or HELM subprocess: do not wait for them.
        os._exit(INTERRUPTED)
    print_leaderboard(console, board, paths)
    skipped = sum(o.skipped for o in outcomes)
    console.print(f"{len(outcomes)} entries ({skipped} already finished, kept)")
    raise typer.Exit(exit_code(outcomes))
