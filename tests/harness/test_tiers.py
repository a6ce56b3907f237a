"""The coarse-to-fine selection rule (harness/tiers.py)."""

from __future__ import annotations

import math

import pytest

from harness.errors import ConfigError
from harness.scoring import RunSpec, score_stage
from harness.tiers import Estimate, Tiers, compute_used, estimate, in_contention, ranked_by_tier


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
