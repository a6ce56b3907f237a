"""`harness serve`: the evaluation service teams queue their entries on (API and web pages).

SIGTERM or SIGINT stops it cleanly: the server shuts down, the containers of the entries being
evaluated are removed and those entries are queued again at their place; it then exits with 0.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

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


class _Stopped(BaseException):
    """SIGTERM or SIGINT: stop serving, then stop the evaluations."""


@contextmanager
def _stop_on_signals() -> Iterator[None]:
    """Raise _Stopped on the first SIGTERM or SIGINT and ignore the next ones, so that nothing
    interrupts the clean-up.

    uvicorn handles both signals while it serves and, once it has shut down, restores these
    handlers and raises the signal again: without them, that second SIGTERM would kill the
    process before the queue is closed, leaving the running entries' containers up.
    """

    def stop(signum: int, frame: FrameType | None) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
        raise _Stopped(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


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
            _stop_on_signals(),
            hold_results_lock(config.results, command_line()),
            ServiceDB(data) as db,
            Store(config.results) as store,
        ):
            queue = Queue(db, store, options, make_executor() if jobs else None, config.zip_path)
            try:
                queue.start()
                console.print(f"serving http://{host}:{port} (data in {data}, {jobs} worker(s))")
                uvicorn.run(
                    create_app(Service(config, db, store, queue)),
                    host=host,
                    port=port,
                    log_level="warning",
                )
            except _Stopped as signalled:
                console.print(f"[yellow]stopping[/] ({signalled}): removing containers")
            finally:
                stopped = queue.close()
            console.print("stopped: containers removed; running entries queued again")
    except HarnessError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(exc.exit_code) from exc
    except _Stopped:  # before the queue was made: nothing runs yet
        console.print("stopped")
        raise typer.Exit(0) from None
    if not stopped:
        # Evaluations that did not end in time are queued again already; their threads may still
        # wait on a subprocess, and the interpreter would join them at exit.
        os._exit(0)
