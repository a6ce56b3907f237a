"""Frozen releases, served read-only at /releases/VERSION/ from DATA_DIR/releases/VERSION
(`harness competition release` writes them; leaderboard/release.py says what they hold).

Only what the release's manifest lists is served, and only while it is what was released: every
file is hashed and compared with the manifest when it is asked for. A file that differs (the
release was altered after it was written) is refused with 409 and the file's name, and logged;
the rest of the release is still served. Anything the manifest does not list, a version that is
no release, and a path outside the release folder are 404. The manifest itself is served as it
is: compare its sha256 with the one the organizers published.
"""

from __future__ import annotations

import logging
import mimetypes
from pathlib import Path

from fastapi import FastAPI, HTTPException
from fastapi.responses import FileResponse, RedirectResponse

from harness.errors import ConfigError
from harness.helm.packs import sha256_file
from harness.leaderboard.release import INDEX, MANIFEST, VERSION, read_manifest

log = logging.getLogger(__name__)
_TEXT_TYPES = {".md": "text/markdown", ".json": "application/json"}


def released_file(releases: Path, version: str, name: str) -> Path:
    """The file `name` of release `version`, checked against the manifest (HTTPException: 404
    when there is no such released file, 409 when it was altered)."""
    folder = releases / version
    if not VERSION.fullmatch(version):
        raise HTTPException(404, "no such release")
    try:
        files = read_manifest(folder)["files"]
    except ConfigError:
        raise HTTPException(404, f"no release {version}") from None
    if name == MANIFEST:
        return folder / MANIFEST
    path = folder / name
    # A manifest edited to list `../x` or a link out of the folder serves nothing outside it.
    inside = path.resolve().is_relative_to(folder.resolve())
    if name not in files or path.is_symlink() or not inside:
        raise HTTPException(404, f"release {version} has no file {name}")
    if not path.is_file():
        log.warning("release %s: %s is missing", version, name)
        raise HTTPException(409, f"release {version}: {name} is missing from the release")
    if sha256_file(path) != files[name]:
        log.warning("release %s: %s differs from its manifest", version, name)
        raise HTTPException(
            409,
            f"release {version}: {name} differs from the release's manifest (altered after it "
            "was released); `harness competition verify` names every such file",
        )
    return path


def register(app: FastAPI, releases: Path) -> None:
    @app.get("/releases/{version}", include_in_schema=False)
    def release_root(version: str) -> RedirectResponse:
        released_file(releases, version, MANIFEST)  # 404 before a redirect to nothing
        # The front page's links are relative to the release folder.
        return RedirectResponse(f"/releases/{version}/", status_code=308)

    @app.get("/releases/{version}/{name:path}", include_in_schema=False)
    def release_file(version: str, name: str) -> FileResponse:
        path = released_file(releases, version, name or INDEX)
        media_type = _TEXT_TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0]
        return FileResponse(
            path,
            media_type=media_type or "application/octet-stream",
            headers={"Cache-Control": "no-cache"},  # revalidate: a changed file is refused
        )
