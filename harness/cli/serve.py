"""`harness serve`: the evaluation service teams queue their entries on (API and web pages)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
import uvicorn
from rich.console import Console

from harness.cli._common import (
    BaseImage,
    Budget,
    BuildTimeoutMinutes,
    DeadlineMinutes,
    ExecutorName,
    Gpus,
    HealthInterval,
    HealthTries,
    Instances,
    MaxEvalInstances,
    MaxSequenceLength,
    MemLimit,
    RayAddress,
    RunSpecs,
    Stage,
    abort,
    executor_factory,
    run_options,
)
from harness.competition import TRACK_NAMES
from harness.errors import ConfigError, HarnessError
from harness.infra.lock import command_line, hold_results_lock
from harness.service.api import create_app
from harness.service.core import DEFAULT_QUOTA, Service, ServiceConfig
from harness.service.db import ServiceDB
from harness.service.queue import Queue
from harness.service.uploads import DEFAULT_MAX_UPLOAD_BYTES
from harness.store import Store

EPILOG = """**Examples**

    harness teams add team-a --data /srv/harness     # prints the team's token once

    harness serve --data /srv/harness --run-specs open --max-eval-instances 50 --jobs 2

    harness serve --data /srv/harness --run-specs offline --base-image harness-base:bookworm \\
        --quota 5 --port 8080
"""


def main(
    data: Annotated[
        Path, typer.Option(help="Data folder: database, uploads, results store, logs.")
    ],
    host: str = typer.Option("127.0.0.1", help="Address to listen on (keep it local behind TLS)."),
    port: int = typer.Option(8000, help="Port to listen on."),
    stage: Stage = "open",
    jobs: int = typer.Option(1, help="Entries evaluated at once (0: queue only, run none)."),
    gpus: Gpus = None,
    executor: ExecutorName = "local",
    ray_address: RayAddress = "auto",
    quota: int = typer.Option(DEFAULT_QUOTA, help="Submissions per team, track and UTC day."),
    max_upload_mb: float = typer.Option(
        DEFAULT_MAX_UPLOAD_BYTES / 1024**2, help="Largest upload accepted, in MiB."
    ),
    max_eval_instances: MaxEvalInstances = 100,
    budget: Budget = None,
    run_specs: RunSpecs = None,
    instances: Instances = None,
    base_image: BaseImage = None,
    build_timeout_minutes: BuildTimeoutMinutes = 120,
    deadline_minutes: DeadlineMinutes = None,
    health_tries: HealthTries = 10,
    health_interval: HealthInterval = 120,
    mem_limit: MemLimit = None,
    max_sequence_length: MaxSequenceLength = 4096,
) -> None:
    """Serve the JSON API (/api/v1) and web pages; evaluate queued entries in order."""
    console = Console(stderr=True)
    try:
        if jobs < 0 or quota < 0:
            raise ConfigError("--jobs and --quota cannot be negative")
        config = ServiceConfig(
            data_dir=data,
            stage=stage,
            quota=quota,
            max_upload_bytes=int(max_upload_mb * 1024**2),
        )
        # The track is each submission's; the first only stands in until then.
        options = run_options(
            track=TRACK_NAMES[0],
            stage=stage,
            out=config.results,
            jobs=max(jobs, 1),
            gpus=gpus,
            max_eval_instances=max_eval_instances,
            budget=budget,
            run_specs=run_specs,
            instances=instances,
            base_image=base_image,
            build_timeout_minutes=build_timeout_minutes,
            deadline_minutes=deadline_minutes,
            health_tries=health_tries,
            health_interval=health_interval,
            mem_limit=mem_limit,
            max_sequence_length=max_sequence_length,
        )
        options.scored_run_specs()  # a bad conf or pack is a usage error before anything starts
        make_executor = executor_factory(executor, ray_address, max(jobs, 1))
        with (
            hold_results_lock(config.results, command_line()),
            ServiceDB(data) as db,
            Store(config.results) as store,
        ):
            queue = Queue(db, store, options, make_executor() if jobs else None, config.zip_path)
            queue.start()
            console.print(f"serving http://{host}:{port} (data in {data}, {jobs} worker(s))")
            try:
                uvicorn.run(
                    create_app(Service(config, db, store, queue)),
                    host=host,
                    port=port,
                    log_level="warning",
                )
            finally:
                stopped = queue.close()
    except HarnessError as exc:
        abort(exc)
    if not stopped:
        # Interrupted evaluations are re-queued on the next start; their threads may still wait
        # on a subprocess, and the interpreter would join them at exit.
        os._exit(0)
