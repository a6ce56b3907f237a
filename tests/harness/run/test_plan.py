"""`harness plan`: the stage's duration on a fleet, from stated defaults or a measured run."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.errors import ConfigError
from harness.run.adaptive import Adaptive
from harness.run.plan import ADAPTIVE_ENTERING, CONTENTION, Costs, make_plan, measured_costs
from harness.run.tiers import Tiers
from harness.store import GatewayStats, Step, Store

COSTS = Costs(build_s=600, start_s=100, instance_s=2.0, source="test")


def test_full_budget_arithmetic_and_gpus_for_a_deadline() -> None:
    (full,) = make_plan(
        COSTS, entries=10, gpus=5, instances=100, stage_limit_s=3600, deadline_s=3600 + 600
    )
    gpu_s = 10 * (100 + 200)
    assert full.gpu_hours == pytest.approx(gpu_s / 3600)
    assert full.stage_hours == pytest.approx((600 + gpu_s / 5) / 3600)
    assert full.gpus_for_deadline == 1


def test_an_entry_holds_its_gpu_no_longer_than_the_stage_limit() -> None:
    (full,) = make_plan(COSTS, entries=1, gpus=1, instances=10_000, stage_limit_s=1000)
    assert full.gpu_hours == pytest.approx((100 + 1000) / 3600)


def test_tiers_pay_the_first_budget_for_all_and_the_rest_for_contenders() -> None:
    tiers = Tiers((10, 100), keep_top=4)
    _, tiered = make_plan(COSTS, entries=100, gpus=1, instances=100, stage_limit_s=1e9, tiers=tiers)
    expected = 100 * (100 + 10 * 2.0) + 4 * CONTENTION * (100 + 90 * 2.0)
    assert tiered.gpu_hours == pytest.approx(expected / 3600)


def test_adaptive_rounds_pay_a_start_and_their_new_instances_for_their_entrants() -> None:
    schedule = Adaptive(100)
    _, adaptive = make_plan(
        COSTS, entries=100, gpus=1, instances=100, stage_limit_s=1e9, adaptive=schedule,
        field="hard",
    )  # fmt: skip
    shares, budgets = ADAPTIVE_ENTERING["hard"], (3, 4, 5, 8, 10, 15, 20, 30, 40, 60, 80, 100)
    assert schedule.rounds == budgets
    new = [b - a for a, b in zip((0, *budgets), budgets, strict=False)]
    expected = sum(s * 100 * (100 + n * 2.0) for s, n in zip(shares, new, strict=True))
    assert adaptive.label == "adaptive, hard field"
    assert adaptive.gpu_hours == pytest.approx(expected / 3600)
    with pytest.raises(ConfigError, match="--field"):
        make_plan(COSTS, entries=9, gpus=1, instances=100, stage_limit_s=1, adaptive=schedule,
                  field="flat")  # fmt: skip
    with pytest.raises(ConfigError, match="measured for 12 rounds; a budget of 20 has 9"):
        make_plan(COSTS, entries=9, gpus=1, instances=20, stage_limit_s=1, adaptive=Adaptive(20))
    with pytest.raises(ConfigError, match="measured for --target-top 10"):
        make_plan(COSTS, entries=9, gpus=1, instances=100, stage_limit_s=1,
                  adaptive=Adaptive(100, top=3))  # fmt: skip


def test_costs_are_measured_from_a_results_folder(tmp_path: Path) -> None:
    with Store(tmp_path) as store:
        for name, (build, serve, evaluate, answered) in {
            "a": (300, 60, 1000, 500),
            "b": (500, 80, 3000, 1000),
            "c": (700, 100, 600, 100),
        }.items():
            store.add_entry(name, tmp_path)
            attempt = store.start_attempt(name, "open")
            at = 0.0
            for step, seconds in (
                (Step.BUILD, build),
                (Step.SERVE, serve),
                (Step.EVALUATE, evaluate),
            ):
                step_id = store.start_step(attempt, step, at=at)
                store.finish_step(step_id, ok=True, detail="", log_path=None, at=at + seconds)
                at += seconds
            store.record_gateway_stats(
                attempt, GatewayStats(answered, answered, 0, 0, None, None, None, None)
            )
    costs = measured_costs(tmp_path, "open")
    assert (costs.build_s, costs.start_s, costs.instance_s) == (500, 80, 3.0)
    with pytest.raises(ConfigError, match="nothing to measure"):
        measured_costs(tmp_path, "closed")


def test_cli_prints_both_plans_and_refuses_bad_input(tmp_path: Path) -> None:
    runner = CliRunner()
    args = ["plan", "--entries", "225", "--fleet-gpus", "16", "--track", "4090", "--stage", "open"]
    result = runner.invoke(
        app, [*args, "--deadline", "24h", "--tiers", "100,600", "--keep-top", "20"]
    )
    assert result.exit_code == 0, result.output
    assert "full budget" in result.output and "tiers 100,600" in result.output
    assert "GPUs for 24h" in result.output
    result = runner.invoke(app, [*args, "--budget", "1200", "--tiers", "adaptive"])
    assert result.exit_code == 0, result.output
    assert "adaptive, crowded field" in result.output
    result = runner.invoke(app, [*args, "--tiers", "adaptive"])
    assert result.exit_code == 2 and "needs --budget" in result.output
    assert runner.invoke(app, [*args, "--from", str(tmp_path / "none")]).exit_code == 2
    assert runner.invoke(app, [*args, "--deadline", "5m"]).exit_code == 2
