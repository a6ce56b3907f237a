"""Static checks organizers run on every entry before spending a GPU on it.

    from harness.checks import check_entries, check_entry
    reports = check_entries(Path("entries"))        # one EntryReport per subfolder or .zip
    report = check_entry(Path("entries/team-a.zip"))
    report.status, report.dockerfile, report.findings  # "ok" | "flagged", path or None, [Finding]

An entry is flagged when one of its findings is an error. A finding's `rule` is one of `RULES`;
its `path` is relative to the entry and its `line` 1-based (None when it is about a whole file).
An unexpected exception inside one entry becomes an `internal-error` finding on that entry.
A credential never appears in full in a finding: only its redacted form (`hf_…AbCd`).
"""

from __future__ import annotations

from harness.checks._check import check_entries, check_entry, discover
from harness.checks._dockerignore import DockerIgnore
from harness.checks._model import RULES, EntryReport, Finding, Severity
from harness.checks._tree import MANIFEST, Limits, clean_relative, extract_zip

__all__ = [
    "MANIFEST",
    "RULES",
    "DockerIgnore",
    "EntryReport",
    "Finding",
    "Limits",
    "Severity",
    "check_entries",
    "check_entry",
    "clean_relative",
    "discover",
    "extract_zip",
]
