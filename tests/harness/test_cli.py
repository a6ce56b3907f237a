"""The `harness` console script: every command is listed and its help ends with examples."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from harness.cli import app

runner = CliRunner()


def _commands() -> list[str]:
    import typer.main

    group = typer.main.get_group(app)
    return sorted(group.commands)


def test_help_lists_every_command() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in _commands():
        assert command in result.output


def test_every_command_help_ends_with_examples() -> None:
    for command in _commands():
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0, command
        assert "Examples" in result.output, command
        assert f"harness {command}" in result.output.split("Examples")[-1], command


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "harness"
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    assert "tiny-model" in result.stdout


def test_tiny_model_command_writes_a_loadable_model(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = runner.invoke(app, ["tiny-model", str(tmp_path / "m"), "--arch", "mistral"])
    assert result.exit_code == 0, result.output
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "m")
    assert model.config.model_type == "mistral"
    assert model.config.vocab_size == len(tokenizer)
    ids = tokenizer("The capital of France is").input_ids
    assert tokenizer.decode(ids) == "The capital of France is"
    # A container's non-root user (a reproduced training run) must be able to read every file.
    assert all(path.stat().st_mode & 0o004 for path in (tmp_path / "m").rglob("*"))


def test_tiny_model_rejects_an_unknown_architecture(tmp_path: Path) -> None:
    result = runner.invoke(app, ["tiny-model", str(tmp_path / "m"), "--arch", "gpt2"])
    assert result.exit_code == 2
    assert "unknown architecture" in result.output
