"""Score and rank intervals: the bootstrap over evaluated instances, alone and on a leaderboard
built from a real results store."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path

import pytest

from harness.leaderboard.build import build_leaderboard
from harness.leaderboard.figures import figures
from harness.leaderboard.html import entry_page, entry_pages, to_html
from harness.leaderboard.intervals import (
    RESAMPLES,
    SEED,
    difference_interval,
    mean_interval,
    stage_intervals,
)
from harness.leaderboard.scoring import RunSpec, score_stage
from harness.leaderboard.text import to_json, to_markdown
from harness.store import Metric, Status, Step, Store

RUN_SPECS = {f"{scenario}:{k}": RunSpec(scenario) for scenario in ("mmlu", "gsm") for k in (1, 2)}
INSTANCES = 200


def outcomes(accuracy: float, seed: int) -> dict[str, dict[str, float]]:
    """run spec -> instance id -> 0/1, each instance right with probability `accuracy`."""
    rng = random.Random(seed)
    return {
        name: {f"id{i}": float(rng.random() < accuracy) for i in range(INSTANCES)}
        for name in RUN_SPECS
    }


# `twin-a` and `twin-b` are the same model answering the same instances with independent
# noise; `strong` and `weak` differ by far more than any resample can move.
FIELD = {
    "strong": outcomes(0.9, 1),
    "twin-a": outcomes(0.5, 2),
    "twin-b": outcomes(0.5, 3),
    "weak": outcomes(0.1, 4),
}


def points(instances: dict[str, dict[str, dict[str, float]]]) -> dict[str, dict[str, float | None]]:
    return {
        entry: {name: sum(v.values()) / len(v) for name, v in specs.items()}
        for entry, specs in instances.items()
    }


def test_noise_is_tied_and_a_real_difference_is_not() -> None:
    stage = stage_intervals(points(FIELD), FIELD, RUN_SPECS)
    assert stage is not None
    assert (stage.bootstrap.resamples, stage.bootstrap.seed) == (RESAMPLES, SEED)
    assert stage.bootstrap.instances == INSTANCES * len(RUN_SPECS)
    scores = score_stage(points(FIELD), RUN_SPECS).scores
    twins = stage.entries["twin-a"], stage.entries["twin-b"]
    assert twins[0].tied_with == ("twin-b",) and twins[1].tied_with == ("twin-a",)
    assert twins[0].tied and twins[1].tied
    # They share ranks 2 and 3 in either order; the others' ranks are certain.
    assert {(t.rank_low, t.rank_high) for t in twins} == {(2, 3)}
    strong, weak = stage.entries["strong"], stage.entries["weak"]
    assert (strong.rank_low, strong.rank_high, strong.tied_with) == (1, 1, ())
    assert (weak.rank_low, weak.rank_high, weak.tied_with) == (4, 4, ())
    for entry, interval in stage.entries.items():
        assert interval.low <= scores[entry] <= interval.high, entry
    assert twins[0].high > twins[0].low  # noise shows as width


def test_the_same_inputs_give_the_same_intervals_and_the_seed_is_used() -> None:
    twins = {entry: FIELD[entry] for entry in ("twin-a", "twin-b")}
    first = stage_intervals(points(twins), twins, RUN_SPECS)
    assert first == stage_intervals(points(twins), twins, RUN_SPECS)
    other = stage_intervals(points(twins), twins, RUN_SPECS, seed=SEED + 1)
    assert other is not None and first is not None
    assert other.bootstrap.seed == SEED + 1 and other.entries != first.entries


@pytest.mark.parametrize("seed", range(5))
def test_without_variation_the_interval_is_score_stages_score(seed: int) -> None:
    # Every instance of a run spec has the entry's value: each resample is the stored values, so
    # the vectorized win rates must give exactly scoring.py's scores (ties, missing values,
    # lower-is-better run specs included).
    rng = random.Random(seed)
    specs = {
        "a:1": RunSpec("a"),
        "a:2": RunSpec("a"),
        "b:1": RunSpec("b"),
        "ppl": RunSpec("lm", lower_is_better=True),
    }
    entries = [f"e{k}" for k in range(rng.randint(1, 7))]
    values: dict[str, dict[str, float | None]] = {
        entry: {name: rng.choice([None, 0.0, 0.25, 0.5, 1.0]) for name in specs}
        for entry in entries
    }
    instances = {
        entry: {
            name: {f"id{i}": value for i in range(5)}
            for name, value in row.items()
            if value is not None
        }
        for entry, row in values.items()
    }
    instances[entries[0]]["a:1"] = {}  # no per-instance values: its stored value counts as is
    stage = stage_intervals(values, instances, specs, resamples=50)
    scores = score_stage(values, specs).scores
    if stage is None:  # possible only if nobody has a per-instance value
        assert not any(any(row.values()) for row in instances.values())
        return
    for entry in entries:
        interval = stage.entries[entry]
        assert interval.low == pytest.approx(scores[entry])
        assert interval.high == pytest.approx(scores[entry])


def test_nothing_to_resample_gives_no_intervals() -> None:
    values: dict[str, dict[str, float | None]] = {"a": {"x:1": 0.5}, "b": {"x:1": 0.2}}
    assert stage_intervals(values, {}, {"x:1": RunSpec("x")}) is None
    assert stage_intervals({}, {}, {"x:1": RunSpec("x")}) is None


def test_mean_and_difference_intervals() -> None:
    sample = [1.0] * 60 + [0.0] * 40
    low, high = mean_interval(sample)
    assert low < 0.6 < high and high - low < 0.25
    wider = mean_interval(sample[::10])  # ten instances say less than a hundred
    assert wider[1] - wider[0] > high - low
    assert mean_interval([0.5] * 10) == (0.5, 0.5)

    strong, weak = FIELD["strong"]["mmlu:1"], FIELD["weak"]["mmlu:1"]
    assert difference_interval(strong, weak)[0] > 0
    twins = difference_interval(FIELD["twin-a"]["mmlu:1"], FIELD["twin-b"]["mmlu:1"])
    assert twins[0] < 0 < twins[1]
    with pytest.raises(ValueError, match="no instance in common"):
        difference_interval({"id1": 1.0}, {"id2": 1.0})
    with pytest.raises(ValueError, match="mean of nothing"):
        mean_interval([])


def test_the_leaderboard_shows_intervals_from_the_stored_instances(tmp_path: Path) -> None:
    with Store(tmp_path) as store:
        for entry, specs in {**FIELD, "broken": {}}.items():
            store.add_entry(entry, tmp_path / entry)
            attempt = store.start_attempt(entry, "open")
            if not specs:
                store.record_status(attempt, Status.BUILD_FAILED, "no")
                continue
            store.record_metrics(
                attempt,
                [
                    Metric(name, RUN_SPECS[name].scenario, "exact_match", value, instances=v)
                    for (name, v), value in zip(
                        specs.items(), points({entry: specs})[entry].values(), strict=True
                    )
                ],
            )
            step = store.start_step(attempt, Step.EVALUATE)
            store.finish_step(step, ok=True)
            store.record_status(attempt, Status.SCORED, "")
        assert store.metrics("open")["twin-a"][0].instances == FIELD["twin-a"]["gsm:1"]
        board = build_leaderboard(store)

    assert set(board.bootstrap) == {"open"}
    rows = {row.entry: row for row in board.rows}
    assert rows["twin-a"].stages["open"].interval is not None
    assert rows["twin-a"].stages["open"].interval.tied_with == ("twin-b",)
    assert rows["broken"].stages["open"].interval is None

    document = json.loads(to_json(board))
    assert document["schema_version"] == 5
    assert document["bootstrap"]["open"] == {
        "resamples": RESAMPLES,
        "seed": SEED,
        "confidence": 0.95,
        "instances": INSTANCES * len(RUN_SPECS),
    }
    by_entry = {row["entry"]: row["stages"]["open"]["interval"] for row in document["rows"]}
    assert by_entry["twin-b"]["tied"] is True and by_entry["twin-b"]["tied_with"] == ["twin-a"]
    assert by_entry["strong"]["tied"] is False and by_entry["strong"]["rank_high"] == 1
    assert by_entry["broken"] is None

    markdown = to_markdown(board)
    header = next(line for line in markdown.splitlines() if line.startswith("| Rank"))
    assert "| Score 95% | Rank 95% |" in header
    twin_line = next(line for line in markdown.splitlines() if "| twin-a |" in line)
    assert "| 2-3 tied |" in twin_line
    strong_line = next(line for line in markdown.splitlines() if "| strong |" in line)
    assert "| [1.000, 1.000] | 1 |" in strong_line
    assert f"{RESAMPLES} resamples, seed {SEED}" in markdown

    # The score-against-time figure draws each interval as an error bar (a line collection).
    assert "LineCollection" in figures(board)["time"]
    without = replace(
        board,
        rows=[
            replace(row, stages={s: replace(r, interval=None) for s, r in row.stages.items()})
            for row in board.rows
        ],
    )
    assert "LineCollection" not in figures(without)["time"]

    html = to_html(board)
    assert "2-3 tied" in html and f"{RESAMPLES} resamples" in html
    page = entry_pages(board)[entry_page("twin-a")]
    assert "ranks 2 to 3; tied with twin-b" in page
