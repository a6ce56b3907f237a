"""`harness data helm-style`: training rows shaped exactly like HELM's requests."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.console import Console

from harness.cli._common import abort
from harness.errors import HarnessError
from harness.helm.style import SPLITS, helm_style

EPILOG = """**Examples**

    harness data helm-style mmlu:subject=anatomy --data-dir scenarios/ --out data/mmlu.jsonl

    harness data helm-style gsm --data-dir scenarios/ --out data/gsm.jsonl --shots 3

    harness data helm-style "big_bench:task=emoji_movie,subtask=" --data-dir scenarios/ \\
        --out data/emoji_movie.jsonl

    harness data helm-style "local_task:path=closed/samsum-train.jsonl,scoring=rouge" \\
        --data-dir scenarios/ --split test --out data/samsum.jsonl
"""

app = typer.Typer(no_args_is_help=True, help="Prepare training data.", epilog=EPILOG)


@app.command("helm-style", epilog=EPILOG)
def helm_style_(
    scenario: str = typer.Argument(
        ..., help="A HELM run entry, as in a conf: mmlu:subject=anatomy, gsm, local_task:path=F."
    ),
    data_dir: Path = typer.Option(
        ..., help="Raw data in HELM's benchmark_output/scenarios/ layout."
    ),
    out: Path = typer.Option(..., help="The JSONL of prompt/completion rows to write."),
    split: str = typer.Option("train", help=f"The split whose instances become rows: {SPLITS}."),
    shots: int | None = typer.Option(
        None, help="In-context examples per prompt (default: the run spec's own)."
    ),
    seed: int = typer.Option(0, help="Seed of each row's draw of in-context examples."),
) -> None:
    """Write SCENARIO's instances as prompt/completion rows, shaped by HELM's own adapter."""
    console = Console()
    started = time.monotonic()
    try:
        result = helm_style(
            scenario, data_dir=data_dir, out=out, split=split, shots=shots, seed=seed
        )
    except HarnessError as exc:
        abort(exc)
    console.print(
        f"wrote {result.rows} rows to [bold]{out}[/] from {result.split} of {result.run_spec} "
        f"({result.method}, up to {result.shots} in-context examples from "
        f"{result.train_instances} train instances) in {time.monotonic() - started:.1f} s"
    )
