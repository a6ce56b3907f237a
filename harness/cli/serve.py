"""`harness serve`: the evaluation service teams queue their entries on (API and web pages)."""

from __future__ import annotations

import os
from pathlib import Path

import typer
import uvicorn
from rich.console import Console

from harness.cli.run import executor_factory
from harness.errors import ConfigError, HarnessError
from harness.gpus import parse_gpus
from harness.health import HealthSchedule
from harness.lock import command_line, hold_results_lock
from harness.options import RunOptions
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
    data: Path = typer.Option(..., help="Data folder: database, uploads, results store, logs."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (keep it local behind TLS)."),
    port: int = typer.Option(8000, help="Port to listen on."),
    stage: str = typer.Option("open", help="The stage entries are scored in: open or closed."),
    jobs: int = typer.Option(1, help="Entries evaluated at once (0: queue only, run none)."),
    gpus: str | None = typer.Option(
        None, help="GPU indexes, one per entry at a time: 0,1,2,3 or none [default: all]."
    ),
    executor: str = typer.Option("local", help="local (this machine) or ray (a Ray cluster)."),
    ray_address: str = typer.Option("auto", help="With --executor ray: auto or ray://HOST:PORT."),
    quota: int = typer.Option(DEFAULT_QUOTA, help="Submissions per team, track and UTC day."),
    max_upload_mb: float = typer.Option(
        DEFAULT_MAX_UPLOAD_BYTES / 1024**2, help="Largest upload accepted, in MiB."
    ),
    max_eval_instances: int = typer.Option(100, help="Instances per run spec, at most."),
    budget: int | None = typer.Option(None, help="Instances per stage, spread over scenarios."),
    run_specs: str | None = typer.Option(
        None, help="open | closed | offline, or a HELM conf file [default: the stage's]."
    ),
    instances: Path | None = typer.Option(
        None, help="An instance pack (`harness instances build`): score exactly its instances."
    ),
    base_image: str | None = typer.Option(None, help="BASE_IMAGE build argument for entries."),
    build_network: str | None = typer.Option(
        None, help="Network of entry builds: `host` reaches servers on this machine (a mirror)."
    ),
    build_timeout_minutes: float = typer.Option(120, help="Limit of one docker build."),
    deadline_minutes: float | None = typer.Option(
        None, help="Evaluation time limit [default: the stage's]."
    ),
    health_tries: int = typer.Option(10, help="Health checks before an entry is unhealthy."),
    health_interval: float = typer.Option(120, help="Seconds between health checks."),
    mem_limit: str | None = typer.Option(None, help="Container memory limit, e.g. 64g."),
    max_sequence_length: int = typer.Option(4096, help="Context HELM fits prompts into."),
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
        # The track is each submission's; 4090 only stands in until then.
        options = RunOptions(
            track="4090",
            stage=stage,
            out=config.results,
            jobs=max(jobs, 1),
            gpus=None if gpus is None else parse_gpus(gpus),
            max_eval_instances=max_eval_instances,
            budget=budget,
            run_specs=run_specs,
            base_image=base_image,
            build_network=build_network,
            build_timeout_s=build_timeout_minutes * 60,
            deadline_s=deadline_minutes * 60 if deadline_minutes is not None else None,
            health=HealthSchedule(tries=health_tries, interval_s=health_interval),
            mem_limit=mem_limit,
            max_sequence_length=max_sequence_length,
            instances=instances,
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
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(exc.exit_code) from exc
    if not stopped:
        # Interrupted evaluations are re-queued on the next start; their threads may still wait
        # on a subprocess, and the interpreter would join them at exit.
        os._exit(0)
