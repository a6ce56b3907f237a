"""Adaptive top-k evaluation: more instances only for entries whose place at the top is uncertain.

`harness run --tiers adaptive --budget 1200 --target-top 10 --confidence 0.95` evaluates every
entry on a fortieth of the full budget, then, round after round (budgets growing by 1.5x and
4/3x in turn up to the full one: 30, 45, 60, 90, 120, 180, 240, 360, 480, 720, 960, 1200), only
the entries that are not yet clearly in or clearly out of the full budget's top 10. Budgets are
nested as for the tiers (harness/tiers.py): a later round asks only the new instances, HELM's
request cache answers the rest.

After each round every entry's chance of being in the top k of the full budget's leaderboard is
estimated by simulation (`standings`): each entry's full-budget value on each run spec is drawn
from the predictive of harness/run/predictive.py (an item-response model of the stored
per-instance values: the instances the entries that went on answered tell how hard the ones a
stopped entry never saw are; an entry on the full budget is known exactly; see ENTRY_WIDTH), and
the whole field is scored with the leaderboard's arithmetic (per-run-spec win rates, their mean
per scenario, the geometric mean over scenarios). Win rates couple the entries: a finalist's
score depends on where every stopped entry would have landed, so the simulation draws them all
at once. A run spec without per-instance values in [0, 1] falls back on the entry's own share
right (Beta(right + 1/2, wrong + 1/2), then the share right of the instances it has not answered).

    clearly in     P(top k) >= 1 - delta        stops, ranked above everyone else
    clearly out    P(top k) <= delta / TAIL     stops, ranked by the round it reached
    on             otherwise                    evaluated on the next round's budget
    last round     the places left go to the finalists with the highest P(top k)

where delta = (1 - confidence) / k: a per-decision error that keeps the expected number of top-k
entries lost near (1 - confidence) over the few decisions that are close. TAIL corrects the
small chances, which the simulation underestimates (see TAIL). `benchmarks/bench_sparse.py`
measures the schedule against the full budget on simulated competitions.

The store records the round each entry reached and its budget (the tiers table) and, after each
round, its decision and P(top k) (`Store.record_decisions`, one transaction per round), so a
restarted run continues from the recorded rounds.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from harness.errors import ConfigError
from harness.leaderboard.scoring import RunSpec
from harness.run.options import RunOptions
from harness.run.predictive import predictive
from harness.run.tiers import run_level
from harness.store import Decision, Metric, Status, Store

if TYPE_CHECKING:
    from harness.run.driver import EntryOutcome
    from harness.run.executor import Executor

# The first round's share of the full budget. A fortieth (5 instances a run spec on 1200 over
# 6) costs half a twentieth and, with TAIL, keeps the crowded field's recall (bench_sparse,
# crowded, 20 seeds, rounds doubling: 5.2x at 0.945; a twentieth 4.7x at 0.940).
FIRST_SHARE = 40
# Each later round is 1.5x or 4/3x the one before (x2 every two rounds). An entry stops as soon
# as its place is clear, so rounds closer together ask fewer instances of those that stop
# between two of them (bench_sparse, crowded, 40 seeds, against doubling: 6.3x against 5.2x at
# a recall 0.02 lower, which ENTRY_WIDTH buys back). Each round costs its entrants a start.
GROWTH = 1.5
# The smallest full budget: rounds of 1, 2, 3, 4, 6, 8, 12, 16 and 20 instances.
LEAST_BUDGET = 20
# How much the simulation underestimates a small P(top k): bench_sparse's crowded field, 20
# seeds, every verdict, chances of 0.001-0.005 came true 2.9x as often (0.0058 against 0.0020)
# and of 0.005-0.02 1.7x (the predictive's normal tails, and abilities drawn from a few answers).
# An entry stops `out` at delta / TAIL: stopped too early it is lost for good, while the last
# round's pick among the finalists is not.
TAIL = 3.0
# How much wider than the predictive's normal approximation an entry's mean ability is drawn.
# Estimated from a few answers, the predictive's errors are heavy-tailed: after a round of 30
# (bench_sparse, crowded) their bulk is 0.7 of the predicted width, yet |z| > 3 comes as often as
# for a normal of the full width; a true winner that started badly (12 of 30 right where 18 were
# expected) got P 0.000 and was stopped for good. Wider draws keep such entries on a round or
# two longer, and make the last round's pick less sure of the stopped entries' places
# (bench_sparse, crowded, 40 seeds: 1.0 -> 1.5 took recall from 0.92 to 0.96 at 6.3x -> 5.0x
# less compute; a Student-t of 4 degrees of freedom instead kept everyone longer: 3.95x).
ENTRY_WIDTH = 1.5
DRAWS = 1000
# Draws simulated at once: [draws, entries, run specs] float64 arrays stay under ~100 MB.
_CHUNK_VALUES = 12_000_000


class Verdict(StrEnum):
    IN = "in"
    OUT = "out"
    ON = "on"


@dataclass(frozen=True)
class Adaptive:
    """The full budget per entry, the top k to identify and the confidence asked."""

    full: int
    top: int = 10
    confidence: float = 0.95
    draws: int = DRAWS

    def __post_init__(self) -> None:
        if self.full < LEAST_BUDGET:
            raise ConfigError(
                f"--tiers adaptive needs --budget of at least {LEAST_BUDGET}, got {self.full}"
            )
        if self.top < 1:
            raise ConfigError(f"--target-top must be at least 1, got {self.top}")
        if not 0.5 <= self.confidence < 1:
            raise ConfigError(f"--confidence is between 0.5 and 1, got {self.confidence}")

    @property
    def rounds(self) -> tuple[int, ...]:
        """The budget of each round: full / 40, then 1.5x and 4/3x in turn, then the full one."""
        budgets = set()
        first = self.full / FIRST_SHARE
        while math.ceil(first) < self.full:
            budgets.add(math.ceil(first))
            if math.ceil(first * GROWTH) < self.full:
                budgets.add(math.ceil(first * GROWTH))
            first *= 2
        return (*sorted(budgets), self.full)

    @property
    def delta(self) -> float:
        return (1 - self.confidence) / self.top


@dataclass(frozen=True)
class Standing:
    """An entry's chance of being in the full budget's top k, and its expected score."""

    probability: float
    score: float


def standings(
    values: Mapping[str, Mapping[str, float | None]],
    answered: Mapping[str, Mapping[str, int]],
    full: Mapping[str, Mapping[str, int]],
    run_specs: Mapping[str, RunSpec],
    *,
    top: int,
    draws: int = DRAWS,
    seed: int = 0,
    answers: Mapping[str, np.ndarray] | None = None,
) -> dict[str, Standing]:
    """Each entry's P(in the top `top` on the full budget) and its expected stage score.

    `values`: entry -> run spec -> main metric on the instances answered so far; `answered`:
    entry -> run spec -> how many; `full`: the same on the full budget. `answers`: run spec ->
    its per-instance values [entries in sorted order, instances], NaN where not answered; a run
    spec there is predicted by harness/run/predictive.py (the instances others answered tell how
    hard the unanswered ones are), any other from the entry's own share right alone. A missing
    value loses to every value (as on the leaderboard); a value outside [0, 1] has no binomial
    model and counts as measured exactly.
    """
    entries = sorted(values)
    names = sorted(run_specs)
    if not entries or not names:
        return {}
    shape = (len(entries), len(names))
    value = np.full(shape, np.nan)
    seen = np.zeros(shape)
    total = np.zeros(shape)
    for i, entry in enumerate(entries):
        for j, name in enumerate(names):
            v = values[entry].get(name)
            if v is not None and not math.isnan(v):
                value[i, j] = v
                seen[i, j] = max(1, answered[entry].get(name, 1))
                total[i, j] = max(seen[i, j], full[entry].get(name, 1))
    sign = np.array([-1.0 if run_specs[n].lower_is_better else 1.0 for n in names])
    scenario_of = [run_specs[n].scenario for n in names]
    scenarios = sorted(set(scenario_of))
    membership = np.array([[s == t for t in scenarios] for s in scenario_of], dtype=float)
    membership /= membership.sum(axis=0, keepdims=True)
    rng = np.random.default_rng(seed)
    binary = (value >= 0) & (value <= 1)
    right = np.where(binary, value * seen, 0)
    unseen = np.where(binary, total - seen, 0)
    modelled = np.array([name in (answers or {}) for name in names])
    if modelled.any():
        assert answers is not None
        counts = np.array([[full[e].get(n, 1) for n in names] for e in entries], dtype=float)
        known = predictive([answers[n] for n in names if n in answers], counts[:, modelled])
    hits = np.zeros(len(entries))
    scores = np.zeros(len(entries))
    chunk = max(1, _CHUNK_VALUES // value.size)
    for start in range(0, draws, chunk):
        size = min(chunk, draws - start)
        p = rng.beta(right + 0.5, seen - right + 0.5, (size, *shape))
        # The unseen instances' share right: the binomial's normal approximation (a binomial
        # draw costs 6x more), exact where nothing is left unseen.
        rest = p + np.sqrt(p * (1 - p) / np.maximum(unseen, 1)) * rng.standard_normal(p.shape)
        rest = np.clip(rest, 0, 1) * unseen
        drawn = np.where(binary, (right + rest) / np.maximum(total, 1), value)
        if modelled.any():
            noise = (
                known.own * rng.standard_normal((size, len(entries), known.own.shape[1]))
                + ENTRY_WIDTH * known.entry * rng.standard_normal((size, len(entries), 1))
                + known.run_spec * rng.standard_normal((size, 1, known.own.shape[1]))
            )
            drawn[:, :, modelled] = np.where(
                np.isnan(value[:, modelled]), np.nan, np.clip(known.mean + noise, 0, 1)
            )
        score = stage_scores(drawn * sign, membership)
        kth = np.sort(score, axis=1)[:, -min(top, len(entries))]
        hits += (score >= kth[:, None]).sum(axis=0)
        scores += score.sum(axis=0)
    return {
        entry: Standing(float(hits[i] / draws), float(scores[i] / draws))
        for i, entry in enumerate(entries)
    }


def stage_scores(values: np.ndarray, membership: np.ndarray) -> np.ndarray:
    """`harness.leaderboard.scoring.score_stage` over [draws, entries, run specs], vectorised.

    A NaN (no value) loses to every value, and two NaNs both lose (win rate 0 there).
    """
    entries = values.shape[1]
    missing = np.isnan(values)
    order = np.argsort(np.where(missing, -np.inf, values), axis=1, kind="stable")
    ordered = np.take_along_axis(np.where(missing, -np.inf, values), order, axis=1)
    # Runs of equal values in each sorted column: where each run starts and ends.
    position = np.arange(entries)[None, :, None]
    starts = np.ones(ordered.shape, dtype=bool)
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    ends = np.ones(ordered.shape, dtype=bool)
    ends[:, :-1] = starts[:, 1:]
    first = np.maximum.accumulate(np.where(starts, position, 0), axis=1)
    last = np.flip(
        np.minimum.accumulate(np.flip(np.where(ends, position, entries - 1), axis=1), axis=1),
        axis=1,
    )
    below = np.empty(values.shape)
    equal = np.empty(values.shape)
    np.put_along_axis(below, order, first.astype(float), axis=1)
    np.put_along_axis(equal, order, (last - first).astype(float), axis=1)
    rates = (below + 0.5 * equal) / max(1, entries - 1) if entries > 1 else np.ones_like(below)
    rates = np.where(missing, 0.0, rates)
    per_scenario = rates @ membership
    with np.errstate(divide="ignore"):
        scores: np.ndarray = np.exp(np.log(per_scenario).mean(axis=2))
    return scores


def decide(
    found: Mapping[str, Standing], contenders: Sequence[str], places: int, delta: float, last: bool
) -> dict[str, Verdict]:
    """The verdict on each of `contenders` after a round; `places`: top-k places still open.
    `delta`: how likely a verdict may be wrong (an `out` verdict: delta / TAIL)."""
    if last:
        order = sorted(contenders, key=lambda e: (-found[e].probability, -found[e].score, e))
        return {e: Verdict.IN if i < places else Verdict.OUT for i, e in enumerate(order)}
    verdicts = {}
    for entry in contenders:
        p = found[entry].probability
        verdicts[entry] = (
            Verdict.IN if p >= 1 - delta else Verdict.OUT if p <= delta / TAIL else Verdict.ON
        )
    return verdicts


_SCORED = (Status.SCORED, Status.EVAL_TIMEOUT)
_INSTANCES = re.compile(r"max_eval_instances=(\d+)")


def full_count(answered: int, budget: int, full: int, cap: int | None) -> int:
    """Instances a run spec answered on `budget` would have on the full budget: the budget is
    shared out in proportion (harness.confs.split_budget), up to `cap` (--max-eval-instances)."""
    if cap is not None and answered >= cap:
        return answered
    scaled = round(answered * full / budget)
    return max(answered, scaled if cap is None else min(cap, scaled))


def _standings_from_store(
    metrics: Mapping[str, Sequence[Metric]],
    budgets: Mapping[str, int],
    adaptive: Adaptive,
    cap: int | None,
    seed: int,
) -> dict[str, Standing]:
    from harness.leaderboard.scoring import same_run_spec

    values: dict[str, dict[str, float | None]] = {}
    answered: dict[str, dict[str, int]] = {}
    full: dict[str, dict[str, int]] = {}
    run_specs: dict[str, RunSpec] = {}
    per_instance: dict[str, dict[str, Mapping[str, float]]] = {}
    for entry, rows in metrics.items():
        values[entry], answered[entry], full[entry] = {}, {}, {}
        for m in rows:
            name = same_run_spec(m.run_spec)
            n = int(found[1]) if (found := _INSTANCES.search(m.run_spec)) else 1
            values[entry][name] = m.value
            answered[entry][name] = n
            full[entry][name] = full_count(n, budgets.get(entry, adaptive.full), adaptive.full, cap)
            run_specs[name] = RunSpec(m.scenario, m.lower_is_better)
            if m.value is not None:
                per_instance.setdefault(name, {})[entry] = m.instances
    return standings(
        values,
        answered,
        full,
        run_specs,
        top=adaptive.top,
        draws=adaptive.draws,
        seed=seed,
        answers=_answers(per_instance, sorted(values)),
    )


def _answers(
    per_instance: Mapping[str, Mapping[str, Mapping[str, float]]], entries: Sequence[str]
) -> dict[str, np.ndarray]:
    """run spec -> [entries, instances] of the stored per-instance values, for the run specs
    where every entry with a value has them, all in [0, 1] (what predictive.py models)."""
    arrays = {}
    for name, by_entry in per_instance.items():
        if not all(by_entry.values()) or any(
            not 0 <= v <= 1 for instances in by_entry.values() for v in instances.values()
        ):
            continue
        ids = sorted({i for instances in by_entry.values() for i in instances})
        column = {instance: k for k, instance in enumerate(ids)}
        array = np.full((len(entries), len(ids)), np.nan)
        for row, entry in enumerate(entries):
            for instance, v in by_entry.get(entry, {}).items():
                array[row, column[instance]] = v
        arrays[name] = array
    return arrays


def run_adaptive(
    entries_dir: Path,
    options: RunOptions,
    adaptive: Adaptive,
    *,
    executor: Callable[[], Executor],
    on_progress: Callable[[str, str], None] = lambda entry, step: None,
) -> list[EntryOutcome]:
    """`harness run --tiers adaptive`: rounds of evaluation, each on the entries still on.

    After each round the verdicts of the round's entrants are recorded in one transaction; a
    restarted run skips the rounds whose verdicts are recorded and re-evaluates only what a round
    had not finished. The simulation is seeded by the round, so a verdict never depends on luck
    that a restart would redraw.
    """
    from harness.infra.lock import command_line, hold_results_lock

    cap = None if options.instances is not None else options.max_eval_instances
    rounds = adaptive.rounds
    with hold_results_lock(options.out, command_line()):
        outcomes: dict[str, EntryOutcome] = {}
        if options.force:
            with Store(options.out) as store:
                store.clear_decisions(options.stage)
        for number, budget in enumerate(rounds, start=1):
            with Store(options.out) as store:
                decisions = store.decisions(options.stage)
                reached = store.tiers(options.stage)
            only = None if number == 1 else _entrants(decisions, number)
            if only == []:
                break  # every entry is decided: the rounds left have nobody to evaluate
            again = (
                set() if only is None else {e for e in only if reached.get(e, (0, 0))[0] < number}
            )
            ran = run_level(
                entries_dir,
                options,
                level=number,
                budget=budget,
                executor=executor,
                on_progress=on_progress,
                only=only,
                again=again,
            )
            outcomes.update((outcome.entry, outcome) for outcome in ran)
            with Store(options.out) as store:
                _record_round(store, options.stage, number, adaptive, cap)
    return list(outcomes.values())


def _entrants(decisions: Mapping[str, Decision], number: int) -> list[str]:
    """The entries of round `number`: those on after the round before, and (on a restart)
    those already past it."""
    return sorted(
        entry
        for entry, d in decisions.items()
        if d.round >= number or (d.round == number - 1 and d.verdict == Verdict.ON)
    )


def _record_round(
    store: Store, stage: str, number: int, adaptive: Adaptive, cap: int | None
) -> None:
    """Decide the verdicts of round `number`'s entrants, unless a previous run already did."""
    decisions = store.decisions(stage)
    reached = store.tiers(stage)
    contenders = sorted(e for e, (tier, _) in reached.items() if tier == number)
    if not contenders or all(e in decisions and decisions[e].round >= number for e in contenders):
        return
    metrics = store.metrics(stage)
    results = store.results(stage)
    budgets = {entry: budget for entry, (_, budget) in reached.items()}
    found = _standings_from_store(metrics, budgets, adaptive, cap, seed=number)
    places = adaptive.top - sum(1 for d in decisions.values() if d.verdict == Verdict.IN)
    scored = [e for e in contenders if e in found and e in results and results[e].status in _SCORED]
    verdicts = decide(found, scored, places, adaptive.delta, number == len(adaptive.rounds))
    store.record_decisions(
        stage,
        number,
        {
            entry: (
                verdicts.get(entry, Verdict.OUT),
                found[entry].probability if entry in found else 0.0,
            )
            for entry in contenders
        },
    )
