"""Coarse-to-fine evaluation: spend the instance budget where the ranking is decided.

`harness run --tiers 100,600 --keep 0.3` scores every entry on a 100-instance budget, then only
the entries still in contention on 600 (Flash-HELM, Perlitz et al., NAACL 2024). Budgets are
nested: the instance packs and HELM's seeded sampling take the first B instances, and an entry's
HELM run folder (and its request cache) is kept, so a later tier re-asks the questions it already
answered from the cache and pays only for the new ones.

In contention after a tier (`in_contention`):

    the top `keep` fraction (or the top `keep_top` entries) by estimated accuracy, plus
    every entry whose confidence interval reaches the cut (the estimate of the last one kept)

The estimate is the mean over scenarios of each scenario's mean accuracy, with the binomial
standard error of the instances it was measured on. It is a proxy for the competition's score
(win rates, which depend on the other entries): good enough to decide who is still in the race,
while the leaderboard keeps ranking by win rates. `benchmarks/bench_sparse.py` measures the rule
on simulated competitions.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from harness.errors import ConfigError
from harness.run.options import RunOptions
from harness.store import Metric, Store

if TYPE_CHECKING:
    from harness.run.driver import EntryOutcome
    from harness.run.executor import Executor

# One-sided 95%: an entry is dropped only when it is clearly below the cut.
DEFAULT_Z = 1.645


@dataclass(frozen=True)
class Tiers:
    """The instance budgets of successive tiers, and how many entries go on after each one."""

    budgets: tuple[int, ...]
    keep: float | None = None
    keep_top: int | None = None
    z: float = DEFAULT_Z

    def __post_init__(self) -> None:
        if len(self.budgets) < 2:
            raise ConfigError(f"--tiers needs at least two budgets, got {list(self.budgets)}")
        if any(b < 1 for b in self.budgets) or list(self.budgets) != sorted(set(self.budgets)):
            raise ConfigError(
                f"--tiers budgets must be positive and increasing, got {list(self.budgets)}"
            )
        if (self.keep is None) == (self.keep_top is None):
            raise ConfigError("--tiers takes one of --keep FRACTION or --keep-top N")
        if self.keep is not None and not 0 < self.keep < 1:
            raise ConfigError(f"--keep is a fraction between 0 and 1, got {self.keep}")
        if self.keep_top is not None and self.keep_top < 1:
            raise ConfigError(f"--keep-top must be at least 1, got {self.keep_top}")

    @classmethod
    def parse(cls, text: str, *, keep: float | None, keep_top: int | None) -> Tiers:
        """`--tiers 100,600` with `--keep 0.3` or `--keep-top 20` (default: --keep 0.3)."""
        try:
            budgets = tuple(int(part) for part in text.split(","))
        except ValueError:
            raise ConfigError(f"--tiers takes budgets like 100,600, got {text!r}") from None
        if keep is None and keep_top is None:
            keep = 0.3
        return cls(budgets, keep=keep, keep_top=keep_top)

    def cut(self, contenders: int) -> int:
        """How many entries the rule keeps before the confidence intervals add any."""
        if self.keep_top is not None:
            return min(self.keep_top, contenders)
        assert self.keep is not None
        return min(contenders, max(1, math.ceil(self.keep * contenders)))


@dataclass(frozen=True)
class Estimate:
    """An entry's accuracy after a tier: mean over scenarios, and its standard error."""

    score: float
    stderr: float

    def upper(self, z: float) -> float:
        return self.score + z * self.stderr


def estimate(
    values: Mapping[str, float | None],
    instances: Mapping[str, int],
    scenarios: Mapping[str, str],
) -> Estimate:
    """Estimate an entry from its run specs' main metric `values` (accuracies in [0, 1]).

    `instances` is how many instances each run spec was scored on, `scenarios` the scenario of
    each run spec. A run spec without a value counts 0, known exactly (it was not answered). A
    value outside [0, 1] gets the largest binomial variance (1/4 per instance).
    """
    if not scenarios:
        raise ValueError("no run specs to estimate from")
    members: dict[str, list[str]] = {}
    for run_spec, scenario in sorted(scenarios.items()):
        members.setdefault(scenario, []).append(run_spec)
    means, variances = [], []
    for names in members.values():
        total, variance = 0.0, 0.0
        for name in names:
            value = values.get(name)
            if value is None or math.isnan(value):
                continue
            n = max(1, instances.get(name, 1))
            total += value
            variance += (value * (1 - value) if 0 <= value <= 1 else 0.25) / n
        means.append(total / len(names))
        variances.append(variance / len(names) ** 2)
    count = len(members)
    return Estimate(math.fsum(means) / count, math.sqrt(math.fsum(variances)) / count)


def in_contention(estimates: Mapping[str, Estimate], tiers: Tiers) -> list[str]:
    """The entries that go on to the next tier, best estimate first (ties by name)."""
    ranked = sorted(estimates, key=lambda entry: (-estimates[entry].score, entry))
    if not ranked:
        return []
    kept = tiers.cut(len(ranked))
    cut = estimates[ranked[kept - 1]].score
    return ranked[:kept] + [e for e in ranked[kept:] if estimates[e].upper(tiers.z) >= cut]


def compute_used(reached: Mapping[str, int], budgets: Sequence[int]) -> int:
    """Instances asked over all entries: an entry that reached tier k paid for budget k once."""
    return sum(budgets[tier] for tier in reached.values())


_INSTANCES = re.compile(r"max_eval_instances=(\d+)")


def _estimates(metrics: Mapping[str, Sequence[Metric]]) -> dict[str, Estimate]:
    """Estimates from stored metrics; a run spec's instance count is in its HELM name."""
    estimates = {}
    for entry, rows in metrics.items():
        instances = {
            m.run_spec: int(found[1]) if (found := _INSTANCES.search(m.run_spec)) else 1
            for m in rows
        }
        values = {m.run_spec: m.value for m in rows}
        estimates[entry] = estimate(values, instances, {m.run_spec: m.scenario for m in rows})
    return estimates


def run_tiers(
    entries_dir: Path,
    options: RunOptions,
    tiers: Tiers,
    *,
    executor: Callable[[], Executor],
    on_progress: Callable[[str, str], None] = lambda entry, step: None,
) -> list[EntryOutcome]:
    """`harness run --tiers`: each tier a run of the entries still in contention on its budget.

    The store is the ledger here too: the tier each entry reached is recorded as it ends, so a
    restarted run skips what a tier already did and re-evaluates only what it had not.
    """
    from harness.infra.lock import command_line, hold_results_lock

    # One lock over every tier: no other harness slips in between two of them.
    with hold_results_lock(options.out, command_line()):
        outcomes: dict[str, EntryOutcome] = {}
        only: list[str] | None = None
        again: set[str] = set()
        for tier, budget in enumerate(tiers.budgets, start=1):
            if tier > 1:
                with Store(options.out) as store:
                    reached = store.tiers(options.stage)
                    behind = {
                        e: ms
                        for e, ms in store.metrics(options.stage).items()
                        if reached.get(e, (0, 0))[0] >= tier - 1
                    }
                only = in_contention(_estimates(behind), tiers)
                again = {entry for entry in only if reached.get(entry, (0, 0))[0] < tier}
            ran = run_level(
                entries_dir,
                options,
                level=tier,
                budget=budget,
                executor=executor,
                on_progress=on_progress,
                only=only,
                again=again,
            )
            outcomes.update((outcome.entry, outcome) for outcome in ran)
    return list(outcomes.values())


def run_level(
    entries_dir: Path,
    options: RunOptions,
    *,
    level: int,
    budget: int,
    executor: Callable[[], Executor],
    on_progress: Callable[[str, str], None],
    only: Collection[str] | None,
    again: Collection[str],
) -> list[EntryOutcome]:
    """One tier (or adaptive round) `level`: the entries `only` (None: every one) on the first
    `budget` instances of the pack; `again` are those whose earlier level fell short of this one
    (evaluated again, not resumed). `--force` applies to the first level only."""
    from harness.run.driver import run_entries

    level_options = replace(options, budget=budget, tier=level, force=options.force and level == 1)
    return run_entries(
        entries_dir,
        level_options,
        executor=executor(),
        on_progress=on_progress,
        only=only,
        again=again,
    )
