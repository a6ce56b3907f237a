"""Scores with their uncertainty: a paired bootstrap over the evaluated instances.

HELM scores every entry on a sample of each scenario's instances, and another sample would give
other numbers. The bootstrap draws each run spec's instances with replacement, the same draw for
every entry (they answered the same instances, so their differences are measured in pairs),
recomputes each entry's run-spec means, then the competition's win rates and stage scores
(scoring.py's rule), RESAMPLES times from a fixed SEED, and reads off

    score interval   the 95% percentile interval of the entry's stage score
    rank interval    the 95% interval of its competition rank (1 = best) among the resamples
    tied with        the entries whose score difference with it has a 95% interval containing 0:
                     these instances cannot tell their order apart

    stage = stage_intervals(values, instances, run_specs)   # the leaderboard, per stage
    low, high = mean_interval([1.0, 0.0, 1.0])                # the mean of one sample
    interval = stratified_interval([[1.0, 0.0], [0.5]])       # a mean of strata's means, with
                                                              # its standard error (reproduce)
    low, high = difference_interval(ours, theirs)             # paired by instance id: ours - theirs

The same inputs give the same intervals (seeded). A run spec an entry has no per-instance values
for (stored before they were kept, or HELM's per-instance file unreadable) counts with its stored
value in every resample, so it adds no width. Pure: values in, numbers out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from harness.leaderboard.scoring import RunSpec

RESAMPLES = 1000
SEED = 0
CONFIDENCE = 0.95

Array = NDArray[np.float64]


@dataclass(frozen=True)
class Bootstrap:
    """How a stage's intervals were drawn, stated beside them."""

    resamples: int
    seed: int
    confidence: float
    instances: int  # evaluated instances drawn from, over all run specs


@dataclass(frozen=True)
class ScoreInterval:
    """One entry's stage score and rank with their uncertainty."""

    low: float
    high: float
    rank_low: int  # best rank in the interval (1 = first)
    rank_high: int
    tied_with: tuple[str, ...]  # entries this one's order against is not distinguishable

    @property
    def tied(self) -> bool:
        return bool(self.tied_with)


@dataclass(frozen=True)
class StageIntervals:
    bootstrap: Bootstrap
    entries: dict[str, ScoreInterval]


def _counts(rng: np.random.Generator, size: int, resamples: int) -> NDArray[np.int64]:
    """How many times each of `size` instances is drawn, per resample: (resamples, size)."""
    draws = rng.integers(0, size, size=(resamples, size))
    offsets = np.arange(resamples)[:, None] * size
    return np.bincount((draws + offsets).ravel(), minlength=resamples * size).reshape(
        resamples, size
    )


def _bounds(samples: Array, confidence: float, axis: int = 0) -> tuple[Array, Array]:
    tail = (1 - confidence) / 2
    low, high = np.quantile(samples, [tail, 1 - tail], axis=axis)
    return low, high


def mean_interval(
    values: Sequence[float],
    *,
    resamples: int = RESAMPLES,
    seed: int = SEED,
    confidence: float = CONFIDENCE,
) -> tuple[float, float]:
    """The percentile bootstrap interval of the mean of `values` (per-instance outcomes)."""
    sample = np.asarray(values, dtype=float)
    if sample.size == 0:
        raise ValueError("the interval of the mean of nothing is undefined")
    counts = _counts(np.random.default_rng(seed), sample.size, resamples)
    low, high = _bounds(counts @ sample / sample.size, confidence)
    return float(low), float(high)


@dataclass(frozen=True)
class Interval:
    """A bootstrap estimate: the value, its standard error and its percentile interval."""

    value: float
    standard_error: float
    low: float
    high: float


def stratified_interval(
    strata: Sequence[Sequence[float]],
    *,
    resamples: int = RESAMPLES,
    seed: int = SEED,
    confidence: float = CONFIDENCE,
) -> Interval:
    """The mean of the strata's means (a scenario's score over its run specs), each stratum's
    values resampled on their own: a stratum of one value counts with that value every time.
    (scipy's `bootstrap` refuses strata of one, which small instance budgets have.)"""
    groups = [np.asarray(values, dtype=float) for values in strata]
    if not groups or any(group.size == 0 for group in groups):
        raise ValueError("every stratum needs at least one value")
    rng = np.random.default_rng(seed)
    means = sum(
        (_counts(rng, group.size, resamples) @ group / group.size for group in groups),
        start=np.zeros(resamples),
    ) / len(groups)
    low, high = _bounds(means, confidence)
    value = float(np.mean([group.mean() for group in groups]))
    return Interval(value, float(means.std(ddof=1)), float(low), float(high))


def difference_interval(
    ours: Mapping[str, float],
    theirs: Mapping[str, float],
    *,
    resamples: int = RESAMPLES,
    seed: int = SEED,
    confidence: float = CONFIDENCE,
) -> tuple[float, float]:
    """The interval of mean(ours) - mean(theirs) over the instance ids both have, drawn in
    pairs: an interval that excludes 0 says the two differ on these instances."""
    common = sorted(set(ours) & set(theirs))
    if not common:
        raise ValueError("no instance in common: the two cannot be compared")
    return mean_interval(
        [ours[i] - theirs[i] for i in common],
        resamples=resamples,
        seed=seed,
        confidence=confidence,
    )


def _resampled_means(
    rng: np.random.Generator,
    entries: Sequence[str],
    points: Mapping[str, float | None],
    instances: Mapping[str, Mapping[str, float]],
    resamples: int,
) -> tuple[Array, int]:
    """(resamples, entries) values of one run spec, and how many instances were drawn from.

    An entry's resampled value is its stored value moved by how much the resample moves its
    per-instance mean, so that a stored value shifted on purpose (scoring.ranked_by_tier) keeps
    its shift; NaN where the entry has no value (it loses, as in scoring.win_rates)."""
    ids = sorted({i for entry in entries for i in instances.get(entry, {})})
    column_of = {instance: k for k, instance in enumerate(ids)}
    values = np.zeros((len(ids), len(entries)))
    present = np.zeros((len(ids), len(entries)))
    for column, entry in enumerate(entries):
        own = instances.get(entry, {})
        rows = [column_of[i] for i in own]
        values[rows, column] = list(own.values())
        present[rows, column] = 1.0
    counts = _counts(rng, len(ids), resamples).astype(float)
    drawn = counts @ present  # (resamples, entries): one matrix product for every entry
    with np.errstate(invalid="ignore", divide="ignore"):
        means = (counts @ values) / drawn
        full = values.sum(axis=0) / present.sum(axis=0)
    stored = np.array([np.nan if (p := points.get(e)) is None else p for e in entries])
    # No per-instance values, or a resample that drew none of the entry's instances: no move.
    moved = stored + np.nan_to_num(means - full, nan=0.0, posinf=0.0, neginf=0.0)
    return np.broadcast_to(moved, (resamples, len(entries))).copy(), len(ids)


def _win_rates(values: Array, lower_is_better: bool) -> Array:
    """scoring.win_rates for every resample at once: (resamples, entries) -> the same shape."""
    present = ~np.isnan(values)
    size = values.shape[1]
    if size == 1:
        return present.astype(float)
    # scipy.stats takes ~0.5 s to import: not at the start of every command.
    from scipy.stats import rankdata

    # Average ranks among the present entries (1-based) count wins as 1 and ties as 1/2.
    ranked = rankdata(-values if lower_is_better else values, axis=1, nan_policy="omit")
    missing = size - present.sum(axis=1, keepdims=True)
    points = np.where(present, ranked - 1 + missing, 0.0)
    return np.asarray(points / (size - 1), dtype=float)


def stage_intervals(
    values: Mapping[str, Mapping[str, float | None]],
    instances: Mapping[str, Mapping[str, Mapping[str, float]]],
    run_specs: Mapping[str, RunSpec],
    *,
    resamples: int = RESAMPLES,
    seed: int = SEED,
    confidence: float = CONFIDENCE,
) -> StageIntervals | None:
    """Intervals of every entry's stage score (scoring.score_stage's rule).

    `values`: entry -> run spec -> main metric value, as score_stage takes them; `instances`:
    entry -> run spec -> instance id -> value. None when no run spec has per-instance values:
    there is nothing to resample.
    """
    entries = sorted(values)
    if not entries or not run_specs:
        return None
    rng = np.random.default_rng(seed)
    scenarios: dict[str, list[Array]] = {}
    drawn_from = 0
    for name, spec in sorted(run_specs.items()):
        points = {entry: values[entry].get(name) for entry in entries}
        per_instance = {entry: instances.get(entry, {}).get(name, {}) for entry in entries}
        resampled, size = _resampled_means(rng, entries, points, per_instance, resamples)
        drawn_from += size
        scenarios.setdefault(spec.scenario, []).append(_win_rates(resampled, spec.lower_is_better))
    if not drawn_from:
        return None
    means = np.stack([np.mean(rates, axis=0) for rates in scenarios.values()], axis=2)
    # The geometric mean, zero when any scenario was never won (scoring.geometric_mean).
    with np.errstate(divide="ignore"):
        logs = np.log(means)
    scores = np.where((means > 0).all(axis=2), np.exp(logs.mean(axis=2)), 0.0)
    from scipy.stats import rankdata

    ranks = rankdata(-scores, axis=1, method="min")
    low, high = _bounds(scores, confidence)
    rank_low, rank_high = _bounds(ranks.astype(float), confidence)
    result: dict[str, ScoreInterval] = {}
    for i, entry in enumerate(entries):
        difference_low, difference_high = _bounds(scores[:, [i]] - scores, confidence)
        tied = tuple(
            other
            for j, other in enumerate(entries)
            if j != i and difference_low[j] <= 0 <= difference_high[j]
        )
        result[entry] = ScoreInterval(
            float(low[i]),
            float(high[i]),
            int(np.floor(rank_low[i])),
            int(np.ceil(rank_high[i])),
            tied,
        )
    return StageIntervals(Bootstrap(resamples, seed, confidence, drawn_from), result)
