"""`harness check`: the JSON contract, the text table, exit codes 0/1/2, no secret in any output."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from harness.cli import app
from tests.harness.checks.conftest import GOOD_FILES, write_files, write_zip
from tests.harness.checks.fakes import fake

runner = CliRunner()


def test_json_contract_and_exit_code_1_when_an_entry_is_flagged(tmp_path: Path) -> None:
    token = fake("Hugging Face token", seed=5)
    write_files(tmp_path / "clean", GOOD_FILES)
    write_zip(tmp_path / "leaky.zip", {**GOOD_FILES, "train.py": f"login(token='{token}')\n"})
    result = runner.invoke(app, ["check", str(tmp_path), "--format", "json"])
    assert result.exit_code == 1
    leaked = token in result.output
    assert not leaked
    entries = json.loads(result.stdout)["entries"]
    assert [(e["entry"], e["status"], e["dockerfile"]) for e in entries] == [
        ("clean", "ok", "Dockerfile"),
        ("leaky.zip", "flagged", "Dockerfile"),
    ]
    finding = next(f for f in entries[1]["findings"] if f["rule"] == "leaked-secret")
    assert finding == {
        "rule": "leaked-secret",
        "severity": "error",
        "path": "train.py",
        "line": 1,
        "message": finding["message"],
    }
    assert f"hf_…{token[-4:]}" in finding["message"]


def test_text_table_and_exit_code_0_when_nothing_is_an_error(tmp_path: Path) -> None:
    write_files(tmp_path / "team-a", GOOD_FILES)
    result = runner.invoke(app, ["check", str(tmp_path)], terminal_width=200)
    assert result.exit_code == 0
    assert "team-a" in result.output
    assert "secret-placeholder" in result.output


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    assert runner.invoke(app, ["check", str(tmp_path / "nope")]).exit_code == 2
    assert runner.invoke(app, ["check", str(tmp_path)]).exit_code == 2  # no entries
    write_files(tmp_path / "e", GOOD_FILES)
    assert runner.invoke(app, ["check", str(tmp_path), "--format", "xml"]).exit_code == 2
