"""`harness competition`: the organizers' steps on an evaluation service's data folder.

`release` freezes the final leaderboard of every track into DATA/releases/VERSION (what
`harness serve` serves at /releases/VERSION), with a manifest holding every file's sha256;
`verify` checks a release, or a copy of one, against its manifest.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.text import Text

from harness.cli._common import abort
from harness.competition import TRACK_NAMES
from harness.errors import ConfigError, HarnessError
from harness.leaderboard.model import Leaderboard
from harness.leaderboard.release import check_version, read_manifest, verify_release, write_release
from harness.service.core import ServiceConfig, published_leaderboard
from harness.service.db import DB_FILENAME, ServiceDB
from harness.store import Store

EPILOG = """**Examples**

    harness competition release v1 --data /srv/harness      # into /srv/harness/releases/v1

    harness competition verify /srv/harness/releases/v1

    harness competition verify ./v1-copy --manifest-sha256 3f5c...   # the published sha256
"""

app = typer.Typer(
    help="Run a competition on `harness serve`'s data: freeze a release, verify one.",
    epilog=EPILOG,
    no_args_is_help=True,
)
DATA = typer.Option(..., help="The service's data folder (as given to `harness serve`).")


@app.command("release", epilog=EPILOG)
def release(
    version: str = typer.Argument(..., help="The release's name: v1, 2026-final, ..."),
    data: Path = DATA,
    out: Path | None = typer.Option(
        None,
        help="Where releases go; the release is OUT/VERSION. Default: DATA/releases, which "
        "`harness serve` serves at /releases/VERSION.",
    ),
) -> None:
    """Freeze every track's final leaderboard (JSON, Markdown, HTML with entry pages and
    figures) and a manifest: images, instance packs, versions, verdicts, every file's sha256."""
    try:
        check_version(version)
        if not (data / DB_FILENAME).is_file():
            raise ConfigError(
                f"{data} holds no {DB_FILENAME}: give the folder `harness serve --data` uses"
            )
        config = ServiceConfig(data)
        boards: dict[str, Leaderboard] = {}
        ids: dict[str, dict[str, str]] = {}
        with ServiceDB(data) as db, Store(config.results, create=False) as store:
            for track in TRACK_NAMES:
                boards[track], ids[track] = published_leaderboard(db, store, track)
            folder = (out or config.releases) / version
            made = write_release(version, boards, store, folder, ids=ids)
    except HarnessError as exc:
        abort(exc)
    typer.echo(f"released {version} in {made.path}: {made.files} files and manifest.json")
    typer.echo(f"manifest sha256 (publish it): {made.manifest_sha256}")


@app.command("verify", epilog=EPILOG)
def verify(
    release_dir: Path = typer.Argument(..., help="A release folder, or a copy of one."),
    manifest_sha256: str | None = typer.Option(
        None, help="The manifest's published sha256: the manifest itself is checked too."
    ),
) -> None:
    """Check every file of a release against its manifest; exit 1 naming each changed, missing
    or extra file."""
    try:
        problems = verify_release(release_dir, manifest_sha256=manifest_sha256)
        files = len(read_manifest(release_dir)["files"]) if not problems else 0
    except HarnessError as exc:
        abort(exc)
    if problems:
        console = Console(stderr=True, highlight=False)
        for problem in problems:
            console.print(Text(str(problem)))  # a file name may hold rich's [brackets]
        console.print(f"{len(problems)} file(s) differ from the release's manifest")
        raise typer.Exit(1)
    typer.echo(f"ok: {files} files as released")
