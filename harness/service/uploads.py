"""Receiving an entry: the upload streamed to disk under a size limit, then the static checks.

The request body is counted as it arrives and refused (413) past the limit, so a large or endless
upload never fills memory or the disk; the multipart parser spools the file part to disk after
1 MiB. The zip is then checked with the `harness check` rules (zip safety: `..`, absolute paths,
symlinks out, bombs; leaked credentials; pins): an entry with error findings is answered at once
with them (already redacted) and never built.
"""

from __future__ import annotations

import shutil
import zipfile
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import HTTPException, Request
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from harness.checks import check_entry

DEFAULT_MAX_UPLOAD_BYTES = 2 * 1024**3
# Form fields besides the file are short: track, visibility, a competition's fact sheet.
_MAX_FIELD_BYTES = 1024


class UploadTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the upload is larger than the {limit:,}-byte limit")


@dataclass(frozen=True)
class Upload:
    """A received entry: the zip on disk, its form fields, and its static-check verdict."""

    path: Path
    filename: str
    size: int
    fields: dict[str, str]


async def _limited(request: Request, limit: int) -> AsyncGenerator[bytes, None]:
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise UploadTooLarge(limit)
        yield chunk


async def receive(request: Request, into: Path, limit: int) -> Upload:
    """Read a multipart upload (`file` and short fields) into `into`, a file path."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise UploadTooLarge(limit)
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise HTTPException(422, "send the entry as multipart/form-data with a `file` field")
    parser = MultiPartParser(
        request.headers,
        _limited(request, limit),
        max_files=1,
        max_fields=40,
        max_part_size=_MAX_FIELD_BYTES,
    )
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise HTTPException(422, f"malformed upload: {exc.message}") from exc
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise HTTPException(422, "the upload has no `file` field with the entry's zip")
        with into.open("wb") as out:
            shutil.copyfileobj(upload.file, out, 1024 * 1024)
        fields = {key: value for key, value in form.items() if isinstance(value, str)}
        name = Path(upload.filename or "entry.zip").name[:200]
        return Upload(into, name, into.stat().st_size, fields)
    finally:
        await form.close()


def static_findings(path: Path) -> list[dict[str, Any]]:
    """The error findings of the `harness check` rules on a zip; [] when it may be built.

    Raises a 422 for a file that is not a zip at all.
    """
    if not zipfile.is_zipfile(path):
        raise HTTPException(422, "the file is not a zip archive: zip the entry's folder")
    report = check_entry(path)  # extracts into a temporary folder of its own, safely
    return [
        {
            "rule": f.rule,
            "severity": f.severity,
            "path": f.path,
            "line": f.line,
            "message": f.message,
        }
        for f in report.findings
        if f.severity == "error"
    ]
