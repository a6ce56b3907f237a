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


def _every_command() -> list[list[str]]:
    """Each command as its words: `run`, and a group's subcommands (`instances build`)."""
    import typer.main

    words = []
    for name, command in sorted(typer.main.get_group(app).commands.items()):
        if subcommands := getattr(command, "commands", None):  # a group: `harness instances`
            words += [[name, sub] for sub in sorted(subcommands)]
        else:
            words.append([name])
    return words


def test_every_command_help_ends_with_examples() -> None:
    commands = _every_command()
    assert ["instances", "build"] in commands and ["teams", "add"] in commands
    for words in commands:
        result = runner.invoke(app, [*words, "--help"])
        assert result.exit_code == 0, words
        assert "Examples" in result.output, words
        assert f"harness {words[0]}" in result.output.split("Examples")[-1], words


_TRACK_AND_STAGE = ["--track", "4090", "--stage", "open"]


def test_errors_go_to_stderr_with_the_documented_exit_code(tmp_path: Path) -> None:
    """One way to fail for every command: the message on stderr, nothing on stdout."""
    cases = [
        (["run", str(tmp_path), "--track", "H100", "--stage", "open", "--out", str(tmp_path)], 2),
        (["plan", "--entries", "1", "--fleet-gpus", "1", *_TRACK_AND_STAGE, "--keep", "0.5"], 2),
        (["report", str(tmp_path / "nothing")], 2),
        (["instances", "verify", str(tmp_path)], 1),
        (["tasks", "import", "samsum", str(tmp_path / "none"), "--out", str(tmp_path / "o")], 2),
    ]
    for args, code in cases:
        done = subprocess.run(
            [str(Path(sys.executable).parent / "harness"), *args], capture_output=True, text=True
        )
        assert done.returncode == code, (args, done.stdout, done.stderr)
        assert done.stderr.startswith("error: "), (args, done.stderr)
        assert "Traceback" not in done.stderr and done.stdout == "", (args, done.stdout)


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
