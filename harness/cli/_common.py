"""What the commands share: the options of an evaluation (declared once, so `harness run`,
`serve`, `plan` and `reproduce` cannot drift apart), the RunOptions they build, the executor they
name, one way to end with an error (on stderr, with the error's exit code), and how progress and
the leaderboard print (as plain lines when stdout is no terminal).

Exit codes, for every command (also in the README):
    0    ok
    1    an entry failed, was flagged, or did not reproduce
    2    usage or configuration error
    3    infrastructure unavailable (Docker engine, HELM environment, Ray cluster, a full disk)
    130  interrupted (SIGINT or SIGTERM); containers removed, finished results kept
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.text import Text

from harness.competition import stages_text, tracks_text
from harness.errors import ConfigError, HarnessError
from harness.infra.gpus import parse_gpus
from harness.leaderboard import Leaderboard, to_plain_text, to_rich
from harness.run.adaptive import Adaptive
from harness.run.executor import LocalExecutor, TaskExecutor
from harness.run.health import HealthSchedule
from harness.run.options import RunOptions
from harness.run.tiers import Tiers
from harness.service.client import Refused

INTERRUPTED = 130

Track = Annotated[str, typer.Option(help=f"{tracks_text()}.")]
Stage = Annotated[str, typer.Option(help=f"{stages_text()}.")]
Gpus = Annotated[
    str | None,
    typer.Option(help="GPU indexes, one per entry at a time: 0,1,2,3 or none [default: all]."),
]
ExecutorName = Annotated[
    str, typer.Option("--executor", help="local (this machine) or ray (a Ray cluster).")
]
RayAddress = Annotated[str, typer.Option(help="With --executor ray: auto or ray://HOST:PORT.")]
SharedStorage = Annotated[
    bool,
    typer.Option(
        help="With --executor ray: entries and results are on storage every node sees at the "
        "same paths (NFS), so nothing travels with the tasks."
    ),
]
MaxEvalInstances = Annotated[int, typer.Option(help="Instances per run spec, at most.")]
Budget = Annotated[int | None, typer.Option(help="Instances per stage, spread over scenarios.")]
RunSpecs = Annotated[
    str | None,
    typer.Option(help="open | closed | offline, or a HELM conf file [default: the stage's]."),
]
Instances = Annotated[
    Path | None,
    typer.Option(
        help="An instance pack (`harness instances build`): score exactly its instances, "
        "offline; --budget takes the first of them, --max-eval-instances is not applied."
    ),
]
BaseImage = Annotated[str | None, typer.Option(help="BASE_IMAGE build argument for entries.")]
BuildNetwork = Annotated[
    str | None,
    typer.Option(
        help="Network of entry builds: `host` reaches servers on this machine (a mirror)."
    ),
]
BuildTimeoutMinutes = Annotated[float, typer.Option(help="Limit of one docker build.")]
DeadlineMinutes = Annotated[
    float | None, typer.Option(help="Evaluation time limit [default: the stage's].")
]
HealthTries = Annotated[int, typer.Option(help="Health checks before an entry is unhealthy.")]
HealthInterval = Annotated[float, typer.Option(help="Seconds between health checks.")]
MemLimit = Annotated[str | None, typer.Option(help="Container memory limit, e.g. 64g.")]
MaxSequenceLength = Annotated[int, typer.Option(help="Context HELM fits prompts into.")]
TierBudgets = Annotated[
    str | None,
    typer.Option(
        "--tiers",
        help="Coarse-to-fine budgets, e.g. 100,600: all entries on the first, then fewer; or "
        "adaptive: rounds up to --budget, only for entries whose place in the top k is uncertain.",
    ),
]
Keep = Annotated[float | None, typer.Option(help="With --tiers: the top fraction kept [0.3].")]
KeepTop = Annotated[int | None, typer.Option(help="With --tiers: the top N kept instead.")]
TargetTop = Annotated[
    int | None, typer.Option(help="With --tiers adaptive: how many top entries to identify [10].")
]
Confidence = Annotated[
    float | None,
    typer.Option(help="With --tiers adaptive: the chance asked of each top-k verdict [0.95]."),
]


# `harness submit` and `harness status`: the service and the team's token.
Server = Annotated[str, typer.Option(envvar="HARNESS_SERVER", help="The service's URL.")]
Token = Annotated[
    str, typer.Option(envvar="HARNESS_TOKEN", help="Your team's token.", show_default=False)
]


def describe(sub: dict[str, Any]) -> str:
    """A submission in one line: status, step or queue place, reason."""
    parts = [f"{sub['id']}: {sub['status']}"]
    if sub.get("step"):
        parts.append(f"step {sub['step']}")
    if sub.get("position"):
        eta = sub.get("eta_seconds")
        parts.append(f"position {sub['position']}" + (f", ~{eta / 60:.0f} min" if eta else ""))
    if sub.get("score") is not None:
        parts.append(f"score {sub['score']:.3f}")
    if sub.get("reason"):
        parts.append(sub["reason"])
    return " · ".join(parts)


def refusal(exc: HarnessError) -> list[str]:
    """The lines a service's refusal carries: its findings and the next free slot."""
    if not isinstance(exc, Refused):
        return []
    lines = []
    for finding in exc.answer.get("findings", []):
        where = finding["path"] + (f":{finding['line']}" if finding.get("line") else "")
        lines.append(f"{finding['rule']} {where}: {finding['message']}")
    if exc.answer.get("next_slot_at"):
        lines.append(f"next free slot: {exc.answer['next_slot_at']}")
    return lines


def run_options(
    *,
    track: str,
    stage: str,
    out: Path,
    jobs: int,
    gpus: str | None,
    max_eval_instances: int,
    budget: int | None,
    run_specs: str | None,
    instances: Path | None,
    base_image: str | None,
    build_network: str | None,
    build_timeout_minutes: float,
    deadline_minutes: float | None,
    health_tries: int,
    health_interval: float,
    mem_limit: str | None,
    max_sequence_length: int,
    **extra: object,
) -> RunOptions:
    """The RunOptions the shared options describe; `extra` are RunOptions fields one command has."""
    return RunOptions(
        track=track,
        stage=stage,
        out=out,
        jobs=jobs,
        gpus=None if gpus is None else parse_gpus(gpus),
        max_eval_instances=max_eval_instances,
        budget=budget,
        run_specs=run_specs,
        instances=instances,
        base_image=base_image,
        build_network=build_network,
        build_timeout_s=build_timeout_minutes * 60,
        deadline_s=None if deadline_minutes is None else deadline_minutes * 60,
        health=HealthSchedule(tries=health_tries, interval_s=health_interval),
        mem_limit=mem_limit,
        max_sequence_length=max_sequence_length,
        **extra,  # type: ignore[arg-type]
    )


def schedule_option(
    tiers: str | None,
    *,
    keep: float | None,
    keep_top: int | None,
    budget: int | None,
    target_top: int | None = None,
    confidence: float | None = None,
) -> Tiers | Adaptive | None:
    """The sparse schedule `--tiers` asks for: fixed tiers (`--tiers 100,600` with `--keep` or
    `--keep-top`), adaptive rounds (`--tiers adaptive --budget N` with `--target-top` and
    `--confidence`), or none. An option of the other kind, or of none, is refused."""
    if tiers != "adaptive" and (target_top is not None or confidence is not None):
        raise ConfigError("--target-top and --confidence go with --tiers adaptive")
    if tiers in (None, "adaptive") and (keep is not None or keep_top is not None):
        raise ConfigError("--keep and --keep-top go with --tiers BUDGETS")
    if tiers is None:
        return None
    if tiers == "adaptive":
        if budget is None:
            raise ConfigError("--tiers adaptive needs --budget: the full budget per entry")
        return Adaptive(
            budget,
            top=10 if target_top is None else target_top,
            confidence=0.95 if confidence is None else confidence,
        )
    return Tiers.parse(tiers, keep=keep, keep_top=keep_top)


def parse_mounts(values: list[str]) -> dict[Path, str]:
    """`--mount HOST_DIR:/container/path` values (a reproduction's training reads them)."""
    mounts = {}
    for value in values:
        host, sep, inside = value.rpartition(":")
        if not sep or not Path(host).is_dir() or not inside.startswith("/"):
            raise ConfigError(f"--mount takes HOST_DIR:/container/path, got {value!r}")
        mounts[Path(host)] = inside
    return mounts


def executor_factory(
    name: str,
    ray_address: str,
    jobs: int,
    *,
    shared_storage: bool = False,
    node_retries: int | None = None,
) -> Callable[[], TaskExecutor]:
    """What `--executor` names; `node_retries`: how often Ray re-runs an entry whose node died
    (None: the Ray executor's default)."""
    if name == "local":
        if shared_storage:
            raise ConfigError("--shared-storage goes with --executor ray")
        return lambda: LocalExecutor(jobs)
    if name == "ray":
        from harness.run.ray_executor import (  # Ray is imported only when asked for
            MAX_RETRIES,
            RayExecutor,
        )

        retries = MAX_RETRIES if node_retries is None else node_retries
        return lambda: RayExecutor(ray_address, shared_storage=shared_storage, retries=retries)
    raise ConfigError(f"--executor takes local or ray, got {name!r}")


def print_leaderboard(console: Console, board: Leaderboard, paths: list[Path]) -> None:
    """The leaderboard as a table on a terminal; elsewhere (CI logs, `| tee`, a file), where rich
    would fold every cell into 80 columns, as Markdown: one line per entry."""
    if console.is_terminal:
        console.print(to_rich(board))
    else:
        console.print(to_plain_text(board), markup=False, highlight=False, soft_wrap=True)
    console.print(
        "wrote " + ", ".join(str(path) for path in paths), highlight=False, soft_wrap=True
    )


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


def abort(exc: HarnessError, *details: str, exit_code: int | None = None) -> NoReturn:
    """End the command with `exc`'s message (and any detail lines) on stderr and its exit code
    (or `exit_code`)."""
    console = Console(stderr=True, highlight=False)
    # Text, not markup: a message quoting a log or a path may hold rich's [brackets].
    console.print(Text.assemble(("error:", "red"), f" {exc}"))
    for line in details:
        console.print(Text(f"  {line}"))
    raise typer.Exit(exc.exit_code if exit_code is None else exit_code) from exc
