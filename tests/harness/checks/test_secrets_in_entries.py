"""leaked-secret: each kind of credential in each place of an entry, and never shown in full."""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

from harness.checks import EntryReport, check_entry
from tests.harness.checks.conftest import GOOD_DOCKERFILE, GOOD_FILES, Files, write_zip
from tests.harness.checks.fakes import ASSIGNED_TO, MAKERS, fake


def _name(kind: str) -> str:
    return ASSIGNED_TO.get(kind, "PRIVATE_KEY")


def _one_line(value: str) -> str:
    """PEM keys where a value must fit on one line: JSON-escaped, as service-account files do."""
    return json.dumps(value)[1:-1] if "\n" in value else value


def _python_string(value: str) -> str:
    return f'"""{value}"""' if "\n" in value else f'"{value}"'


def _notebook(source: str) -> str:
    cell = {"cell_type": "code", "source": [source], "metadata": {}, "outputs": []}
    return json.dumps({"cells": [cell], "metadata": {}, "nbformat": 4, "nbformat_minor": 5})


# place -> (file, how the credential is written there)
PLACES: dict[str, tuple[str, Callable[[str, str], str]]] = {
    "code": ("src/train.py", lambda n, v: f"import os\n{n} = {_python_string(v)}\n"),
    "comment": ("src/utils.py", lambda n, v: f"# remember: {n}={_one_line(v)}\nx = 1\n"),
    "shell": ("scripts/run.sh", lambda n, v: f"#!/bin/sh\nexport {n}='{_one_line(v)}'\n"),
    "env": (".env", lambda n, v: f"{n}={_one_line(v)}\n"),
    "notebook": ("nb.ipynb", lambda n, v: _notebook(f'os.environ["{n}"] = "{_one_line(v)}"\n')),
    "config": ("configs/train.yaml", lambda n, v: f"{n.lower()}: '{_one_line(v)}'\n"),
    "dockerfile": (
        "Dockerfile",
        lambda n, v: GOOD_DOCKERFILE + f'ENV {n}="{_one_line(v)}"\n',
    ),
}


def _assert_redacted(report: EntryReport, value: str) -> None:
    dumped = json.dumps(report.to_json())
    core = value.split("-----")[2].strip() if "PRIVATE KEY" in value else value
    leaked = core in dumped or _one_line(core) in dumped
    assert not leaked, "a credential appears in full in the report"


@pytest.mark.parametrize("kind", sorted(MAKERS))
@pytest.mark.parametrize("place", sorted(PLACES))
def test_each_kind_in_each_place_is_a_leaked_secret(
    entry: Callable[..., EntryReport], kind: str, place: str
) -> None:
    value = fake(kind, seed=zlib.crc32(place.encode()))
    path, write = PLACES[place]
    report = entry({**GOOD_FILES, path: write(_name(kind), value)})
    leaks = [f for f in report.findings if f.rule == "leaked-secret"]
    assert [(f.path, f.severity) for f in leaks] == [(path, "error")]
    assert kind in leaks[0].message
    assert report.status == "flagged"
    if place == "dockerfile":
        assert ("secret-in-image-config", "error") in {
            (f.rule, f.severity) for f in report.findings
        }
    _assert_redacted(report, value)


@pytest.mark.parametrize("kind", sorted(MAKERS))
def test_a_deleted_file_in_git_history_is_a_leaked_secret(
    entry: Callable[..., EntryReport], kind: str
) -> None:
    value = fake(kind, seed=7)
    report = entry(GOOD_FILES, history=("secrets.env", f"{_name(kind)}={_one_line(value)}\n"))
    leaks = [f for f in report.findings if f.rule == "leaked-secret"]
    assert [(f.path, f.line) for f in leaks] == [(".git", 1)]
    assert "`secrets.env`" in leaks[0].message
    _assert_redacted(report, value)


@pytest.mark.parametrize("kind", sorted(MAKERS))
def test_a_secret_inside_a_zip_entry(tmp_path: Path, kind: str) -> None:
    value = fake(kind, seed=3)
    files: Files = {**GOOD_FILES, "app/.env": f"{_name(kind)}={_one_line(value)}\n"}
    report = check_entry(write_zip(tmp_path / "team.zip", files))
    assert report.entry == "team.zip"
    assert [(f.rule, f.path) for f in report.findings if f.severity == "error"] == [
        ("leaked-secret", "app/.env")
    ]
    _assert_redacted(report, value)


def test_history_reports_a_secret_once_per_file_not_per_version(
    entry: Callable[..., EntryReport], tmp_path: Path
) -> None:
    from tests.harness.checks.conftest import git, write_files

    value = fake("Hugging Face token", seed=11)
    root = write_files(tmp_path / "entries" / "e", {**GOOD_FILES, "a.py": f"T = '{value}'\n"})
    git(root, "init", "-q")
    for i in range(3):
        write_files(root, {"a.py": f"T = '{value}'\nVERSION = {i}\n"})
        git(root, "add", "-A")
        git(root, "commit", "-q", "-m", str(i))
    report = check_entry(root)
    assert [f.path for f in report.findings if f.rule == "leaked-secret"] == [".git", "a.py"]


def test_a_secret_still_in_the_tree_is_reported_on_the_file_not_again_from_git(
    entry: Callable[..., EntryReport], tmp_path: Path
) -> None:
    from tests.harness.checks.conftest import git, write_files

    value = fake("GitHub token", seed=12)
    root = write_files(tmp_path / "entries" / "e", {**GOOD_FILES, "b.sh": f"T={value}\n"})
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "one")
    report = check_entry(root)
    assert [f.path for f in report.findings if f.rule == "leaked-secret"] == ["b.sh"]
