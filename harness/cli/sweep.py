"""`harness sweep`: train, merge and score variants of a training config; compare them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from harness.cli._common import INTERRUPTED, abort
from harness.errors import HarnessError
from harness.evaluate.sweep import load_sweep, plan, plan_lines, run_sweep

EPILOG = """**Examples**

    harness sweep sweep.yaml --dry-run

    harness sweep sweep.yaml        # run again after a kill: finished variants are kept

A sweep file (paths relative to it):

    submission: .
    base: config.yaml
    instances: packs/open-600
    variants:
      - {name: r8, overrides: {lora.r: 8}}
    grid:
      learning_rate: [1.0e-4, 2.0e-4]
      datasets.0.weight: [0.5, 1.0]
"""


def main(
    sweep_file: Annotated[Path, typer.Argument(help="The sweep's YAML file.")],
    dry_run: Annotated[
        bool, typer.Option(help="Check every variant's config and print the plan with times.")
    ] = False,
) -> None:
    """Train (train.py), merge (merge.py) and score (`harness eval`) each unfinished variant in
    turn, then write OUT/results/comparison.{md,json,html} and the variants' leaderboard. Exit
    code 1 when a variant failed."""
    console = Console(highlight=False, soft_wrap=True)
    try:
        sweep = load_sweep(sweep_file)
        if dry_run:
            for line in plan_lines(sweep, plan(sweep)):
                console.print(line, markup=False)
            return
        outcome = run_sweep(
            sweep,
            on_progress=lambda variant, step: console.print(f"{variant}: {step}", markup=False),
        )
    except HarnessError as exc:
        abort(exc)
    except KeyboardInterrupt:
        Console(stderr=True).print("interrupted: finished variants are kept; run it again")
        raise typer.Exit(INTERRUPTED) from None
    comparison = sweep.results / "comparison.md"
    console.print(comparison.read_text(), markup=False)
    console.print("wrote " + ", ".join(str(path) for path in outcome.paths), markup=False)
    raise typer.Exit(0 if outcome.ok else 1)
