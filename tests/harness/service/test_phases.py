"""The competition file, the phase that is current, and what an entry's ending costs its team
(the service's database, no engine)."""

from __future__ import annotations

import sqlite3
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from harness.errors import ConfigError
from harness.run.options import RunOptions
from harness.service.db import (
    DB_FILENAME,
    Allowance,
    QuotaExceeded,
    ServiceDB,
    State,
    day_start,
    next_day,
)
from harness.service.notify import Notifier
from harness.service.phases import PhaseClock, current_phase, load_competition, uploads_closed
from harness.service.queue import Queue
from harness.store import Store
from tests.harness.service.conftest import SECRET, Receiver, queued, quota_zone

COMPETITION = """
name: llm-efficiency-2026
tracks: ["4090"]
phases:
  - name: open
    start: 2026-11-01T00:00:00Z
    end: 2026-11-30T00:00:00Z
    run_specs: open.conf
    visibility: public
    quota: {per_day: 2, failures_per_week: 3}
  - name: final
    start: 2026-12-01T00:00:00
    instances: closed-pack
    visibility: organizers
    selection: 1
facts:
  base_model: {type: text, help: the approved base model}
  lora_r: {type: int}
  training_hours: {type: float, required: false}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "competition.yaml"
    path.write_text(text)
    return path


def test_a_competition_file_loads_with_its_phases_in_order(tmp_path: Path) -> None:
    (tmp_path / "open.conf").write_text("entries: []\n")
    competition = load_competition(write(tmp_path, COMPETITION))
    open_, final = competition.phases
    assert (open_.harness_stage, final.harness_stage) == ("open", "closed")
    assert final.final and not open_.final and final.selection == 1
    # A date without a zone is UTC; relative paths are the file's neighbours.
    assert final.start == datetime(2026, 12, 1, tzinfo=UTC)
    assert open_.run_specs == str(tmp_path / "open.conf")
    assert final.instances == tmp_path / "closed-pack"
    assert competition.stages == ["open", "closed"]
    assert competition.facts["lora_r"].parse("lora_r", "16") == 16
    assert competition.facts["training_hours"].parse("training_hours", "") is None
    with pytest.raises(ValueError, match="'lora_r' takes an int"):
        competition.facts["lora_r"].parse("lora_r", "sixteen")
    with pytest.raises(ValueError, match="'base_model' is required"):
        competition.facts["base_model"].parse("base_model", None)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (("per_day: 2", "per_day: -1"), "phases.0.quota.per_day"),
        (("visibility: public", "visibility: everyone"), "phases.0.visibility"),
        (("    selection: 1", "    selection: 1\n    colour: red"), "phases.1.colour"),
        (("instances: closed-pack", "instances: p\n    run_specs: c.conf"), "not both"),
        (('tracks: ["4090"]', 'tracks: ["H100"]'), "tracks"),
        (("start: 2026-12-01T00:00:00", "start: 2026-11-15T00:00:00"), "starts before"),
        (("  lora_r: {type: int}", "  track: {type: int}"), "facts"),
        (('tracks: ["4090"]', 'tracks: ["4090"]\nquota_timezone: Mars/Olympus'), "Mars/Olympus"),
    ],
)
def test_a_bad_competition_file_is_refused_naming_the_key(
    tmp_path: Path, change: tuple[str, str], named: str
) -> None:
    with pytest.raises(ConfigError, match=named) as refused:
        load_competition(write(tmp_path, COMPETITION.replace(*change)))
    assert str(tmp_path / "competition.yaml") in str(refused.value)


def test_a_final_phase_must_come_last(tmp_path: Path) -> None:
    text = COMPETITION.replace("    quota: {per_day: 2, failures_per_week: 3}", "    selection: 2")
    with pytest.raises(ConfigError, match="only the last phase may be a final one"):
        load_competition(write(tmp_path, text))


def test_the_current_phase_follows_the_clock_or_a_later_phase_entered_by_hand(
    tmp_path: Path,
) -> None:
    competition = load_competition(write(tmp_path, COMPETITION))
    november = datetime(2026, 11, 10, tzinfo=UTC).timestamp()
    december = datetime(2026, 12, 2, tzinfo=UTC).timestamp()
    assert current_phase(competition, None, november).name == "open"
    assert current_phase(competition, None, december).name == "final"
    assert current_phase(competition, "final", november).name == "final"
    assert current_phase(competition, "open", december).name == "final"  # never back
    open_, final = competition.phases
    assert uploads_closed(open_, november) is None
    october = datetime(2026, 10, 1, tzinfo=UTC).timestamp()
    assert current_phase(competition, None, october).name == "open"
    assert "starts at 2026-11-01" in (uploads_closed(open_, october) or "")
    assert "ended" in (
        uploads_closed(open_, datetime(2026, 11, 30, 1, tzinfo=UTC).timestamp()) or ""
    )
    assert "takes no uploads" in (uploads_closed(final, december) or "")


def test_the_quota_day_is_a_calendar_day_of_the_competitions_time_zone(tmp_path: Path) -> None:
    pacific = ZoneInfo("America/Los_Angeles")
    # The clocks go back on 2026-11-01: that day has 25 hours there.
    afternoon = datetime(2026, 11, 1, 15, tzinfo=pacific).timestamp()
    assert day_start(afternoon, pacific) == datetime(2026, 11, 1, 7, tzinfo=UTC).timestamp()
    assert next_day(afternoon, pacific) == datetime(2026, 11, 2, 8, tzinfo=UTC).timestamp()
    assert day_start(afternoon) == datetime(2026, 11, 1, tzinfo=UTC).timestamp()  # UTC's

    # An entry of three hours ago counts today where it is noon now, not where the day began one
    # to two hours ago; there its slot frees at the next midnight.
    just_begun, noon = ZoneInfo(quota_zone(1)), ZoneInfo(quota_zone())
    with ServiceDB(tmp_path) as db:
        db.add_team("team-a")
        team = db.teams()[0]
        sub = queued(db, team, Allowance(1, zone=just_begun))
        with sqlite3.connect(tmp_path / DB_FILENAME) as raw:  # uploaded three hours ago
            raw.execute(
                "UPDATE submissions SET created_at = created_at - 10800 WHERE id = ?", (sub.id,)
            )
        assert db.used(team, "4090", Allowance(1, zone=noon)).today == 1
        with pytest.raises(QuotaExceeded, match="1 of 1 submissions used today"):
            db.check_quota(team, "4090", Allowance(1, zone=noon))
        early = db.used(team, "4090", Allowance(1, zone=just_begun))
        assert early.today == 0
        assert early.next_slot == next_day(time.time(), just_begun)
        assert 22 * 3600 < early.next_slot - time.time() < 23 * 3600 + 60


def test_scored_entries_use_the_quota_and_failures_the_allowance(tmp_path: Path) -> None:
    noon = ZoneInfo(quota_zone())  # the test cannot run across the end of the quota's day
    allowance = Allowance(per_day=2, failures_per_week=1, zone=noon)
    with ServiceDB(tmp_path) as db:
        db.add_team("team-a")
        team = db.teams()[0]

        def submit() -> str:
            return queued(db, team, allowance).id  # fmt: skip

        def end(status: str) -> str:
            sub_id = submit()
            claimed = db.claim_next()
            assert claimed is not None and claimed.id == sub_id
            assert db.finish(sub_id, status, "")
            return sub_id

        # Flagged at upload (a leaked token, say): no slot of the day, one failure.
        flagged = queued(db, team, allowance, findings=[{"rule": "hf-token"}])
        assert (flagged.charged, db.used(team, "4090", allowance).failures) == ("failures", 1)
        assert db.used(team, "4090", allowance).today == 0
        allowance = Allowance(per_day=2, failures_per_week=2, zone=noon)
        scored = end("scored")
        assert db.submission(scored).charged == "quota"  # type: ignore[union-attr]
        failed = end("build-failed")
        assert db.submission(failed).charged == "failures"  # type: ignore[union-attr]
        # The failure left the second slot of the day free, but the allowance of two failures
        # is used: no upload until the oldest ages out.
        assert db.used(team, "4090", allowance).today == 1
        with pytest.raises(QuotaExceeded, match="2 of 2 failures allowed in 7 days") as refused:
            submit()
        week = timedelta(days=7).total_seconds()
        assert refused.value.next_slot == pytest.approx(time.time() + week, abs=60)
        # Without an allowance (no competition file) a failure takes a slot of the day, as
        # before competitions existed.
        assert db.used(team, "4090", Allowance(per_day=2, zone=noon)).today == 2


def test_an_entry_the_infrastructure_interrupts_is_requeued_once_then_cancelled_uncounted(
    tmp_path: Path,
) -> None:
    with ServiceDB(tmp_path / "data") as db, Store(tmp_path / "results") as store:
        db.add_team("team-a")
        team = db.teams()[0]
        sub = queued(db, team, Allowance(1))
        queue = Queue(
            db, store, RunOptions("4090", "open", tmp_path / "results"), None, lambda s: Path(s)
        )
        assert db.claim_next() is not None
        queue.recover()  # as a restarted service does: nothing runs it any more
        again = db.submission(sub.id)
        assert again is not None
        assert (again.state, again.requeues, again.charged) == (State.QUEUED, 1, None)
        assert "the service stopped" in again.reason
        assert db.claim_next() is not None
        queue.recover()
        ended = db.submission(sub.id)
        assert ended is not None
        assert (ended.state, ended.charged, ended.counts) == (State.CANCELLED, "none", False)
        assert "not counted" in ended.reason
        # Its slot of the day is free again.
        assert db.used(team, "4090", Allowance(per_day=1)).today == 0


def test_selection_is_limited_and_final_runs_are_queued_once(tmp_path: Path) -> None:
    with ServiceDB(tmp_path) as db:
        db.add_team("team-a")
        team = db.teams()[0]
        ids = []
        for _ in range(3):
            ids.append(queued(db, team, Allowance(5)).id)
            assert db.claim_next() is not None
            db.finish(ids[-1], "scored" if len(ids) < 3 else "oom", "")
        db.select(ids[0], limit=1)
        with pytest.raises(ConfigError, match="1 of 1 entries already selected"):
            db.select(ids[1], limit=1)
        with pytest.raises(ConfigError, match="only a scored submission"):
            db.select(ids[2], limit=2)
        run = db.add_final_run(ids[0], "final")
        assert run is not None and db.add_final_run(ids[0], "final") is None
        final = db.submission(run)
        assert final is not None and final.entry == ids[0] and final.final_run
        assert (final.state, final.charged, final.phase) == (State.QUEUED, "none", "final")
        assert db.enter_phase("final", ["open", "final"])
        assert not db.enter_phase("open", ["open", "final"])  # never back
        assert db.state("phase") == "final"


def test_the_clock_enters_a_phase_at_its_start_and_tells_each_event_once(
    tmp_path: Path, receiver: Receiver
) -> None:
    now = datetime.now(UTC)
    text = (
        COMPETITION.replace("2026-11-01T00:00:00Z", (now - timedelta(days=9)).isoformat())
        .replace("2026-11-30T00:00:00Z", (now - timedelta(days=2)).isoformat())
        .replace("2026-12-01T00:00:00", (now - timedelta(days=1)).isoformat())
    )
    competition = load_competition(write(tmp_path, text))
    with ServiceDB(tmp_path / "data") as db, Store(tmp_path / "results") as store:
        db.add_team("alice")
        db.set_webhook("alice", receiver.url, SECRET)
        team = db.teams()[0]
        sub = queued(db, team, Allowance(1))
        assert db.claim_next() is not None and db.finish(sub.id, "scored", "")
        db.select(sub.id, limit=1)
        notifier = Notifier(db, backoff_s=0.05)
        clock = PhaseClock(db, store, competition, notifier)
        clock.tick()
        assert db.state("phase") == "final"
        runs = [s for s in db.submissions() if s.final_of == sub.id]
        assert [(r.state, r.phase) for r in runs] == [(State.QUEUED, "final")]
        db.set_state("revealed", now.isoformat())
        clock.tick()
        clock.tick()
        # Every delivery the ticks queued, retried to its end: a duplicate would be among them.
        notifier._pool.shutdown(wait=True)
    assert sorted((d["event"], d["phase"]) for d in receiver.deliveries) == [
        ("phase.started", "final"),
        ("results.revealed", "final"),
    ]
    assert receiver.bad_signatures == 0
