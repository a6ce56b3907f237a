"""The gateway against a fake entry: a tiny FastAPI app on 127.0.0.1 standing for a competitor's
container (a real server, driven by prompts that make it slow, hang or fail)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import secrets
import string
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, HTTPException

from harness.run.gateway import (
    EMPTY_COMPLETION,
    MIN_TOKENIZE_INSTANCES,
    TOKENIZE_PER_ANSWER,
    Gateway,
    ThreadedServer,
    percentile,
    tokenize_allowance,
)

ENTRY_DELAY_S = 0.05  # every /process takes this long, while it claims it took no time
SLOW_S = 30.0  # how long the entry takes on "slow" prompts, and hangs on "hang" ones
# Answers must come long before SLOW_S; the margin keeps the tests steady on a busy machine.
QUICK_S = 10.0


def _fake_entry() -> FastAPI:
    app = FastAPI()

    @app.post("/process")
    async def process(body: dict[str, Any]) -> dict[str, Any]:
        prompt = body["prompt"]
        if prompt == "boom":
            raise HTTPException(500, "the model crashed")
        await asyncio.sleep(SLOW_S if prompt == "slow" else ENTRY_DELAY_S)
        text = f"echo {prompt[:10]}"
        # One token per word, the prompt's first when echoed (as the template server does).
        words = (prompt.split() if body.get("echo_prompt") else []) + text.split()
        return {
            "text": text,
            "tokens": [{"text": word, "logprob": -0.5, "top_logprob": {}} for word in words],
            "logprob": -0.5,
            "request_time": 0.0,
        }

    @app.post("/tokenize")
    async def tokenize(body: dict[str, Any]) -> dict[str, Any]:
        if body["text"] == "hang":
            await asyncio.sleep(SLOW_S)
        return {"tokens": body["text"].split(), "request_time": 0.0}

    @app.post("/decode")
    async def decode(body: dict[str, Any]) -> dict[str, Any]:
        return {"text": " ".join(body["tokens"]), "request_time": 0.0}

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


@pytest.fixture(scope="module")
def entry_url() -> Iterator[str]:
    server = ThreadedServer(_fake_entry(), graceful_shutdown_s=1)
    server.start()
    yield server.url
    server.stop()


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(trust_env=False, timeout=30) as client:
        yield client


def _gateway(url: str, tmp_path: Path, deadline_in_s: float, **kwargs: Any) -> Gateway:
    return Gateway(
        url,
        deadline=time.monotonic() + deadline_in_s,
        request_log=tmp_path / "gateway" / "requests.jsonl",
        **kwargs,
    )


def _timed_post(
    client: httpx.Client, url: str, body: dict[str, Any]
) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = client.post(url, json=body)
    return response, time.monotonic() - started


def test_proxies_before_the_deadline_and_answers_empty_after(
    entry_url: str, tmp_path: Path, client: httpx.Client
) -> None:
    with _gateway(entry_url, tmp_path, deadline_in_s=3.0) as gateway:
        before = client.post(f"{gateway.url}/process", json={"prompt": "The capital of France is "})
        tokens = client.post(f"{gateway.url}/tokenize", json={"text": "a b c"})
        text = client.post(f"{gateway.url}/decode", json={"tokens": ["a", "b"]})
        health = client.get(f"{gateway.url}/health")
        time.sleep(max(0.0, gateway.deadline - time.monotonic()))
        # Past the deadline the gateway does not ask the entry (which would take SLOW_S).
        after, seconds = _timed_post(client, f"{gateway.url}/process", {"prompt": "slow"})
        stats = gateway.stats()

    assert before.json()["text"] == "echo The capita"
    assert tokens.json()["tokens"] == ["a", "b", "c"]
    assert text.json()["text"] == "a b"
    assert health.json() == {"status": "ok"}
    assert (after.status_code, after.json()) == (200, EMPTY_COMPLETION)
    assert seconds < QUICK_S
    assert (stats.requests, stats.answered, stats.unanswered, stats.errors) == (5, 1, 1, 0)
    # The entry claimed request_time 0.0; the gateway measured what it really took.
    assert stats.latency_p50_s is not None and stats.latency_p50_s >= ENTRY_DELAY_S


def test_a_request_in_flight_at_the_deadline_is_cut_off(
    entry_url: str, tmp_path: Path, client: httpx.Client
) -> None:
    with _gateway(entry_url, tmp_path, deadline_in_s=1.0) as gateway:
        response, seconds = _timed_post(client, f"{gateway.url}/process", {"prompt": "slow"})
        answered_at = time.monotonic()
        stats = gateway.stats()
    assert response.json() == EMPTY_COMPLETION
    assert gateway.deadline <= answered_at  # held until the deadline, then cut off
    assert seconds < QUICK_S
    assert (stats.answered, stats.unanswered, stats.errors) == (0, 1, 0)
    assert stats.latency_p50_s is None


def test_process_timeout_answers_empty(
    entry_url: str, tmp_path: Path, client: httpx.Client
) -> None:
    with _gateway(entry_url, tmp_path, deadline_in_s=60, process_timeout_s=0.5) as gateway:
        response, seconds = _timed_post(client, f"{gateway.url}/process", {"prompt": "slow"})
        stats = gateway.stats()
    assert response.json() == EMPTY_COMPLETION
    assert seconds < QUICK_S
    assert (stats.unanswered, stats.errors) == (1, 0)


def test_an_entry_hanging_on_tokenize_gets_a_quick_timeout(
    entry_url: str, tmp_path: Path, client: httpx.Client
) -> None:
    with _gateway(entry_url, tmp_path, deadline_in_s=60, tokenizer_timeout_s=0.5) as gateway:
        response, seconds = _timed_post(client, f"{gateway.url}/tokenize", {"text": "hang"})
        stats = gateway.stats()
    assert response.status_code == 504
    assert seconds < QUICK_S  # the entry would have hung, and HELM with it
    assert (stats.requests, stats.errors, stats.unanswered) == (1, 1, 0)


def test_entry_errors_are_passed_on(entry_url: str, tmp_path: Path, client: httpx.Client) -> None:
    with _gateway(entry_url, tmp_path, deadline_in_s=60) as gateway:
        failed = client.post(f"{gateway.url}/process", json={"prompt": "boom"})
        stats = gateway.stats()
    assert (failed.status_code, failed.json()) == (500, {"detail": "the model crashed"})
    assert (stats.answered, stats.unanswered, stats.errors) == (0, 0, 1)


def test_an_unreachable_entry_is_a_bad_gateway(tmp_path: Path, client: httpx.Client) -> None:
    stopped = ThreadedServer(FastAPI())
    stopped.start()
    stopped.stop()  # nothing listens on its port any more
    with _gateway(stopped.url, tmp_path, deadline_in_s=60) as gateway:
        response = client.post(f"{gateway.url}/process", json={"prompt": "hello"})
        assert gateway.stats().errors == 1
    assert response.status_code == 502


def test_the_request_log_is_written_with_secrets_redacted(
    entry_url: str, tmp_path: Path, client: httpx.Client
) -> None:
    alphabet = string.ascii_letters + string.digits
    token = "hf_" + "".join(secrets.choice(alphabet) for _ in range(34))
    with _gateway(entry_url, tmp_path, deadline_in_s=60, excerpt_chars=60) as gateway:
        client.post(f"{gateway.url}/process", json={"prompt": f"my token is {token} " + "x" * 500})
        client.post(f"{gateway.url}/tokenize", json={"text": f"{token}"})
    log = gateway.request_log.read_text()
    assert token not in log
    assert token[:3] + "…" + token[-4:] in log
    lines = [json.loads(line) for line in log.splitlines()]
    assert [(line["endpoint"], line["outcome"], line["answered"]) for line in lines] == [
        ("/process", "answered", True),
        ("/tokenize", "answered", True),
    ]
    assert all(len(line["excerpt"]) <= 60 for line in lines)
    assert lines[0]["latency_s"] >= ENTRY_DELAY_S


def test_the_request_log_counts_prompt_and_completion_tokens(
    entry_url: str, tmp_path: Path, client: httpx.Client
) -> None:
    with _gateway(entry_url, tmp_path, deadline_in_s=60) as gateway:
        client.post(f"{gateway.url}/tokenize", json={"text": "one two three"})  # as HELM does
        client.post(f"{gateway.url}/process", json={"prompt": "one two three"})
        client.post(f"{gateway.url}/process", json={"prompt": "never tokenized"})
        client.post(f"{gateway.url}/process", json={"prompt": "one two three", "echo_prompt": True})
        client.post(f"{gateway.url}/process", json={"prompt": "unknown", "echo_prompt": True})
        client.post(f"{gateway.url}/process", content=b"not json")
    lines = [json.loads(line) for line in gateway.request_log.read_text().splitlines()]
    counts = [(line.get("prompt_tokens"), line.get("completion_tokens")) for line in lines]
    # "echo one two three" is 4 words; an echoed prompt of unknown length leaves both unknown.
    assert counts == [(None, None), (3, 4), (None, 3), (3, 4), (None, None), (None, None)]


def test_runaway_tokenization_is_refused_and_reported(
    entry_url: str, tmp_path: Path, client: httpx.Client
) -> None:
    with _gateway(entry_url, tmp_path, deadline_in_s=60, tokenize_allowance=3) as gateway:
        allowed = [client.post(f"{gateway.url}/tokenize", json={"text": "a b"}) for _ in range(3)]
        assert gateway.runaway is None
        # Every answered /process allows TOKENIZE_PER_ANSWER more.
        client.post(f"{gateway.url}/process", json={"prompt": "go"})
        allowed += [
            client.post(f"{gateway.url}/tokenize", json={"text": "a b"})
            for _ in range(TOKENIZE_PER_ANSWER)
        ]
        assert gateway.runaway is None
        refused = [client.post(f"{gateway.url}/tokenize", json={"text": "a b"}) for _ in range(2)]
        # The entry still answers what is not /tokenize: HELM is stopped by the caller.
        decoded = client.post(f"{gateway.url}/decode", json={"tokens": ["a"]})
        stats = gateway.stats()
    assert [r.status_code for r in allowed] == [200] * (3 + TOKENIZE_PER_ANSWER)
    assert [r.status_code for r in refused] == [429, 429]
    assert gateway.runaway == (
        f"runaway tokenization: {3 + TOKENIZE_PER_ANSWER} /tokenize requests for 1 answered "
        "/process (HELM cuts prompts that cannot fit the context over and over); the evaluation "
        "was stopped"
    )
    assert refused[0].json()["detail"] == gateway.runaway
    assert decoded.json()["text"] == "a"
    assert (stats.answered, stats.errors) == (1, 2)
    lines = [json.loads(line) for line in gateway.request_log.read_text().splitlines()]
    assert [line["outcome"] for line in lines[-3:-1]] == ["refused", "refused"]


def test_tokenize_allowance_covers_a_run_prepared_before_its_first_answer() -> None:
    floor = MIN_TOKENIZE_INSTANCES * TOKENIZE_PER_ANSWER
    assert tokenize_allowance(0) == tokenize_allowance(1) == floor
    assert tokenize_allowance(1000) == 1000 * TOKENIZE_PER_ANSWER


def test_stop_closes_the_port(entry_url: str, tmp_path: Path, client: httpx.Client) -> None:
    gateway = _gateway(entry_url, tmp_path, deadline_in_s=60).start()
    url = gateway.url
    gateway.stop()
    with pytest.raises(httpx.ConnectError):
        client.get(f"{url}/health")


def test_percentile_nearest_rank() -> None:
    values = [float(v) for v in range(1, 11)]
    assert (percentile(values, 50), percentile(values, 90), percentile(values, 99)) == (5, 9, 10)
    assert percentile([], 50) is None


def test_a_full_disk_stops_the_request_log_not_the_requests(
    entry_url: str, tmp_path: Path, client: httpx.Client
) -> None:
    log = tmp_path / "gateway" / "requests.jsonl"
    log.parent.mkdir()
    log.symlink_to("/dev/full")  # every write fails with ENOSPC, as on a full disk
    with _gateway(entry_url, tmp_path, deadline_in_s=60) as gateway:
        first = client.post(f"{gateway.url}/process", json={"prompt": "a"})
        second = client.post(f"{gateway.url}/tokenize", json={"text": "a b"})
    assert (first.status_code, second.status_code) == (200, 200)
    assert (gateway.stats().requests, gateway.stats().answered) == (2, 1)  # /process only
    assert gateway.log_error is not None and gateway.log_error.errno == errno.ENOSPC
    assert gateway.log_error.filename == str(log)


def test_a_request_in_flight_when_the_gateway_stops_ends_quietly(
    entry_url: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    # HELM was stopped (its entry's container vanished, say) while /tokenize hung on the entry.
    gateway = _gateway(entry_url, tmp_path, deadline_in_s=60, tokenizer_timeout_s=SLOW_S)
    gateway.start()

    def hang() -> None:
        with contextlib.suppress(httpx.HTTPError):  # the gateway hangs up on it
            httpx.post(f"{gateway.url}/tokenize", json={"text": "hang"}, timeout=30)

    pending = threading.Thread(target=hang, daemon=True)
    pending.start()
    time.sleep(0.5)
    gateway.stop()  # past the grace period the request is cancelled
    pending.join(timeout=10)
    # uvicorn's own logger writes to the process's stderr, past the logging capture.
    assert "Traceback" not in capfd.readouterr().err
