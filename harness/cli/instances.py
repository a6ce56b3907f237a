"""`harness instances build|verify|show`: a stage's instances, sampled once and pinned."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from harness.cli._common import abort
from harness.errors import HarnessError
from harness.helm.confs import SHIPPED_CONFS, load_conf, shipped_conf
from harness.helm.packs import build_pack, describe, verify_pack

EPILOG = """**Examples**

    harness instances build --conf open --budget 600 --data-dir scenarios/ --out packs/open-600

    harness instances build --conf closed/closed.conf --budget 600 --data-dir scenarios/ \\
        --out packs/closed-600

    harness instances verify packs/open-600 && harness instances show packs/open-600
"""

app = typer.Typer(
    no_args_is_help=True, help="Build, verify and show instance packs.", epilog=EPILOG
)


@app.command(epilog=EPILOG)
def build(
    conf: str = typer.Option(..., help=f"{' | '.join(SHIPPED_CONFS)} or a run-spec conf file."),
    budget: int = typer.Option(..., help="Instances of the stage, shared as `run --budget`."),
    data_dir: Path = typer.Option(
        ..., help="Raw data in HELM's benchmark_output/scenarios/ layout (downloads land here)."
    ),
    out: Path = typer.Option(..., help="The pack folder to write (new or empty)."),
    seed: int = typer.Option(0, help="Sampling seed; one seed gives nested samples."),
) -> None:
    """Sample the conf's instances with HELM's own scenario code and write a pack."""
    console = Console()
    try:
        path = shipped_conf(conf) if conf in SHIPPED_CONFS else Path(conf)
        pack = build_pack(load_conf(path), budget=budget, data_dir=data_dir, out=out, seed=seed)
    except HarnessError as exc:
        abort(exc)
    total = sum(entry.instances for entry in pack.entries)
    console.print(f"wrote {out}: {total} instances over {len(pack.entries)} run specs")
    console.print(f"pack sha256 {pack.sha256}")


@app.command(epilog=EPILOG)
def verify(pack: Path = typer.Argument(..., help="A pack folder.")) -> None:
    """Check every file of PACK against its manifest; exit 1 saying what differs."""
    console = Console()
    try:
        checked = verify_pack(pack)
    except HarnessError as exc:
        abort(exc, exit_code=1)
    console.print(f"{pack}: ok, {len(checked.files)} files, sha256 {checked.sha256}")


@app.command(epilog=EPILOG)
def show(pack: Path = typer.Argument(..., help="A pack folder.")) -> None:
    """A table of PACK: scenario, run spec, instances, main metric."""
    console = Console()
    try:
        checked = verify_pack(pack)
    except HarnessError as exc:
        abort(exc)
    table = Table(title=f"{checked.conf}, budget {checked.budget}, seed {checked.seed}")
    for column in ("scenario", "run spec", "instances", "train", "available", "main metric"):
        table.add_column(column)
    for row in describe(checked):
        table.add_row(*(str(value) for value in row.values()))
    console.print(table)
    console.print(f"HELM {checked.helm_version}; sha256 {checked.sha256}")
