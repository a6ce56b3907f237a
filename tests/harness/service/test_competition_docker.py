"""A whole competition on a real `harness serve --competition`, the real Docker engine and real
HELM, two teams: alice's finalist a rendered submission QLoRA-trained on the CPU with the tiny
model (tests/_trained.py), the other entries stand-ins that build in seconds
(tests/harness/data/entries). The open phase with a failing build (charged to the failure
allowance, not the quota) and an evaluation interrupted by killing the service (re-run, charged
once), selections, the final phase on a second instance pack entered by `harness competition
advance`, finalists re-run on the same images with their scores hidden from the teams, a
disqualification, the reveal combining the stages while the service runs, which reproduces the
top finalist (its training re-run, its image rebuilt from the new weights, re-scored on the final
pack): the verdict through the API, on the final board and in a frozen release verified, then
tampered with."""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from harness.helm.confs import load_conf
from harness.helm.packs import build_pack, sha256_file
from harness.service.db import ServiceDB
from harness.store import entry_slug
from tests._trained import readable_base, trained_submission
from tests._wait import until
from tests.harness.reproduce.test_flow import cleanup  # noqa: F401
from tests.harness.run.test_driver import write_conf
from tests.harness.service.conftest import (
    HARNESS,
    SECRET,
    Receiver,
    Serve,
    quota_zone,
    stand_in_zip,
    zip_folder,
)
from tests.harness.service.test_service_docker import containers, evaluating, finished

pytestmark = [pytest.mark.docker, pytest.mark.helm]
NO_SUCH = "RUN python3 -m venv /v && /v/bin/pip install --no-index nosuchpkg==1.0\n"


def final_pack(tmp_path: Path, helm_bin: Path) -> Path:
    """The final phase's instances: a pack of another local task than the open phase's."""
    folder = tmp_path / "closed-task"
    folder.mkdir()
    conf = load_conf(write_conf(folder, 4))
    data = tmp_path / "closed-data"
    data.mkdir()
    return build_pack(
        conf, budget=2, data_dir=data, out=tmp_path / "closed-pack", bin_dir=helm_bin
    ).path


def competition_file(tmp_path: Path, pack: Path) -> Path:
    now = datetime.now(UTC)
    path = tmp_path / "competition.yaml"
    path.write_text(
        f"""
name: test-cup
tracks: ["4090"]
quota_timezone: {quota_zone()}
phases:
  - name: open
    start: {(now - timedelta(hours=1)).isoformat()}
    end: {(now + timedelta(days=7)).isoformat()}
    visibility: public
    quota: {{per_day: 3, failures_per_week: 2}}
  - name: final
    start: {(now + timedelta(days=8)).isoformat()}
    instances: {pack}
    visibility: organizers
    selection: 1
"""
    )
    return path


def harness(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(HARNESS), *args], capture_output=True, text=True, timeout=300)


def test_a_whole_competition_from_the_open_phase_to_the_reveal(
    serve: Serve,
    tmp_path: Path,
    base_image: str,
    docker_client: Any,
    helm_bin: Path,
    receiver: Receiver,
    tiny_model_dir: Path,
    cleanup: list[str],  # noqa: F811
) -> None:
    base = readable_base(tiny_model_dir, tmp_path)
    trained = trained_submission(tmp_path / "good", base, base_image, docker_client, tmp_path)
    competition = competition_file(tmp_path, final_pack(tmp_path, helm_bin))
    # The trained entry's server loads torch: more memory and time to come up than a stand-in.
    real = ["--mem-limit", "4g", "--health-tries", "60", "--competition", str(competition)]
    served = serve(*evaluating(real, base_image, tmp_path))
    alice, bob = served.add_team("alice"), served.add_team("bob")
    admin = served.add_team("organizers", admin=True)
    with ServiceDB(served.data) as db:
        db.set_webhook("alice", receiver.url, SECRET)

    # -- the open phase --------------------------------------------------------------------------
    good = served.submit(alice, zip_folder(trained), visibility="published").json()
    cleanup.append(entry_slug(good["id"]))
    wrong = served.submit(bob, stand_in_zip(tmp_path, "wrong", "answer-c"), visibility="published")
    broken = served.submit(bob, stand_in_zip(tmp_path, "broken", dockerfile_extra=NO_SUCH)).json()
    # Published: alice's best in the open phase (the tiny model answers no question right).
    slow = served.submit(alice, stand_in_zip(tmp_path, "slow", "slow"), visibility="published")
    slow = slow.json()
    assert served.wait_for(alice, good["id"], finished)["status"] == "scored"
    assert served.wait_for(bob, wrong.json()["id"], finished)["status"] == "scored"
    failed = served.wait_for(bob, broken["id"], finished)
    assert (failed["status"], failed["charged"]) == ("build-failed", "failures")
    with served.client(bob) as client:
        standing = client.get("/api/v1/competition").json()["tracks"]["4090"]
    # Bob's failed build took no slot of the day: only his scored entry did.
    assert (standing["left_today"], standing["failures_used"]) == (2, 1)

    # The service is killed while alice's slow entry is evaluated: it runs again, once charged.
    served.wait_for(alice, slow["id"], lambda a: a["step"] == "evaluate")
    served.kill()
    served = serve(*served.args, data=served.data)
    rerun = served.wait_for(alice, slow["id"], finished)
    assert (rerun["status"], rerun["requeues"], rerun["charged"]) == ("scored", 1, "quota")
    with served.client(alice) as client:
        assert client.get("/api/v1/competition").json()["tracks"]["4090"]["left_today"] == 1
        assert client.post(f"/api/v1/submissions/{good['id']}/select").json()["selected"]
        board = client.get("/api/v1/leaderboard/4090").json()
    assert [(r["rank"], r["team"]) for r in board["rows"]] == [(1, "alice"), (2, "bob")]
    assert board["stages"] == ["open"]

    # -- the final phase: bob chose nothing, so his best published entry goes ------------------
    advanced = harness("competition", "advance", "--data", str(served.data))
    assert advanced.returncode == 0, advanced.stderr
    runs = [line.split()[-1] for line in advanced.stdout.splitlines() if "final run" in line]
    assert len(runs) == 2
    ended = [served.wait_for(admin, run, finished) for run in runs]
    assert [e["status"] for e in ended] == ["scored", "scored"]
    assert {e["final_of"] for e in ended} == {good["id"], wrong.json()["id"]}
    # The same images ran: no build step in the final runs.
    assert all("build" not in [s["step"] for s in e["steps"]] for e in ended)
    assert all(e["metrics"] for e in ended)  # the organizers see the scores
    alices = next(e for e in ended if e["team"] == "alice")
    with served.client(alice) as client:
        hidden = client.get(f"/api/v1/submissions/{alices['id']}").json()
        assert (hidden["scores_hidden"], hidden["metrics"], hidden["score"]) == (True, [], None)
        assert client.get("/api/v1/leaderboard/4090").json()["stages"] == ["open"]
    assert containers(docker_client, served) == []

    # -- a disqualification, the reveal, a frozen release ----------------------------------------
    bobs = wrong.json()["id"]
    out = harness("competition", "disqualify", bobs, "--reason", "trained on the test set",
                  "--data", str(served.data))  # fmt: skip
    assert out.returncode == 0, out.stderr
    # Revealed while the service runs: it reproduces the top finalist (training reads the
    # base model where the entry's own training did).
    revealed = harness(
        "competition", "reveal", "--data", str(served.data), "--reproduce-top", "1",
        "--base-image", base_image, "--time-limit", "10m", "--mount", f"{base}:/base",
    )  # fmt: skip
    assert revealed.returncode == 0, revealed.stderr + revealed.stdout
    assert "final ranking, track 4090" in revealed.stdout
    assert "queued to the service" in " ".join(revealed.stdout.split())

    def reproduced() -> dict[str, Any] | None:
        with served.client(admin) as client:
            [found] = client.get("/api/v1/reproductions").json()
        return found if found["state"] not in ("queued", "running") else None

    verdict = until(reproduced, "the top finalist is reproduced", timeout_s=900, interval_s=2)
    assert verdict is not None  # for mypy: `until` returns what `reproduced` found
    # The training re-ran with the seed it logged, deterministic on the CPU: the same weights,
    # the same answers (harness/reproduce/verdict.py: every scenario within tolerance).
    assert (verdict["submission"], verdict["rank"], verdict["state"]) == (good["id"], 1, "finished")
    assert verdict["verdict"] == "reproduced", verdict["reason"]
    assert verdict["reason"].startswith("every scenario within tolerance")
    report = served.data / "results" / "reproduce" / entry_slug(good["id"]) / "reproduction.json"
    done = json.loads(report.read_text())
    assert done["training"]["finished"] and done["stage"] == "closed"
    # Retrained to the very weights alice's own training made (her logged seed, on the CPU).
    model = trained / "model"
    submitted = {p.name: sha256_file(p) for p in model.glob("*.safetensors")}
    retrained = {k: v["sha256"] for k, v in done["weights"].items() if k.endswith(".safetensors")}
    assert submitted and retrained == submitted
    with served.client(alice) as client:
        final = client.get("/api/v1/leaderboard/4090").json()
        shown = client.get(f"/api/v1/submissions/{alices['id']}").json()
    assert final["stages"] == ["open", "closed"]
    assert [
        (r["rank"], r["team"], r["disqualified"], r["reproduction"]) for r in final["rows"]
    ] == [
        (1, "alice", None, "reproduced"),
        (None, "bob", "trained on the test set", None),
    ]
    assert not shown["scores_hidden"] and shown["metrics"]
    events = until(
        lambda: (
            [d["event"] for d in receiver.deliveries]
            if {"results.revealed", "reproduction.finished"}
            <= {d["event"] for d in receiver.deliveries}
            else None
        ),
        "alice heard of the reveal and of her reproduction",
        timeout_s=60,
    )
    assert {"phase.started", "phase.ended", "entry.scored", "entry.requeued"} <= set(events or [])
    assert receiver.bad_signatures == 0

    released = harness("competition", "release", "v1", "--data", str(served.data))
    assert released.returncode == 0, released.stderr
    release = served.data / "releases" / "v1"
    manifest = json.loads((release / "manifest.json").read_text())
    entries = manifest["tracks"]["4090"]["entries"]
    # The top finalist's reproduction and its verdict are on the final board and released.
    assert entries[0]["reproduction"]["verdict"] == "reproduced"
    assert entries[1]["reproduction"] is None
    assert [(e["name"], e["entry"], e["rank"]) for e in entries] == [
        ("alice", good["id"], 1),
        ("bob", bobs, None),
    ]
    # The final ran the image the open phase scored.
    stages = entries[0]["stages"]
    assert stages["open"]["image_id"] == stages["closed"]["image_id"] is not None
    assert stages["closed"]["instances_sha256"] is not None
    with served.client() as client:
        page = client.get("/releases/v1/4090/leaderboard.md")
    assert page.status_code == 200 and "trained on the test set" in page.text
    assert harness("competition", "verify", str(release)).returncode == 0
    board = release / "4090" / "leaderboard.json"
    board.write_text(board.read_text().replace("alice", "mallory"))
    tampered = harness("competition", "verify", str(release))
    assert tampered.returncode == 1 and "4090/leaderboard.json" in tampered.stderr
