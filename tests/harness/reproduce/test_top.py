"""`harness reproduce --top K`: the demo's trained entry (a rendered submission QLoRA-trained for a
few steps on the CPU with the tiny model: tests/_trained.py) and a copy of it, both
scored by a real `harness run`; `--top 2` run as a real subprocess, killed with SIGKILL mid-way
through the second entry, then run again: it keeps the finished one and finishes the other.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.reproduce.top import reproduce_top
from harness.run.driver import RunOptions, run_entries
from harness.run.health import HealthSchedule
from harness.store import Status, entry_slug
from tests._trained import readable_base, trained_submission
from tests._wait import until
from tests.conftest import REPO
from tests.harness.reproduce.test_flow import _options, cleanup  # noqa: F401
from tests.harness.run.test_driver import write_conf

HARNESS = REPO / ".venv" / "bin" / "harness"


@pytest.mark.docker
@pytest.mark.helm
def test_top_2_reproduces_both_and_a_killed_run_resumes_without_redoing_one(
    tmp_path: Path,
    tiny_model_dir: Path,
    base_image: str,
    docker_client: Any,
    helm_bin: Path,
    cleanup: list[str],  # noqa: F811
) -> None:
    base = readable_base(tiny_model_dir, tmp_path)
    entries = tmp_path / "entries"
    # tiny-a trained as a competitor does (train, merge, serve model/), tiny-b a copy of it.
    trained = trained_submission(entries / "tiny-a", base, base_image, docker_client, tmp_path)
    shutil.copytree(trained, entries / "tiny-b", symlinks=True)
    results = tmp_path / "results"
    for name in ("tiny-a", "tiny-b"):
        cleanup += [entry_slug(name), entry_slug(f"{name}-reproduced")]
    original = RunOptions(
        track="4090", stage="open", out=results, max_eval_instances=2,
        run_specs=str(write_conf(tmp_path, 2)), base_image=base_image,
        health=HealthSchedule(tries=1, interval_s=180, poll_s=1), max_sequence_length=256,
        deadline_s=300,
    )  # fmt: skip
    assert [o.status for o in run_entries(entries, original)] == [Status.SCORED] * 2

    command = [str(HARNESS), "reproduce", "--top", "2", str(results), "--track", "4090"]
    command += ["--base-image", base_image, "--time-limit", "10m", "--mount", f"{base}:/base"]
    first, second = (results / "reproduce" / entry_slug(n) for n in ("tiny-a", "tiny-b"))
    log = (tmp_path / "killed.log").open("w")
    process = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        until(
            lambda: (
                (first / "reproduction.json").exists() and (second / "train-build.log").exists()
            ),
            "tiny-a reproduced and tiny-b's training image building",
            timeout_s=900,
            interval_s=0.5,
            check=lambda: (
                None
                if process.poll() is None
                else f"it exited: {(tmp_path / 'killed.log').read_text()}"
            ),
        )
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the command and what it started (helm-run)
        process.wait()
    finished = (first / "reproduction.json").read_bytes()
    finished_at = (first / "reproduction.json").stat().st_mtime_ns
    assert json.loads(finished)["verdict"] == "reproduced"
    assert not (second / "reproduction.json").exists()

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=900)

    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "tiny-a: kept: reproduced (finished earlier)" in rerun.stdout
    assert "tiny-b: queued" in rerun.stdout and "tiny-a: queued" not in rerun.stdout
    assert (first / "reproduction.json").read_bytes() == finished
    assert (first / "reproduction.json").stat().st_mtime_ns == finished_at
    assert json.loads((second / "reproduction.json").read_text())["verdict"] == "reproduced"
    report = json.loads((results / "reproduce" / "report.json").read_text())
    assert [(e["entry"], e["kept"], e["reproduction"]["verdict"]) for e in report["entries"]] == [
        ("tiny-a", True, "reproduced"),
        ("tiny-b", False, "reproduced"),
    ]
    # Each reproduction's loss curves: the entry's logged one and the reproduced run's.
    assert set(report["entries"][1]["reproduction"]["curves"]) == {"original", "reproduced"}
    board = json.loads((results / "leaderboard.json").read_text())
    assert {row["entry"]: row["reproduction"] for row in board["rows"]} == {
        "tiny-a": "reproduced",
        "tiny-b": "reproduced",
    }
    assert "<svg" in (results / "reproduce" / "report.html").read_text()


def test_top_refuses_bad_input_before_starting_anything(tmp_path: Path) -> None:
    runner = CliRunner()
    missing = runner.invoke(app, ["reproduce", "--top", "2", str(tmp_path), "--track", "4090"])
    assert missing.exit_code == 2 and "no results store" in missing.output
    both = runner.invoke(
        app, ["reproduce", "--top", "2", str(tmp_path), "--track", "4090", "--results", "x"]
    )
    assert both.exit_code == 2 and "leave out --results" in both.output
    assert (
        runner.invoke(app, ["reproduce", "--top", "0", str(tmp_path), "--track", "4090"]).exit_code
        == 2
    )
    local = runner.invoke(
        app, ["reproduce", "--top", "2", str(tmp_path), "--track", "4090", "--shared-storage"]
    )
    assert local.exit_code == 2 and "--shared-storage goes with --executor ray" in local.output
    with pytest.raises(Exception, match="must be 1 or more"):
        reproduce_top(0, _options(tmp_path, "unused"))
