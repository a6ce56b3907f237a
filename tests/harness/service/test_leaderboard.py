"""The service's public leaderboard carries the same intervals as `harness report`, with ties
named by team (rows are relabelled from submission ids to team names). The database, the store
and the queue are real; no submission is evaluated: their metrics are recorded as the queue
would record them."""

from __future__ import annotations

from pathlib import Path

from harness.leaderboard.html import to_html
from harness.run.options import RunOptions
from harness.service.api import LeaderboardOut
from harness.service.core import Service, ServiceConfig, leaderboard_json
from harness.service.db import ServiceDB
from harness.service.queue import Queue
from harness.store import Metric, Status, Store
from tests.harness.leaderboard.test_intervals import FIELD, RUN_SPECS, points
from tests.harness.run.test_driver import write_conf


def test_published_results_show_intervals_and_ties_by_team(tmp_path: Path) -> None:
    config = ServiceConfig(tmp_path)
    options = RunOptions(
        track="4090", stage="open", out=config.results, run_specs=str(write_conf(tmp_path, 1))
    )
    with ServiceDB(tmp_path) as db, Store(config.results) as store:
        queue = Queue(db, store, options, None, config.zip_path)
        for name in ("strong", "twin-a", "twin-b"):
            team = db.team_for_token(db.add_team(name))
            assert team is not None
            sub = db.add_submission(
                team, track="4090", visibility="published", filename="e.zip", size=1, quota=5
            )
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
        board = Service(config, db, store, queue).leaderboard("4090")

    document = leaderboard_json(board, "4090")
    LeaderboardOut.model_validate(document)  # what the API's response model accepts
    rows = {row["team"]: row for row in document["rows"]}
    assert rows["twin-a"]["intervals"]["open"]["tied_with"] == ["twin-b"]
    assert rows["twin-b"]["intervals"]["open"]["tied"] is True
    assert rows["strong"]["intervals"]["open"]["tied"] is False
    assert document["bootstrap"]["open"]["resamples"] > 0
    html = to_html(board, standalone=False)
    assert "2-3 tied" in html and "sub-" not in html
