"""`harness serve`: the evaluation service teams queue their entries on (API and web pages);
`harness serve backup` and `harness serve restore`: its databases copied and brought back.

SIGTERM or SIGINT stops it cleanly: the server shuts down, the containers of the entries being
evaluated (and of the finalists being reproduced) are removed and they are queued again at their
place; it then exits with 0. The reproductions `harness competition reveal --reproduce-top`
queues are run by harness/reproduce's QueuedReproducer, handed to the service's queue here (the
service layer may not import harness/reproduce).
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer
import uvicorn
from rich.console import Console

from harness.cli._common import (
    BaseImage,
    Budget,
    BuildNetwork,
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
    SharedStorage,
    Stage,
    abort,
    executor_factory,
    run_options,
)
from harness.competition import TRACK_NAMES
from harness.errors import ConfigError, HarnessError
from harness.infra.lock import command_line, hold_results_lock
from harness.reproduce.queued import QueuedReproducer
from harness.run.options import RunOptions
from harness.service.api import create_app
from harness.service.backup import DEFAULT_KEEP, Scheduled, restore, take_backup
from harness.service.core import DEFAULT_QUOTA, Service, ServiceConfig
from harness.service.db import ServiceDB
from harness.service.notify import Notifier, SmtpSettings
from harness.service.phases import Competition, PhaseClock, load_competition, zone
from harness.service.queue import LEASE_S, Queue, worker_name
from harness.service.reproductions import Reproductions
from harness.service.uploads import DEFAULT_MAX_UPLOAD_BYTES
from harness.store import Store

EPILOG = """**Examples**

    harness teams add team-a --data /srv/harness     # prints the team's token once

    harness serve --data /srv/harness --run-specs open --max-eval-instances 50 --jobs 2

    harness serve --data /srv/harness --run-specs offline --base-image harness-base:bookworm \\
        --quota 5 --port 8080 --backup-every 6h --backup-keep 28

    harness serve --data /srv/harness --competition competition.yaml   # phases, finals, facts

    harness serve backup --data /srv/harness               # into /srv/harness/backups/STAMP/

    harness serve restore /srv/harness/backups/20261207T120000.000000Z --data /srv/harness
"""

app = typer.Typer(
    help="Serve the evaluation service (API, pages, queue); `backup` and `restore` its databases.",
    epilog=EPILOG,
)
DATA_HELP = "Data folder: database, uploads, results store, logs."
BACKUP_DIR_HELP = "Where backups go (default: DATA/backups)."
BACKUP_KEEP_HELP = "Backups kept; older ones are removed."
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smh]?)")


def parse_duration(text: str) -> float:
    """`90`, `90s`, `30m`, `6h` -> seconds."""
    match = _DURATION.fullmatch(text.strip())
    if match is None or float(match.group(1)) <= 0:
        raise ConfigError(f"--backup-every takes a duration such as 30m or 6h; got {text!r}")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]


def phase_run_options(
    competition: Competition | None, options: RunOptions
) -> dict[str, RunOptions]:
    """Each phase's evaluation: the command line's, on the phase's stage, scoring the phase's
    run specs or pack when it names them."""
    if competition is None:
        return {}
    chosen = {}
    for phase in competition.phases:
        own = replace(options, stage=phase.harness_stage)
        if phase.run_specs or phase.instances:
            own = replace(own, run_specs=phase.run_specs, instances=phase.instances)
        chosen[phase.name] = own
    return chosen


def _reproducer(config: ServiceConfig, final: RunOptions) -> QueuedReproducer:
    """The top finalists' reproductions (`harness competition reveal --reproduce-top`), against
    the final phase's stage and pack, built and served as the service's entries are."""
    return QueuedReproducer(
        config.results,
        final.stage,
        config.zip_path,
        instances=final.instances,
        base_image=final.base_image,
        build_timeout_s=final.build_timeout_s,
        health=final.health,
        mem_limit=final.mem_limit,
    )


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


def _read_token(path: Path) -> str:
    """A secret from a file (never from the command line, where `ps` shows it)."""
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"cannot read --metrics-token-file {path}: {exc.strerror}") from exc
    if len(token) < 16:
        raise ConfigError(f"the metrics token in {path} is shorter than 16 characters")
    return token


@app.callback(invoke_without_command=True, epilog=EPILOG)
def main(
    ctx: typer.Context,
    data: Annotated[Path | None, typer.Option(help=DATA_HELP)] = None,
    host: str = typer.Option("127.0.0.1", help="Address to listen on (keep it local behind TLS)."),
    port: int = typer.Option(8000, help="Port to listen on."),
    stage: Stage = "open",
    jobs: int = typer.Option(1, help="Entries evaluated at once (0: queue only, run none)."),
    gpus: Gpus = None,
    executor: ExecutorName = "local",
    ray_address: RayAddress = "auto",
    shared_storage: SharedStorage = False,
    quota: int = typer.Option(DEFAULT_QUOTA, help="Submissions per team, track and day."),
    quota_timezone: str = typer.Option(
        "UTC",
        help="The time zone whose calendar days the quota counts (an IANA name: "
        "America/Los_Angeles): a team's slots free at midnight there.",
    ),
    max_upload_mb: float = typer.Option(
        DEFAULT_MAX_UPLOAD_BYTES / 1024**2, help="Largest upload accepted, in MiB."
    ),
    max_eval_instances: MaxEvalInstances = 100,
    budget: Budget = None,
    run_specs: RunSpecs = None,
    instances: Instances = None,
    base_image: BaseImage = None,
    build_network: BuildNetwork = None,
    build_timeout_minutes: BuildTimeoutMinutes = 120,
    deadline_minutes: DeadlineMinutes = None,
    health_tries: HealthTries = 10,
    health_interval: HealthInterval = 120,
    mem_limit: MemLimit = None,
    max_sequence_length: MaxSequenceLength = 4096,
    lease_seconds: float = typer.Option(
        LEASE_S,
        help="A running entry whose evaluation shows no sign of life (frozen) this long is "
        "stopped and queued again.",
    ),
    smtp_host: str | None = typer.Option(
        None, help="An SMTP server for notification emails to teams' addresses; default: none."
    ),
    smtp_port: int = typer.Option(25, help="The SMTP server's port."),
    smtp_from: str = typer.Option("harness@localhost", help="The notification emails' sender."),
    metrics_token_file: Path | None = typer.Option(
        None,
        help="A file holding the token a scraper sends (Authorization: Bearer) to read /metrics "
        "from elsewhere than this machine's loopback interface.",
    ),
    backup_every: str | None = typer.Option(
        None, help="Back up the databases this often (90s, 30m, 6h); default: never."
    ),
    backup_dir: Path | None = typer.Option(None, help=BACKUP_DIR_HELP),
    backup_keep: int = typer.Option(DEFAULT_KEEP, help=BACKUP_KEEP_HELP),
    competition: Path | None = typer.Option(
        None,
        help="A competition file (YAML): phases with dates, what each scores, visibility, "
        "quotas and their time zone, the final's selection, a fact sheet. Its quotas replace "
        "--quota and --quota-timezone; a phase without run_specs or instances scores those of "
        "the command line.",
    ),
) -> None:
    """Serve the JSON API (/api/v1) and web pages; evaluate queued entries in order."""
    if ctx.invoked_subcommand is not None:
        return
    console = Console(stderr=True)
    try:
        if data is None:
            raise ConfigError("harness serve needs --data (see --help)")
        if jobs < 0 or quota < 0:
            raise ConfigError("--jobs and --quota cannot be negative")
        try:
            zone(quota_timezone)
        except ValueError as exc:
            raise ConfigError(f"--quota-timezone: {exc}") from None
        if lease_seconds <= 0:
            raise ConfigError("--lease-seconds must be positive")
        every_s = parse_duration(backup_every) if backup_every is not None else None
        metrics_token = _read_token(metrics_token_file) if metrics_token_file else None
        config = ServiceConfig(
            data_dir=data,
            stage=stage,
            quota=quota,
            quota_timezone=quota_timezone,
            max_upload_bytes=int(max_upload_mb * 1024**2),
            competition=load_competition(competition) if competition else None,
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
            build_network=build_network,
            build_timeout_minutes=build_timeout_minutes,
            deadline_minutes=deadline_minutes,
            health_tries=health_tries,
            health_interval=health_interval,
            mem_limit=mem_limit,
            max_sequence_length=max_sequence_length,
        )
        phase_options = phase_run_options(config.competition, options)
        for checked in [options, *phase_options.values()]:
            checked.scored_run_specs()  # a bad conf or pack is a usage error before anything runs
        # Ray re-running an entry whose node died would race its lease: the lease re-queues it, and
        # tells its team.
        make_executor = executor_factory(
            executor, ray_address, max(jobs, 1), shared_storage=shared_storage, node_retries=0
        )
        with (
            _stop_on_signals(),
            hold_results_lock(config.results, command_line()),
            ServiceDB(data) as db,
            Store(config.results) as store,
        ):
            smtp = SmtpSettings(smtp_host, smtp_port, smtp_from) if smtp_host else None
            notifier = Notifier(db, smtp=smtp)
            if told := notifier.untold_reproductions():
                console.print(f"told {told} team(s) how the reproduction of their entry ended")
            clock = None
            if config.competition is not None:
                # The commands (`harness competition advance`) read it from the database.
                db.set_state("competition", config.competition.model_dump_json())
                clock = PhaseClock(db, store, config.competition, notifier)
            evaluator = make_executor() if jobs else None
            reproductions = (
                Reproductions(
                    db,
                    _reproducer(config, phase_options.get(config.phases.phases[-1].name, options)),
                    evaluator,
                    worker_name(),
                    on_end=notifier.reproduction,
                    on_engine_lost=lambda: queue.engine_lost(),
                )
                if evaluator is not None
                else None
            )
            queue = Queue(
                db,
                store,
                options,
                evaluator,
                config.zip_path,
                lease_s=lease_seconds,
                notifier=notifier,
                phase_options=phase_options,
                on_tick=clock.tick if clock else None,
                reproductions=reproductions,
            )
            backups = (
                Scheduled(data, backup_dir or data / "backups", every_s=every_s, keep=backup_keep)
                if every_s is not None
                else None
            )
            try:
                queue.start()
                console.print(f"serving http://{host}:{port} (data in {data}, {jobs} worker(s))")
                uvicorn.run(
                    create_app(Service(config, db, store, queue), metrics_token=metrics_token),
                    host=host,
                    port=port,
                    log_level="warning",
                )
            except _Stopped as signalled:
                console.print(f"[yellow]stopping[/] ({signalled}): removing containers")
            finally:
                if backups is not None:
                    backups.stop()
                stopped = queue.close()
                notifier.close()
            console.print("stopped: containers removed; running entries queued again")
    except HarnessError as exc:
        abort(exc)
    except _Stopped:  # before the queue was made: nothing runs yet
        console.print("stopped")
        raise typer.Exit(0) from None
    if not stopped:
        # Evaluations that did not end in time are queued again already; their threads may still
        # wait on a subprocess, and the interpreter would join them at exit.
        os._exit(0)


@app.command("backup", epilog=EPILOG)
def backup_command(
    data: Annotated[Path, typer.Option(help=DATA_HELP)],
    backup_dir: Path | None = typer.Option(None, help=BACKUP_DIR_HELP),
    keep: int = typer.Option(DEFAULT_KEEP, help=BACKUP_KEEP_HELP),
) -> None:
    """Copy the service's databases now (SQLite's online backup: the service may be running)."""
    try:
        path = take_backup(data, backup_dir or data / "backups", keep=keep)
    except HarnessError as exc:
        abort(exc)
    print(path)


@app.command("restore", epilog=EPILOG)
def restore_command(
    backup: Annotated[Path, typer.Argument(help="A backup folder (`harness serve backup`).")],
    data: Annotated[Path, typer.Option(help=DATA_HELP)],
) -> None:
    """Bring a backup back, after checking it; the service must be stopped. What the data folder
    held is backed up first, into DATA/before-restore/."""
    try:
        saved = restore(backup, data)
    except HarnessError as exc:
        abort(exc)
    Console(stderr=True).print(f"restored {backup} into {data}; what it held is in {saved}")
