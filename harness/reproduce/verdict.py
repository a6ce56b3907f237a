"""A reproduction's verdict: the reproduced runs' scores beside the original's, per scenario and
as the stage score against the original field, judged by harness/reproduce/stats.py.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from harness.leaderboard.intervals import Interval
from harness.leaderboard.scoring import RunSpec, ranks, score_stage
from harness.reproduce.options import Comparison, ScenarioComparison, Verdict
from harness.reproduce.stats import VERDICT_ORDER, Judgement, judge_runs, worst
from harness.store import Metric

STAGE_SCORE = "stage score"


def compare(
    name: str,
    original: Mapping[str, Sequence[Metric]],
    reproduced: Sequence[Metric],
) -> Comparison:
    """Per-scenario means of the main metric, and the stage score against the original field
    with this entry's metrics swapped for the reproduced ones."""

    def by_scenario(metrics: Sequence[Metric]) -> dict[str, float | None]:
        values: dict[str, list[float | None]] = {}
        for metric in metrics:
            values.setdefault(metric.scenario, []).append(metric.value)
        return {
            scenario: None
            if None in found
            else math.fsum(v for v in found if v is not None) / len(found)
            for scenario, found in values.items()
        }

    mine, theirs = by_scenario(original[name]), by_scenario(reproduced)
    lower = {m.scenario for m in original[name] if m.lower_is_better}
    scenarios = tuple(
        ScenarioComparison(scenario, mine.get(scenario), theirs.get(scenario), scenario in lower)
        for scenario in sorted(set(mine) | set(theirs))
    )
    run_specs = {
        m.run_spec: RunSpec(m.scenario, m.lower_is_better) for ms in original.values() for m in ms
    }
    field_values = {entry: {m.run_spec: m.value for m in ms} for entry, ms in original.items()}
    before = score_stage(field_values, run_specs).scores
    swapped = field_values | {name: {m.run_spec: m.value for m in reproduced}}
    after = score_stage(swapped, run_specs).scores
    return Comparison(
        scenarios=scenarios,
        original_score=before[name],
        reproduced_score=after[name],
        original_rank=ranks(before)[name],
        reproduced_rank=ranks(after)[name],
        field_size=len(before),
    )


def judge(
    comparisons: Sequence[Comparison],
    tolerance: float,
    noise: Mapping[str, Interval] | None = None,
) -> tuple[Verdict, str, dict[str, Judgement]]:
    """The verdict of one or more reproduced runs (their comparisons) against the original: per
    scenario and for the stage score (harness/reproduce/stats.py), the worst one counting.
    `noise`: the original's bootstrap interval per scenario (none measured: no noise)."""
    first = comparisons[0]
    missing = sorted({s.scenario for c in comparisons for s in c.scenarios if s.difference is None})
    if missing:
        return Verdict.DIFFERS, f"no reproduced value for {', '.join(missing)}", {}
    judgements: dict[str, Judgement] = {}
    for i, scenario in enumerate(first.scenarios):
        assert scenario.original is not None
        values = [c.scenarios[i].reproduced for c in comparisons]
        found = (noise or {}).get(scenario.scenario)
        judgements[scenario.scenario] = judge_runs(
            scenario.original,
            [v for v in values if v is not None],
            found.standard_error if found else 0.0,
            tolerance,
            lower_is_better=scenario.lower_is_better,
        )
    judgements[STAGE_SCORE] = judge_runs(
        first.original_score, [c.reproduced_score for c in comparisons], 0.0, tolerance
    )
    verdict = Verdict(worst({k: j.verdict for k, j in judgements.items()}))
    # The scenario behind the verdict: the worst verdict, then the largest shortfall.
    name, judgement = max(
        ((k, j) for k, j in judgements.items() if k != STAGE_SCORE),
        key=lambda item: (VERDICT_ORDER.index(item[1].verdict), abs(item[1].difference)),
    )
    runs = "the reproduced run" if len(comparisons) == 1 else f"{len(judgement.kept)} runs' mean"
    stage = judgements[STAGE_SCORE]
    summary = (
        f"largest difference {judgement.difference:+.4f} on {name} ({judgement.original:.4f} -> "
        f"{runs} {judgement.mean:.4f})"
        + ("" if judgement.p_value is None else f", one-sided p = {judgement.p_value:.3g}")
        + f", evaluation noise (s.e.) {judgement.noise:.4f}; tolerance {tolerance:g}; "
        f"stage score {stage.original:.4f} -> {stage.mean:.4f} ({stage.verdict})"
    )
    if verdict is Verdict.REPRODUCED:
        summary = f"every scenario within tolerance or better: {summary}"
    return verdict, summary, judgements
