"""Leaderboard arithmetic: win rates, per-scenario means, geometric means, ranks, rank agreement.

The competition's rule, applied per stage:

    per run spec     each entry's win rate against every other entry on the main metric
                     (a win counts 1, a tie 1/2; an entry without a value loses to every entry
                     with one, and two entries without a value both lose: neither earned a point)
    per scenario     the mean of the entry's win rates over the scenario's run specs
    stage score      the geometric mean of the entry's per-scenario mean win rates
    final score      1/3 open + 2/3 closed when both stages exist, else the one stage present

Everything here is pure: values in, numbers out. The store and HELM are read elsewhere.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from harness.competition import STAGES


@dataclass(frozen=True)
class RunSpec:
    """How one run spec counts: the scenario it belongs to and the direction of its main metric."""

    scenario: str
    lower_is_better: bool = False


@dataclass(frozen=True)
class StageScores:
    """One stage's leaderboard arithmetic, kept whole so reports can show every step of it."""

    run_spec_win_rates: dict[str, dict[str, float]]  # run spec -> entry -> win rate
    scenario_win_rates: dict[str, dict[str, float]]  # entry -> scenario -> mean win rate
    scores: dict[str, float]  # entry -> geometric mean of its scenario win rates


@dataclass(frozen=True)
class Standing:
    entry: str
    open: float | None
    closed: float | None
    final: float
    rank: int


@dataclass(frozen=True)
class RankAgreement:
    """How alike two rankings of the same entries are (None where undefined, e.g. n < 2)."""

    entries: int
    kendall_tau_b: float | None
    spearman: float | None


def win_rates(
    values: Mapping[str, float | None], entries: Collection[str], *, lower_is_better: bool = False
) -> dict[str, float]:
    """Each entry's share of the other entries it beats on one run spec; ties count half.

    `values` maps entry -> main metric value; an entry in `entries` that is missing there (or maps
    to None or NaN) got no score and loses to everyone. A lone entry wins if it has a value.
    """
    present = {
        entry: value
        for entry in entries
        if (value := values.get(entry)) is not None and not math.isnan(value)
    }
    others = len(entries) - 1
    rates: dict[str, float] = {}
    for entry in entries:
        if entry not in present:
            rates[entry] = 0.0
            continue
        if others == 0:
            rates[entry] = 1.0
            continue
        mine = present[entry]
        points = 0.0
        for other in entries:
            if other == entry:
                continue
            theirs = present.get(other)
            if theirs is None:
                points += 1.0
            elif mine == theirs:
                points += 0.5
            elif (mine < theirs) if lower_is_better else (mine > theirs):
                points += 1.0
        rates[entry] = points / others
    return rates


def geometric_mean(values: Sequence[float]) -> float:
    """Geometric mean of non-negative numbers; any zero makes it zero (a scenario never won)."""
    if not values:
        raise ValueError("the geometric mean of nothing is undefined")
    if any(value < 0 for value in values):
        raise ValueError(f"geometric mean of negative numbers: {values}")
    if any(value == 0 for value in values):
        return 0.0
    return math.exp(math.fsum(math.log(value) for value in values) / len(values))


def score_stage(
    metrics: Mapping[str, Mapping[str, float | None]],
    run_specs: Mapping[str, RunSpec],
    entries: Collection[str] | None = None,
) -> StageScores:
    """Score one stage from `metrics` (entry -> run spec -> main metric value).

    Only the run specs in `run_specs` count; `entries` defaults to every entry in `metrics`, and an
    entry listed there with no metrics at all scores 0 everywhere.
    """
    if not run_specs:
        raise ValueError("no run specs to score")
    pool = sorted(metrics if entries is None else entries)
    per_run_spec = {
        name: win_rates(
            {entry: metrics.get(entry, {}).get(name) for entry in pool},
            pool,
            lower_is_better=spec.lower_is_better,
        )
        for name, spec in sorted(run_specs.items())
    }
    members: dict[str, list[str]] = {}
    for name in per_run_spec:
        members.setdefault(run_specs[name].scenario, []).append(name)
    per_scenario = {
        entry: {
            scenario: math.fsum(per_run_spec[name][entry] for name in names) / len(names)
            for scenario, names in sorted(members.items())
        }
        for entry in pool
    }
    scores = {entry: geometric_mean(list(per_scenario[entry].values())) for entry in pool}
    return StageScores(per_run_spec, per_scenario, scores)


def ranks(scores: Mapping[str, float]) -> dict[str, int]:
    """Competition ranks, best first: equal scores share a rank and the next rank is skipped."""
    ordered = sorted(scores.values(), reverse=True)
    return {entry: ordered.index(score) + 1 for entry, score in scores.items()}


def standings(
    open_scores: Mapping[str, float] | None, closed_scores: Mapping[str, float] | None
) -> list[Standing]:
    """The final leaderboard, best first (ties by entry name).

    With both stages, an entry missing from one of them counts 0 there.
    """
    if open_scores is None and closed_scores is None:
        return []
    entries = set(open_scores or {}) | set(closed_scores or {})
    opened, closed = _over(entries, open_scores), _over(entries, closed_scores)
    if opened is not None and closed is not None:
        open_weight, closed_weight = STAGES["open"].weight, STAGES["closed"].weight
        finals = {e: open_weight * opened[e] + closed_weight * closed[e] for e in entries}
    else:
        finals = opened or closed or {}
    ranked = ranks(finals)
    rows = [
        Standing(
            entry=entry,
            open=None if opened is None else opened[entry],
            closed=None if closed is None else closed[entry],
            final=finals[entry],
            rank=ranked[entry],
        )
        for entry in entries
    ]
    return sorted(rows, key=lambda row: (row.rank, row.entry))


def _over(entries: Collection[str], scores: Mapping[str, float] | None) -> dict[str, float] | None:
    return None if scores is None else {entry: scores.get(entry, 0.0) for entry in entries}


def _average_ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks; tied values share the mean of the ranks they span (Spearman's convention)."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    result = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for position in range(start, end + 1):
            result[order[position]] = (start + end) / 2 + 1
        start = end + 1
    return result


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rho: Pearson's correlation of average ranks (exact with ties)."""
    if len(x) != len(y):
        raise ValueError("spearman needs two sequences of the same length")
    rx, ry = _average_ranks(x), _average_ranks(y)
    n = len(x)
    if n < 2:
        return None
    mx, my = sum(rx) / n, sum(ry) / n
    sxy = math.fsum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    sxx = math.fsum((a - mx) ** 2 for a in rx)
    syy = math.fsum((b - my) ** 2 for b in ry)
    if sxx == 0 or syy == 0:
        return None
    return sxy / math.sqrt(sxx * syy)


def kendall_tau_b(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Kendall's tau-b: (concordant - discordant) / sqrt((n0 - ties_x) * (n0 - ties_y))."""
    if len(x) != len(y):
        raise ValueError("kendall_tau_b needs two sequences of the same length")
    concordant = discordant = ties_x = ties_y = 0
    n = len(x)
    for i in range(n):
        for j in range(i + 1, n):
            dx, dy = x[i] - x[j], y[i] - y[j]
            ties_x += dx == 0
            ties_y += dy == 0
            if dx * dy > 0:
                concordant += 1
            elif dx * dy < 0:
                discordant += 1
    pairs = n * (n - 1) // 2
    denominator = math.sqrt((pairs - ties_x) * (pairs - ties_y))
    if denominator == 0:
        return None
    return (concordant - discordant) / denominator


def rank_agreement(first: Mapping[str, float], second: Mapping[str, float]) -> RankAgreement:
    """Agreement of two stages' scores over the entries scored in both."""
    common = sorted(set(first) & set(second))
    x = [first[entry] for entry in common]
    y = [second[entry] for entry in common]
    return RankAgreement(len(common), kendall_tau_b(x, y), spearman(x, y))


def ranked_by_tier(
    metrics: Mapping[str, Mapping[str, float | None]],
    reached: Mapping[str, int],
    lower_is_better: Mapping[str, bool],
) -> dict[str, dict[str, float | None]]:
    """`metrics` (entry -> run spec -> value) shifted so that a later tier wins every comparison.

    Win rates are computed over the whole field, and an entry dropped after a cheap tier has a
    noisier value that may beat a finalist by luck; once shifted, finalists are ordered among
    themselves exactly as on the full budget and above everyone they left behind. Entries missing
    from `reached` count as tier 0.
    """
    values = [abs(v) for row in metrics.values() for v in row.values() if v is not None]
    step = 2 * max(values, default=0.0) + 1
    shifted: dict[str, dict[str, float | None]] = {}
    for entry, row in metrics.items():
        tier = reached.get(entry, 0)
        shifted[entry] = {
            name: None
            if value is None
            else value + (-tier * step if lower_is_better.get(name) else tier * step)
            for name, value in row.items()
        }
    return shifted


_COUNT = re.compile(r"(?<=[:,])max_eval_instances=\d+,?")


def same_run_spec(run_spec: str) -> str:
    """A stored run spec without its instance count: HELM names the runs of each tier apart
    (`mmlu:subject=anatomy,max_eval_instances=10`), and they are the same run spec to score."""
    return _COUNT.sub("", run_spec).rstrip(",:")
