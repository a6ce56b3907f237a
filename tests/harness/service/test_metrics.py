"""`/metrics` of a real `harness serve` process, read with prometheus-client's own parser."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families
from starlette.requests import Request

from harness.service.metrics import _local
from harness.store import Step, Store
from tests.harness.service.conftest import HARNESS, Serve, stand_in_zip

TOKEN = "metrics-token-0123456789abcdef"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, sorted labels) -> value, over every family the parser finds."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_count_the_queue_steps_and_requests(serve: Serve, tmp_path: Path) -> None:
    data = tmp_path / "data"
    with Store(data / "results") as store:  # what an earlier evaluation recorded
        store.add_entry("sub-earlier", data / "uploads" / "sub-earlier.zip")
        attempt = store.start_attempt("sub-earlier", "open")
        for step, seconds in ((Step.BUILD, 42.0), (Step.EVALUATE, 1200.0)):
            step_id = store.start_step(attempt, step, at=1000.0)
            store.finish_step(step_id, ok=True, at=1000.0 + seconds)
    (tmp_path / "token").write_text(TOKEN + "\n")
    served = serve("--jobs", "0", "--metrics-token-file", str(tmp_path / "token"), data=data)
    alice, bob = served.add_team("alice"), served.add_team("bob")
    body = stand_in_zip(tmp_path, "e")
    for token, track in ((alice, "4090"), (bob, "4090"), (bob, "A100")):
        assert served.submit(token, body, track=track).status_code == 201
    assert served.submit("hst_wrong", body).status_code == 401

    answer = httpx.get(f"{served.url}/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain; version=")
    found = samples(answer.text)
    assert found[("harness_queue_length", (("track", "4090"),))] == 2
    assert found[("harness_queue_length", (("track", "A100"),))] == 1
    assert ("harness_running", (("track", "4090"),)) not in found  # nothing runs (--jobs 0)
    build = (("step", "build"),)
    assert found[("harness_step_duration_seconds_count", build)] == 1
    assert found[("harness_step_duration_seconds_sum", build)] == 42.0
    assert found[("harness_step_duration_seconds_bucket", (("le", "30.0"), *build))] == 0
    assert found[("harness_step_duration_seconds_bucket", (("le", "60.0"), *build))] == 1
    evaluate = (("step", "evaluate"),)
    assert found[("harness_step_duration_seconds_sum", evaluate)] == 1200.0
    uploads = (("code", "201"), ("method", "POST"), ("route", "/api/v1/submissions"))
    assert found[("harness_http_request_duration_seconds_count", uploads)] == 3
    refused = (("code", "401"), ("method", "POST"), ("route", "/api/v1/submissions"))
    assert found[("harness_http_request_duration_seconds_count", refused)] == 1

    # Through a proxy (which connects from the loopback too), only with the token.
    proxied = {"X-Forwarded-For": "203.0.113.7"}
    assert httpx.get(f"{served.url}/metrics", headers=proxied).status_code == 403
    wrong = {**proxied, "Authorization": "Bearer not-the-token"}
    assert httpx.get(f"{served.url}/metrics", headers=wrong).status_code == 403
    right = {**proxied, "Authorization": f"Bearer {TOKEN}"}
    assert httpx.get(f"{served.url}/metrics", headers=right).status_code == 200
    assert TOKEN not in served.log.read_text()


def test_only_the_loopback_interface_is_local() -> None:
    def request(host: str, headers: list[tuple[bytes, bytes]] | None = None) -> Request:
        return Request({"type": "http", "client": (host, 5000), "headers": headers or []})

    assert _local(request("127.0.0.1")) and _local(request("::1"))
    assert not _local(request("10.0.0.5")) and not _local(request("203.0.113.7"))
    assert not _local(request("127.0.0.1", [(b"x-forwarded-for", b"203.0.113.7")]))
    assert not _local(request("testclient"))


def test_a_short_or_missing_metrics_token_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "short").write_text("abc")
    for path, message in (
        (tmp_path / "short", "shorter than 16"),
        (tmp_path / "none", "cannot read"),
    ):
        done = subprocess.run(
            [
                str(HARNESS),
                "serve",
                "--data",
                str(tmp_path / "d"),
                "--metrics-token-file",
                str(path),
            ],
            capture_output=True,
            text=True,
            env={**os.environ, "COLUMNS": "1000"},
        )
        assert done.returncode == 2 and message in done.stderr
