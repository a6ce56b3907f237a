"""The service evaluating entries for real: a `harness serve` process, the real Docker engine and
real HELM, on stand-in entries that build in seconds (tests/harness/data/entries/server.py)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest

from harness.service.db import ServiceDB, State
from harness.store import RUN_LABEL, Store, results_id
from harness.submission.render import lock_weights, render_submission
from tests._wait import until
from tests.conftest import TEST_LABELS
from tests.harness.run.test_driver import write_conf
from tests.harness.service.conftest import HARNESS, Serve, Served, stand_in_zip
from tests.harness.submission.test_weights_docker import serving

pytestmark = [pytest.mark.docker, pytest.mark.helm]


def evaluating(args: list[str], base_image: str, tmp_path: Path, jobs: int = 1) -> list[str]:
    """`harness serve` options for quick evaluations of stand-in entries."""
    conf = write_conf(tmp_path, 3)
    return [
        "--jobs", str(jobs), "--run-specs", str(conf), "--max-eval-instances", "3",
        "--base-image", base_image, "--health-tries", "3", "--health-interval", "2",
        "--max-sequence-length", "256", "--mem-limit", "256m", "--deadline-minutes", "5",
        *args,
    ]  # fmt: skip


def finished(answer: dict[str, Any]) -> bool:
    return bool(answer["finished"])


def containers(docker_client: Any, served: Served) -> list[Any]:
    label = f"{RUN_LABEL}={results_id(served.data / 'results')}"
    return list(docker_client.containers.list(all=True, filters={"label": label}))


def test_entries_are_scored_logged_published_and_ranked(
    serve: Serve, tmp_path: Path, base_image: str, docker_client: Any, helm_bin: Path
) -> None:
    served = serve(*evaluating([], base_image, tmp_path))
    alice, bob = served.add_team("alice"), served.add_team("bob")
    first = served.submit(alice, stand_in_zip(tmp_path, "good"), visibility="published").json()
    second = served.submit(bob, stand_in_zip(tmp_path, "wrong", "answer-c")).json()
    # Pinned, so it passes the checks at upload; the build cannot resolve it, and it counts.
    no_such = "RUN python3 -m venv /v && /v/bin/pip install --no-index nosuchpkg==1.0\n"
    broken = served.submit(bob, stand_in_zip(tmp_path, "broken", dockerfile_extra=no_such)).json()
    # The first may already run (position None in a later answer); the others wait behind it.
    assert first["position"] == 1 and broken["position"] == second["position"] + 1

    good = served.wait_for(alice, first["id"], finished)
    assert good["status"] == "scored", good
    assert [s["step"] for s in good["steps"]] == ["check", "build", "serve", "evaluate"]
    assert good["score"] == 1.0 and good["metrics"][0]["value"] == 1.0
    assert served.wait_for(bob, second["id"], finished)["status"] == "scored"
    failed = served.wait_for(bob, broken["id"], finished)
    assert failed["status"] == "build-failed"
    assert failed["reason"].startswith("dependency-resolution")

    with served.client(alice) as client:
        logs = client.get(f"/api/v1/submissions/{first['id']}/logs").json()
        assert {"build", "evaluate"} <= set(logs) and logs["build"] and logs["evaluate"]
        board = client.get("/api/v1/leaderboard/4090").json()
    # Only published results: bob's is hidden until he publishes it.
    assert [row["team"] for row in board["rows"]] == ["alice"]
    with served.client(bob) as client:
        client.post(f"/api/v1/submissions/{second['id']}/publish")
        board = client.get("/api/v1/leaderboard/4090").json()
    assert [(row["rank"], row["team"]) for row in board["rows"]] == [(1, "alice"), (2, "bob")]
    assert board["rows"][0]["scenarios"]
    assert containers(docker_client, served) == []
    # The failed build used one of bob's three slots.
    for name in ("x", "y"):
        served.submit(bob, stand_in_zip(tmp_path, name, "never-healthy"))
    assert served.submit(bob, stand_in_zip(tmp_path, "z")).status_code == 429


def test_cancelling_a_running_entry_removes_its_container(
    serve: Serve, tmp_path: Path, base_image: str, docker_client: Any, helm_bin: Path
) -> None:
    served = serve(*evaluating(["--health-tries", "30"], base_image, tmp_path))
    token = served.add_team("team-a")
    sub = served.submit(token, stand_in_zip(tmp_path, "hangs", "never-healthy")).json()
    served.wait_for(token, sub["id"], lambda a: a["step"] == "serve")
    until(lambda: containers(docker_client, served), "the entry's container runs", timeout_s=60)
    with served.client(token) as client:
        assert client.post(f"/api/v1/submissions/{sub['id']}/cancel").json()["status"] == (
            "cancelled"
        )
    assert containers(docker_client, served) == []

    def pipeline_ended() -> bool:
        with Store(served.data / "results") as store:
            return sub["id"] in store.results("open")

    # The pipeline notices, ends and records its ending in the results store; the submission
    # stays cancelled: that ending is not taken as its result.
    until(pipeline_ended, "the cancelled entry's pipeline ended", timeout_s=120)
    with served.client(token) as client:
        assert client.get(f"/api/v1/submissions/{sub['id']}").json()["status"] == "cancelled"


def test_kill_9_requeues_the_running_entry_and_each_finishes_once(
    serve: Serve, tmp_path: Path, base_image: str, docker_client: Any, helm_bin: Path
) -> None:
    served = serve(*evaluating([], base_image, tmp_path))
    token = served.add_team("team-a")
    ids = [
        served.submit(token, stand_in_zip(tmp_path, name, behaviour)).json()["id"]
        for name, behaviour in [("slow", "slow"), ("b", "answer-a"), ("c", "answer-c")]
    ]
    served.wait_for(token, ids[0], lambda a: a["step"] == "evaluate")
    assert containers(docker_client, served)
    served.kill()

    restarted = serve(*served.args, data=served.data)
    with restarted.client(token) as client:
        positions = [client.get(f"/api/v1/submissions/{i}").json() for i in ids]
    # The interrupted one kept its place at the head of the queue (or already runs again).
    assert positions[0]["status"] in ("queued", "running")
    assert [p["position"] for p in positions[1:]] == (
        [2, 3] if positions[0]["status"] == "queued" else [1, 2]
    )
    results = [restarted.wait_for(token, i, finished) for i in ids]
    assert [r["status"] for r in results] == ["scored"] * 3
    assert containers(docker_client, restarted) == []

    with sqlite3.connect(served.data / "service.sqlite") as db:
        runs = dict(db.execute("SELECT id, runs FROM submissions").fetchall())
    with sqlite3.connect(served.data / "results" / "results.sqlite") as db:
        attempts = dict(db.execute("SELECT entry, COUNT(*) FROM attempts GROUP BY entry"))
        finished_evaluations = dict(
            db.execute(
                "SELECT a.entry, COUNT(*) FROM steps s JOIN attempts a ON a.id = s.attempt_id "
                "WHERE s.step = 'evaluate' AND s.status = 'ok' GROUP BY a.entry"
            )
        )
    assert runs == {ids[0]: 2, ids[1]: 1, ids[2]: 1}
    assert attempts == {ids[0]: 2, ids[1]: 1, ids[2]: 1}
    assert finished_evaluations == {i: 1 for i in ids}


@pytest.mark.parametrize(
    "stop",
    [
        pytest.param(lambda p: os.kill(p.pid, signal.SIGTERM), id="SIGTERM-to-the-service"),
        pytest.param(lambda p: os.killpg(p.pid, signal.SIGINT), id="SIGINT-to-its-group"),
    ],
)
def test_a_stopped_service_removes_its_containers_and_requeues_at_the_head(
    stop: Any, serve: Serve, tmp_path: Path, base_image: str, docker_client: Any, helm_bin: Path
) -> None:
    """SIGTERM as `kill PID` or systemd sends it, SIGINT as Ctrl-C does (to the whole group)."""
    served = serve(*evaluating([], base_image, tmp_path))
    token = served.add_team("team-a")
    first, second = (
        served.submit(token, stand_in_zip(tmp_path, name, "slow")).json()["id"]
        for name in ("first", "second")
    )
    served.wait_for(token, first, lambda a: a["step"] == "evaluate")
    assert containers(docker_client, served)

    stop(served.process)
    assert served.process.wait(timeout=120) == 0, served.log.read_text()[-3000:]
    assert containers(docker_client, served) == []
    assert "containers removed" in served.log.read_text()
    with ServiceDB(served.data) as db:
        subs = [db.submission(i) for i in (first, second)]
        assert [s.state if s else None for s in subs] == [State.QUEUED, State.QUEUED]
        assert [db.position(s) for s in subs if s] == [1, 2]
    with Store(served.data / "results") as store:
        steps = store.latest_steps(first, "open")
    assert steps and all(record.status.value != "running" for record in steps.values())


def test_a_restart_after_kill_9_removes_its_containers_and_no_other_folders(
    serve: Serve, tmp_path: Path, base_image: str, docker_client: Any, helm_bin: Path
) -> None:
    """Even a queue-only restart (`--jobs 0`): a container left running holds its GPU."""
    other = docker_client.containers.run(
        base_image,
        ["sleep", "600"],
        detach=True,
        labels={RUN_LABEL: results_id(tmp_path / "other-data" / "results"), **TEST_LABELS},
    )
    try:
        served = serve(*evaluating([], base_image, tmp_path))
        token = served.add_team("team-a")
        sub = served.submit(token, stand_in_zip(tmp_path, "slow", "slow")).json()["id"]
        served.wait_for(token, sub, lambda a: a["step"] == "evaluate")
        served.kill()
        assert containers(docker_client, served), "kill -9 left no container: nothing to test"

        restarted = serve("--jobs", "0", data=served.data)
        until(
            lambda: not containers(docker_client, restarted),
            "its containers are gone",
            timeout_s=60,
        )
        other.reload()
        assert other.status == "running"
        with restarted.client(token) as client:
            answer = client.get(f"/api/v1/submissions/{sub}").json()
        assert (answer["status"], answer["position"]) == ("queued", 1)
    finally:
        other.remove(force=True)


def test_a_rendered_tiny_model_submission_end_to_end_from_the_cli(
    serve: Serve,
    tmp_path: Path,
    tiny_model_dir: Path,
    base_image: str,
    docker_client: Any,
    helm_bin: Path,
) -> None:
    """`harness submit --wait` on a real rendered submission serving the tiny model (slow: the
    image installs torch from PyPI unless the engine's cache has it)."""
    # torch needs more than the stand-ins: the later --mem-limit wins.
    served = serve(*evaluating(["--health-tries", "60", "--mem-limit", "4g"], base_image, tmp_path))
    token = served.add_team("team-a")
    entry = render_submission("4090", "tiny", tmp_path / "tiny", model_dir=tiny_model_dir).path
    submitted = subprocess.run(
        [str(HARNESS), "submit", str(entry), "--server", served.url, "--track", "4090",
         "--publish", "--wait"],
        capture_output=True, text=True, env={**os.environ, "HARNESS_TOKEN": token}, timeout=1800,
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr + served.log.read_text()[-3000:]
    sub_id = submitted.stdout.splitlines()[-1]
    assert "scored" in submitted.stderr and token not in submitted.stderr + submitted.stdout
    status = subprocess.run(
        [str(HARNESS), "status", sub_id, "--server", served.url, "--json"],
        capture_output=True, text=True, env={**os.environ, "HARNESS_TOKEN": token},
    )  # fmt: skip
    answer = json.loads(status.stdout)
    assert answer["status"] == "scored" and answer["metrics"], answer
    with served.client() as client:
        board = client.get("/api/v1/leaderboard/4090").json()
    assert [row["team"] for row in board["rows"]] == ["team-a"]
    assert containers(docker_client, served) == []


def test_weights_locked_by_url_upload_little_build_verified_and_a_tampered_file_fails(
    serve: Serve,
    tmp_path: Path,
    tiny_model_dir: Path,
    base_image: str,
    docker_client: Any,
    helm_bin: Path,
) -> None:
    """`harness submit` of a rendered submission whose weights are locked by URL: the upload is
    ~0.1 MiB (the hash-pinned requirements, mostly), the service's build downloads the weights
    from a server on 127.0.0.1 (builds on the host network) and verifies them, and the entry is
    scored; the entry locked to a copy with one bit changed fails its build, the log naming the
    file."""
    bucket = tmp_path / "bucket" / "merged"
    shutil.copytree(tiny_model_dir, bucket)
    options = ["--health-tries", "60", "--mem-limit", "4g", "--build-network", "host"]
    served = serve(*evaluating(options, base_image, tmp_path))
    token = served.add_team("team-a")
    entry = render_submission("4090", "tiny-url", tmp_path / "tiny-url").path
    command = [str(HARNESS), "submit", str(entry), "--server", served.url, "--track", "4090"]
    env = {**os.environ, "HARNESS_TOKEN": token}
    with serving(bucket.parent) as url:
        lock_weights(entry, tiny_model_dir, url)
        submitted = subprocess.run(
            [*command, "--wait"], capture_output=True, text=True, env=env, timeout=1800
        )
        assert submitted.returncode == 0, submitted.stderr + served.log.read_text()[-3000:]
        size = re.search(r"uploading ([\d.]+) MiB", submitted.stderr)
        assert size is not None and float(size[1]) < 1.0, submitted.stderr
        scored = submitted.stdout.split()[-1]
        # A copy served at another URL with one bit changed; the lock is of the true files. (At
        # the same URLs the lock would be unchanged, and the build would reuse its cached
        # download layer: the bytes verified the first time, so still the locked model.)
        changed = Path(shutil.copytree(bucket, bucket.parent / "changed"))
        data = bytearray((changed / "model.safetensors").read_bytes())
        data[len(data) // 2] ^= 1
        (changed / "model.safetensors").write_bytes(bytes(data))
        lock_weights(entry, tiny_model_dir, url.removesuffix("/merged") + "/changed")
        tampered = subprocess.run(
            [*command, "--wait"], capture_output=True, text=True, env=env, timeout=1800
        )
    assert tampered.returncode == 1, tampered.stderr
    with served.client(token) as client:
        first = client.get(f"/api/v1/submissions/{scored}").json()
        second = client.get(f"/api/v1/submissions/{tampered.stdout.split()[-1]}").json()
        build_log = client.get(f"/api/v1/submissions/{second['id']}/logs").json()["build"]
    assert first["status"] == "scored" and first["metrics"], first
    assert second["status"] == "build-failed", second
    assert "weights file model.safetensors from" in build_log
    assert "does not match the lock" in build_log
    assert containers(docker_client, served) == []
