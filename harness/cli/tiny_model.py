"""`harness tiny-model`: write a tiny random causal LM and a locally trained tokenizer."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from harness.submission.tiny_model import ARCHITECTURES, write_tiny_model

EPILOG = """**Examples**

    harness tiny-model /tmp/tiny

    harness tiny-model /tmp/tiny-mistral --arch mistral --seed 1
"""


def main(
    out_dir: Path = typer.Argument(..., help="Folder to write the model and tokenizer into."),
    arch: str = typer.Option("llama", help=f"Architecture: {', '.join(ARCHITECTURES)}."),
    seed: int = typer.Option(0, help="Seed of the random weights."),
) -> None:
    """Write a tiny random Llama-family model + tokenizer in Hugging Face format (no download)."""
    if arch not in ARCHITECTURES:
        raise typer.BadParameter(f"unknown architecture {arch!r}; choose one of {ARCHITECTURES}")
    path = write_tiny_model(out_dir, arch=arch, seed=seed)
    Console().print(f"wrote a tiny {arch} model and tokenizer to [bold]{path}[/]")
