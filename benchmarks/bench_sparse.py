"""Sparse evaluation (`harness run --tiers`) against the full budget, on simulated fields.

    make bench-sparse       (or: .venv/bin/python benchmarks/bench_sparse.py [--seeds 40])

Each seed draws one competition: 225 entries (the 2023 challenge's count), 6 scenarios, and for
every entry, scenario and instance whether the answer is right. Correctness is
Bernoulli(sigmoid(ability + scenario ease + entry-scenario knack - instance difficulty)), the
instances being the same for every entry (as in HELM: one seeded sample per run spec). Two
fields of abilities, both giving mean accuracies from ~0.2 to ~0.8 as on the 2023 leaderboard:

    spread     abilities ~ N(0, 0.8) logits
    crowded    a quarter of the entries fine-tune the base model that won (N(0.6, 0.25)), the
               rest N(0, 0.6): a crowded top, the hard case for any early cut
    hard       the crowded field whose best 20 are near-copies (ability 1.2 + N(0, 0.02)): the
               top 20 lie within one standard error of each other on the full budget

The full budget scores every entry on `--full` instances; each tier configuration scores every
entry on its first budget and the entries `harness.run.tiers.in_contention` keeps on the next ones
(nested: the first B instances of the same sample). Both rankings use the leaderboard's arithmetic
(`harness.leaderboard.scoring.score_stage`: geometric mean of per-scenario win rates); the tiered
leaderboard lists the entries that reached a later tier first, as `harness report` does. The
adaptive schedule (`--tiers adaptive`, harness/run/adaptive.py) runs its rounds with the
harness's own `standings` and `decide`, given each entry's per-instance answers as the store gives
them; its leaderboard lists the entries it found in the top 10 first, then the others by the
round they reached. Two bound rows (see BOUND_FINALISTS) show what the harness's model of the
stopped entries allows against what knowing each answer's true chance would. Against the full
budget's ranking, per configuration and averaged over seeds:

    compute    instances asked, full budget / tiers (higher is better)
    recall@10  share of the full budget's top 10 that the tiers' top 10 holds
    tau@20     Kendall's tau-b of the full budget's top 20 in both rankings

Target: >= 5x less compute with recall@10 >= 0.95.
"""

from __future__ import annotations

import argparse
import math
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
from harness.run.adaptive import Adaptive, Verdict, decide, stage_scores, standings  # noqa: E402
from harness.run.tiers import (  # noqa: E402
    Tiers,
    compute_used,
    estimate,
    in_contention,
)

SCENARIOS = ("mmlu", "truthful_qa", "bbq", "gsm", "big_bench", "cnndm")
CONF = RunSpecConf(Path("simulated.conf"), tuple(RunEntry(s, s) for s in SCENARIOS))
RUN_SPECS = {s: RunSpec(s) for s in SCENARIOS}
CONFIGS = (
    ("100,1200 --keep 0.3", "100,1200", 0.3, None),
    ("60,1200 --keep-top 20", "60,1200", None, 20),
    ("30,150,1200 --keep 0.2", "30,150,1200", 0.2, None),
    ("30,120,480,1200 --keep-top 20", "30,120,480,1200", None, 20),
)
ADAPTIVE = "adaptive --target-top 10"
# The bounds: the full budget's own top 20 evaluated on the full budget, everyone else on 240
# instances, and the top 10 picked among those 20 by their chance of being in it, estimated
# twice: by `standings` (what the harness believes the others would answer on the rest), and
# knowing each answer's true chance (only the rest's coin flips unknown).
BOUND_FINALISTS = 20
BOUND_BUDGET = 240
BOUND_DRAWS = 100
MODEL_BOUND = f"bound: top {BOUND_FINALISTS} full, rest {BOUND_BUDGET}"
CLAIRVOYANT = "  same, true chances known"
FIELDS = ("spread", "crowded", "hard")


def competition(
    rng: np.random.Generator, field: str, entries: int, per_scenario: int
) -> tuple[np.ndarray, np.ndarray]:
    """Correctness [entry, scenario, instance] of one simulated competition, and the chance of
    each answer being right (what the bounds below may know and a schedule cannot)."""
    if field == "spread":
        ability = rng.normal(0.0, 0.8, entries)
    else:
        winners = rng.random(entries) < 0.25
        ability = np.where(winners, rng.normal(0.6, 0.25, entries), rng.normal(0.0, 0.6, entries))
    if field == "hard":
        best = np.argsort(-ability)[:20]
        ability[best] = 1.2 + rng.normal(0.0, 0.02, len(best))
    ease = rng.normal(0.0, 0.7, len(SCENARIOS))
    knack = rng.normal(0.0, 0.25, (entries, len(SCENARIOS)))
    difficulty = rng.normal(0.0, 1.5, (len(SCENARIOS), per_scenario))
    logits = (ability[:, None] + ease[None, :] + knack)[:, :, None] - difficulty[None, :, :]
    chance = 1 / (1 + np.exp(-logits))
    return rng.random(logits.shape) < chance, chance


def accuracies(correct: np.ndarray, budget: int) -> tuple[np.ndarray, dict[str, int]]:
    """Each entry's accuracy per scenario on the first share of `budget` instances."""
    shares = dict(zip(SCENARIOS, split_budget(CONF, budget), strict=True))
    acc = np.stack([correct[:, i, : shares[s]].mean(axis=1) for i, s in enumerate(SCENARIOS)], 1)
    return acc, shares


def leaderboard(
    acc: np.ndarray, names: list[str], reached: dict[str, int] | None = None
) -> dict[str, float]:
    metrics: dict[str, dict[str, float | None]] = {
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


def answers(correct: np.ndarray, shares: list[dict[str, int]]) -> dict[str, np.ndarray]:
    """Per scenario, each entry's answers [entries, instances], NaN past its budget's share: what
    the store's per-instance values give `harness run --tiers adaptive` (names sort as indices)."""
    arrays = {}
    for i, scenario in enumerate(SCENARIOS):
        asked = np.array([share[scenario] for share in shares])
        array = correct[:, i, : asked.max()].astype(float)
        array[np.arange(asked.max())[None, :] >= asked[:, None]] = np.nan
        arrays[scenario] = array
    return arrays


def adaptive(
    correct: np.ndarray, names: list[str], schedule: Adaptive
) -> tuple[dict[str, float], dict[str, int]]:
    """The adaptive leaderboard's scores, and the budget each entry reached."""
    full = dict(zip(SCENARIOS, split_budget(CONF, schedule.full), strict=True))
    budgets = dict.fromkeys(names, 0)
    found_in: list[str] = []
    contenders = list(names)
    rounds = schedule.rounds
    for number, budget in enumerate(rounds, start=1):
        for name in contenders:
            budgets[name] = budget
        by_budget = {b: accuracies(correct, b) for b in set(budgets.values())}
        values = {
            name: dict(zip(SCENARIOS, map(float, by_budget[budgets[name]][0][i]), strict=True))
            for i, name in enumerate(names)
        }
        found = standings(
            values,
            {name: by_budget[budgets[name]][1] for name in names},
            dict.fromkeys(names, full),
            RUN_SPECS,
            top=schedule.top,
            draws=schedule.draws,
            seed=number,
            answers=answers(correct, [by_budget[budgets[name]][1] for name in names]),
        )
        places = schedule.top - len(found_in)
        verdicts = decide(found, contenders, places, schedule.delta, number == len(rounds))
        found_in += [name for name, verdict in verdicts.items() if verdict == Verdict.IN]
        contenders = [name for name, verdict in verdicts.items() if verdict == Verdict.ON]
    reached = {name: rounds.index(budgets[name]) for name in names}
    reached.update(dict.fromkeys(found_in, len(rounds)))
    last = np.stack([accuracies(correct, budgets[name])[0][i] for i, name in enumerate(names)])
    return leaderboard(last, names, reached), budgets


def bounds(
    correct: np.ndarray, chance: np.ndarray, names: list[str], order: list[str], full: int
) -> tuple[float, float]:
    """Recall@10 of the two bounds (see BOUND_FINALISTS): (harness's model, true chances)."""
    finalists = order[:BOUND_FINALISTS]
    picked = np.isin(names, finalists)
    acc_full, shares_full = accuracies(correct, full)
    acc_part, shares_part = accuracies(correct, BOUND_BUDGET)
    acc = np.where(picked[:, None], acc_full, acc_part)
    asked = {
        name: shares_full if pick else shares_part for name, pick in zip(names, picked, strict=True)
    }
    found = standings(
        {
            name: dict(zip(SCENARIOS, map(float, row), strict=True))
            for name, row in zip(names, acc, strict=True)
        },
        asked,
        dict.fromkeys(names, shares_full),
        RUN_SPECS,
        top=10,
        answers=answers(correct, [asked[name] for name in names]),
    )
    model = sorted(finalists, key=lambda n: (-found[n].probability, n))[:10]
    rng = np.random.default_rng(0)
    drawn = np.repeat(correct[None], BOUND_DRAWS, axis=0)
    for i, scenario in enumerate(SCENARIOS):
        rest = slice(shares_part[scenario], shares_full[scenario])
        coins = rng.random((BOUND_DRAWS, len(names), rest.stop - rest.start))
        drawn[:, ~picked, i, rest] = coins[:, ~picked] < chance[None, ~picked, i, rest]
    scores = stage_scores(drawn.mean(axis=3), np.eye(len(SCENARIOS)))
    kth = np.sort(scores, axis=1)[:, -10]
    hits = dict(zip(names, (scores >= kth[:, None]).sum(axis=0), strict=True))
    clairvoyant = sorted(finalists, key=lambda n: (-hits[n], n))[:10]
    top = set(order[:10])
    return len(top & set(model)) / 10, len(top & set(clairvoyant)) / 10


def trial(
    seed: int, field: str, entries: int, full: int
) -> tuple[dict[str, tuple[float, float, float]], list[float]]:
    """Each schedule's (compute saved, recall@10, tau@20), and the share of the field entering
    each of the adaptive schedule's rounds."""
    rng = np.random.default_rng(seed)
    correct, chance = competition(rng, field, entries, max(split_budget(CONF, full)))
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
    schedule = Adaptive(full)
    key, spent = adaptive(correct, names, schedule)
    mine = sorted(names, key=lambda n: (-key[n], n))
    recall = len(set(order[:10]) & set(mine[:10])) / 10
    tau = kendall_tau_b([truth[n] for n in order[:20]], [key[n] for n in order[:20]]) or 0.0
    results[ADAPTIVE] = (entries * full / sum(spent.values()), recall, tau)
    entering = [sum(b >= budget for b in spent.values()) / entries for budget in schedule.rounds]
    model, clairvoyant = bounds(correct, chance, names, order, full)
    results[MODEL_BOUND] = (math.nan, model, math.nan)
    results[CLAIRVOYANT] = (math.nan, clairvoyant, math.nan)
    return results, entering


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=40)
    parser.add_argument("--entries", type=int, default=225)
    parser.add_argument("--full", type=int, default=1200, help="the full budget per entry")
    parser.add_argument("--fields", default=",".join(FIELDS), help="which fields, comma-separated")
    args = parser.parse_args()
    started = time.perf_counter()
    print(
        f"{args.entries} entries, {len(SCENARIOS)} scenarios, full budget {args.full} instances "
        f"per entry, {args.seeds} seeds; sparse schedules against the full budget's ranking"
    )
    print(
        f"{'field':<8} {'tiers':<32} {'compute saved':>13} {'recall@10':>9} {'min':>5} "
        f"{'tau@20':>7}"
    )
    for field in args.fields.split(","):
        runs, entering = zip(
            *(trial(seed, field, args.entries, args.full) for seed in range(args.seeds)),
            strict=True,
        )
        print(
            f"{field:<8} {'full budget (baseline)':<32} {'1.0x':>13} {1:>9.3f} {1:>5.2f} {1:>7.3f}"
        )
        for label in [label for label, *_ in CONFIGS] + [ADAPTIVE]:
            saving, recall, tau = zip(*(run[label] for run in runs), strict=True)
            print(
                f"{field:<8} {label:<32} {statistics.mean(saving):>12.1f}x "
                f"{statistics.mean(recall):>9.3f} {min(recall):>5.2f} {statistics.mean(tau):>7.3f}"
            )
        for label in (MODEL_BOUND, CLAIRVOYANT):
            found = [run[label][1] for run in runs]
            print(f"{field:<8} {label:<46} {statistics.mean(found):>9.3f} {min(found):>5.2f}")
        shares = " ".join(
            f"{statistics.mean(round_):.3f}" for round_ in zip(*entering, strict=True)
        )
        print(f"{field:<8} adaptive: share of the field entering each round: {shares}")
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
