"""The service's public leaderboard carries the same intervals as `harness report`, with ties
named by team (rows are relabelled from submission ids to team names). The database, the store
and the queue are real; no submission is evaluated: their metrics are recorded as the queue
would record them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from harness.leaderboard.html import to_html
from harness.leaderboard.model import Leaderboard
from harness.leaderboard.text import to_json, to_markdown
from harness.run.options import RunOptions
from harness.service.api import LeaderboardOut
from harness.service.core import Service, ServiceConfig, leaderboard_json, published_leaderboard
from harness.service.db import ServiceDB
from harness.service.queue import Queue
from harness.store import Metric, Status, Store
from tests.harness.leaderboard.test_intervals import FIELD, RUN_SPECS, points
from tests.harness.run.test_driver import write_conf
from tests.harness.service.conftest import queued


def _published_field(
    tmp_path: Path,
    scored: list[tuple[str, str]],
    disqualified: dict[int, str] | None = None,
    facts: dict[str, dict[str, Any]] | None = None,
) -> tuple[Leaderboard, dict[str, str], list[str]]:
    """Each (team, FIELD entry) a published submission of track 4090 with that entry's metrics,
    recorded as the queue would, and the fact sheet `facts[team]` (none where absent); the
    board with `disqualified` (index in `scored` -> reason), each row's submission id, and the
    submission ids in order."""
    config = ServiceConfig(tmp_path)
    options = RunOptions(
        track="4090", stage="open", out=config.results, run_specs=str(write_conf(tmp_path, 1))
    )
    ids: list[str] = []
    with ServiceDB(tmp_path) as db, Store(config.results) as store:
        queue = Queue(db, store, options, None, config.zip_path)
        teams = {name: db.team_for_token(db.add_team(name)) for name in dict(scored)}
        for team_name, name in scored:
            team = teams[team_name]
            assert team is not None
            sub = queued(db, team, visibility="published", facts=(facts or {}).get(team_name))
            assert db.claim_next() is not None
            store.add_entry(sub.id, config.zip_path(sub.id))
            attempt = store.start_attempt(sub.id, "open")
            values = points({name: FIELD[name]})[name]
            store.record_metrics(
                attempt,
                [
                    Metric(spec, RUN_SPECS[spec].scenario, "exact_match", values[spec], instances=v)
                    for spec, v in FIELD[name].items()
                ],
            )
            store.record_status(attempt, Status.SCORED, "")
            assert db.finish(sub.id, "scored", "")
            ids.append(sub.id)
        out = {ids[index]: reason for index, reason in (disqualified or {}).items()}
        board = Service(config, db, store, queue).leaderboard("4090", disqualified=out)
        _, row_ids = published_leaderboard(db, store, "4090", disqualified=out)
    return board, row_ids, ids


def test_published_results_show_intervals_ties_and_fact_sheets_by_team(tmp_path: Path) -> None:
    board, _, _ = _published_field(
        tmp_path,
        [("strong", "strong"), ("twin-a", "twin-a"), ("twin-b", "twin-b")],
        # The competition file's order (base_model, lora_r, training_hours) is the columns'; an
        # empty optional field is no value, and twin-b uploaded before the sheet was asked.
        facts={
            "strong": {"base_model": "llama-2-7b", "lora_r": 16, "training_hours": 20.5},
            "twin-a": {"base_model": "mistral-7b", "lora_r": 8, "training_hours": None},
        },
    )
    document = leaderboard_json(board, "4090")
    LeaderboardOut.model_validate(document)  # what the API's response model accepts
    rows = {row["team"]: row for row in document["rows"]}
    assert rows["twin-a"]["intervals"]["open"]["tied_with"] == ["twin-b"]
    assert rows["twin-b"]["intervals"]["open"]["tied"] is True
    assert rows["strong"]["intervals"]["open"]["tied"] is False
    assert document["bootstrap"]["open"]["resamples"] > 0
    html = to_html(board, standalone=False)
    assert "2-3 tied" in html and "sub-" not in html
    # The fact sheets are the board's columns, after the scenarios', in every rendering.
    assert rows["strong"]["facts"] == {
        "base_model": "llama-2-7b", "lora_r": "16", "training_hours": "20.5"
    }  # fmt: skip
    assert (rows["twin-a"]["facts"], rows["twin-b"]["facts"]) == (
        {"base_model": "mistral-7b", "lora_r": "8"}, {}
    )  # fmt: skip
    header = "<th>base_model</th><th>lora_r</th><th>training_hours</th><th>Status</th>"
    assert header in "".join(html.split())
    assert '<tr data-entry="twin-a">' in html and ">mistral-7b</td>" in html
    table = [line for line in to_markdown(board).splitlines() if line.startswith("| ")]
    lines = {line.split(" | ")[1]: line for line in table}
    assert "| base_model | lora_r | training_hours | Status | Reason |" in lines["Entry"]
    assert "| llama-2-7b | 16 | 20.5 | scored |" in lines["strong"]
    assert "| mistral-7b | 8 |  | scored |" in lines["twin-a"]
    assert "|  |  |  | scored |" in lines["twin-b"]
    assert json.loads(to_json(board))["rows"][0]["facts"] == rows["strong"]["facts"]


def test_a_disqualified_entry_is_never_a_teams_best_and_is_shown_struck_when_it_was_its_only(
    tmp_path: Path,
) -> None:
    # strong's strong entry is disqualified, its weak one stays; twin-a has only one entry.
    board, row_ids, ids = _published_field(
        tmp_path,
        [("strong", "strong"), ("strong", "weak"), ("twin-a", "twin-a"), ("twin-b", "twin-b")],
        disqualified={0: "copied another team's weights", 2: "trained on the test set"},
    )
    shown = [(row.entry, row.rank, row.disqualified) for row in board.rows]
    assert shown == [
        ("twin-b", 1, None),
        ("strong", 2, None),  # its other entry, ranked against the field without the two
        ("twin-a", None, "trained on the test set"),
    ]
    assert row_ids == {"twin-b": ids[3], "strong": ids[1], "twin-a": ids[2]}
    document = leaderboard_json(board, "4090")
    LeaderboardOut.model_validate(document)
    assert [row["disqualified"] for row in document["rows"]] == [
        None,
        None,
        "trained on the test set",
    ]
    html = to_html(board, standalone=False, entry_link=lambda entry: None)
    assert "<del>twin-a</del>" in html and "trained on the test set" in html
    assert "copied another team" not in html  # the team's row is its ranked entry
