"""The adaptive top-k schedule (harness/run/adaptive.py): arithmetic, verdicts, rounds, resume."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from harness.errors import ConfigError
from harness.leaderboard.build import build_leaderboard
from harness.leaderboard.scoring import RunSpec, score_stage
from harness.leaderboard.text import to_markdown
from harness.run import adaptive
from harness.run.adaptive import Adaptive, Standing, Verdict, decide, full_count, standings
from harness.run.options import RunOptions
from harness.store import Metric, Store
from tests.harness.run.test_tiers import Quiz

GOLDEN = (math.sqrt(5) - 1) / 2


def test_rounds_grow_from_a_fortieth_to_the_full_budget() -> None:
    assert Adaptive(1200).rounds == (30, 45, 60, 90, 120, 180, 240, 360, 480, 720, 960, 1200)
    assert Adaptive(20).rounds == (1, 2, 3, 4, 6, 8, 12, 16, 20)
    assert Adaptive(1200, top=10, confidence=0.95).delta == pytest.approx(0.005)


@pytest.mark.parametrize(
    ("full", "top", "confidence", "message"),
    [
        (10, 10, 0.95, "at least 20"),
        (1200, 0, 0.95, "--target-top"),
        (1200, 10, 1.0, "--confidence"),
        (1200, 10, 0.3, "--confidence"),
    ],
)
def test_bad_schedules_are_refused_clearly(
    full: int, top: int, confidence: float, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        Adaptive(full, top=top, confidence=confidence)


@pytest.mark.parametrize("modelled", [False, True], ids=["own-share", "per-instance"])
def test_on_the_full_budget_the_scores_are_the_leaderboards_and_certain(modelled: bool) -> None:
    # Ties, a missing value, a lower-is-better metric and a scenario of two run specs.
    metrics: dict[str, dict[str, float | None]] = {
        "a": {"m1": 0.5, "m2": 0.9, "g": 0.2, "ppl": 3.0},
        "b": {"m1": 0.5, "m2": 0.1, "g": 0.7, "ppl": 2.0},
        "c": {"m1": 0.8, "m2": None, "g": 0.7, "ppl": 5.0},
        "d": {"m1": 0.1, "m2": 0.3, "g": None, "ppl": 1.0},
    }
    specs = {
        "m1": RunSpec("mmlu"),
        "m2": RunSpec("mmlu"),
        "g": RunSpec("gsm"),
        "ppl": RunSpec("ppl", lower_is_better=True),
    }
    counts = {entry: dict.fromkeys(specs, 40) for entry in metrics}
    # Per-instance answers whose share right is each value (None: none answered); ppl has none.
    answers = {
        name: np.array(
            [
                [np.nan] * 40
                if (v := metrics[e][name]) is None
                else [1.0] * round(v * 40) + [0.0] * (40 - round(v * 40))
                for e in sorted(metrics)
            ]
        )
        for name in ("m1", "m2", "g")
    }

    found = standings(
        metrics, counts, counts, specs, top=2, draws=50, answers=answers if modelled else None
    )

    expected = score_stage(metrics, specs).scores
    assert {e: s.score for e, s in found.items()} == pytest.approx(expected)
    best = sorted(expected, key=lambda e: -expected[e])[:2]
    assert {e: s.probability for e, s in found.items()} == {
        e: 1.0 if e in best else 0.0 for e in metrics
    }


def test_few_instances_leave_the_boundary_uncertain_and_many_settle_it() -> None:
    specs = {"x": RunSpec("x")}
    values: dict[str, dict[str, float | None]] = {
        "leader": {"x": 0.9},
        "close": {"x": 0.8},
        "behind": {"x": 0.1},
    }

    def chance(answered: int) -> dict[str, float]:
        counts = {e: {"x": answered} for e in values}
        found = standings(values, counts, {e: {"x": 400} for e in values}, specs, top=1)
        return {e: s.probability for e, s in found.items()}

    few, many = chance(5), chance(380)
    assert 0.05 < few["close"] < 0.5 < few["leader"] < 0.95
    assert many["leader"] == 1.0 and many["close"] == 0.0
    assert few["behind"] < 0.01
    assert sum(few.values()) == pytest.approx(1.0)


def test_verdicts_stop_the_clear_cases_and_the_last_round_fills_the_places() -> None:
    found = {
        "sure": Standing(0.999, 0.9),
        "maybe": Standing(0.5, 0.7),
        "maybe-not": Standing(0.3, 0.72),
        "never": Standing(0.001, 0.1),
    }
    order = ["sure", "maybe", "maybe-not", "never"]
    assert decide(found, order, 2, 0.005, last=False) == {
        "sure": Verdict.IN,
        "maybe": Verdict.ON,
        "maybe-not": Verdict.ON,
        "never": Verdict.OUT,
    }
    assert decide(found, order[1:], 1, 0.005, last=True) == {
        "maybe": Verdict.IN,
        "maybe-not": Verdict.OUT,
        "never": Verdict.OUT,
    }


@pytest.mark.parametrize(
    ("answered", "budget", "cap", "full"),
    [(10, 60, None, 200), (10, 60, 100, 100), (100, 600, 100, 100), (1, 60, None, 20)],
)
def test_the_full_budgets_count_scales_up_to_the_cap(
    answered: int, budget: int, cap: int | None, full: int
) -> None:
    assert full_count(answered, budget, 1200, cap) == full


class Graded(Quiz):
    """Entries that answer the i-th instance right when (i * golden ratio) mod 1 < skill: about
    `skill` right on every nested budget, and the same instances right on every round."""

    def metrics(self, skill: float, budget: int) -> list[Metric]:
        n = budget // 2
        right = sum((i * GOLDEN) % 1 < skill for i in range(n))
        return [
            Metric(f"s{s}:max_eval_instances={n}", f"s{s}", "exact_match", right / n)
            for s in range(2)
        ]


SKILLS = [95, 90, 80, 60, 40, 10]


def _entries(tmp_path: Path) -> tuple[Path, RunOptions]:
    entries = tmp_path / "entries"
    for skill in SKILLS:
        (entries / f"e-{skill}").mkdir(parents=True)
    return entries, RunOptions(
        track="4090", stage="open", out=tmp_path / "results", run_specs="offline"
    )


def test_rounds_evaluate_only_the_uncertain_and_the_store_remembers(tmp_path: Path) -> None:
    entries, options = _entries(tmp_path)
    schedule = Adaptive(400, top=2)
    log: list[tuple[str, int]] = []

    outcomes = adaptive.run_adaptive(entries, options, schedule, executor=lambda: Graded(log))

    assert {o.entry for o in outcomes} == {f"e-{s}" for s in SKILLS}
    with Store(options.out) as store:
        reached = store.tiers("open")
        decisions = store.decisions("open")
    # Every entry starts on the first round; each later round only its entrants.
    first = schedule.rounds[0]
    assert sorted(e for e, b in log if b == first) == sorted(f"e-{s}" for s in SKILLS)
    for number, budget in enumerate(schedule.rounds[1:], start=2):
        entrants = {e for e, d in decisions.items() if d.round >= number}
        assert {e for e, b in log if b == budget} == entrants
    assert len(log) == len(set(log))
    assert {e for e, d in decisions.items() if d.verdict == Verdict.IN} == {"e-95", "e-90"}
    assert all(d.verdict != Verdict.ON for d in decisions.values())
    assert reached["e-10"] == (1, first)  # far behind: out after the first round
    assert len({tier for tier, _ in reached.values()}) > 1
    assert {e: d.round for e, d in decisions.items()} == {e: t for e, (t, _) in reached.items()}

    board = build_leaderboard(Store(options.out))
    assert [row.entry for row in board.rows[:2]] == ["e-95", "e-90"]
    top = board.rows[0].stages["open"].tier
    assert top.endswith(" in") and top.startswith(f"{reached['e-95'][0]}/")
    last = max(t for t, _ in reached.values())
    assert board.rows[-1].stages["open"].tier == f"1/{last} ({first}) out"
    assert "Tier" in to_markdown(board)

    # A restart finds every round decided: nothing is evaluated again.
    log.clear()
    adaptive.run_adaptive(entries, options, schedule, executor=lambda: Graded(log))
    assert log == []


def test_rounds_stop_once_every_entry_is_decided(tmp_path: Path) -> None:
    entries, options = _entries(tmp_path)
    log: list[tuple[str, int]] = []
    started: list[int | None] = []

    class Counted(Graded):
        def start(self, options: RunOptions, run_id: str) -> None:
            started.append(options.tier)

    # With the whole field in the top k, every entry is in after the first round.
    schedule = Adaptive(400, top=len(SKILLS))
    adaptive.run_adaptive(entries, options, schedule, executor=lambda: Counted(log))
    assert started == [1]
    assert sorted(log) == sorted((f"e-{s}", schedule.rounds[0]) for s in SKILLS)


def test_a_run_killed_between_rounds_continues_from_the_recorded_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    entries, options = _entries(tmp_path)
    schedule = Adaptive(400, top=2)
    whole: list[tuple[str, int]] = []
    adaptive.run_adaptive(entries, options, schedule, executor=lambda: Graded(whole))

    # Killed once round 2 was evaluated, before its verdicts were recorded.
    record = adaptive._record_round

    def killed(store: Store, stage: str, number: int, *args: object) -> None:
        if number == 2:
            raise KeyboardInterrupt
        record(store, stage, number, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(adaptive, "_record_round", killed)
    again = tmp_path / "again"
    options = RunOptions(track="4090", stage="open", out=again, run_specs="offline")
    first: list[tuple[str, int]] = []
    with pytest.raises(KeyboardInterrupt):
        adaptive.run_adaptive(entries, options, schedule, executor=lambda: Graded(first))
    with Store(again) as store:
        assert {d.round for d in store.decisions("open").values()} == {1}
    monkeypatch.setattr(adaptive, "_record_round", record)

    rest: list[tuple[str, int]] = []
    adaptive.run_adaptive(entries, options, schedule, executor=lambda: Graded(rest))

    # Round 2 is not asked again; the run ends where an unbroken one ends.
    assert not set(first) & set(rest)
    assert sorted(first + rest) == sorted(whole)
    with Store(again) as store, Store(tmp_path / "results") as unbroken:
        assert store.decisions("open") == unbroken.decisions("open")


def test_the_simulation_is_seeded() -> None:
    values: dict[str, dict[str, float | None]] = {"a": {"x": 0.5}, "b": {"x": 0.55}}
    counts = {"a": {"x": 10}, "b": {"x": 10}}
    full = {"a": {"x": 100}, "b": {"x": 100}}
    once = standings(values, counts, full, {"x": RunSpec("x")}, top=1, seed=3)
    assert once == standings(values, counts, full, {"x": RunSpec("x")}, top=1, seed=3)
    assert not np.isclose(once["a"].probability, 0.0)
