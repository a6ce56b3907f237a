"""`harness submission new`: render a complete, hash-pinned submission folder."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from harness.errors import HarnessError
from harness.submission import (
    DEFAULT_BASE_IMAGE,
    TRACKS,
    WEIGHTS_LOCK,
    lock_weights,
    render_submission,
    use_weights,
)

EPILOG = """**Examples**

    harness submission new --track 4090 --name my-entry

    harness submission new --track A100 --name my-entry --model-dir out/merged --force

    harness submission weights submissions/my-entry submissions/my-entry/out/merged \\
        --url-base https://huggingface.co/me/my-model/resolve/COMMIT_SHA

    harness submission weights submissions/my-entry submissions/my-entry/out/merged   # into model/
"""

app = typer.Typer(help="Create competition submissions.", epilog=EPILOG, no_args_is_help=True)


@app.command("new", epilog=EPILOG)
def new(
    track: str = typer.Option(..., help=f"Competition track: {', '.join(TRACKS)}."),
    name: str = typer.Option("my-entry", help="Submission name (also its image tag)."),
    out: Path | None = typer.Option(None, help="Folder to write [default: submissions/NAME]."),
    model_dir: Path | None = typer.Option(
        None, help="A merged model to copy into model/ and serve by default."
    ),
    base_image: str = typer.Option(DEFAULT_BASE_IMAGE, help="Default BASE_IMAGE of both images."),
    force: bool = typer.Option(
        False, help="Re-render an existing folder (config.yaml and WEIGHTS are kept)."
    ),
    reset_config: bool = typer.Option(
        False, help="With --force: overwrite config.yaml with the track's preset too."
    ),
) -> None:
    """Write a submission: Dockerfiles, hash-pinned requirements, config, server, training."""
    console = Console()
    target = out or Path("submissions") / name
    try:
        submission = render_submission(
            track,
            name,
            target,
            force=force,
            reset_config=reset_config,
            model_dir=model_dir,
            base_image=base_image,
        )
    except HarnessError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(exc.exit_code) from exc
    console.print(
        f"wrote [bold]{submission.path}[/] ({len(submission.files)} files) for track {track}; "
        f"next: see {submission.path / 'README.md'}"
    )


@app.command("weights", epilog=EPILOG)
def weights(
    submission_dir: Path = typer.Argument(..., help="A rendered submission folder."),
    model_dir: Path = typer.Argument(..., help="The merged model (merge.py's out/merged)."),
    url_base: str | None = typer.Option(
        None,
        help="Where MODEL_DIR's files are uploaded (same relative paths): lock them by size and "
        "sha256 in weights.lock.json and build with WEIGHTS=url. Without it: copy into model/.",
    ),
) -> None:
    """Serve a merged model: lock its uploaded files by URL (or copy it into model/) and make
    that the Dockerfile's default weights."""
    console = Console()
    try:
        if url_base is None:
            use_weights(submission_dir, model_dir)
        else:
            locked = lock_weights(submission_dir, model_dir, url_base)
    except HarnessError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(exc.exit_code) from exc
    if url_base is None:
        console.print(f"{submission_dir / 'model'} now holds the served model (WEIGHTS=local)")
        return
    size = sum(int(str(entry["size"])) for entry in locked)
    console.print(
        f"{submission_dir / WEIGHTS_LOCK} locks {len(locked)} files ({size / 1024**2:.1f} MiB) "
        f"under {url_base} (WEIGHTS=url): the build fails if one differs",
        highlight=False,
    )
