"""What a check reports: findings, grouped per entry, and the rules they come from."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Severity = Literal["error", "warning", "info"]

# rule id -> (usual severity, what it means); the README's table of rules is this dict.
RULES: dict[str, tuple[Severity, str]] = {
    "no-dockerfile": ("error", "no file named `Dockerfile` (nor the one entry.yaml names)"),
    "leaked-secret": ("error", "a real-looking credential in a file, a Dockerfile or git history"),
    "secret-placeholder": ("info", "`YOUR_TOKEN`, `<token>`, `xxx` where a credential goes"),
    "secret-in-image-config": (
        "error",
        "a credential-named ENV/ARG value (warning for a placeholder): it stays in the image",
    ),
    "unpinned-dependency": (
        "error",
        "pip install without `==`, loose requirements, git+ without a sha, --pre, nightly indexes",
    ),
    "unpinned-base-image": ("warning", "FROM without a digest (error for `latest`/nightly tags)"),
    "unpinned-weights": (
        "error",
        "served weights not pinned: WEIGHTS=hub without a commit sha, WEIGHTS=url without a lock",
    ),
    "missing-artifact": ("error", "a COPY/ADD source missing from the build context"),
    "local-path": ("error", "an absolute path from the author's machine in code or config"),
    "remote-artifact": ("warning", "a download (wget, curl, ADD, git clone) without a pin"),
    "malformed-entry": ("error", "an unreadable or unsafe zip, a bad entry.yaml, a symlink out"),
    "skipped-file": ("info", "a text file too large to scan"),
    "internal-error": ("error", "the checker itself failed on this entry (a bug: please report)"),
}


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem in one entry; `path` is relative to the entry, `line` 1-based or None."""

    rule: str
    severity: Severity
    path: str
    line: int | None
    message: str


@dataclass(slots=True)
class EntryReport:
    """Every finding on one entry; `dockerfile` is relative to the entry, None when none is."""

    entry: str
    dockerfile: str | None = None
    findings: list[Finding] = field(default_factory=list)

    @property
    def status(self) -> Literal["ok", "flagged"]:
        """Flagged when a finding is an error; warnings and infos leave an entry ok."""
        return "flagged" if any(f.severity == "error" for f in self.findings) else "ok"

    def to_json(self) -> dict[str, Any]:
        return {
            "entry": self.entry,
            "dockerfile": self.dockerfile,
            "status": self.status,
            "findings": [asdict(finding) for finding in self.findings],
        }
