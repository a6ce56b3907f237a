"""Raw metrics with their intervals, and which differences between entries are significant: what
`harness eval` prints for one model and `harness sweep` compares across its variants.

A win rate says who beat whom; a competitor tuning one model wants the metric itself and how sure
it is. Each scenario's value is the mean of its run specs' main metric, and its 95% interval a
bootstrap over the evaluated instances, each run spec's resampled on its own (intervals.py's
`stratified_interval`). Two entries scored on the same instances differ significantly on a
scenario when the paired bootstrap interval of their difference (`difference_interval`, paired
by run spec and instance id) excludes 0.

    scores = scenario_scores(metrics)                       # one entry: scenario -> ScenarioScore
    comparison = compare(board, store.metrics(stage), stage, notes={"a": "lora.r=8"})
    to_comparison_markdown(comparison), to_comparison_json(comparison)
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

from harness.leaderboard.intervals import CONFIDENCE, difference_interval, stratified_interval
from harness.leaderboard.model import Leaderboard
from harness.store import Metric


@dataclass(frozen=True)
class ScenarioScore:
    """One scenario's raw main metric for one entry, with its interval (None: no value)."""

    scenario: str
    metric: str
    value: float | None
    low: float | None
    high: float | None
    instances: int  # per-instance values drawn from (0: none stored, the interval is a point)
    run_specs: int
    lower_is_better: bool = False


@dataclass(frozen=True)
class Difference:
    """An entry's metric minus the best entry's on one scenario, over the instances both have."""

    low: float
    high: float

    @property
    def significant(self) -> bool:
        return not self.low <= 0 <= self.high


@dataclass(frozen=True)
class Compared:
    """One entry of a comparison."""

    entry: str
    rank: int | None  # the leaderboard's rank (None: not ranked)
    score: float | None  # the leaderboard's stage score
    status: str
    reason: str
    note: str  # what sets the entry apart (a sweep: its overrides and times)
    scenarios: dict[str, ScenarioScore]
    # against the best entry, per scenario; empty for the best itself
    versus_best: dict[str, Difference] = field(default_factory=dict)


@dataclass(frozen=True)
class Comparison:
    stage: str
    best: str | None  # the leaderboard's first entry
    scenarios: list[str]
    entries: list[Compared]
    confidence: float = CONFIDENCE


def _strata(metrics: Sequence[Metric]) -> list[list[float]]:
    """Each run spec's per-instance values; a run spec without them counts with its value."""
    return [
        list(m.instances.values()) if m.instances else [float(m.value)]
        for m in metrics
        if m.value is not None
    ]


def scenario_scores(metrics: Sequence[Metric]) -> dict[str, ScenarioScore]:
    """Every scenario of one entry's metrics, by name: its raw value and 95% interval."""
    by_scenario: dict[str, list[Metric]] = {}
    for metric in metrics:
        by_scenario.setdefault(metric.scenario, []).append(metric)
    scores = {}
    for scenario, group in sorted(by_scenario.items()):
        strata = _strata(group)
        value = low = high = None
        if strata:
            interval = stratified_interval(strata)
            value, low, high = interval.value, interval.low, interval.high
        scores[scenario] = ScenarioScore(
            scenario=scenario,
            metric=", ".join(sorted({m.metric for m in group if m.metric})),
            value=value,
            low=low,
            high=high,
            instances=sum(len(m.instances) for m in group if m.value is not None),
            run_specs=len(group),
            lower_is_better=any(m.lower_is_better for m in group),
        )
    return scores


def _paired(metrics: Sequence[Metric], scenario: str) -> dict[str, float]:
    return {
        f"{m.run_spec}\t{instance}": value
        for m in metrics
        if m.scenario == scenario
        for instance, value in m.instances.items()
    }


def difference(
    ours: Sequence[Metric], theirs: Sequence[Metric], scenario: str
) -> Difference | None:
    """The paired interval of ours - theirs on `scenario`; None without instances in common."""
    mine, other = _paired(ours, scenario), _paired(theirs, scenario)
    if not set(mine) & set(other):
        return None
    low, high = difference_interval(mine, other)
    return Difference(low, high)


def compare(
    board: Leaderboard,
    metrics: Mapping[str, Sequence[Metric]],
    stage: str,
    *,
    notes: Mapping[str, str] | None = None,
) -> Comparison:
    """The board's entries in its order with their raw metrics, each against the first."""
    rows = [row for row in board.rows if stage in row.stages]
    best = next((row.entry for row in rows if row.rank is not None), None)
    entries = []
    for row in rows:
        own = metrics.get(row.entry, [])
        versus = {}
        if best is not None and row.entry != best:
            for scenario in sorted({m.scenario for m in own}):
                found = difference(own, metrics.get(best, []), scenario)
                if found is not None:
                    versus[scenario] = found
        entries.append(
            Compared(
                entry=row.entry,
                rank=row.rank,
                score=row.stages[stage].score,
                status=row.stages[stage].status or "not run",
                reason=row.stages[stage].reason,
                note=(notes or {}).get(row.entry, ""),
                scenarios=scenario_scores(own),
                versus_best=versus,
            )
        )
    return Comparison(stage, best, list(board.scenarios.get(stage, [])), entries)


# -- rendering (the HTML is html.py's `to_comparison_html`) -----------------------------------


def _number(value: float | None) -> str:
    return "" if value is None or not math.isfinite(value) else f"{value:.3f}"


def score_text(score: ScenarioScore | None) -> str:
    """`0.700 [0.400, 0.900]`; empty without a value."""
    if score is None or score.value is None:
        return ""
    return f"{_number(score.value)} [{_number(score.low)}, {_number(score.high)}]"


def difference_text(found: Difference | None) -> str:
    """`-0.600 [-0.900, -0.300] significant`; empty when not compared."""
    if found is None:
        return ""
    middle = (found.low + found.high) / 2
    verdict = "significant" if found.significant else "not significant"
    return f"{middle:+.3f} [{found.low:+.3f}, {found.high:+.3f}] {verdict}"


def comparison_columns(comparison: Comparison) -> list[str]:
    return [
        "Rank", "Entry", "Score", *comparison.scenarios,
        *(f"{s} vs best" for s in comparison.scenarios), "Status", "Setup",
    ]  # fmt: skip


def comparison_cells(comparison: Comparison, entry: Compared) -> list[str]:
    return [
        "" if entry.rank is None else str(entry.rank),
        entry.entry,
        _number(entry.score),
        *(score_text(entry.scenarios.get(s)) for s in comparison.scenarios),
        *(difference_text(entry.versus_best.get(s)) for s in comparison.scenarios),
        entry.status if not entry.reason else f"{entry.status}: {entry.reason}",
        entry.note,
    ]


def comparison_note(comparison: Comparison) -> str:
    return (
        f"Scenario columns: the raw main metric with its {comparison.confidence:.0%} interval "
        "(a bootstrap over the evaluated instances). vs best: the difference with the best "
        f"entry ({comparison.best or 'none'}) paired by instance, and whether its interval "
        "excludes 0. Score and rank: the leaderboard's (geometric mean of win rates)."
    )


def to_comparison_markdown(comparison: Comparison) -> str:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    header = comparison_columns(comparison)
    lines = [
        f"# Comparison ({comparison.stage})",
        "",
        line(header),
        line(["---"] * len(header)),
        *(line(comparison_cells(comparison, entry)) for entry in comparison.entries),
        "",
        comparison_note(comparison),
    ]
    return "\n".join(lines) + "\n"


def to_comparison_json(comparison: Comparison) -> str:
    data = asdict(comparison)
    for entry, compared in zip(data["entries"], comparison.entries, strict=True):
        for scenario, found in compared.versus_best.items():
            entry["versus_best"][scenario]["significant"] = found.significant
    return json.dumps(data, indent=2, sort_keys=True) + "\n"
