"""A frozen release of the final leaderboard: what `harness competition release` writes, what
`harness competition verify` checks and what the service serves at /releases/VERSION.

    RELEASE/index.html                      the front page: tracks, versions, links, how to verify
    RELEASE/TRACK/leaderboard.md, .json, .html, TRACK/leaderboard/<slug>.html
                                            each track's board as write_leaderboard writes it
    RELEASE/manifest.json                   what was released, and the sha256 of every other file

    release = write_release("v1", {"4090": board}, store, out / "v1", ids={"4090": {"team": "sub"}})
    problems = verify_release(release.path)     # [] while every file is as it was released

The manifest names the versions of the toolkit and of HELM and, per track and entry, its name on
the board and its entry in the results store (`ids`: the service shows teams, the store holds
submission ids), rank, final score, disqualification and fact sheet; per stage its status,
score, the Docker image ID it was served from and the instance pack's sha256; its reproduction's
verdict where `harness reproduce` ran. A release holds no logs (they are the teams' own, and
their links would point outside it). It is written into a fresh folder beside its destination
and renamed into place, so it is complete or absent, and a version is never written twice.

The manifest is the reference for every other file; `write_release` returns the manifest's own
sha256 for the organizers to publish, so a reader can check the manifest too.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import re
import secrets
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import jinja2

from harness.errors import ConfigError
from harness.helm.packs import sha256_file
from harness.helm.runner import helm_version
from harness.leaderboard import OUTPUTS, write_leaderboard
from harness.leaderboard.build import _reproductions
from harness.leaderboard.model import Leaderboard, Row
from harness.store import Store

MANIFEST = "manifest.json"
FORMAT = 1
INDEX = "index.html"
# A version is a folder name and a URL segment: nothing to escape, no way out of the folder.
VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("harness.leaderboard", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)


@dataclass(frozen=True)
class Release:
    path: Path
    manifest_sha256: str  # publish it: the manifest holds every other file's sha256
    files: int  # beside the manifest


@dataclass(frozen=True)
class Problem:
    """A file of a release that is not as it was released."""

    path: str  # relative to the release folder
    change: str  # changed, missing, extra (not written by the release), unreadable (manifest)

    def __str__(self) -> str:
        return f"{self.change}: {self.path}"


def check_version(version: str) -> str:
    if not VERSION.fullmatch(version):
        raise ConfigError(
            f"release version {version!r}: use letters, digits, '.', '_' and '-' (at most 64, "
            "starting with a letter or digit), e.g. v1 or 2026-final"
        )
    return version


def _without_logs(board: Leaderboard) -> Leaderboard:
    rows = [
        replace(
            row,
            stages={
                stage: replace(
                    stage_row, logs={}, steps=[replace(s, log=None) for s in stage_row.steps]
                )
                for stage, stage_row in row.stages.items()
            },
        )
        for row in board.rows
    ]
    return replace(board, rows=rows)


def _entry(
    row: Row, entry: str, store: Store, reproduction: Mapping[str, Any] | None
) -> dict[str, Any]:
    return {
        "name": row.entry,
        "entry": entry,
        "rank": row.rank,
        "final": row.final,
        "disqualified": row.disqualified,
        "facts": row.facts,
        "stages": {
            stage: {
                "status": stage_row.status,
                "score": stage_row.score,
                "image_id": store.image_id(entry, stage),
                "instances_sha256": store.instances_sha256(entry, stage),
            }
            for stage, stage_row in row.stages.items()
        },
        "reproduction": (
            {key: reproduction.get(key) for key in ("verdict", "reason", "stage")}
            if reproduction
            else None
        ),
    }


def _files(folder: Path) -> dict[str, str]:
    """Every file under `folder` but the manifest, by its relative path, with its sha256."""
    return {
        path.relative_to(folder).as_posix(): sha256_file(path)
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.relative_to(folder).as_posix() != MANIFEST
    }


def write_release(
    version: str,
    boards: Mapping[str, Leaderboard],
    store: Store,
    out: Path,
    *,
    ids: Mapping[str, Mapping[str, str]] | None = None,
    helm_bin: Path | None = None,
) -> Release:
    """Write the release `version` of `boards` (track -> its final board) into the new folder
    `out`. `ids[track][name]` is the results store's entry of the row `name` (default: the
    name itself); `helm_bin` the HELM environment whose version is recorded."""
    check_version(version)
    if out.exists():
        raise ConfigError(f"{out} exists: a release is never written twice; give a new version")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.partial-{secrets.token_hex(4)}"
    reproductions = _reproductions(store.results_dir)
    try:
        tracks: dict[str, Any] = {}
        for track, board in boards.items():
            public = _without_logs(board)
            write_leaderboard(public, staging / track)
            names = (ids or {}).get(track, {})
            entries = [(row, names.get(row.entry, row.entry)) for row in public.rows]
            tracks[track] = {
                "stages": public.stages,
                "entries": [
                    _entry(row, entry, store, reproductions.get(entry)) for row, entry in entries
                ],
            }
        manifest: dict[str, Any] = {
            "format": FORMAT,
            "version": version,
            "created_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "toolkit": {"harness": importlib.metadata.version("harness")},
            "helm": {"crfm-helm": helm_version(helm_bin)},
            "tracks": tracks,
        }
        (staging / INDEX).write_text(_index(manifest), encoding="utf-8")
        manifest["files"] = _files(staging)
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return Release(out, sha256_file(out / MANIFEST), len(manifest["files"]))


def _index(manifest: Mapping[str, Any]) -> str:
    return _TEMPLATES.get_template("release.html.j2").render(
        version=manifest["version"],
        created_at=manifest["created_at"],
        harness=manifest["toolkit"]["harness"],
        helm=manifest["helm"]["crfm-helm"] or "unknown (no HELM environment found)",
        tracks=[
            {
                "name": track,
                "stages": ", ".join(data["stages"]) or "none",
                "ranked": sum(1 for e in data["entries"] if e["rank"] is not None),
                "disqualified": sum(1 for e in data["entries"] if e["disqualified"] is not None),
                "outputs": [f"{track}/{name}" for name in OUTPUTS],
            }
            for track, data in manifest["tracks"].items()
        ],
        manifest=MANIFEST,
    )


def read_manifest(folder: Path) -> dict[str, Any]:
    """The release's manifest; ConfigError when `folder` holds none that can be read."""
    try:
        manifest: Any = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{folder} is not a release: no readable {MANIFEST} ({exc})") from exc
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in files.items()
    ):
        raise ConfigError(f"{folder / MANIFEST} is not a release manifest (no `files`)")
    return dict(manifest)


def verify_release(folder: Path, *, manifest_sha256: str | None = None) -> list[Problem]:
    """Every file of the release that differs from its manifest, by name; [] when none does.
    `manifest_sha256` (the published one) checks the manifest itself first."""
    if not folder.is_dir():
        raise ConfigError(f"no release folder {folder}")
    if not (folder / MANIFEST).is_file():
        return [Problem(MANIFEST, "missing")]
    if manifest_sha256 is not None and sha256_file(folder / MANIFEST) != manifest_sha256.lower():
        return [Problem(MANIFEST, "changed")]
    try:
        expected: dict[str, str] = read_manifest(folder)["files"]
    except ConfigError:
        return [Problem(MANIFEST, "unreadable")]
    found = {
        path.relative_to(folder).as_posix(): path
        for path in folder.rglob("*")
        if path.is_file() or path.is_symlink()
    }
    found.pop(MANIFEST)
    problems = [
        Problem(name, "missing" if name not in found else "changed")
        for name, digest in sorted(expected.items())
        if name not in found or found[name].is_symlink() or sha256_file(found[name]) != digest
    ]
    return problems + [Problem(name, "extra") for name in sorted(found.keys() - expected.keys())]
