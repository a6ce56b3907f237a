"""Checking entries: discover them, check each one alone, never let one entry stop the batch."""

from __future__ import annotations

import itertools
import os
import posixpath
import tempfile
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from functools import partial
from pathlib import Path

from harness.checks._dockerignore import DockerIgnore
from harness.checks._git import GitError, blob_sha, blobs
from harness.checks._model import EntryReport, Finding
from harness.checks._rules import (
    WEIGHTS_LOCK,
    BuildContext,
    dockerfile_findings,
    is_requirements_file,
    pip_requirement_files,
    requirements_findings,
    text_findings,
    weights_findings,
)
from harness.checks._tree import Limits, Tree, choose_dockerfile, extract_zip, walk
from harness.errors import ConfigError
from harness.secrets import find_secrets, redact

MAX_PER_RULE_AND_FILE = 20
_SNIFF = 8192  # a NUL byte in the first 8 KiB marks a binary file, as git decides it


def discover(entries_dir: Path) -> list[Path]:
    """The entries of a folder: each immediate subfolder and `.zip` file, in name order; a folder
    with a Dockerfile of its own is one entry (a competitor's submission folder, whose data/ and
    model/ are not entries)."""
    if not entries_dir.is_dir():
        raise ConfigError(f"{entries_dir} is not a folder of entries")
    if (entries_dir / "Dockerfile").is_file():
        return [entries_dir.resolve()]  # `harness check .` names the entry after its folder
    entries = sorted(
        child
        for child in entries_dir.iterdir()
        if not child.name.startswith(".")
        and (
            (child.is_dir() and not child.is_symlink())
            or (child.is_file() and child.suffix.lower() == ".zip")
        )
    )
    if not entries:
        raise ConfigError(f"{entries_dir} holds no entries (one subfolder or .zip file each)")
    return entries


def _read_text(
    tree: Tree, rel: str, limits: Limits, findings: list[Finding], shas: set[str] | None
) -> str | None:
    """A file's text, or None for a binary or too-large file; reads it once."""
    path, size = tree.root / rel, tree.files[rel]
    if size > limits.max_text_bytes:
        with path.open("rb") as stream:
            if b"\0" not in stream.read(_SNIFF):
                findings.append(
                    Finding(
                        "skipped-file",
                        "info",
                        rel,
                        None,
                        f"text file of {size:,} bytes not scanned "
                        f"(limit {limits.max_text_bytes:,})",
                    )
                )
        return None
    data = path.read_bytes()
    if shas is not None:
        shas.add(blob_sha(data))
    if b"\0" in data[:_SNIFF]:
        return None
    return data.decode("utf-8", "replace")


def _history_findings(tree: Tree, git_dir: str, limits: Limits, skip: set[str]) -> list[Finding]:
    """Secrets in every blob of a repository that is not a file of the tree as it is now."""
    findings: list[Finding] = []
    reported: set[tuple[str, str, str]] = set()
    try:
        for blob in blobs(tree.root / git_dir, limits.max_blob_bytes, skip):
            if b"\0" in blob.data[:_SNIFF]:
                continue
            for secret in find_secrets(blob.data.decode("utf-8", "replace")):
                # Each version of a file repeats its secrets: one finding per file and value.
                if (key := (secret.kind, secret.redacted, blob.name)) in reported:
                    continue
                reported.add(key)
                where = f"`{blob.name}`" if blob.name else "an unreachable object"
                findings.append(
                    Finding(
                        "leaked-secret",
                        "error",
                        git_dir,
                        secret.line,
                        f"{secret.kind} `{secret.redacted}` in git history of {where} "
                        f"(blob {blob.sha[:10]}): deleting the file does not remove it; revoke "
                        "it, and ship the entry without .git or with rewritten history",
                    )
                )
    except GitError as exc:
        findings.append(
            Finding("malformed-entry", "warning", git_dir, None, f"unreadable git history: {exc}")
        )
    return findings


def _check_tree(root: Path, report: EntryReport, limits: Limits) -> None:
    findings = report.findings
    tree = walk(root, findings)
    dockerfile = report.dockerfile = choose_dockerfile(tree, findings)
    context_dir = posixpath.dirname(dockerfile) if dockerfile else ""
    prefix = f"{context_dir}/" if context_dir else ""
    ignore_files = (f"{dockerfile}.dockerignore", f"{prefix}.dockerignore")
    kept: dict[str, str] = {}
    pip_files: set[str] = set()
    if dockerfile:
        text = _read_text(tree, dockerfile, limits, findings, None)
        if text is not None:
            kept[dockerfile] = text
            pip_files = pip_requirement_files(text)
    shas: set[str] | None = set() if tree.git_dirs else None
    hashed: set[str] = set()
    for rel in sorted(tree.files):
        text = kept[rel] if rel in kept else _read_text(tree, rel, limits, findings, shas)
        if text is None:
            continue
        if rel in ignore_files or rel == prefix + WEIGHTS_LOCK:
            kept[rel] = text
        findings.extend(text_findings(rel, text))
        name = posixpath.basename(rel)
        if is_requirements_file(rel) or name in pip_files:
            findings.extend(requirements_findings(rel, text))
            if "--hash=" in text:
                hashed.add(name)
    if dockerfile in kept:
        assert dockerfile is not None
        if shas is not None:
            shas.add(blob_sha(kept[dockerfile].encode()))
        paths = {
            p[len(prefix) :]
            for p in itertools.chain(tree.files, tree.dirs, tree.links)
            if p.startswith(prefix)
        }
        ignore = next((kept[f] for f in ignore_files if f in kept), "")
        context = BuildContext(paths, DockerIgnore(ignore), hashed)
        findings.extend(dockerfile_findings(dockerfile, kept[dockerfile], context))
        lock = kept.get(prefix + WEIGHTS_LOCK)
        findings.extend(weights_findings(dockerfile, kept[dockerfile], lock))
    for git_dir in tree.git_dirs:
        findings.extend(_history_findings(tree, git_dir, limits, shas or set()))


def _tidy(findings: list[Finding]) -> list[Finding]:
    """Sorted by file and line, at most MAX_PER_RULE_AND_FILE of a rule per file, and every
    message redacted once more: messages quote entry content (URLs, paths, values)."""
    ordered = sorted(findings, key=lambda f: (f.path, f.line or 0, f.rule))
    tidy: list[Finding] = []
    counts: dict[tuple[str, str], int] = {}
    for finding in ordered:
        key = (finding.rule, finding.path)
        counts[key] = counts.get(key, 0) + 1
        if counts[key] <= MAX_PER_RULE_AND_FILE:
            tidy.append(replace(finding, message=redact(finding.message)))
    for (rule, path), count in counts.items():
        if count > MAX_PER_RULE_AND_FILE:
            first = next(f for f in tidy if (f.rule, f.path) == (rule, path))
            more = count - MAX_PER_RULE_AND_FILE
            tidy.append(replace(first, line=None, message=f"... and {more} more in this file"))
    return tidy


def check_entry(path: Path, *, limits: Limits | None = None) -> EntryReport:
    """Check one entry (a folder or a .zip file); never raises for a problem of the entry."""
    limits = limits or Limits()
    report = EntryReport(path.name)
    try:
        if path.is_dir():
            _check_tree(path, report, limits)
        else:
            with tempfile.TemporaryDirectory(prefix="harness-check-") as scratch:
                if extract_zip(path, Path(scratch), limits, report.findings):
                    _check_tree(Path(scratch), report, limits)
    except Exception as exc:  # the contract: one entry's failure is a finding, the batch goes on
        report.findings.append(
            Finding("internal-error", "error", ".", None, f"{type(exc).__name__}: {exc}")
        )
    report.findings = _tidy(report.findings)
    return report


def check_entries(
    entries_dir: Path,
    *,
    limits: Limits | None = None,
    workers: int | None = None,
    on_report: Callable[[EntryReport], None] | None = None,
) -> list[EntryReport]:
    """Check every entry of a folder, in name order. `workers` processes (default: one per CPU)."""
    entries = discover(entries_dir)
    workers = min(workers or os.cpu_count() or 1, len(entries))
    reports: list[EntryReport] = []
    if workers == 1:
        for entry in entries:
            reports.append(check_entry(entry, limits=limits))
            if on_report:
                on_report(reports[-1])
        return reports
    with ProcessPoolExecutor(workers) as pool:
        for report in pool.map(partial(check_entry, limits=limits), entries, chunksize=4):
            reports.append(report)
            if on_report:
                on_report(report)
    return reports
