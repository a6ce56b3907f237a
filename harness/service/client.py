"""The competitor's side of the service: zip an entry, upload it, follow it (`harness submit`).

    with ServiceClient(url, token) as client:
        sub = client.submit(Path("my-entry"), track="4090")   # a folder is zipped first
        sub = client.status(sub["id"])

Errors come back as HarnessError: a refused token or a bad request is a ConfigError (exit 2), an
unreachable server an InfrastructureError (exit 3), a flagged entry or a used quota a
`Refused` (exit 1) that carries the server's answer (findings, next free slot).
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Self

import httpx

from harness.errors import ConfigError, HarnessError, InfrastructureError


class Refused(HarnessError):
    """The server refused the entry (flagged by the checks, or the quota is used)."""

    def __init__(self, message: str, answer: dict[str, Any]) -> None:
        super().__init__(message)
        self.answer = answer


def zip_entry(folder: Path, into: Path) -> Path:
    """Zip an entry folder as `harness check` reads it: every file, `.git` included (its history
    is checked for leaked credentials), paths relative to the folder; symlinks are left out."""
    with zipfile.ZipFile(into, "w", zipfile.ZIP_DEFLATED) as archive:
        for root, dirs, files in os.walk(folder):
            dirs.sort()
            for name in sorted(files):
                path = Path(root) / name
                if not path.is_symlink():
                    archive.write(path, path.relative_to(folder).as_posix())
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

    def submit(self, entry: Path, *, track: str, publish: bool = False) -> dict[str, Any]:
        """Upload an entry folder (zipped here) or a zip file; returns the queued submission."""
        if not entry.exists():
            raise ConfigError(f"{entry} does not exist")
        with tempfile.TemporaryDirectory(prefix="harness-submit-") as tmp:
            archive = (
                entry if entry.is_file() else zip_entry(entry, Path(tmp) / f"{entry.name}.zip")
            )
            with archive.open("rb") as file:
                answer: dict[str, Any] = self._call(
                    "POST",
                    "/submissions",
                    files={"file": (archive.name, file, "application/zip")},
                    data={"track": track, "visibility": "published" if publish else "hidden"},
                )
        return answer

    def status(self, sub_id: str) -> dict[str, Any]:
        answer: dict[str, Any] = self._call("GET", f"/submissions/{sub_id}")
        return answer

    def logs(self, sub_id: str) -> dict[str, str]:
        answer: dict[str, str] = self._call("GET", f"/submissions/{sub_id}/logs")
        return answer
