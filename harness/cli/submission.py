"""`harness submission new`: render a complete, hash-pinned submission folder."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from harness.cli._common import abort
from harness.competition import tracks_text
from harness.errors import HarnessError
from harness.submission.render import DEFAULT_BASE_IMAGE, render_submission, use_weights

EPILOG = """**Examples**

    harness submission new --track 4090 --name my-entry

    harness submission new --track A100 --name my-entry --model-dir out/merged --force

    harness submission weights submissions/my-entry submissions/my-entry/out/merged
"""

app = typer.Typer(help="Create competition submissions.", epilog=EPILOG, no_args_is_help=True)


@app.command("new", epilog=EPILOG)
def new(
    track: str = typer.Option(..., help=f"Competition track: {tracks_text()}."),
    name: str = typer.Option("my-entry", help="Submission name (also its image tag)."),
    out: Path | None = typer.Option(None, help="Folder to write [default: submissions/NAME]."),
    model_dir: Path | None = typer.Option(
        None, help="A merged model to copy into model/ and serve by default."
    ),
    base_image: str = typer.Option(DEFAULT_BASE_IMAGE, help="Default BASE_IMAGE of both images."),
    force: bool = typer.Option(False, help="Overwrite the rendered files of an existing folder."),
) -> None:
    """Write a submission: Dockerfiles, hash-pinned requirements, config, server, training."""
    console = Console()
    target = out or Path("submissions") / name
    try:
        submission = render_submission(
            track, name, target, force=force, model_dir=model_dir, base_image=base_image
        )
    except HarnessError as exc:
        abort(exc)
    console.print(
        f"wrote [bold]{submission.path}[/] ({len(submission.files)} files) for track {track}; "
        f"next: see {submission.path / 'README.md'}"
    )


@app.command("weights", epilog=EPILOG)
def weights(
    submission_dir: Path = typer.Argument(..., help="A rendered submission folder."),
    model_dir: Path = typer.Argument(..., help="The merged model (merge.py's out/merged)."),
) -> None:
    """Serve a merged model: copy it into model/ and make it the Dockerfile's default weights."""
    console = Console()
    try:
        use_weights(submission_dir, model_dir)
    except HarnessError as exc:
        abort(exc)
    console.print(f"{submission_dir / 'model'} now holds the served model (WEIGHTS=local)")
