"""`harness run --tiers adaptive` end to end: real builds, containers, gateway and helm-run.

The entries are the stand-in servers of tests/harness/test_run.py (HELM's protocol, no model:
a tiny model's answers would not separate the entries), answering a known share of the task.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

import harness.run.adaptive
from harness.leaderboard.build import build_leaderboard
from harness.run.adaptive import Adaptive, Verdict
from harness.store import STORE_FILENAME, Status, Store
from tests.harness.run.test_driver import labelled_containers, make_entry, options, write_conf

pytestmark = [pytest.mark.docker, pytest.mark.helm]


def _evaluations(out: Path) -> dict[str, int]:
    """entry -> how many times it was evaluated (one attempt per round it entered)."""
    with closing(sqlite3.connect(out / STORE_FILENAME)) as db:
        rows = db.execute("SELECT entry, count(*) FROM attempts GROUP BY entry").fetchall()
    return dict(rows)


def test_entries_stop_at_different_rounds_and_a_killed_run_continues(
    tmp_path: Path,
    base_image: str,
    docker_client: Any,
    helm_bin: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    entries = tmp_path / "entries"
    make_entry(entries, "right", "answer-a")
    make_entry(entries, "half", "answer-share", dockerfile_extra="ENV SHARE=0.5\n")
    make_entry(entries, "wrong", "answer-c")
    run_options = options(
        tmp_path, base_image, max_eval_instances=20, run_specs=str(write_conf(tmp_path, 20))
    )
    schedule = Adaptive(20, top=1)  # rounds of 1, 2, 3, 4, 6, 8, 12, 16 and 20 instances

    # Killed after the second round's evaluations, before its verdicts.
    record = harness.run.adaptive._record_round

    def killed(store: Store, stage: str, number: int, *args: object) -> None:
        if number == 2:
            raise KeyboardInterrupt
        record(store, stage, number, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(harness.run.adaptive, "_record_round", killed)
    with pytest.raises(KeyboardInterrupt):
        harness.run.adaptive.run_adaptive(entries, run_options, schedule, executor=_local)
    before = _evaluations(run_options.out)
    with Store(run_options.out) as store:
        assert {d.round for d in store.decisions("open").values()} == {1}
        second = {e for e, (tier, _) in store.tiers("open").items() if tier == 2}
    monkeypatch.setattr(harness.run.adaptive, "_record_round", record)

    outcomes = harness.run.adaptive.run_adaptive(entries, run_options, schedule, executor=_local)

    assert {o.entry: o.status for o in outcomes} == dict.fromkeys(
        ["right", "half", "wrong"], Status.SCORED
    )
    with Store(run_options.out) as store:
        reached = store.tiers("open")
        decisions = store.decisions("open")
        metrics = store.metrics("open")
    # One evaluation per round entered: the resumed run asked nothing again of round 2.
    assert before == {"right": 2, "half": 2, "wrong": 1} and second == {"right", "half"}
    assert _evaluations(run_options.out) == {e: tier for e, (tier, _) in reached.items()}
    assert {e: d.verdict for e, d in decisions.items()} == {
        "right": Verdict.IN,
        "half": Verdict.OUT,
        "wrong": Verdict.OUT,
    }
    assert reached["wrong"][0] < reached["half"][0]  # clearly out sooner
    assert [m.value for m in metrics["right"]] == [1.0]
    assert labelled_containers(docker_client, run_options.out) == []

    board = build_leaderboard(Store(run_options.out))
    assert [row.entry for row in board.rows] == ["right", "half", "wrong"]
    assert board.rows[0].stages["open"].tier.endswith(" in")


def _local() -> Any:
    from harness.run.executor import LocalExecutor

    return LocalExecutor(2)
