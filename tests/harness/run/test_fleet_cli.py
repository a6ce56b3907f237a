"""`harness run`'s fleet options: usage errors exit 2 before anything starts, and the default
path never imports Ray."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from harness.cli import app


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--gpus", "0,0"], "--gpus"),
        (["--executor", "slurm"], "--executor"),
        (["--shared-storage"], "--shared-storage goes with --executor ray"),
        (["--keep", "0.3"], "go with --tiers"),
        (["--tiers", "600,100"], "increasing"),
        (["--tiers", "100,600", "--budget", "50"], "leave out --budget"),
        (["--tiers", "100,600", "--keep", "0.3", "--keep-top", "5"], "one of"),
        (["--tiers", "adaptive"], "needs --budget"),
        (["--tiers", "adaptive", "--budget", "600", "--keep-top", "5"], "go with --tiers BUDGETS"),
        (["--tiers", "100,600", "--target-top", "5"], "go with --tiers adaptive"),
        (["--tiers", "adaptive", "--budget", "600", "--confidence", "2"], "--confidence"),
    ],
)
def test_fleet_usage_errors_exit_2(tmp_path: Path, extra: list[str], message: str) -> None:
    (tmp_path / "entries").mkdir()
    base = ["run", str(tmp_path / "entries"), "--track", "4090", "--stage", "open"]
    result = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "results"), *extra])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())


def test_the_default_path_does_not_import_ray() -> None:
    code = (
        "import sys, harness.cli, harness.run.driver, harness.run.tiers, "
        "harness.leaderboard; "
        "print('ray' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--gpus", "0,0"], "--gpus"),
        (["--executor", "slurm"], "--executor"),
        (["--shared-storage"], "--shared-storage goes with --executor ray"),
    ],
)
def test_serve_takes_the_same_fleet_options(tmp_path: Path, extra: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["serve", "--data", str(tmp_path / "data"), *extra])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
