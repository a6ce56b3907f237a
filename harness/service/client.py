"""The competitor's side of the service: zip an entry, upload it, follow it (`harness submit`).

    with ServiceClient(url, token) as client:
        sub = client.submit(Path("my-entry"), track="4090")   # a folder's build context is zipped
        sub = client.status(sub["id"])

A folder is sent as `docker build` would read it (`build_context`): its `.dockerignore` honoured,
training outputs (out/) never, the weights in model/ only when the Dockerfile serves them
(`ARG WEIGHTS=local`). The zip's size is checked against the server's limit before a byte is sent.

Errors come back as HarnessError: a refused token or a bad request is a ConfigError (exit 2), an
unreachable server an InfrastructureError (exit 3), a flagged entry or a used quota a
`Refused` (exit 1) that carries the server's answer (findings, next free slot).
"""

from __future__ import annotations

import os
import re
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

import httpx

from harness.checks import DockerIgnore
from harness.errors import ConfigError, HarnessError, InfrastructureError

_WEIGHTS = re.compile(r"^ARG WEIGHTS=(\S+)", re.MULTILINE)


class Refused(HarnessError):
    """The server refused the entry (flagged by the checks, or the quota is used)."""

    def __init__(self, message: str, answer: dict[str, Any]) -> None:
        super().__init__(message)
        self.answer = answer


def build_context(folder: Path) -> list[str]:
    """The files `docker build` reads from `folder` (paths relative to it, sorted): what its
    `.dockerignore` keeps, less out/ (training outputs, never served) and, unless the Dockerfile's
    default WEIGHTS is `local`, less model/ (the weights come from a URL or the hub then).
    Symlinks are left out."""
    ignore_file = folder / ".dockerignore"
    ignore = DockerIgnore(ignore_file.read_text() if ignore_file.is_file() else "")
    dockerfile = folder / "Dockerfile"
    weights = _WEIGHTS.search(dockerfile.read_text()) if dockerfile.is_file() else None
    left_out = ("out",) if weights is None or weights[1] == "local" else ("out", "model")
    files = []
    for root, dirs, names in os.walk(folder):
        relative = Path(root).relative_to(folder)
        if relative == Path("."):
            dirs[:] = [d for d in dirs if d not in left_out]
        for name in names:
            path = Path(root) / name
            rel = (relative / name).as_posix()
            if not path.is_symlink() and not ignore.excludes(rel):
                files.append(rel)
    return sorted(files)


def zip_entry(folder: Path, into: Path) -> Path:
    """Zip an entry folder's build context (`build_context`), paths relative to the folder."""
    with zipfile.ZipFile(into, "w", zipfile.ZIP_DEFLATED) as archive:
        for rel in build_context(folder):
            archive.write(folder / rel, rel)
    return into


class ServiceClient:
    def __init__(self, server: str, token: str, *, timeout_s: float = 300.0) -> None:
        if not token:
            raise ConfigError("a team token is required (--token or HARNESS_TOKEN)")
        self._http = httpx.Client(
            base_url=server.rstrip("/") + "/api/v1",
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout_s,
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._http.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise InfrastructureError(f"the server did not answer: {exc}") from exc
        if response.status_code < 400:
            return response.json()
        detail = (
            response.json().get("detail")
            if response.headers.get("content-type", "").startswith("application/json")
            else response.text[:500]
        )
        message = detail.get("message") if isinstance(detail, dict) else str(detail)
        if response.status_code in (422, 429) and isinstance(detail, dict):
            raise Refused(f"{message}", detail)
        if response.status_code == 401:
            raise ConfigError("the server refused the token (wrong or revoked)")
        raise ConfigError(f"HTTP {response.status_code}: {message}")

    def limits(self) -> dict[str, Any]:
        """The server's limits (`max_upload_bytes`)."""
        answer: dict[str, Any] = self._call("GET", "/limits")
        return answer

    def submit(
        self,
        entry: Path,
        *,
        track: str,
        publish: bool = False,
        on_size: Callable[[int, int], None] = lambda size, limit: None,
    ) -> dict[str, Any]:
        """Upload an entry folder (its build context zipped here) or a zip file; returns the
        queued submission. `on_size(size, limit)` hears the upload's size before it is sent; an
        upload over the server's limit is refused here, before a byte is sent."""
        if not entry.exists():
            raise ConfigError(f"{entry} does not exist")
        limit = int(self.limits()["max_upload_bytes"])
        with tempfile.TemporaryDirectory(prefix="harness-submit-") as tmp:
            archive = (
                entry if entry.is_file() else zip_entry(entry, Path(tmp) / f"{entry.name}.zip")
            )
            size = archive.stat().st_size
            on_size(size, limit)
            if size > limit:
                raise ConfigError(
                    f"{entry} zips to {size / 1024**2:.1f} MiB, over the server's limit of "
                    f"{limit / 1024**2:.0f} MiB: serve the weights from a URL (`harness submission "
                    f"weights --url-base`) or the hub (WEIGHTS=url or hub) instead of model/"
                )
            with archive.open("rb") as file:
                answer: dict[str, Any] = self._call(
                    "POST",
                    "/submissions",
                    files={"file": (archive.name, file, "application/zip")},
                    data={"track": track, "visibility": "published" if publish else "hidden"},
                )
        return answer

    def select(self, sub_id: str, *, chosen: bool = True) -> dict[str, Any]:
        """Select a scored submission for the final (`chosen` False: unselect it)."""
        action = "select" if chosen else "unselect"
        answer: dict[str, Any] = self._call("POST", f"/submissions/{sub_id}/{action}")
        return answer

    def status(self, sub_id: str) -> dict[str, Any]:
        answer: dict[str, Any] = self._call("GET", f"/submissions/{sub_id}")
        return answer

    def logs(self, sub_id: str) -> dict[str, str]:
        answer: dict[str, str] = self._call("GET", f"/submissions/{sub_id}/logs")
        return answer
