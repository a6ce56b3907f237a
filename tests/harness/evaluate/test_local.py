"""`harness eval`: the template's real server on the tiny model in a local process, scored by real
HELM (.venv-helm) through the gateway on an instance pack built at test time; no Docker.

The pack holds the demo's two local tasks (parity and a multiple-choice task, ten instances each),
so nothing is downloaded and HELM runs offline.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from harness.errors import ConfigError
from harness.evaluate.local import (
    EvalOptions,
    EvalResult,
    ServerError,
    evaluate_model,
    local_server,
)
from harness.helm.packs import Pack
from harness.run.health import HealthSchedule, wait_healthy
from tests.conftest import REPO
from tests.harness.evaluate import harness, task_pack

pytestmark = pytest.mark.helm

# A server that comes up and speaks HELM's /tokenize and /decode (bytes as token ids), then dies
# on the first /process: what a server that crashes mid-evaluation looks like.
DYING_SERVER = """\
import os
from fastapi import FastAPI

app = FastAPI()


@app.get("/health")
def health():
    return {"status": "ok"}


@app.post("/tokenize")
def tokenize(body: dict):
    return {"tokens": list(body["text"].encode()), "request_time": 0.0}


@app.post("/decode")
def decode(body: dict):
    return {"text": bytes(body["tokens"]).decode(errors="replace"), "request_time": 0.0}


@app.post("/process")
def process(body: dict):
    os._exit(3)
"""


@pytest.fixture(scope="module")
def pack(tmp_path_factory: pytest.TempPathFactory) -> Pack:
    return task_pack(tmp_path_factory.mktemp("pack"), "parity", "example_mcqa")


def test_eval_prints_raw_metrics_with_intervals_through_the_gateway(
    tiny_model_dir: Path, pack: Pack, tmp_path: Path, helm_bin: Path
) -> None:
    out = tmp_path / "eval"
    run = harness("eval", str(tiny_model_dir), "--instances", str(pack.path),
                   "--out", str(out), "--json")  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    result = EvalResult.from_json(run.stdout)
    assert set(result.scores) == {"parity", "example_mcqa"}
    for score in result.scores.values():
        assert score.metric == "quasi_exact_match" and score.instances == 10
        assert score.value is not None and score.low is not None and score.high is not None
        assert 0 <= score.low <= score.value <= score.high <= 1
    assert result.failed == [] and result.error is None
    assert result.pack_sha256 == pack.sha256
    assert 0 < result.start_s < result.seconds
    # HELM's requests went through the gateway (its log) to the template's server (its log).
    requests = [json.loads(line) for line in (out / "requests.jsonl").read_text().splitlines()]
    assert sum(r["endpoint"] == "/process" and r["answered"] for r in requests) == 20
    assert result.stats.answered == 20
    assert "Application startup complete" in (out / "server.log").read_text()

    # The same evaluation as lines, on a smaller budget: a prefix of the pack.
    text = harness("eval", str(tiny_model_dir), "--instances", str(pack.path),
                    "--out", str(out), "--budget", "4")  # fmt: skip
    assert text.returncode == 0, text.stdout + text.stderr
    assert (
        "parity: quasi_exact_match " in text.stdout
        and "(2 instances, 1 run spec(s))" in text.stdout
    )
    assert "95% intervals: a bootstrap over the evaluated instances." in text.stdout
    assert "4 request(s) answered;" in text.stdout and " s in all (server up after " in text.stdout


def test_run_specs_that_cannot_fit_the_context_are_listed_as_failed(
    tiny_model_dir: Path, pack: Pack, tmp_path: Path, helm_bin: Path
) -> None:
    """`harness run`'s refusal of run specs that cannot fit (helm/fit.py) applies here too."""
    run = harness("eval", str(tiny_model_dir), "--instances", str(pack.path),
                   "--out", str(tmp_path / "eval"), "--max-sequence-length", "12")  # fmt: skip
    assert run.returncode == 1, run.stdout + run.stderr
    failed = [line for line in run.stdout.splitlines() if line.startswith("failed: ")]
    assert len(failed) == 2 and all("fit a 12-token context" in line for line in failed)
    assert any("(parity)" in line for line in failed)


def test_a_server_that_cannot_start_is_a_clear_error_and_is_stopped(
    tiny_model_dir: Path, pack: Pack, tmp_path: Path, helm_bin: Path
) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "main.py").write_text("raise SystemExit('weights are missing: nothing to serve')\n")
    run = harness("eval", str(tiny_model_dir), "--instances", str(pack.path),
                   "--submission", str(broken), "--out", str(tmp_path / "eval"))  # fmt: skip
    assert run.returncode == 1, run.stdout + run.stderr
    assert "error: the model's server exited with code" in run.stderr
    assert "while it started" in run.stderr
    assert "weights are missing: nothing to serve" in run.stderr  # its log's tail
    assert "Traceback" not in run.stderr.split("the end of")[0]


def test_a_server_dying_mid_evaluation_stops_helm_at_once(
    tiny_model_dir: Path, pack: Pack, tmp_path: Path, helm_bin: Path
) -> None:
    dying = tmp_path / "dying"
    dying.mkdir()
    (dying / "main.py").write_text(DYING_SERVER)
    options = EvalOptions(tiny_model_dir, pack.path, tmp_path / "eval", submission=dying)
    with pytest.raises(ServerError, match="exited with code 3 during the evaluation"):
        evaluate_model(options)
    # Stopped by the harness when the server died, not after HELM's retries (~150 s per run).
    log = (tmp_path / "eval" / "helm" / "helm-run.log").read_text()
    assert log.count("Error when running") <= 1


def test_bad_input_is_refused_before_anything_starts(
    tiny_model_dir: Path, pack: Pack, tmp_path: Path
) -> None:
    not_a_model = tmp_path / "empty"
    not_a_model.mkdir()
    with pytest.raises(ConfigError, match=r"no config\.json"):
        evaluate_model(EvalOptions(not_a_model, pack.path, tmp_path / "a"))
    with pytest.raises(ConfigError, match=r"has no main\.py"):
        evaluate_model(EvalOptions(tiny_model_dir, pack.path, tmp_path / "b", submission=tmp_path))
    run = harness("eval", str(tiny_model_dir), "--instances", str(tmp_path / "no-pack"))
    assert run.returncode == 2 and "is not an instance pack" in run.stderr
    run = harness("eval", str(tiny_model_dir), "--instances", str(pack.path),
                   "--budget", "1000", "--out", str(tmp_path / "c"))  # fmt: skip
    assert run.returncode == 2 and "larger than the pack's budget" in run.stderr
    assert not any((tmp_path / name).exists() for name in ("a", "b", "c"))


def test_the_server_process_is_stopped_however_the_block_ends(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    template = REPO / "templates" / "server"
    with (
        pytest.raises(RuntimeError, match="the caller failed"),
        local_server(template, tiny_model_dir, tmp_path / "server.log", {}) as (url, process),
    ):
        health = wait_healthy(
            url,
            schedule=HealthSchedule(tries=1, interval_s=300, poll_s=0.2),
            alive=lambda: process.poll() is None,
        )
        assert health.healthy, (tmp_path / "server.log").read_text()[-2000:]
        raise RuntimeError("the caller failed")
    assert process.returncode is not None
    with pytest.raises(ProcessLookupError):
        os.kill(process.pid, 0)  # reaped: no such process
