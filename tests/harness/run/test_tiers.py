"""The coarse-to-fine selection rule (harness/run/tiers.py)."""

from __future__ import annotations

import math
from concurrent.futures import Future
from pathlib import Path

import pytest

from harness.errors import ConfigError
from harness.leaderboard.build import build_leaderboard
from harness.leaderboard.scoring import RunSpec, ranked_by_tier, same_run_spec, score_stage
from harness.leaderboard.text import to_markdown
from harness.run.options import RunOptions
from harness.run.pipeline import Ending, EntryJob
from harness.run.recorder import Recorder
from harness.run.tiers import Estimate, Tiers, compute_used, estimate, in_contention, run_tiers
from harness.store import Metric, Status, Step, Store
from tests.harness.run.fakes import InstantExecutor


def test_parse_defaults_to_keeping_thirty_percent() -> None:
    tiers = Tiers.parse("100,600", keep=None, keep_top=None)
    assert tiers.budgets == (100, 600)
    assert tiers.keep == 0.3
    assert tiers.cut(225) == 68


@pytest.mark.parametrize(
    ("text", "keep", "keep_top", "message"),
    [
        ("100", None, 20, "at least two"),
        ("600,100", None, 20, "increasing"),
        ("100,100", None, 20, "increasing"),
        ("0,100", None, 20, "positive"),
        ("a,b", None, 20, "budgets like"),
        ("100,600", 0.3, 20, "one of"),
        ("100,600", 1.5, None, "fraction"),
        ("100,600", None, 0, "at least 1"),
    ],
)
def test_bad_tiers_are_refused_clearly(
    text: str, keep: float | None, keep_top: int | None, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        Tiers.parse(text, keep=keep, keep_top=keep_top)


def test_estimate_averages_scenarios_with_binomial_error() -> None:
    scenarios = {"mmlu:a": "mmlu", "mmlu:b": "mmlu", "gsm": "gsm"}
    got = estimate(
        {"mmlu:a": 0.5, "mmlu:b": 0.7, "gsm": 0.2},
        {"mmlu:a": 10, "mmlu:b": 10, "gsm": 20},
        scenarios,
    )
    assert got.score == pytest.approx((0.6 + 0.2) / 2)
    mmlu_var = (0.25 / 10 + 0.21 / 10) / 4
    gsm_var = 0.16 / 20
    assert got.stderr == pytest.approx(math.sqrt(mmlu_var + gsm_var) / 2)


def test_a_missing_value_counts_zero() -> None:
    got = estimate({"a": None}, {"a": 10}, {"a": "a", "b": "b"})
    assert got == Estimate(0.0, 0.0)


def test_contention_keeps_the_top_and_whoever_may_reach_the_cut() -> None:
    estimates = {
        "first": Estimate(0.9, 0.01),
        "second": Estimate(0.8, 0.01),
        "close": Estimate(0.75, 0.05),  # 0.75 + 1.645 * 0.05 reaches 0.8
        "far": Estimate(0.5, 0.05),
        "sure-loser": Estimate(0.79, 0.0),
    }
    tiers = Tiers((10, 100), keep_top=2)
    assert in_contention(estimates, tiers) == ["first", "second", "close"]
    assert in_contention({}, tiers) == []


def test_compute_counts_each_entry_once_at_the_tier_it_reached() -> None:
    assert compute_used({"a": 0, "b": 1, "c": 2}, (10, 100, 600)) == 710


def test_a_later_tier_ranks_above_an_earlier_one_whatever_its_luck() -> None:
    # "lucky" was dropped after a noisy cheap tier with a higher value than the finalists'.
    metrics = {"lucky": {"x": 0.95}, "final-a": {"x": 0.6}, "final-b": {"x": 0.7}}
    shifted = ranked_by_tier(metrics, {"final-a": 1, "final-b": 1}, {"x": False})
    scores = score_stage(shifted, {"x": RunSpec("x")}).scores
    assert scores["final-b"] > scores["final-a"] > scores["lucky"]
    lower = ranked_by_tier({"l": {"y": 1.0}, "f": {"y": 3.0}}, {"f": 1}, {"y": True})
    scores = score_stage(lower, {"y": RunSpec("y", lower_is_better=True)}).scores
    assert scores["f"] > scores["l"]


class Quiz(InstantExecutor):
    """An executor whose entries answer with their skill (the digits of their name) on the
    budget asked: metrics as HELM names them, with the instance count in the run spec."""

    def __init__(self, log: list[tuple[str, int]]) -> None:
        self.log = log

    def submit(self, job: EntryJob, recorder: Recorder) -> Future[Ending]:
        budget = job.options.budget
        assert budget is not None
        self.log.append((job.name, budget))
        assert job.reuse_build == (job.options.tier != 1)  # a later tier reuses the image
        recorder.record_metrics(self.metrics(int(job.name.split("-")[1]) / 100, budget))
        step = recorder.start_step(Step.BUILD, at=1.0)
        recorder.finish_step(step, ok=True, detail="", log_path=None, at=2.0)
        future: Future[Ending] = Future()
        future.set_result(Ending(Status.SCORED, "scored"))
        return future

    def metrics(self, skill: float, budget: int) -> list[Metric]:
        return [
            Metric(f"s{i}:max_eval_instances={budget // 2}", f"s{i}", "exact_match", skill)
            for i in range(2)
        ]


def test_later_tiers_evaluate_only_the_contenders_and_the_store_remembers(tmp_path: Path) -> None:
    entries = tmp_path / "entries"
    skills = [90, 88, 70, 40, 30, 20]
    for skill in skills:
        (entries / f"e-{skill}").mkdir(parents=True)
    options = RunOptions(track="4090", stage="open", out=tmp_path / "results", run_specs="offline")
    tiers = Tiers((20, 200), keep_top=1)
    log: list[tuple[str, int]] = []

    outcomes = run_tiers(entries, options, tiers, executor=lambda: Quiz(log))

    # 0.88 on 10 instances per scenario may reach 0.90; 0.70 may not (1.645 * 0.1 < 0.2).
    assert sorted(log) == sorted([(f"e-{s}", 20) for s in skills] + [("e-90", 200), ("e-88", 200)])
    assert {o.entry for o in outcomes} == {f"e-{s}" for s in skills}
    with Store(options.out) as store:
        assert store.tiers("open") == {
            **{f"e-{s}": (1, 20) for s in skills},
            "e-90": (2, 200),
            "e-88": (2, 200),
        }
    board = build_leaderboard(Store(options.out))
    assert [row.entry for row in board.rows[:3]] == ["e-90", "e-88", "e-70"]
    assert board.rows[0].stages["open"].tier == "2/2 (200)"
    assert board.rows[2].stages["open"].tier == "1/2 (20)"
    assert "Tier" in to_markdown(board)

    # A restart finds every tier done: nothing is evaluated again.
    log.clear()
    run_tiers(entries, options, tiers, executor=lambda: Quiz(log))
    assert log == []


@pytest.mark.parametrize(
    ("stored", "same"),
    [
        ("mmlu:subject=anatomy,max_eval_instances=10", "mmlu:subject=anatomy"),
        ("gsm:max_eval_instances=5", "gsm"),
        ("x:max_eval_instances=3,b=2", "x:b=2"),
        ("x:a=1,max_eval_instances=3,b=2", "x:a=1,b=2"),
    ],
)
def test_the_runs_of_each_tier_are_one_run_spec(stored: str, same: str) -> None:
    assert same_run_spec(stored) == same
