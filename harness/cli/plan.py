"""`harness plan`: how long a stage takes on a GPU fleet, with and without tiers."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from harness.cli._common import (
    Keep,
    KeepTop,
    MaxEvalInstances,
    Stage,
    TierBudgets,
    Track,
    abort,
    tiers_option,
)
from harness.competition import STAGE_MINUTES
from harness.errors import HarnessError
from harness.helm.confs import load_conf
from harness.reproduce.options import parse_duration
from harness.run.options import RunOptions
from harness.run.plan import default_costs, make_plan, measured_costs

EPILOG = """**Examples**

    harness plan --entries 225 --fleet-gpus 16 --track 4090 --stage open

    harness plan --entries 225 --fleet-gpus 16 --track 4090 --stage open --from results/ \\
        --deadline 24h --tiers 30,120,480,1200 --keep-top 20
"""


def main(
    entries: Annotated[int, typer.Option(help="Entries to evaluate.")],
    # Not --gpus: everywhere else that option names GPU indexes on this machine.
    fleet_gpus: Annotated[int, typer.Option(help="GPUs in the fleet.")],
    track: Track,
    stage: Stage,
    from_: Path | None = typer.Option(
        None, "--from", help="A results folder to measure build, start and per-instance times in."
    ),
    deadline: str | None = typer.Option(None, help="Finish within, e.g. 24h: GPUs needed."),
    budget: int | None = typer.Option(
        None, help="Instances per entry [default: the last tier, else the stage's conf x 100]."
    ),
    max_eval_instances: MaxEvalInstances = 100,
    tiers: TierBudgets = None,
    keep: Keep = None,
    keep_top: KeepTop = None,
) -> None:
    """Estimate a stage's duration on a fleet of GPUs, with and without tiers, and the GPUs
    that finish it by a deadline."""
    console = Console()
    try:
        options = RunOptions(track=track, stage=stage, out=Path("."))
        plan_tiers = tiers_option(tiers, keep, keep_top)
        if budget is None:
            budget = (
                plan_tiers.budgets[-1]
                if plan_tiers
                else len(load_conf(options.conf_path()).entries) * max_eval_instances
            )
        costs = measured_costs(from_, stage) if from_ else default_costs(track)
        plans = make_plan(
            costs,
            entries=entries,
            gpus=fleet_gpus,
            instances=budget,
            stage_limit_s=STAGE_MINUTES[stage] * 60,
            tiers=plan_tiers,
            deadline_s=None if deadline is None else parse_duration(deadline),
        )
    except HarnessError as exc:
        abort(exc)
    console.print(
        f"{entries} entries, track {track}, {stage} stage, {budget} instances per entry; "
        f"build {costs.build_s:.0f} s, start {costs.start_s:.0f} s, "
        f"{costs.instance_s:.2f} s per instance ({costs.source})"
    )
    table = Table("Plan", "GPU hours", f"Stage on {fleet_gpus} GPUs (h)")
    if deadline:
        table.add_column(f"GPUs for {deadline}")
    for plan in plans:
        cells = [plan.label, f"{plan.gpu_hours:.1f}", f"{plan.stage_hours:.1f}"]
        if plan.gpus_for_deadline is not None:
            cells.append(str(plan.gpus_for_deadline))
        table.add_row(*cells)
    console.print(table)
