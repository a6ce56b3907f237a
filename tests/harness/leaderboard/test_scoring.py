"""Leaderboard arithmetic against values worked out by hand (the comments show the working)."""

from __future__ import annotations

import math

import pytest

from harness.leaderboard.scoring import (
    RunSpec,
    geometric_mean,
    kendall_tau_b,
    rank_agreement,
    ranks,
    score_stage,
    spearman,
    standings,
    win_rates,
)

RUN_SPECS = {
    "mmlu:a": RunSpec("mmlu"),
    "mmlu:b": RunSpec("mmlu"),
    "gsm": RunSpec("gsm8k"),
    "ppl": RunSpec("lm", lower_is_better=True),
}
METRICS: dict[str, dict[str, float | None]] = {
    "A": {"mmlu:a": 0.5, "mmlu:b": 0.4, "gsm": 0.2, "ppl": 10.0},
    "B": {"mmlu:a": 0.5, "mmlu:b": 0.6, "ppl": 12.0},  # no gsm score: loses it to everyone
    "C": {"mmlu:a": 0.3, "mmlu:b": 0.4, "gsm": 0.1, "ppl": 8.0},
}


def test_win_rates_count_ties_half_and_missing_as_lost() -> None:
    # A ties B (1/2) and beats C (1): 1.5 / 2 others.
    assert win_rates({"A": 0.5, "B": 0.5, "C": 0.3}, "ABC") == {"A": 0.75, "B": 0.75, "C": 0.0}
    # B has no value: A and C both beat it; C loses to A.
    assert win_rates({"A": 0.2, "C": 0.1}, "ABC") == {"A": 1.0, "B": 0.0, "C": 0.5}
    # Two entries without a value both lose to each other rather than tie.
    assert win_rates({"A": 0.2, "B": None, "C": math.nan}, "ABC") == {"A": 1.0, "B": 0.0, "C": 0.0}


def test_win_rates_lower_is_better() -> None:
    rates = win_rates({"A": 10.0, "B": 12.0, "C": 8.0}, "ABC", lower_is_better=True)
    assert rates == {"A": 0.5, "B": 0.0, "C": 1.0}


def test_a_lone_entry_wins_only_with_a_value() -> None:
    assert win_rates({"A": 0.1}, ["A"]) == {"A": 1.0}
    assert win_rates({}, ["A"]) == {"A": 0.0}


def test_score_stage_by_hand() -> None:
    stage = score_stage(METRICS, RUN_SPECS)
    assert stage.run_spec_win_rates["mmlu:b"] == {"A": 0.25, "B": 1.0, "C": 0.25}
    # A: mmlu (0.75 + 0.25) / 2 = 0.5, gsm8k 1.0, lm 0.5.
    assert stage.scenario_win_rates["A"] == {"gsm8k": 1.0, "lm": 0.5, "mmlu": 0.5}
    assert stage.scenario_win_rates["C"] == {"gsm8k": 0.5, "lm": 1.0, "mmlu": 0.125}
    assert stage.scores["A"] == pytest.approx(0.25 ** (1 / 3))  # 0.62996
    assert stage.scores["B"] == 0.0  # never won gsm8k nor lm
    assert stage.scores["C"] == pytest.approx(0.0625 ** (1 / 3))  # 0.39685


def test_score_stage_counts_listed_entries_without_metrics_and_ignores_unlisted_run_specs() -> None:
    stage = score_stage({"A": {"gsm": 0.2, "extra": 1.0}}, {"gsm": RunSpec("gsm8k")}, ["A", "D"])
    assert stage.scores == {"A": 1.0, "D": 0.0}
    assert set(stage.run_spec_win_rates) == {"gsm"}
    with pytest.raises(ValueError, match="no run specs"):
        score_stage(METRICS, {})


def test_geometric_mean() -> None:
    assert geometric_mean([0.5, 1.0, 0.5]) == pytest.approx(0.25 ** (1 / 3))
    assert geometric_mean([0.9, 0.0]) == 0.0
    with pytest.raises(ValueError):
        geometric_mean([])
    with pytest.raises(ValueError):
        geometric_mean([-0.1, 0.5])


def test_ranks_share_ties_and_skip() -> None:
    assert ranks({"A": 0.9, "B": 0.5, "C": 0.9, "D": 0.1}) == {"A": 1, "B": 3, "C": 1, "D": 4}


def test_standings_weigh_closed_twice_open() -> None:
    open_scores = score_stage(METRICS, RUN_SPECS).scores
    closed_scores = {"A": 0.2, "B": 0.5, "C": 0.8}
    rows = standings(open_scores, closed_scores)
    assert [row.entry for row in rows] == ["C", "A", "B"]
    assert [row.rank for row in rows] == [1, 2, 3]
    by_entry = {row.entry: row for row in rows}
    assert by_entry["A"].final == pytest.approx((0.25 ** (1 / 3) + 2 * 0.2) / 3)  # 0.34332
    assert by_entry["B"].final == pytest.approx(1 / 3)
    assert by_entry["C"].final == pytest.approx((0.0625 ** (1 / 3) + 2 * 0.8) / 3)  # 0.66562


def test_standings_with_one_stage_or_an_entry_missing_from_one() -> None:
    only_closed = standings(None, {"A": 0.2, "B": 0.5})
    assert [(row.entry, row.final, row.open) for row in only_closed] == [
        ("B", 0.5, None),
        ("A", 0.2, None),
    ]
    both = {row.entry: row for row in standings({"A": 0.9}, {"A": 0.3, "B": 0.6})}
    assert both["B"].open == 0.0
    assert both["B"].final == pytest.approx(0.4)
    assert both["A"].final == pytest.approx(0.5)
    assert standings(None, None) == []


def test_kendall_and_spearman_by_hand() -> None:
    x, y = [1.0, 2.0, 3.0, 4.0, 5.0], [2.0, 1.0, 4.0, 3.0, 5.0]
    assert kendall_tau_b(x, y) == pytest.approx(0.6)  # 8 concordant, 2 discordant, 10 pairs
    assert spearman(x, y) == pytest.approx(0.8)  # 1 - 6 * 4 / (5 * 24)
    assert kendall_tau_b(x, x[::-1]) == pytest.approx(-1.0)
    assert spearman(x, x[::-1]) == pytest.approx(-1.0)


def test_kendall_and_spearman_with_ties_by_hand() -> None:
    x, y = [1.0, 2.0, 2.0, 3.0], [1.0, 2.0, 3.0, 3.0]
    # 4 concordant, 0 discordant, one tie in each: 4 / sqrt((6 - 1) * (6 - 1)).
    assert kendall_tau_b(x, y) == pytest.approx(0.8)
    # Average ranks [1, 2.5, 2.5, 4] and [1, 2, 3.5, 3.5]: 3.75 / sqrt(4.5 * 4.5).
    assert spearman(x, y) == pytest.approx(3.75 / 4.5)


def test_rank_agreement_is_undefined_without_variation_or_pairs() -> None:
    assert kendall_tau_b([1.0, 1.0], [1.0, 2.0]) is None
    assert spearman([1.0, 1.0], [1.0, 2.0]) is None
    agreement = rank_agreement({"A": 0.3, "B": 0.1, "X": 0.5}, {"A": 0.9, "B": 0.2, "Y": 0.0})
    assert (agreement.entries, agreement.kendall_tau_b, agreement.spearman) == (2, 1.0, 1.0)
    assert rank_agreement({"A": 0.3}, {"A": 0.9}).kendall_tau_b is None
    with pytest.raises(ValueError):
        spearman([1.0], [1.0, 2.0])
