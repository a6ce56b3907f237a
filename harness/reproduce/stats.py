"""The statistics of a reproduction: how noisy the evaluation is, and whether repeated training
runs fall short of the original by more than training and evaluation noise explain.

1. The noise floor: a bootstrap over the original's instances. A scenario's score is the mean of
   its run specs' means, so each run spec's instances are resampled on their own (a stratified
   bootstrap) and the scenario score recomputed; the spread of those scores is what scoring the
   same model on another draw of instances would move it by. scipy's `bootstrap` refuses strata of
   one instance, which small instance budgets have: leaderboard/intervals.py's
   `stratified_interval`, the one bootstrap of the harness, does it.
2. The test: the runs' mean against the original's score, one-sided (does the reproduction fall
   short?), Welch's t statistic with the runs' own variance and the original's bootstrap variance
   (known, so it adds no degrees of freedom). With five runs or more, the best and the worst are
   dropped first, as MLPerf Training does.

Verdicts per scenario: `reproduced` when the runs' mean is at most `tolerance` below the original
(or above it); `within-noise` when it is further below but the test does not reject at `alpha`
(a single run: when the gap is inside the evaluation's own 95% interval); `differs` otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

BOOTSTRAP_RESAMPLES = 2000  # a noise floor read from the interval's tails: more than the board
CONFIDENCE = 0.95
ALPHA = 0.05
TRIM_FROM = 5  # runs from which the best and the worst are dropped

REPRODUCED = "reproduced"
WITHIN_NOISE = "within-noise"
DIFFERS = "differs"
VERDICT_ORDER = (REPRODUCED, WITHIN_NOISE, DIFFERS)  # from best to worst


@dataclass(frozen=True)
class Judgement:
    """One scenario's (or the stage score's) runs against its original score."""

    verdict: str
    original: float
    runs: tuple[float, ...]  # every run, in run order
    kept: tuple[float, ...]  # those the test used (best and worst dropped from TRIM_FROM runs)
    noise: float  # the original's bootstrap standard error; 0 when not measured
    difference: float  # mean of the kept runs minus the original
    p_value: float | None  # one-sided, "the runs fall short"; None for a single run

    @property
    def mean(self) -> float:
        return self.original + self.difference


def trimmed(runs: Sequence[float]) -> list[float]:
    """The runs the test uses: with TRIM_FROM or more, the best and the worst are dropped."""
    ordered = sorted(runs)
    return ordered[1:-1] if len(ordered) >= TRIM_FROM else ordered


def shortfall_p_value(runs: Sequence[float], original: float, noise: float) -> float:
    """One-sided Welch: P(a mean this far below `original` | the runs are as good as it)."""
    n = len(runs)
    mean = math.fsum(runs) / n
    run_var = float(np.var(runs, ddof=1)) / n
    total = run_var + noise**2
    if total == 0:  # identical runs and a noiseless evaluation: any shortfall is real
        return 0.0 if mean < original else 1.0
    t = (mean - original) / math.sqrt(total)
    # Welch-Satterthwaite; the original's variance is known, so only the runs' carries df.
    df = math.inf if run_var == 0 else total**2 / (run_var**2 / (n - 1))
    # scipy.stats takes ~0.5 s to import: not at the start of every command.
    from scipy import stats

    return float(stats.t.cdf(t, df))


def judge_runs(
    original: float,
    runs: Sequence[float],
    noise: float,
    tolerance: float,
    alpha: float = ALPHA,
    *,
    lower_is_better: bool = False,
) -> Judgement:
    """The verdict of `runs` (the reproduced scores) against the original's score; a shortfall
    is a rise where lower is better."""
    if not runs:
        raise ValueError("no runs to judge")
    sign = -1.0 if lower_is_better else 1.0
    kept = trimmed(runs)
    difference = math.fsum(kept) / len(kept) - original
    shortfall = -sign * difference
    p_value = (
        shortfall_p_value([sign * v for v in kept], sign * original, noise)
        if len(kept) >= 2
        else None
    )
    if shortfall <= tolerance:
        verdict = REPRODUCED
    elif p_value is None:
        from scipy import stats

        verdict = WITHIN_NOISE if shortfall <= stats.norm.ppf(0.975) * noise else DIFFERS
    else:
        verdict = WITHIN_NOISE if p_value >= alpha else DIFFERS
    return Judgement(verdict, original, tuple(runs), tuple(kept), noise, difference, p_value)


def worst(verdicts: Mapping[str, str]) -> str:
    """The overall verdict: the worst scenario's."""
    return max(verdicts.values(), key=VERDICT_ORDER.index, default=REPRODUCED)
