"""What an entry would score on the full budget, predicted from the instances it answered.

The adaptive schedule (harness/run/adaptive.py) stops entries early, yet the full budget's
leaderboard ranks by win rates, so every finalist's score depends on where each stopped entry
would have landed. The instances are the same for every entry (one seeded sample per run spec,
nested budgets), so what the entries that went on answered tells how hard the instances the
stopped ones never saw are. Without that, a first round whose few instances happen to be easy
makes the whole stopped field look stronger than it is, and the finalists' order is wrong with
confidence (bench_sparse's crowded field).

The model, per run spec (Rasch, as in item response theory and tinyBenchmarks' IRT estimates):

    entry j answers instance k right with chance  sigmoid(ability[j] - difficulty[k])
    difficulty[k]   a posterior on a grid under a normal prior fitted to all instances
                    (empirical Bayes): an instance only strong entries answered, all right,
                    keeps its uncertainty instead of a point estimate pulled to the average;
                    the later instances' common level is tied to the anchors (the first
                    instances, which every entry answered) by the anchor answers of the
                    entries that went on
    ability[j]      Newton's method on the instances it answered; across one entry's run specs
                    shrunk toward the entry's mean ability by the spread the data show beyond
                    sampling noise (empirical Bayes)

The full-budget value is what the entry answered plus its expected share of the instances it has
not answered, with three normal parts of uncertainty: its own (each unasked answer, and its
ability on this run spec), one shared by all its run specs (its mean ability), and one shared by
all entries on this run spec (the unasked instances' difficulties and their common level).
Values must lie in [0, 1] (a fractional value counts as a share of a right answer).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

GRID = np.linspace(-8.0, 8.0, 65)
# A weak prior on an ability: keeps an entry that answered everything right finite.
ABILITY_VARIANCE = 25.0
# Instances answered by at least this share of the most-answered count are the anchors.
_WELL_ANSWERED = 0.9
# Rounds of the alternation between abilities and difficulties, and Newton steps on the
# abilities in each. The later instances' common level and the abilities of the entries that
# answered them move together, a little each round: 6 rounds left the stopped entries'
# predicted shares ~0.05 high on test_predictive's field, 25 within ~0.01.
_OUTER, _NEWTON = 25, 2


@dataclass(frozen=True)
class Predictive:
    """[entries, run specs]: the expected full-budget value and its normal parts' scales."""

    mean: np.ndarray
    own: np.ndarray  # independent per entry and run spec
    entry: np.ndarray  # times one normal per entry, shared by its run specs
    run_spec: np.ndarray  # times one normal per run spec, shared by the entries


@dataclass(frozen=True)
class _Fit:
    ability: np.ndarray  # [entries]
    variance: np.ndarray  # [entries]
    posterior: np.ndarray  # [instances, grid]
    prior: tuple[float, float]  # mean and variance of a difficulty
    anchors: int  # instances (nearly) every entry answered
    # Fisher information on the common level of the other instances against the anchors: the
    # anchors' answers of the entries that went on answering the others.
    link: float


def _sigmoid(x: np.ndarray) -> np.ndarray:
    out: np.ndarray = 1 / (1 + np.exp(-x))
    return out


def _fit(answers: np.ndarray) -> _Fit:
    """One run spec: answers [entries, instances], NaN where not answered."""
    seen = ~np.isnan(answers)
    right = np.where(seen, answers, 0.0)
    wrong = np.where(seen, 1 - answers, 0.0)
    share = (right.sum(0) + 0.5) / (seen.sum(0) + 1)
    difficulty = -np.log(share / (1 - share))
    spread = np.zeros_like(difficulty)
    well = seen.sum(0) >= _WELL_ANSWERED * seen.sum(0).max()
    ability = np.zeros(answers.shape[0])
    posterior = np.zeros((answers.shape[1], GRID.size))
    mean, variance = 0.0, 1.0
    for outer in range(_OUTER):
        for _ in range(_NEWTON):
            p, slope = _response(ability, posterior, None if outer else difficulty)
            gradient = (right - np.where(seen, p, 0)).sum(1) - ability / ABILITY_VARIANCE
            curvature = np.where(seen, slope, 0).sum(1) + 1 / ABILITY_VARIANCE
            # A damped step: an entry that answered (nearly) all of a few instances alike has
            # almost no curvature, and a full Newton step would throw its ability off the scale.
            ability = ability + np.clip(gradient / curvature, -1, 1)
        # The prior from every instance (the empirical-Bayes update of a hierarchical model), its
        # variance that of the posterior means plus their own, so a poorly known instance is not
        # pulled in further than its data say. Fitting it to the first instances alone (those
        # every entry answered) would fix the later instances' mean difficulty at theirs: off
        # by ~0.5 logit on 10 instances, and the entries that went on answered those first
        # instances too, which tells the later instances' level far better (see `_Fit.link`).
        mean = float(difficulty.mean())
        variance = max(0.25, float(difficulty.var() + spread.mean()))
        x = ability[:, None] - GRID[None, :]
        log_posterior = right.T @ -np.logaddexp(0, -x) + wrong.T @ -np.logaddexp(0, x)
        log_posterior -= 0.5 * (GRID - mean) ** 2 / variance
        log_posterior -= log_posterior.max(axis=1, keepdims=True)
        posterior = np.exp(log_posterior)
        posterior /= posterior.sum(axis=1, keepdims=True)
        difficulty = posterior @ GRID
        spread = posterior @ GRID**2 - difficulty**2
    _, slope = _response(ability, posterior)
    information = np.where(seen, slope, 0).sum(1) + 1 / ABILITY_VARIANCE
    went_on = seen.sum(1) > well.sum()
    link = float(np.where(seen & well[None, :], slope, 0)[went_on].sum())
    return _Fit(ability, 1 / information, posterior, (mean, variance), int(well.sum()), link)


def _response(
    ability: np.ndarray, posterior: np.ndarray, difficulty: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """[entries, instances]: the chance of a right answer and its slope in the ability, over
    each difficulty's posterior (a point estimate of a skewed posterior biases the abilities of
    the entries that answered the poorly known instances), or at `difficulty` before any."""
    if difficulty is not None:
        p = _sigmoid(ability[:, None] - difficulty[None, :])
        return p, p * (1 - p)
    s = _sigmoid(ability[:, None] - GRID[None, :])
    return s @ posterior.T, (s * (1 - s)) @ posterior.T


def predictive(answers: Sequence[np.ndarray], full: np.ndarray) -> Predictive:
    """`answers`: per run spec, [entries, instances] with NaN where unanswered (the same entry
    order in each); `full`: [entries, run specs], instances on the full budget."""
    fits = [_fit(a) for a in answers]
    ability = np.stack([f.ability for f in fits], axis=1)
    variance = np.stack([f.variance for f in fits], axis=1)
    specs = ability.shape[1]
    # The spread of an entry's abilities across run specs beyond sampling noise (moments).
    weights = 1 / variance
    centre = (ability * weights).sum(1, keepdims=True) / weights.sum(1, keepdims=True)
    knack = float(np.mean((ability - centre) ** 2))
    knack = max(0.01, knack / (1 - 1 / specs) - float(variance.mean())) if specs > 1 else 1e6
    weights = 1 / (variance + knack)
    centre = (ability * weights).sum(1, keepdims=True) / weights.sum(1, keepdims=True)
    centre_variance = 1 / weights.sum(1, keepdims=True)
    shrunk_variance = 1 / (1 / variance + 1 / knack)
    ability = shrunk_variance * (ability / variance + centre / knack)
    loading = shrunk_variance / knack * np.sqrt(centre_variance)
    mean, own, entry, run_spec = (np.zeros(ability.shape) for _ in range(4))
    for r, (fit, a) in enumerate(zip(fits, answers, strict=True)):
        rest = np.isnan(a)
        unseen = np.maximum(full[:, r] - a.shape[1], 0)
        p, slope = _response(ability[:, r], fit.posterior)
        prior = np.exp(-0.5 * (GRID - fit.prior[0]) ** 2 / fit.prior[1])
        prior /= prior.sum()
        s_unseen = _sigmoid(ability[:, r, None] - GRID[None, :])
        p_unseen = s_unseen @ prior
        slope_unseen = (s_unseen * (1 - s_unseen)) @ prior
        expected = np.where(rest, p, 0).sum(1) + unseen * p_unseen
        slope_sum = np.where(rest, slope, 0).sum(1) + unseen * slope_unseen
        coins = np.where(rest, p * (1 - p), 0).sum(1) + unseen * p_unseen * (1 - p_unseen)
        spread = fit.posterior @ GRID**2 - (fit.posterior @ GRID) ** 2
        count = np.maximum(rest.sum(1) + unseen, 1)
        # The unasked instances' mean difficulty: each one's own uncertainty, and their common
        # level against the anchors, which the entries that went on tie to them by their anchor
        # answers, and the instances' being one random sample by their spread over `anchors`.
        shift = (np.where(rest, spread[None, :], 0).sum(1) + unseen * fit.prior[1]) / count**2
        shift += 1 / (fit.link + max(fit.anchors, 1) / fit.prior[1])
        total = np.maximum(full[:, r], 1)
        mean[:, r] = (np.nansum(a, axis=1) + expected) / total
        own[:, r] = np.sqrt(slope_sum**2 * shrunk_variance[:, r] + coins) / total
        entry[:, r] = slope_sum * loading[:, r] / total
        run_spec[:, r] = slope_sum * np.sqrt(shift) / total
    return Predictive(mean, own, entry, run_spec)
