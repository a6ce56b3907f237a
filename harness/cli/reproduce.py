"""`harness reproduce`: re-run an entry's training, rebuild and re-score it, compare."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from harness.cli._common import abort
from harness.competition import tracks_text
from harness.errors import ConfigError, HarnessError
from harness.infra.gpus import parse_gpus
from harness.reproduce.flow import reproduce_entry
from harness.reproduce.options import DEFAULT_TOLERANCE, ReproduceOptions, parse_duration

EPILOG = """**Examples**

    harness reproduce entries/team-a --track 4090 --results results/

    HF_TOKEN=hf_... harness reproduce entries/team-b.zip --track A100 --results results/ \\
        --time-limit 24h --tolerance 0.02 --stage closed

    harness reproduce submissions/tiny --track 4090 --results results/ --time-limit 10m \\
        --base-image harness-base:bookworm --mount /srv/models/tiny:/base
"""


def _mounts(values: list[str]) -> dict[Path, str]:
    mounts = {}
    for value in values:
        host, sep, inside = value.rpartition(":")
        if not sep or not Path(host).is_dir() or not inside.startswith("/"):
            raise ConfigError(f"--mount takes HOST_DIR:/container/path, got {value!r}")
        mounts[Path(host)] = inside
    return mounts


def main(
    entry: Path = typer.Argument(..., help="The entry: a folder or .zip file."),
    track: str = typer.Option(..., help=f"{tracks_text()}."),
    results: Path = typer.Option(..., help="The original run's results folder (--out of run)."),
    stage: str = typer.Option("open", help="The stage whose run and scores are reproduced."),
    time_limit: str = typer.Option("24h", help="Training time limit, e.g. 24h, 90m, 30s."),
    tolerance: float = typer.Option(
        DEFAULT_TOLERANCE, help="Largest absolute difference of a scenario's mean main metric."
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
    original scores; writes reproduction.md and .json to RESULTS/reproduce/ENTRY/."""
    console = Console()
    try:
        options = ReproduceOptions(
            track=track,
            results=results,
            stage=stage,
            time_limit_s=parse_duration(time_limit),
            tolerance=tolerance,
            base_image=base_image,
            mounts=_mounts(mount),
            build_timeout_s=build_timeout_minutes * 60,
            gpus=None if gpus is None else parse_gpus(gpus),
            instances=instances,
        )
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
    console.print(f"wrote {result.folder / 'reproduction.md'} and reproduction.json")
    raise typer.Exit(result.exit_code)
