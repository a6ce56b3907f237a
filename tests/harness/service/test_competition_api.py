"""A competition on a real `harness serve --competition` process with `--jobs 0` (nothing is
evaluated: results are recorded in its database as the queue would): the phase and quotas in the
API, fact sheets validated at upload, selection, `harness competition advance` queueing the final
runs, phase notifications, scores hidden from teams in an organizers-only phase."""

from __future__ import annotations

import os
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from harness.service.db import ServiceDB
from tests._wait import until
from tests.harness.run.test_driver import write_conf
from tests.harness.service.conftest import (
    HARNESS,
    SECRET,
    Receiver,
    Serve,
    Served,
    quota_zone,
    stand_in_zip,
)


def competition_file(tmp_path: Path, *, final_visibility: str = "organizers") -> Path:
    now = datetime.now(UTC)
    (tmp_path / "final").mkdir(exist_ok=True)
    final_conf = write_conf(tmp_path / "final", 2)
    path = tmp_path / "competition.yaml"
    path.write_text(
        f"""
name: test-cup
tracks: ["4090"]
quota_timezone: {quota_zone()}
phases:
  - name: open
    start: {(now - timedelta(days=1)).isoformat()}
    end: {(now + timedelta(days=30)).isoformat()}
    visibility: public
    quota: {{per_day: 2, failures_per_week: 1}}
  - name: final
    start: {(now + timedelta(days=60)).isoformat()}
    run_specs: {final_conf}
    visibility: {final_visibility}
    selection: 1
facts:
  base_model: {{type: text, help: the approved base model}}
  lora_r: {{type: int}}
"""
    )
    return path


FACTS = {"base_model": "llama-2-7b", "lora_r": "16"}


def upload(served: Served, token: str, body: bytes, **fields: str) -> Any:
    with served.client(token) as client:
        return client.post(
            "/api/v1/submissions",
            files={"file": ("entry.zip", body, "application/zip")},
            data={"track": "4090", **fields},
        )


def score(served: Served, sub_id: str, status: str = "scored") -> None:
    """Record a result as the queue does (the service runs no evaluation with --jobs 0)."""
    with ServiceDB(served.data) as db:
        claimed = db.claim_next()
        assert claimed is not None and claimed.id == sub_id
        assert db.finish(sub_id, status, "")


def harness(*args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **({"HARNESS_TOKEN": token} if token else {})}
    return subprocess.run(
        [str(HARNESS), *args], capture_output=True, text=True, env=env, timeout=120
    )


def test_phases_quotas_facts_selection_and_the_final_through_the_api(
    serve: Serve, tmp_path: Path, receiver: Receiver
) -> None:
    data = tmp_path / "data"
    with ServiceDB(data) as db:
        alice = db.add_team("alice")
        bob = db.add_team("bob")
        db.set_webhook("alice", receiver.url, SECRET)
    served = serve("--jobs", "0", "--competition", str(competition_file(tmp_path)), data=data)
    with served.client(alice) as client:
        standing = client.get("/api/v1/competition").json()
    assert (standing["phase"], standing["final"], standing["selection"]) == ("open", False, 1)
    assert standing["ends_at"] and standing["next_phase"] == "final"
    assert standing["tracks"]["4090"] | {"next_slot_at": None} == {
        "per_day": 2, "left_today": 2, "next_slot_at": None, "failures_per_week": 1,
        "failures_used": 0, "failures_left": 1, "selected": 0,
    }  # fmt: skip
    assert set(standing["facts"]) == {"base_model", "lora_r"}

    entry = stand_in_zip(tmp_path, "a")
    missing = upload(served, alice, entry, lora_r="16")
    assert missing.status_code == 422
    assert missing.json()["detail"]["field"] == "base_model"
    wrong = upload(served, alice, entry, base_model="llama", lora_r="sixteen")
    assert (wrong.status_code, wrong.json()["detail"]["field"]) == (422, "lora_r")
    assert "'lora_r' takes an int" in wrong.json()["detail"]["message"]
    off_track = upload(served, alice, entry, track="A100", **FACTS)
    assert off_track.status_code == 422 and "4090" in off_track.json()["detail"]

    first = upload(served, alice, entry, visibility="published", **FACTS).json()
    assert (first["phase"], first["facts"]) == ("open", {"base_model": "llama-2-7b", "lora_r": 16})
    assert first["charged"] is None
    broken = upload(served, alice, stand_in_zip(tmp_path, "b"), **FACTS).json()
    score(served, first["id"])
    score(served, broken["id"], "build-failed")
    with served.client(alice) as client:
        mine = {s["id"]: s for s in client.get("/api/v1/submissions").json()}
        standing = client.get("/api/v1/competition").json()["tracks"]["4090"]
        assert client.post(f"/api/v1/submissions/{broken['id']}/select").status_code == 409
    assert (mine[first["id"]]["charged"], mine[broken["id"]]["charged"]) == ("quota", "failures")
    # The failed build took none of the day's slots, and the allowance's only failure.
    assert (standing["left_today"], standing["failures_left"]) == (1, 0)
    refused = upload(served, alice, entry, **FACTS)
    assert refused.status_code == 429
    assert "failures allowed" in refused.json()["detail"]["message"]

    selected = harness("select", first["id"], "--server", served.url, token=alice)
    assert selected.returncode == 0, selected.stderr
    assert "selected for the final" in selected.stderr
    bobs = upload(served, bob, stand_in_zip(tmp_path, "c"), visibility="published", **FACTS)
    score(served, bobs.json()["id"])
    with served.client() as client:
        board = client.get("/api/v1/leaderboard/4090").json()
    # The stand-ins were never evaluated: the store holds no scores, so no row is ranked.
    assert board["rows"] == []

    advanced = harness("competition", "advance", "--data", str(data))
    assert advanced.returncode == 0, advanced.stderr
    assert "phase final started" in advanced.stdout
    # Alice's selection goes; Bob chose nothing and has no ranked published entry.
    final_runs = [line.split()[-1] for line in advanced.stdout.splitlines() if "final run" in line]
    assert len(final_runs) == 1
    with served.client(alice) as client:
        run = client.get(f"/api/v1/submissions/{final_runs[0]}").json()
        standing = client.get("/api/v1/competition").json()
    assert (run["final_of"], run["phase"], run["status"], run["charged"]) == (
        first["id"], "final", "queued", "none",
    )  # fmt: skip
    assert run["scores_hidden"] and run["metrics"] == []
    with served.client(alice) as client:
        assert client.post(f"/api/v1/submissions/{run['id']}/cancel").status_code == 409
    assert standing["final"] and "takes no uploads" in standing["uploads_closed"]
    assert upload(served, alice, entry, **FACTS).status_code == 409
    events = until(
        lambda: (
            [d["event"] for d in receiver.deliveries] if len(receiver.deliveries) >= 3 else None
        ),
        "the phase events were delivered",
        timeout_s=60,
    )
    assert sorted(events or []) == ["phase.ended", "phase.started", "phase.started"]
    assert receiver.bad_signatures == 0
    assert {d["phase"] for d in receiver.deliveries if d["event"] == "phase.ended"} == {"open"}

    # Bad reproduction options are refused before anything is revealed.
    for bad, why in (
        (["--reproduce-top", "-1"], "must be 0 or more"),
        (["--reproduce-top", "1", "--mount", "/nowhere:/m"], "--mount takes HOST_DIR"),
    ):
        refused_reveal = harness("competition", "reveal", "--data", str(data), *bad)
        assert refused_reveal.returncode == 2 and why in refused_reveal.stderr
    with ServiceDB(data) as db:
        assert db.state("revealed") is None
    early = harness("competition", "reveal", "--data", str(data))
    assert early.returncode == 2 and "still queued or running" in early.stderr
    no_reason = harness(
        "competition", "disqualify", first["id"], "--reason", " ", "--data", str(data)
    )
    assert no_reason.returncode == 2 and "needs a reason" in no_reason.stderr
    assert harness("competition", "advance", "--data", str(data)).returncode == 2


def test_a_service_refuses_a_bad_competition_file_at_start_naming_the_key(tmp_path: Path) -> None:
    path = competition_file(tmp_path, final_visibility="everyone")
    started = subprocess.run(
        [str(HARNESS), "serve", "--data", str(tmp_path / "d"), "--competition", str(path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert started.returncode == 2
    assert "phases.1.visibility" in started.stderr and "everyone" in started.stderr
