"""The reproduction's statistics against scipy's own tests and known distributions."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from harness.leaderboard.intervals import stratified_interval
from harness.reproduce.stats import (
    DIFFERS,
    REPRODUCED,
    WITHIN_NOISE,
    judge_runs,
    shortfall_p_value,
    trimmed,
    worst,
)


def test_the_bootstrap_error_of_a_mean_of_coin_flips_is_the_binomial_one() -> None:
    flips = [1.0] * 240 + [0.0] * 160  # p = 0.6 over 400 instances
    interval = stratified_interval([flips])
    expected = math.sqrt(0.6 * 0.4 / 400)
    assert interval.value == pytest.approx(0.6)
    assert interval.standard_error == pytest.approx(expected, rel=0.1)
    assert interval.low < 0.6 < interval.high
    assert interval.high - interval.low == pytest.approx(2 * 1.96 * expected, rel=0.15)
    assert stratified_interval([flips]) == interval  # seeded: the same report every time


def test_strata_are_resampled_apart_and_a_single_instance_adds_no_noise() -> None:
    # A scenario of two run specs: means 1.0 (one instance) and 0.5; the score is 0.75.
    interval = stratified_interval([[1.0], [0.0, 1.0] * 50])
    assert interval.value == pytest.approx(0.75)
    # Only the second stratum varies, and it weighs a half.
    assert interval.standard_error == pytest.approx(0.5 * math.sqrt(0.25 / 100), rel=0.15)
    assert stratified_interval([[0.3, 0.3]]).standard_error == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError):
        stratified_interval([[1.0], []])


def test_without_evaluation_noise_the_test_is_the_one_sample_t_test() -> None:
    runs = [0.52, 0.55, 0.49, 0.51]
    ours = shortfall_p_value(runs, 0.56, 0.0)
    theirs = stats.ttest_1samp(runs, 0.56, alternative="less").pvalue
    assert ours == pytest.approx(theirs)


def test_evaluation_noise_enters_as_welchs_second_variance() -> None:
    runs = [0.52, 0.55, 0.49, 0.51]
    # Welch with the original as a huge sample whose mean has standard error 0.02.
    big = 10**9
    theirs = stats.ttest_ind_from_stats(
        np.mean(runs), np.std(runs, ddof=1), len(runs), 0.56, 0.02 * math.sqrt(big), big,
        equal_var=False, alternative="less",
    ).pvalue  # fmt: skip
    assert shortfall_p_value(runs, 0.56, 0.02) == pytest.approx(theirs, rel=1e-4)
    assert shortfall_p_value(runs, 0.56, 0.02) > shortfall_p_value(runs, 0.56, 0.0)
    assert shortfall_p_value([0.5, 0.5], 0.6, 0.0) == 0.0
    assert shortfall_p_value([0.5, 0.5], 0.4, 0.0) == 1.0


def test_from_five_runs_the_best_and_the_worst_are_dropped() -> None:
    assert trimmed([0.3, 0.9, 0.5]) == [0.3, 0.5, 0.9]
    assert trimmed([0.3, 0.9, 0.5, 0.1, 0.6]) == [0.3, 0.5, 0.6]
    judgement = judge_runs(0.5, [0.5, 0.0, 0.5, 1.0, 0.5], noise=0.01, tolerance=0.01)
    assert judgement.kept == (0.5, 0.5, 0.5) and judgement.difference == 0.0
    assert judgement.runs == (0.5, 0.0, 0.5, 1.0, 0.5)


@pytest.mark.parametrize(
    ("runs", "noise", "verdict"),
    [
        ([0.61, 0.60, 0.62], 0.01, REPRODUCED),  # above the original
        ([0.595, 0.60, 0.59], 0.01, REPRODUCED),  # below, by less than the tolerance
        ([0.50, 0.66, 0.58], 0.02, WITHIN_NOISE),  # 0.02 below, runs all over the place
        ([0.55, 0.54, 0.55], 0.005, DIFFERS),  # 0.053 below, consistently
        ([0.57], 0.02, WITHIN_NOISE),  # one run: inside the evaluation's 95% interval
        ([0.50], 0.02, DIFFERS),  # one run: outside it
    ],
)
def test_verdicts(runs: list[float], noise: float, verdict: str) -> None:
    judgement = judge_runs(0.6, runs, noise=noise, tolerance=0.01)
    assert judgement.verdict == verdict, judgement
    assert (judgement.p_value is None) == (len(runs) == 1)
    if verdict == DIFFERS and judgement.p_value is not None:
        assert judgement.p_value < 0.05 and judgement.difference < -0.01


def test_the_overall_verdict_is_the_worst_scenarios() -> None:
    assert worst({"a": REPRODUCED, "b": WITHIN_NOISE}) == WITHIN_NOISE
    assert worst({"a": DIFFERS, "b": REPRODUCED}) == DIFFERS
    with pytest.raises(ValueError):
        judge_runs(0.5, [], noise=0.0, tolerance=0.0)


def test_where_lower_is_better_a_rise_is_the_shortfall() -> None:
    assert judge_runs(0.6, [0.5], noise=0.0, tolerance=0.01, lower_is_better=True).verdict == (
        REPRODUCED
    )
    risen = judge_runs(0.5, [0.6, 0.61, 0.59], noise=0.0, tolerance=0.01, lower_is_better=True)
    assert risen.verdict == DIFFERS and risen.difference == pytest.approx(0.1)
    assert risen.p_value is not None and risen.p_value < 0.01
