"""`harness plan`: how long a stage takes on a GPU fleet, with and without tiers."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from harness.adaptive import Adaptive
from harness.confs import load_conf
from harness.errors import ConfigError, HarnessError
from harness.options import STAGE_MINUTES, RunOptions
from harness.plan import default_costs, make_plan, measured_costs
from harness.reproduction import parse_duration
from harness.tiers import Tiers

EPILOG = """**Examples**

    harness plan --entries 225 --gpus 16 --track 4090 --stage open

    harness plan --entries 225 --gpus 16 --track 4090 --stage open --from results/ \\
        --deadline 24h --tiers 30,120,480,1200 --keep-top 20

    harness plan --entries 225 --gpus 16 --track 4090 --stage open --budget 1200 \\
        --tiers adaptive --field crowded
"""


def main(
    entries: int = typer.Option(..., help="Entries to evaluate."),
    gpus: int = typer.Option(..., help="GPUs in the fleet."),
    track: str = typer.Option(..., help="4090 or A100."),
    stage: str = typer.Option(..., help="open (300 min) or closed (600 min)."),
    from_: Path | None = typer.Option(
        None, "--from", help="A results folder to measure build, start and per-instance times in."
    ),
    deadline: str | None = typer.Option(None, help="Finish within, e.g. 24h: GPUs needed."),
    budget: int | None = typer.Option(
        None, help="Instances per entry [default: the last tier, else the stage's conf x 100]."
    ),
    max_eval_instances: int = typer.Option(100, help="Instances per run spec, at most."),
    tiers: str | None = typer.Option(
        None, help="Coarse-to-fine budgets, e.g. 100,600, or adaptive (with --budget)."
    ),
    field: str = typer.Option(
        "crowded", help="With --tiers adaptive: the field's shape, spread, crowded or hard."
    ),
    keep: float | None = typer.Option(None, help="With --tiers: the top fraction kept [0.3]."),
    keep_top: int | None = typer.Option(None, help="With --tiers: the top N kept instead."),
) -> None:
    """Estimate a stage's duration on a fleet of GPUs, with and without tiers, and the GPUs
    that finish it by a deadline."""
    console = Console()
    try:
        options = RunOptions(track=track, stage=stage, out=Path("."))
        adaptive = None
        if tiers == "adaptive":
            if budget is None:
                raise ConfigError("--tiers adaptive needs --budget: the full budget per entry")
            adaptive = Adaptive(budget)
        plan_tiers = (
            None
            if tiers in (None, "adaptive")
            else Tiers.parse(tiers, keep=keep, keep_top=keep_top)
        )
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
            gpus=gpus,
            instances=budget,
            stage_limit_s=STAGE_MINUTES[stage] * 60,
            tiers=plan_tiers,
            adaptive=adaptive,
            field=field,
            deadline_s=None if deadline is None else parse_duration(deadline),
        )
    except HarnessError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(exc.exit_code) from exc
    console.print(
        f"{entries} entries, track {track}, {stage} stage, {budget} instances per entry; "
        f"build {costs.build_s:.0f} s, start {costs.start_s:.0f} s, "
        f"{costs.instance_s:.2f} s per instance ({costs.source})"
    )
    table = Table("Plan", "GPU hours", f"Stage on {gpus} GPUs (h)")
    if deadline:
        table.add_column(f"GPUs for {deadline}")
    for plan in plans:
        cells = [plan.label, f"{plan.gpu_hours:.1f}", f"{plan.stage_hours:.1f}"]
        if plan.gpus_for_deadline is not None:
            cells.append(str(plan.gpus_for_deadline))
        table.add_row(*cells)
    console.print(table)
