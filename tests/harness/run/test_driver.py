"""`harness run` end to end in the real Docker engine with real HELM, on stand-in entries.

The entries' containers run tests/harness/data/entries/server.py (HELM's protocol over the
standard library, no model), so each builds in seconds; the statuses come from real builds, real
containers, the real gateway and real helm-run. The end-to-end run on real submissions with a
trained tiny model is `make demo` (and tests/scripts/test_demo.py).
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from harness.errors import DiskFullError
from harness.leaderboard.build import build_leaderboard
from harness.run.driver import RunOptions, exit_code, run_entries
from harness.run.executor import LocalExecutor
from harness.run.health import HealthSchedule
from harness.run.pipeline import EntryJob
from harness.run.recorder import BufferedRecorder
from harness.store import (
    RUN_LABEL,
    STORE_FILENAME,
    Status,
    Step,
    Store,
    entry_slug,
    results_id,
)
from harness.submission.render import DEFAULT_BASE_IMAGE
from tests._wait import until
from tests.conftest import REPO, TEST_LABELS, fill_disk

pytestmark = [pytest.mark.docker, pytest.mark.helm]

SERVER = Path(__file__).parents[1] / "data" / "entries" / "server.py"
TOKEN = "hf_" + "k3Vq8ZpL0wXyT7nRb2Mc9DsFgHj4AeUiOo"  # made up, shaped like a Hugging Face token
QUICK_HEALTH = HealthSchedule(tries=3, interval_s=2, poll_s=0.5)


def make_entry(entries: Path, name: str, behaviour: str, *, dockerfile_extra: str = "") -> Path:
    entry = entries / name
    entry.mkdir(parents=True)
    (entry / "server.py").write_bytes(SERVER.read_bytes())
    (entry / "Dockerfile").write_text(
        f"ARG BASE_IMAGE={DEFAULT_BASE_IMAGE}\n"
        "FROM ${BASE_IMAGE}\n"
        "COPY server.py /app/server.py\n"
        f"{dockerfile_extra}"
        f"ENV BEHAVIOUR={behaviour} SLOW_S=1\n"
        "EXPOSE 80\n"
        'CMD ["python3", "/app/server.py"]\n'
    )
    return entry


def write_conf(tmp_path: Path, instances: int) -> Path:
    """A local multiple-choice task whose right answer is always the first choice, "A"."""
    task = tmp_path / "task.jsonl"
    rows = [
        {"question": f"Which is the letter number {i}?", "choices": ["a", "b", "c"], "answer": 0}
        for i in range(instances)
    ]
    task.write_text("".join(json.dumps(row) + "\n" for row in rows))
    conf = tmp_path / "specs.conf"
    conf.write_text(f'entries: [{{description: "local_task:path={task}", priority: 1}}]\n')
    return conf


def options(tmp_path: Path, base_image: str, **overrides: Any) -> RunOptions:
    values: dict[str, Any] = {
        "track": "4090",
        "stage": "open",
        "out": tmp_path / "results",
        "jobs": 2,
        "max_eval_instances": 3,
        "run_specs": str(write_conf(tmp_path, 3)),
        "base_image": base_image,
        "health": QUICK_HEALTH,
        "mem_limit": "256m",
        "max_sequence_length": 256,
        "build_timeout_s": 300,
        "deadline_s": 300,
    }
    return RunOptions(**(values | overrides))


def labelled_containers(docker_client: Any, out: Path) -> list[Any]:
    label = f"{RUN_LABEL}={results_id(out)}"
    return list(docker_client.containers.list(all=True, filters={"label": label}))


def test_every_entry_ends_with_a_status_and_a_reason(
    tmp_path: Path, base_image: str, docker_client: Any, helm_bin: Path
) -> None:
    entries = tmp_path / "entries"
    make_entry(entries, "good", "answer-a")
    make_entry(entries, "wrong", "answer-c")
    make_entry(entries, "crash", "crash")
    make_entry(entries, "unhealthy", "never-healthy")
    make_entry(entries, "oom", "oom")
    # Pinned, so the static checks pass it; the build itself cannot resolve it.
    # Unique to this test: BuildKit runs an identical failing step of two concurrent builds once
    # and shows its log to one of them only, which would leave the other nothing to classify.
    no_such_package = (
        f"RUN python3 -m venv /v && /v/bin/pip install --no-index nosuchpkg==1.0 # {uuid.uuid4()}\n"
    )
    make_entry(entries, "unresolvable", "answer-a", dockerfile_extra=no_such_package)
    leaky = make_entry(entries, "leaky", "answer-a")
    (leaky / "login.py").write_text(f'HF_TOKEN = "{TOKEN}"\n')
    (entries / "no-dockerfile").mkdir()
    (entries / "no-dockerfile" / "README.md").write_text("we forgot the Dockerfile\n")

    outcomes = {o.entry: o for o in run_entries(entries, options(tmp_path, base_image))}

    statuses = {name: outcome.status for name, outcome in outcomes.items()}
    assert statuses == {
        "good": Status.SCORED,
        "wrong": Status.SCORED,
        "crash": Status.CRASHED,
        "unhealthy": Status.UNHEALTHY,
        "oom": Status.OOM,
        "unresolvable": Status.BUILD_FAILED,
        "leaky": Status.FLAGGED,
        "no-dockerfile": Status.NO_DOCKERFILE,
    }
    assert "the model folder is missing" in outcomes["crash"].reason
    assert outcomes["unresolvable"].reason.startswith("dependency-resolution")
    assert "leaked-secret" in outcomes["leaky"].reason
    assert exit_code(list(outcomes.values())) == 1
    assert labelled_containers(docker_client, tmp_path / "results") == []

    with Store(tmp_path / "results") as store:
        board = build_leaderboard(store)
        metrics = store.metrics("open")
        good_resources = store.resources("good", "open")
        unresolvable_resources = store.resources("unresolvable", "open")
        good_image, unresolvable_image = (
            store.image_id(e, "open") for e in ("good", "unresolvable")
        )
    ranked = [row.entry for row in board.rows]
    assert ranked[:2] == ["good", "wrong"]
    assert [m.value for m in metrics["good"]] == [1.0]
    assert [m.value for m in metrics["wrong"]] == [0.0]
    # The image Docker built is measured; no GPU here, so no peak; a failed build has no image.
    image_bytes, gpu_peak_bytes = good_resources
    assert image_bytes is not None and image_bytes > 0 and gpu_peak_bytes is None
    assert unresolvable_resources == (None, None)
    # The image it was served from, by content (a release's manifest names it).
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", good_image or "") and unresolvable_image is None
    shown = next(row for row in board.rows if row.entry == "good").stages["open"].efficiency
    assert shown.image_bytes == image_bytes
    everything = "".join(
        p.read_text(errors="replace") for p in (tmp_path / "results").rglob("*") if p.is_file()
    )
    assert TOKEN not in everything


def test_deadline_and_a_hung_tokenizer_end_the_evaluation_on_time(
    tmp_path: Path, base_image: str, docker_client: Any, helm_bin: Path
) -> None:
    entries = tmp_path / "entries"
    make_entry(entries, "slow", "slow")
    make_entry(entries, "hang-tokenize", "hang-tokenize")
    run = options(
        tmp_path,
        base_image,
        run_specs=str(write_conf(tmp_path, 8)),
        max_eval_instances=8,
        deadline_s=4,
        tokenizer_timeout_s=2,
        helm_grace_s=20,
    )
    started = time.monotonic()
    outcomes = {o.entry: o for o in run_entries(entries, run)}
    assert time.monotonic() - started < 180
    assert outcomes["slow"].status is Status.EVAL_TIMEOUT
    assert "unanswered" in outcomes["slow"].reason
    with Store(tmp_path / "results") as store:
        stats = store.gateway_stats("hang-tokenize", "open")
        slow_stats = store.gateway_stats("slow", "open")
    assert stats is not None and stats[0].errors > 0
    assert slow_stats is not None and slow_stats[0].unanswered > 0
    # HELM retries the timed-out /tokenize calls until its hard stop past the deadline.
    assert outcomes["hang-tokenize"].status is Status.EVAL_TIMEOUT


def test_a_killed_harness_leaves_no_container_and_resumes(
    tmp_path: Path, base_image: str, docker_client: Any, helm_bin: Path
) -> None:
    entries = tmp_path / "entries"
    make_entry(entries, "a-fast", "answer-a")
    make_entry(entries, "b-slow", "slow")
    out = tmp_path / "results"
    conf = write_conf(tmp_path, 6)
    command = [
        str(Path(sys.executable).parent / "harness"),
        "run", str(entries), "--track", "4090", "--stage", "open", "--out", str(out),
        "--run-specs", str(conf), "--max-eval-instances", "6", "--base-image", base_image,
        "--health-tries", "3", "--health-interval", "2", "--max-sequence-length", "256",
    ]  # fmt: skip
    harness = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        until(
            lambda: (out / "logs").is_dir() and _evaluating(out, "b-slow"),
            "b-slow reached its evaluation",
            timeout_s=240,
            interval_s=0.5,
            check=lambda: None if harness.poll() is None else "the harness exited first",
        )
        os.killpg(harness.pid, signal.SIGTERM)
        assert harness.wait(timeout=60) == 130
    finally:
        if harness.poll() is None:
            os.killpg(harness.pid, signal.SIGKILL)
    assert labelled_containers(docker_client, out) == []
    with Store(out) as store:
        assert set(store.results("open")) == {"a-fast"}
        assert (store.resources("b-slow", "open")[0] or 0) > 0  # measured once its build ended
    with closing(sqlite3.connect(out / STORE_FILENAME)) as db:
        db.execute("DELETE FROM resources")  # so the rerun must measure the image it reuses
        db.commit()

    outcomes = {o.entry: o for o in run_entries(entries, options(tmp_path, base_image, out=out))}
    assert outcomes["a-fast"].skipped and outcomes["a-fast"].status is Status.SCORED
    assert not outcomes["b-slow"].skipped and outcomes["b-slow"].status is Status.SCORED
    with Store(out) as store:
        assert (store.resources("b-slow", "open")[0] or 0) > 0


def _evaluating(out: Path, entry: str) -> bool:
    with Store(out) as store:
        steps = store.latest_steps(entry, "open")
    return any(step.value == "evaluate" for step in steps)


def test_stale_containers_of_a_killed_harness_are_removed_on_start(
    tmp_path: Path, base_image: str, docker_client: Any, helm_bin: Path
) -> None:
    stale = docker_client.containers.run(
        base_image,
        ["sleep", "600"],
        detach=True,
        labels={RUN_LABEL: results_id(tmp_path / "results"), **TEST_LABELS},
    )
    entries = tmp_path / "entries"
    (entries / "empty").mkdir(parents=True)
    outcomes = run_entries(entries, options(tmp_path, base_image))
    assert [o.status for o in outcomes] == [Status.NO_DOCKERFILE]
    assert stale.id not in {c.id for c in labelled_containers(docker_client, tmp_path / "results")}


def test_cli_reports_usage_errors_with_exit_code_2(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(Path(sys.executable).parent / "harness"), "run", str(tmp_path), "--track", "H100",
         "--stage", "open", "--out", str(tmp_path / "r")],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 2
    assert "unknown track" in result.stderr and result.stdout == ""


def test_a_malformed_zip_is_flagged_with_its_findings_recorded(
    tmp_path: Path, base_image: str, docker_client: Any, helm_bin: Path
) -> None:
    import zipfile

    entries = tmp_path / "entries"
    entries.mkdir()
    with zipfile.ZipFile(entries / "escape.zip", "w") as archive:
        archive.writestr("Dockerfile", f"FROM {DEFAULT_BASE_IMAGE}\n")
        archive.writestr("../outside.txt", "written outside the entry")
    outcomes = run_entries(entries, options(tmp_path, base_image))
    assert [o.status for o in outcomes] == [Status.FLAGGED]
    assert not (tmp_path / "outside.txt").exists()
    with Store(tmp_path / "results") as store:
        rules = {f.rule for f in store.findings("escape.zip", "open")}
    assert "malformed-entry" in rules


def test_a_vanished_container_ends_only_that_entry(
    tmp_path: Path, base_image: str, docker_client: Any, helm_bin: Path
) -> None:
    entries = tmp_path / "entries"
    make_entry(entries, "good", "answer-a")
    make_entry(entries, "vanishing", "slow")
    out = tmp_path / "results"

    def remove_when_evaluating() -> None:
        image = f"harness-entry/{entry_slug('vanishing')}:open"
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            if (out / "results.sqlite").exists() and _evaluating(out, "vanishing"):
                for container in labelled_containers(docker_client, out):
                    if image in container.image.tags:
                        container.remove(force=True)  # as someone's `docker rm -f`
                        return
            time.sleep(0.5)

    remover = threading.Thread(target=remove_when_evaluating, daemon=True)
    remover.start()
    run = options(
        tmp_path, base_image, run_specs=str(write_conf(tmp_path, 8)), max_eval_instances=8
    )
    outcomes = {o.entry: o for o in run_entries(entries, run)}
    remover.join(timeout=5)

    assert outcomes["good"].status is Status.SCORED
    assert outcomes["vanishing"].status is Status.CRASHED
    assert outcomes["vanishing"].reason == (
        "during evaluation: the container disappeared (removed from outside the harness)"
    )
    assert labelled_containers(docker_client, out) == []


def test_a_run_spec_that_cannot_fit_the_context_is_refused_and_scored_0(
    tmp_path: Path, base_image: str, docker_client: Any, helm_bin: Path
) -> None:
    entries = tmp_path / "entries"
    make_entry(entries, "good", "answer-a")
    (tmp_path / "long.jsonl").write_text('{"input": "Write a story.", "answer": "Once"}\n')
    # max_tokens 400 leaves no room for a prompt in the 256-token context `options` gives.
    long = '{description: "local_task:path=long.jsonl,name=long,max_tokens=400", scenario: "long"}'
    conf = tmp_path / "with-long.conf"
    conf.write_text(write_conf(tmp_path, 3).read_text().replace("}]", f"}}, {long}]"))

    [outcome] = run_entries(entries, options(tmp_path, base_image, run_specs=str(conf)))

    reason = "local_task:name=long: max_tokens 400 does not fit a 256-token context"
    assert outcome.status is Status.SCORED
    assert outcome.reason.startswith(f"1 run(s) scored, 1 refused and scored 0 ({reason}); ")
    with Store(tmp_path / "results") as store:
        metrics = {m.scenario: m for m in store.metrics("open")["good"]}
        board = build_leaderboard(store)
        evaluate = store.latest_steps("good", "open")[Step.EVALUATE]
    assert (metrics["long"].value, metrics["long"].reason) == (0.0, reason)
    assert (metrics["local_task"].value, metrics["local_task"].reason) == (1.0, None)
    assert "1 run spec(s) refused (too long)" in evaluate.detail
    shown = board.rows[0].stages["open"].run_specs
    assert shown["local_task:name=long,max_eval_instances=3"].reason == reason
    requests = tmp_path / "results" / "logs" / entry_slug("good") / "open" / "requests.jsonl"
    endpoints = [json.loads(line)["endpoint"] for line in requests.read_text().splitlines()]
    assert endpoints.count("/process") == 3 and endpoints.count("/tokenize") < 20 * 3


def test_piped_run_prints_plain_progress_and_one_line_per_entry(
    tmp_path: Path, base_image: str, docker_client: Any, helm_bin: Path
) -> None:
    entries = tmp_path / "entries"
    missing = "an-entry-whose-name-is-longer-than-a-folded-column"
    (entries / missing).mkdir(parents=True)
    leaky = make_entry(entries, "another-entry-with-a-name-far-too-long-to-fold", "answer-a")
    (leaky / "login.py").write_text(f'HF_TOKEN = "{TOKEN}"\n')
    # A pipe, as in CI logs or `| tee`: not a terminal.
    result = subprocess.run(
        [str(Path(sys.executable).parent / "harness"), "run", str(entries), "--track", "4090",
         "--stage", "open", "--out", str(tmp_path / "results"), "--run-specs", "offline"],
        capture_output=True, text=True, cwd=REPO, env={**os.environ, "COLUMNS": "80"},
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    # Progress: one timed line per step started, no spinner frames (braille characters).
    for name in (missing, leaky.name):
        assert any(re.fullmatch(rf"\d\d:\d\d:\d\d {name}: check", line) for line in lines)
    assert not any("\u2800" <= char <= "\u28ff" for char in result.stdout)
    for name, status in [(missing, "no-dockerfile"), (leaky.name, "flagged")]:
        [row] = [line for line in lines if line.startswith("| ") and name in line]
        assert f"| {name} |" in row and f"| {status} |" in row
    assert "2 entries (0 already finished, kept)" in result.stdout
    assert TOKEN not in result.stdout


def test_a_full_disk_ends_the_run_with_exit_code_3_and_a_rerun_finishes_the_rest(
    small_disk: Path, tmp_path: Path, base_image: str, docker_client: Any, helm_bin: Path
) -> None:
    """The results folder on a real filesystem that fills up once the first entry is recorded:
    the entries then in progress get no result (a failed build log or HELM output is not their
    fault), the harness says what happened, and a rerun after space is freed does the rest."""
    entries = tmp_path / "entries"
    for name in ("a", "b", "c"):
        make_entry(entries, name, "answer-a")
    out = small_disk / "results"
    command = [
        str(Path(sys.executable).parent / "harness"),
        "run", str(entries), "--track", "4090", "--stage", "open", "--out", str(out),
        "--run-specs", str(write_conf(tmp_path, 3)), "--max-eval-instances", "3",
        "--base-image", base_image, "--jobs", "1", "--health-tries", "3",
        "--health-interval", "2", "--max-sequence-length", "256",
    ]  # fmt: skip
    env = {**os.environ, "COLUMNS": "400"}  # the message on one line, however long the path

    def run() -> tuple[int, str]:
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
        return done.returncode, done.stdout + done.stderr

    try:
        harness = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        until(
            lambda: _has_result(out, "a"),
            "the first entry got its result",
            timeout_s=240,
            interval_s=0.5,
            check=lambda: None if harness.poll() is None else harness.communicate()[0],
        )
        filler = fill_disk(small_disk)
        output = harness.communicate(timeout=300)[0]
        assert harness.returncode == 3, output
        assert f"error: no space left on the disk of {out} (" in output
        assert "Traceback" not in output
        assert labelled_containers(docker_client, out) == []

        still_full = run()  # refused at once, and clearly, while nothing can be written
        assert still_full[0] == 3 and "no space left on the disk of" in still_full[1], still_full
        assert "Traceback" not in still_full[1]

        filler.unlink()
        with Store(out) as store:
            assert set(store.results("open")) == {"a"}
        rerun = run()
        assert rerun[0] == 0, rerun[1]
        with Store(out) as store:
            results = store.results("open")
        assert {name: r.status for name, r in results.items()} == dict.fromkeys(
            "abc", Status.SCORED
        )
        with closing(sqlite3.connect(out / STORE_FILENAME)) as db:
            recorded = dict(
                db.execute(
                    "SELECT entry, COUNT(*) FROM attempts WHERE status IS NOT NULL GROUP BY entry"
                )
            )
        assert recorded == {"a": 1, "b": 1, "c": 1}
        assert labelled_containers(docker_client, out) == []
    finally:
        # The session's clean-up finds images by the results folders left under its temporary
        # folder: this one is unmounted before then.
        for image in docker_client.images.list(filters={"label": f"{RUN_LABEL}={results_id(out)}"}):
            docker_client.images.remove(image.id, force=True)


@pytest.mark.parametrize("dockerfile", [True, False], ids=["write-fails", "ends-unwritten"])
def test_an_entry_that_fails_on_a_full_disk_gets_no_result(
    dockerfile: bool,
    small_disk: Path,
    tmp_path: Path,
    base_image: str,
    docker_client: Any,
    helm_bin: Path,
) -> None:
    """Where the store can still write (on another disk, as a fleet's driver's, or into the WAL
    file SQLite reuses after a checkpoint), an entry on a full disk must not end: the rerun
    would skip it. One fails writing its HELM files; the other (no Dockerfile) ends at its check
    without writing anything, but nobody can tell whether the full disk was to blame."""
    entry = make_entry(tmp_path / "entries", "a", "answer-a")
    if not dockerfile:
        (entry / "Dockerfile").unlink()
    out = small_disk / "results"
    job = EntryJob("a", entry, options(tmp_path, base_image, out=out), results_id(out))
    job.logs.mkdir(parents=True)
    fill_disk(small_disk)
    executor = LocalExecutor(1)
    try:
        executor.start(job.options, job.run_id)
        with pytest.raises(DiskFullError, match=f"no space left on the disk of {out}"):
            executor.submit(job, BufferedRecorder()).result(timeout=300)
        assert labelled_containers(docker_client, out) == []
    finally:
        executor.close()
        for image in docker_client.images.list(filters={"label": f"{RUN_LABEL}={results_id(out)}"}):
            docker_client.images.remove(image.id, force=True)


def _has_result(out: Path, entry: str) -> bool:
    if not (out / STORE_FILENAME).exists():
        return False
    with Store(out) as store:
        return entry in store.results("open")
