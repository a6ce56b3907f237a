"""Coarse-to-fine evaluation (`harness run --tiers`) against the full budget, on simulated fields.

    make bench-sparse       (or: .venv/bin/python benchmarks/bench_sparse.py [--seeds 40])

Each seed draws one competition: 225 entries (the 2023 challenge's count), 6 scenarios, and for
every entry, scenario and instance whether the answer is right. Correctness is
Bernoulli(sigmoid(ability + scenario ease + entry-scenario knack - instance difficulty)), the
instances being the same for every entry (as in HELM: one seeded sample per run spec). Two
fields of abilities, both giving mean accuracies from ~0.2 to ~0.8 as on the 2023 leaderboard:

    spread     abilities ~ N(0, 0.8) logits
    crowded    a quarter of the entries fine-tune the base model that won (N(0.6, 0.25)), the
               rest N(0, 0.6): a crowded top, the hard case for any early cut

The full budget scores every entry on `--full` instances; each tier configuration scores every
entry on its first budget and the entries `harness.run.tiers.in_contention` keeps on the next ones
(nested: the first B instances of the same sample). Both rankings use the leaderboard's arithmetic
(`harness.leaderboard.scoring.score_stage`: geometric mean of per-scenario win rates); the tiered
leaderboard lists the entries that reached a later tier first, as `harness report` does. Against the
full budget's ranking, per configuration and averaged over seeds:

    compute    instances asked, full budget / tiers (higher is better)
    recall@10  share of the full budget's top 10 that the tiers' top 10 holds
    tau@20     Kendall's tau-b of the full budget's top 20 in both rankings

Target: >= 5x less compute with recall@10 >= 0.95.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from harness.helm.confs import RunEntry, RunSpecConf, split_budget  # noqa: E402
from harness.leaderboard.scoring import (  # noqa: E402
    RunSpec,
    kendall_tau_b,
    ranked_by_tier,
    score_stage,
)
from harness.run.tiers import Tiers, compute_used, estimate, in_contention  # noqa: E402

SCENARIOS = ("mmlu", "truthful_qa", "bbq", "gsm", "big_bench", "cnndm")
CONF = RunSpecConf(Path("simulated.conf"), tuple(RunEntry(s, s) for s in SCENARIOS))
RUN_SPECS = {s: RunSpec(s) for s in SCENARIOS}
CONFIGS = (
    ("100,1200 --keep 0.3", "100,1200", 0.3, None),
    ("60,1200 --keep-top 20", "60,1200", None, 20),
    ("30,150,1200 --keep 0.2", "30,150,1200", 0.2, None),
    ("30,120,480,1200 --keep-top 20", "30,120,480,1200", None, 20),
)
FIELDS = ("spread", "crowded")


def competition(
    rng: np.random.Generator, field: str, entries: int, per_scenario: int
) -> np.ndarray:
    """Correctness [entry, scenario, instance] of one simulated competition."""
    if field == "spread":
        ability = rng.normal(0.0, 0.8, entries)
    else:
        winners = rng.random(entries) < 0.25
        ability = np.where(winners, rng.normal(0.6, 0.25, entries), rng.normal(0.0, 0.6, entries))
    ease = rng.normal(0.0, 0.7, len(SCENARIOS))
    knack = rng.normal(0.0, 0.25, (entries, len(SCENARIOS)))
    difficulty = rng.normal(0.0, 1.5, (len(SCENARIOS), per_scenario))
    logits = (ability[:, None] + ease[None, :] + knack)[:, :, None] - difficulty[None, :, :]
    return rng.random(logits.shape) < 1 / (1 + np.exp(-logits))


def accuracies(correct: np.ndarray, budget: int) -> tuple[np.ndarray, dict[str, int]]:
    """Each entry's accuracy per scenario on the first share of `budget` instances."""
    shares = dict(zip(SCENARIOS, split_budget(CONF, budget), strict=True))
    acc = np.stack([correct[:, i, : shares[s]].mean(axis=1) for i, s in enumerate(SCENARIOS)], 1)
    return acc, shares


def leaderboard(
    acc: np.ndarray, names: list[str], reached: dict[str, int] | None = None
) -> dict[str, float]:
    metrics = {
        name: dict(zip(SCENARIOS, map(float, row), strict=True))
        for name, row in zip(names, acc, strict=True)
    }
    if reached is not None:
        metrics = ranked_by_tier(metrics, reached, {s: False for s in SCENARIOS})
    return score_stage(metrics, RUN_SPECS).scores


def tiered(
    correct: np.ndarray, names: list[str], tiers: Tiers
) -> tuple[dict[str, float], dict[str, int]]:
    """The tiered leaderboard's scores, and the tier each entry reached."""
    reached = dict.fromkeys(names, 0)
    contenders = list(names)
    index = {name: i for i, name in enumerate(names)}
    for tier, budget in enumerate(tiers.budgets[:-1]):
        acc, shares = accuracies(correct, budget)
        estimates = {
            name: estimate(
                dict(zip(SCENARIOS, map(float, acc[index[name]]), strict=True)),
                shares,
                {s: s for s in SCENARIOS},
            )
            for name in contenders
        }
        contenders = in_contention(estimates, tiers)
        for name in contenders:
            reached[name] = tier + 1
    last = np.stack([accuracies(correct, tiers.budgets[reached[n]])[0][index[n]] for n in names])
    return leaderboard(last, names, reached), reached


def trial(seed: int, field: str, entries: int, full: int) -> dict[str, tuple[float, float, float]]:
    rng = np.random.default_rng(seed)
    correct = competition(rng, field, entries, max(split_budget(CONF, full)))
    names = [f"entry-{i:03d}" for i in range(entries)]
    truth = leaderboard(accuracies(correct, full)[0], names)
    order = sorted(names, key=lambda n: (-truth[n], n))
    results = {}
    for label, budgets, keep, keep_top in CONFIGS:
        tiers = Tiers.parse(budgets, keep=keep, keep_top=keep_top)
        if tiers.budgets[-1] != full:
            raise SystemExit(f"{label}: the last tier must be the full budget ({full})")
        key, reached = tiered(correct, names, tiers)
        mine = sorted(names, key=lambda n: (-key[n], n))
        recall = len(set(order[:10]) & set(mine[:10])) / 10
        tau = kendall_tau_b([truth[n] for n in order[:20]], [key[n] for n in order[:20]]) or 0.0
        saving = entries * full / compute_used(reached, tiers.budgets)
        results[label] = (saving, recall, tau)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=40)
    parser.add_argument("--entries", type=int, default=225)
    parser.add_argument("--full", type=int, default=1200, help="the full budget per entry")
    args = parser.parse_args()
    started = time.perf_counter()
    print(
        f"{args.entries} entries, {len(SCENARIOS)} scenarios, full budget {args.full} instances "
        f"per entry, {args.seeds} seeds; tiers against the full budget's ranking"
    )
    print(
        f"{'field':<8} {'tiers':<32} {'compute saved':>13} {'recall@10':>9} {'min':>5} "
        f"{'tau@20':>7}"
    )
    for field in FIELDS:
        runs = [trial(seed, field, args.entries, args.full) for seed in range(args.seeds)]
        print(
            f"{field:<8} {'full budget (baseline)':<32} {'1.0x':>13} {1:>9.3f} {1:>5.2f} {1:>7.3f}"
        )
        for label, *_ in CONFIGS:
            saving, recall, tau = zip(*(run[label] for run in runs), strict=True)
            print(
                f"{field:<8} {label:<32} {statistics.mean(saving):>12.1f}x "
                f"{statistics.mean(recall):>9.3f} {min(recall):>5.2f} {statistics.mean(tau):>7.3f}"
            )
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
