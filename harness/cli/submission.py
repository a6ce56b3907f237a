"""`harness submission new`: render a complete, hash-pinned submission folder."""

from __future__ import annotations

import shutil
from pathlib import Path

import typer
import yaml
from rich.console import Console

from harness.cli._common import abort
from harness.competition import tracks_text
from harness.errors import ConfigError, HarnessError
from harness.submission.render import (
    DEFAULT_BASE_IMAGE,
    WEIGHTS_LOCK,
    lock_weights,
    render_submission,
    smoke_config,
    use_weights,
)

EPILOG = """**Examples**

    harness submission new --track 4090 --name my-entry

    harness submission new --track A100 --name my-entry --model-dir out/merged --force

    harness submission weights submissions/my-entry submissions/my-entry/out/merged \\
        --url-base https://huggingface.co/me/my-model/resolve/COMMIT_SHA

    harness submission weights submissions/my-entry submissions/my-entry/out/merged   # into model/

    harness tiny-model /tmp/tiny && harness submission smoke submissions/my-entry \\
        --base-model /tmp/tiny --dataset data/train.jsonl
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
        abort(exc)
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
        abort(exc)
    if url_base is None:
        console.print(f"{submission_dir / 'model'} now holds the served model (WEIGHTS=local)")
        return
    size = sum(int(str(entry["size"])) for entry in locked)
    console.print(
        f"{submission_dir / WEIGHTS_LOCK} locks {len(locked)} files ({size / 1024**2:.1f} MiB) "
        f"under {url_base} (WEIGHTS=url): the build fails if one differs",
        highlight=False,
    )


@app.command("smoke", epilog=EPILOG)
def smoke(
    submission_dir: Path = typer.Argument(..., help="A rendered submission folder."),
    base_model: Path = typer.Option(
        ..., help="A small local model, e.g. from `harness tiny-model DIR` (no download)."
    ),
    dataset: str = typer.Option(
        ..., help="Your training data (alpaca JSONL), relative to the submission folder."
    ),
    out: str = typer.Option("smoke.yaml", help="The config to write, in the submission folder."),
) -> None:
    """Write a dry-run config: config.yaml shrunk to a few QLoRA steps on the CPU with its own
    output folders (out/smoke/), so the real run's out/train is never touched."""
    console = Console()
    config = submission_dir / "config.yaml"
    if not config.is_file():
        abort(ConfigError(f"{config} does not exist: not a rendered submission"))
    target = submission_dir / out
    shutil.copyfile(config, target)
    smoke_config(target, base_model=str(base_model.resolve()), dataset=dataset)
    settings = yaml.safe_load(target.read_text())
    settings["output_dir"] = "out/smoke/train"
    settings["merge"]["output_dir"] = "out/smoke/merged"
    target.write_text(yaml.safe_dump(settings, sort_keys=False))
    console.print(
        f"wrote {target}; in {submission_dir}: python train.py --config {out} && "
        f"python merge.py --config {out}",
        highlight=False,
    )
