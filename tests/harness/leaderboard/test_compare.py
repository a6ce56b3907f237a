"""Raw metrics with intervals and paired differences (leaderboard/compare.py), over a real store
and the leaderboard built from it; the HTML in the leaderboard's page."""

from __future__ import annotations

import json
from pathlib import Path

from harness.leaderboard.build import build_leaderboard
from harness.leaderboard.compare import (
    compare,
    difference,
    scenario_scores,
    to_comparison_json,
    to_comparison_markdown,
)
from harness.leaderboard.html import to_comparison_html
from harness.store import Metric, Status, Store

IDS = [f"id{i}" for i in range(10)]


def _metric(run_spec: str, scenario: str, values: list[float]) -> Metric:
    return Metric(
        run_spec, scenario, "exact_match", sum(values) / len(values),
        instances=dict(zip(IDS, values, strict=False)),
    )  # fmt: skip


def test_a_scenario_has_its_mean_and_an_interval_around_it() -> None:
    half = _metric("a:1", "a", [1.0, 0.0] * 5)
    all_right = _metric("b:1", "b", [1.0] * 10)
    no_instances = Metric("c:1", "c", "rouge_2", 0.25)  # stored before per-instance values
    failed = Metric("d:1", "d", "exact_match", None, reason="HELM did not finish this run")
    scores = scenario_scores([half, all_right, no_instances, failed])
    assert scores["a"].value == 0.5 and scores["a"].low is not None and scores["a"].high
    assert 0.1 <= scores["a"].low < 0.5 < scores["a"].high <= 0.9
    assert (scores["a"].instances, scores["a"].run_specs) == (10, 1)
    assert (scores["b"].value, scores["b"].low, scores["b"].high) == (1.0, 1.0, 1.0)
    assert (scores["c"].value, scores["c"].low, scores["c"].high, scores["c"].instances) == (
        0.25, 0.25, 0.25, 0,
    )  # fmt: skip
    assert (scores["d"].value, scores["d"].low) == (None, None)
    # Two run specs of one scenario: the mean of their means, each resampled on its own.
    two = scenario_scores([_metric("e:1", "e", [1.0] * 10), _metric("e:2", "e", [0.0] * 4)])
    assert (two["e"].value, two["e"].low, two["e"].high, two["e"].run_specs) == (0.5, 0.5, 0.5, 2)


def test_differences_are_paired_by_instance_and_significant_only_outside_zero() -> None:
    right = [_metric("p", "parity", [1.0] * 10)]
    wrong = [_metric("p", "parity", [0.0] * 10)]
    noisy = [_metric("p", "parity", [1.0, 0.0] * 5)]
    clear = difference(wrong, right, "parity")
    assert clear is not None and (clear.low, clear.high) == (-1.0, -1.0) and clear.significant
    unclear = difference(noisy, [_metric("p", "parity", [0.0, 1.0] * 5)], "parity")
    assert unclear is not None and unclear.low < 0 < unclear.high and not unclear.significant
    assert difference(noisy, right, "other") is None
    other_ids = [Metric("p", "parity", "em", 1.0, instances={"x": 1.0})]
    assert difference(right, other_ids, "parity") is None


def test_compare_orders_by_the_leaderboard_and_renders_md_json_html(tmp_path: Path) -> None:
    values = {"good": [1.0] * 10, "bad": [0.0] * 10, "same": [1.0] * 9 + [0.0]}
    with Store(tmp_path) as store:
        for entry, per_instance in values.items():
            store.add_entry(entry, tmp_path / entry)
            attempt = store.start_attempt(entry, "open")
            store.record_metrics(attempt, [_metric("parity:x", "parity", per_instance)])
            store.record_status(attempt, Status.SCORED, "1 run(s) scored")
        board = build_leaderboard(store)
        metrics = store.metrics("open")
    comparison = compare(board, metrics, "open", notes={"bad": "max_steps=1"})
    assert comparison.best == "good"
    assert [e.entry for e in comparison.entries] == ["good", "same", "bad"]
    by_name = {e.entry: e for e in comparison.entries}
    assert by_name["good"].versus_best == {}
    assert by_name["bad"].versus_best["parity"].significant
    assert not by_name["same"].versus_best["parity"].significant
    assert by_name["bad"].note == "max_steps=1"

    markdown = to_comparison_markdown(comparison)
    assert "| 1 | good | 1.000 | 1.000 [1.000, 1.000] |" in markdown
    assert "-1.000 [-1.000, -1.000] significant" in markdown
    assert "not significant" in markdown
    data = json.loads(to_comparison_json(comparison))
    bad = next(e for e in data["entries"] if e["entry"] == "bad")
    assert bad["versus_best"]["parity"] == {"low": -1.0, "high": -1.0, "significant": True}
    assert bad["scenarios"]["parity"]["value"] == 0.0

    page = to_comparison_html(comparison, board)
    # The leaderboard's page: its style and its board below the comparison's table.
    assert page.startswith("<!doctype html>") and "<style>" in page
    assert page.index('id="comparison"') < page.index('id="scores"')
    assert "-1.000 [-1.000, -1.000] significant" in page
