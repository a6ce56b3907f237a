"""The full-budget predictive of harness/run/predictive.py on Rasch-simulated answers."""

from __future__ import annotations

import numpy as np
import pytest

from harness.run.adaptive import _answers
from harness.run.predictive import predictive

ENTRIES, INSTANCES, ASKED, SPECS = 150, 200, 20, 3


def _field(seed: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Answers [entries, instances] per run spec (abilities shared across run specs, give or
    take a knack; instances drawn afresh for each), and the rows of the 20 strongest entries."""
    rng = np.random.default_rng(seed)
    ability = rng.normal(0, 1, ENTRIES)
    answers = []
    for _ in range(SPECS):
        own = ability + rng.normal(0, 0.25, ENTRIES)
        difficulty = rng.normal(0, 1.5, INSTANCES)
        chance = 1 / (1 + np.exp(-(own[:, None] - difficulty[None, :])))
        answers.append((rng.random(chance.shape) < chance).astype(float))
    return answers, np.argsort(-ability)[:20]


def test_what_others_answered_tells_how_hard_the_unasked_instances_are() -> None:
    errors, naive_errors, zs = [], [], []
    for seed in range(4):
        answers, strongest = _field(seed)
        stopped = np.ones(ENTRIES, dtype=bool)
        stopped[strongest] = False
        asked = [a.copy() for a in answers]
        for a in asked:
            a[np.ix_(stopped, np.arange(ASKED, INSTANCES))] = np.nan

        found = predictive(asked, np.full((ENTRIES, SPECS), INSTANCES))

        truth = np.stack([a.mean(axis=1) for a in answers], axis=1)
        naive = np.stack([a[:, :ASKED].mean(axis=1) for a in answers], axis=1)
        errors.append(np.abs(found.mean - truth)[stopped].mean())
        naive_errors.append(np.abs(naive - truth)[stopped].mean())
        width = np.sqrt(found.own**2 + found.entry**2 + found.run_spec**2)
        zs.append(((truth - found.mean) / np.where(width > 0, width, 1))[stopped])
        # The entries that answered everything are known exactly.
        assert found.mean[strongest] == pytest.approx(truth[strongest])
        assert not width[strongest].any()
    # Shrinking each entry toward its other run specs and reading the unasked instances'
    # difficulty from the entries that answered them beats the share right on the first ones.
    assert np.mean(naive_errors) > 1.3 * np.mean(errors)
    z = np.concatenate(zs)
    assert abs(z.mean()) < 0.5 and 0.6 < z.std() < 1.2


def test_only_run_specs_with_every_value_in_0_1_are_modelled() -> None:
    per_instance = {
        "ok": {"a": {"i1": 1.0, "i2": 0.0}, "b": {"i1": 0.5}},
        "rouge-like": {"a": {"i1": 0.2}, "b": {"i1": 3.0}},
        "unrecorded": {"a": {"i1": 1.0}, "b": {}},
    }

    arrays = _answers(per_instance, ["a", "b", "c"])

    assert set(arrays) == {"ok"}
    np.testing.assert_array_equal(arrays["ok"], [[1.0, 0.0], [0.5, np.nan], [np.nan, np.nan]])


@pytest.mark.parametrize("seed", range(3))
def test_the_later_instances_level_comes_from_those_who_answered_them_not_the_first_ones(
    seed: int,
) -> None:
    # The 10 instances every entry answered happen to be hard (+1 logit against the rest): a
    # prior fixed at their mean makes the unasked ones as hard, and the stopped entries' shares
    # come out ~0.15 low. The 30 entries that went on answered both: they tell the difference.
    rng = np.random.default_rng(seed)
    ability = rng.normal(0, 1, 150)
    difficulty = np.concatenate([rng.normal(1.0, 0.3, 10), rng.normal(0, 1.5, 190)])
    chance = 1 / (1 + np.exp(-(ability[:, None] - difficulty[None, :])))
    answers = (rng.random(chance.shape) < chance).astype(float)
    stopped = np.ones(150, dtype=bool)
    stopped[np.argsort(-ability)[:30]] = False
    asked = answers.copy()
    asked[np.ix_(stopped, np.arange(10, 200))] = np.nan

    found = predictive([asked], np.full((150, 1), 200))

    bias = (found.mean[:, 0] - answers.mean(axis=1))[stopped].mean()
    assert abs(bias) < 0.07


def test_a_few_instances_answered_alike_leave_every_prediction_finite() -> None:
    # 5 instances, most entries right on all of them: no curvature to stop a Newton step.
    rng = np.random.default_rng(0)
    answers = (rng.random((200, 5)) < 0.95).astype(float)
    answers[:3] = 1.0

    found = predictive([answers], np.full((200, 1), 200))

    assert np.isfinite(found.mean).all() and np.isfinite(found.own).all()
    assert (found.mean[:3] > found.mean[3:].mean()).all()
