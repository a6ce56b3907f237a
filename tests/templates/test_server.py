"""The submission server's protocol, run in-process on the tiny model (templates/server)."""

from __future__ import annotations

import dataclasses
import importlib
import json
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient

from tests._wait import until

SERVER_DIR = Path(__file__).resolve().parents[2] / "templates" / "server"
FRANCE = "The capital of France is "
# Engine._forward's signature: token ids, attention mask, KV cache -> hidden states.
Forward = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]
GREEDY = {"temperature": 0, "top_k_per_token": 3}


def import_server() -> ModuleType:
    """templates/server/main.py, imported as the rendered submission does (api.py beside it)."""
    if str(SERVER_DIR) not in sys.path:
        sys.path.insert(0, str(SERVER_DIR))
    main = importlib.import_module("main")
    assert Path(main.__file__ or "").parent == SERVER_DIR
    return main


def wait_ready(client: TestClient, timeout: float = 60) -> None:
    def loading() -> str | None:  # 503 while the model loads; anything else but 200 is a failure
        health = client.get("/health")
        return None if health.status_code in (200, 503) else str(health.json())

    until(
        lambda: client.get("/health").status_code == 200,
        "the server became ready",
        timeout_s=timeout,
        interval_s=0.05,
        check=loading,
    )


@pytest.fixture(scope="module")
def server() -> ModuleType:
    return import_server()


@pytest.fixture(scope="module")
def client(server: ModuleType, tiny_model_dir: Path) -> Iterator[TestClient]:
    # A long window makes concurrent test requests share batches, which the tests check.
    settings = server.Settings(model_path=str(tiny_model_dir), batch_window_ms=50)
    with TestClient(server.create_app(settings)) as test_client:
        wait_ready(test_client)
        yield test_client


@pytest.fixture(scope="module")
def engine(client: TestClient) -> Any:
    return client.app.state.server.engine  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def reference(tiny_model_dir: Path) -> tuple[Any, Any]:
    """The same model and tokenizer loaded straight from transformers."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(tiny_model_dir)


def process(client: TestClient, **body: Any) -> dict[str, Any]:
    response = client.post("/process", json=body)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def assert_same_tokens(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> None:
    """Same tokens, log-probabilities equal to float32 rounding: a prompt read in one piece and
    one read after a cached prefix (or in a batch) add up the same numbers in another order."""
    assert [t["text"] for t in a] == [t["text"] for t in b]
    assert [t["logprob"] for t in a] == pytest.approx([t["logprob"] for t in b], abs=1e-5)
    for mine, theirs in zip(a, b, strict=True):
        assert mine["top_logprob"] == pytest.approx(theirs["top_logprob"], abs=1e-5)


def test_health_check_prompt_alone_is_answered(client: TestClient) -> None:
    health = client.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    result = process(client, prompt=FRANCE)  # what the organizers' health check posts
    assert set(result) >= {"text", "tokens", "logprob", "request_time"}
    assert 0 < result["request_time"] < 60
    assert result["logprob"] == pytest.approx(sum(t["logprob"] for t in result["tokens"]))


def test_unknown_fields_are_ignored(client: TestClient) -> None:
    result = process(client, prompt=FRANCE, max_new_tokens=2, model="neurips/local", foo=[1])
    assert len(result["tokens"]) <= 2


def test_greedy_is_deterministic_and_helm_zero_is_greedy(client: TestClient) -> None:
    body = {"prompt": FRANCE, "max_new_tokens": 12, "min_new_tokens": 12, **GREEDY}
    first, second = process(client, **body), process(client, **body)
    helm_zero = process(client, **{**body, "temperature": 1e-7})
    assert len(first["tokens"]) == 12
    for other in (second, helm_zero):
        assert other["text"] == first["text"]
        assert_same_tokens(other["tokens"], first["tokens"])


def test_seed_makes_sampling_reproducible(client: TestClient) -> None:
    body = {"prompt": FRANCE, "temperature": 1.0, "max_new_tokens": 10, "min_new_tokens": 10}
    first, again = process(client, **body, seed=7), process(client, **body, seed=7)
    other = process(client, **body, seed=8)
    assert_same_tokens(first["tokens"], again["tokens"])
    assert first["text"] != other["text"]  # 10 draws from a near-uniform model: a clash is ~0


def test_logprobs_equal_a_direct_forward_pass(client: TestClient, reference: Any) -> None:
    model, tokenizer = reference
    result = process(
        client, prompt=FRANCE, max_new_tokens=6, min_new_tokens=6, echo_prompt=True, **GREEDY
    )
    prompt_ids = tokenizer.encode(FRANCE, add_special_tokens=False)
    with torch.inference_mode():
        expected = model.generate(
            torch.tensor([prompt_ids]),
            attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
            do_sample=False,
            max_new_tokens=6,
            min_new_tokens=6,
        )[0]
        logprobs = torch.log_softmax(model(expected[None]).logits[0].float(), dim=-1)
    ids = expected.tolist()
    assert result["text"] == FRANCE + tokenizer.decode(ids[len(prompt_ids) :])
    tokens = result["tokens"]
    assert len(tokens) == len(ids)
    assert tokens[0]["logprob"] == 0.0  # no BOS in this tokenizer: nothing to condition on
    for position, (token, token_id) in enumerate(zip(tokens[1:], ids[1:], strict=True)):
        row = logprobs[position]
        assert token["logprob"] == pytest.approx(row[token_id].item(), abs=1e-4)
        # Keyed by text, alternatives that decode alike (partial UTF-8 bytes) keep the best.
        top = dict(zip(row.topk(3).indices.tolist(), row.topk(3).values.tolist(), strict=True))
        best: dict[str, float] = {}
        for alt_id, alt_logprob in top.items():
            best.setdefault(tokenizer.decode([alt_id]), alt_logprob)
        assert token["top_logprob"] == pytest.approx(best, abs=1e-4)
    assert result["logprob"] == pytest.approx(sum(t["logprob"] for t in tokens), abs=1e-4)


def test_echo_with_zero_new_tokens_scores_the_prompt(client: TestClient, reference: Any) -> None:
    model, tokenizer = reference
    result = process(client, prompt=FRANCE, max_new_tokens=0, echo_prompt=True, **GREEDY)
    ids = tokenizer.encode(FRANCE, add_special_tokens=False)
    assert result["text"] == FRANCE
    assert len(result["tokens"]) == len(ids)
    assert "".join(t["text"] for t in result["tokens"]) == FRANCE
    with torch.inference_mode():
        logprobs = torch.log_softmax(model(torch.tensor([ids])).logits[0], dim=-1)
    expected = [0.0] + [logprobs[i, ids[i + 1]].item() for i in range(len(ids) - 1)]
    assert [t["logprob"] for t in result["tokens"]] == pytest.approx(expected, abs=1e-4)
    without_echo = process(client, prompt=FRANCE, max_new_tokens=0)
    assert without_echo["text"] == "" and without_echo["tokens"] == []


def test_max_new_tokens_ends_a_generation(client: TestClient) -> None:
    bounded = process(client, prompt=FRANCE, max_new_tokens=4, min_new_tokens=4, **GREEDY)
    assert len(bounded["tokens"]) == 4
    assert bounded["completions"][0]["finish_reason"] == "length"


def test_any_end_of_sequence_id_ends_a_generation(
    server: ModuleType, tiny_model_dir: Path, tmp_path: Path, reference: Any
) -> None:
    # Llama-3-style configs list several end ids; make the model's first greedy pick one of them.
    model, tokenizer = reference
    with torch.inference_mode():
        logits = model(torch.tensor([tokenizer.encode(FRANCE, add_special_tokens=False)])).logits
    first = int(logits[0, -1].argmax())
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    config_path = model_dir / "generation_config.json"
    config = json.loads(config_path.read_text())
    config["eos_token_id"] = [config["eos_token_id"], first]
    config_path.write_text(json.dumps(config))
    with TestClient(server.create_app(server.Settings(model_path=str(model_dir)))) as ended:
        wait_ready(ended)
        natural = process(ended, prompt=FRANCE, max_new_tokens=20, **GREEDY)
        held = process(ended, prompt=FRANCE, max_new_tokens=3, min_new_tokens=1, **GREEDY)
    assert natural["completions"][0]["finish_reason"] == "eos"
    assert natural["tokens"] == [] and natural["text"] == ""
    assert len(held["tokens"]) >= 1  # min_new_tokens holds the end back


def test_stop_sequences_cut_text_tokens_and_logprob(client: TestClient) -> None:
    body = {"prompt": FRANCE, "max_new_tokens": 16, "min_new_tokens": 16, **GREEDY}
    full = process(client, **body)
    texts = [t["text"] for t in full["tokens"]]
    # A stop sequence starting at a token after the 5th that does not occur before it.
    stop_at = next(
        i for i in range(5, 16) if texts[i].strip() and texts[i] not in "".join(texts[:i])
    )
    stop = texts[stop_at]
    cut = process(client, **body, stop_sequences=["never appears \x00", stop])
    assert "".join(texts) == full["text"]
    assert cut["text"] == full["text"][: full["text"].index(stop)]
    assert_same_tokens(cut["tokens"], full["tokens"][:stop_at])
    assert "".join(t["text"] for t in cut["tokens"]) == cut["text"]
    assert cut["logprob"] == pytest.approx(sum(t["logprob"] for t in cut["tokens"]))
    assert cut["completions"][0]["finish_reason"] == "stop"


def test_several_sequences_come_back_with_the_first_on_top(client: TestClient) -> None:
    body = {"prompt": FRANCE, "temperature": 1.0, "max_new_tokens": 5, "min_new_tokens": 5}
    helm = process(client, **body, num_return_sequences=3, seed=1)
    competition = process(client, **body, num_samples=3, seed=1)
    assert len(helm["completions"]) == 3
    assert helm["text"] == helm["completions"][0]["text"]
    assert helm["tokens"] == helm["completions"][0]["tokens"]
    assert len({c["text"] for c in helm["completions"]}) > 1
    for mine, theirs in zip(competition["completions"], helm["completions"], strict=True):
        assert mine["text"] == theirs["text"]
        assert_same_tokens(mine["tokens"], theirs["tokens"])


def test_long_prompts_are_cut_from_the_left(client: TestClient, engine: Any) -> None:
    context = engine.context
    prompt = " ".join(f"word{i}" for i in range(400))  # far more than 256 tokens
    result = process(client, prompt=prompt, max_new_tokens=10, min_new_tokens=10, **GREEDY)
    assert result["truncated"] is True
    assert len(result["tokens"]) == 10
    echoed = process(client, prompt=prompt, max_new_tokens=0, echo_prompt=True)
    assert echoed["truncated"] is True
    assert len(echoed["tokens"]) == context
    assert prompt.endswith(echoed["text"])  # the end of the prompt is what is kept
    short = process(client, prompt=FRANCE, max_new_tokens=0, echo_prompt=True)
    assert short["truncated"] is False
    huge = process(client, prompt=FRANCE, max_new_tokens=10_000, min_new_tokens=300, **GREEDY)
    assert len(huge["tokens"]) < context  # the context bounds prompt + generation


def test_fit_prompt_keeps_the_start_and_the_end(server: ModuleType) -> None:
    import api

    assert api.fit_prompt([5] * 10, [0], [0], 4, 8) == ([0, 5, 5, 5], 1, 4, True)
    assert api.fit_prompt([5, 6, 7], [], [1], 100, 8) == ([7], 0, 7, True)  # budget capped
    assert api.fit_prompt([], [], [1], 2, 8) == ([1], 1, 2, False)  # something to read
    assert api.fit_prompt([5, 6], [], [1], 2, 8) == ([5, 6], 0, 2, False)


def test_empty_prompt_is_served(client: TestClient) -> None:
    result = process(client, prompt="", max_new_tokens=3, min_new_tokens=3, **GREEDY)
    assert len(result["tokens"]) == 3
    echoed = process(client, prompt="", max_new_tokens=0, echo_prompt=True)
    assert echoed["text"] == "" and echoed["tokens"] == []


def test_tokenize_truncates_and_decode_round_trips(client: TestClient, reference: Any) -> None:
    _, tokenizer = reference
    text = "The quick brown fox jumps over the lazy dog. Café ünïcode ✓ 42"
    full = client.post("/tokenize", json={"text": text}).json()
    assert full["tokens"] == tokenizer.encode(text, add_special_tokens=False)
    assert full["request_time"] >= 0
    helm_style = {"text": text, "truncation": True, "max_length": 5}
    assert client.post("/tokenize", json=helm_style).json()["tokens"] == full["tokens"][:5]
    not_truncated = {"text": text, "truncation": False, "max_length": 5}
    assert client.post("/tokenize", json=not_truncated).json()["tokens"] == full["tokens"]
    decoded = client.post("/decode", json={"tokens": full["tokens"]}).json()
    assert decoded["text"] == text


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/process", {"max_new_tokens": 3}, "prompt"),
        ("/process", {"prompt": "x", "max_new_tokens": -1}, "max_new_tokens"),
        ("/process", {"prompt": "x", "temperature": -0.5}, "temperature"),
        ("/process", {"prompt": "x", "top_p": 0}, "top_p"),
        ("/process", {"prompt": "x", "top_p": 1.5}, "top_p"),
        ("/process", {"prompt": "x", "num_return_sequences": 0}, "num_return_sequences"),
        ("/process", {"prompt": "x", "stop_sequences": [""]}, "stop_sequences"),
        ("/process", {"prompt": None}, "prompt"),
        ("/tokenize", {"truncation": True}, "text"),
        ("/decode", {"tokens": []}, "tokens"),
        ("/decode", {"tokens": ["a"]}, "tokens"),
        ("/decode", {"tokens": [1.5]}, "tokens"),
        ("/decode", {"tokens": [-1]}, "tokens"),
        ("/decode", {}, "tokens"),
        # Strict types: a bool is not an int, 0 is not a bool, a string is not a number.
        ("/process", {"prompt": "x", "seed": False}, "seed"),
        ("/process", {"prompt": "x", "max_new_tokens": True}, "max_new_tokens"),
        ("/process", {"prompt": "x", "max_new_tokens": 2.0}, "max_new_tokens"),
        ("/process", {"prompt": "x", "echo_prompt": 0}, "echo_prompt"),
        ("/process", {"prompt": "x", "temperature": "0.5"}, "temperature"),
        ("/process", {"prompt": 3}, "prompt"),
        ("/tokenize", {"text": "x", "truncation": 0}, "truncation"),
        ("/tokenize", {"text": "x", "max_length": False}, "max_length"),
        # Finite numbers in documented ranges: 1e308 overflowed float32 and sampling made NaN.
        ("/process", {"prompt": "x", "temperature": 1e308}, "temperature"),
        ("/process", {"prompt": "x", "top_k": 10**30}, "top_k"),
        ("/process", {"prompt": "x", "seed": -1}, "seed"),
        ("/process", {"prompt": "x", "top_k_per_token": 101}, "top_k_per_token"),
        ("/process", {"prompt": "x", "stop_sequences": ["a"] * 65}, "stop_sequences"),
    ],
)
def test_invalid_requests_get_a_422_naming_the_field(
    client: TestClient, path: str, body: dict[str, Any], field: str
) -> None:
    response = client.post(path, json=body)
    assert response.status_code == 422, response.text
    assert field in response.text


@pytest.mark.parametrize("number", ["Infinity", "-Infinity", "NaN"])
@pytest.mark.parametrize("field", ["temperature", "top_p"])
def test_non_finite_numbers_get_a_422(client: TestClient, field: str, number: str) -> None:
    # Python's JSON reader accepts these; FastAPI's own error handler then failed to echo them.
    body = f'{{"prompt": "x", "{field}": {number}}}'
    response = client.post("/process", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["body", field]


@pytest.mark.parametrize(("path", "field"), [("/process", "prompt"), ("/tokenize", "text")])
def test_a_lone_surrogate_gets_a_422(client: TestClient, path: str, field: str) -> None:
    # Valid JSON, but no tokenizer can read half a UTF-16 pair.
    body = f'{{"{field}": "a\\ud800b"}}'
    response = client.post(path, content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["body", field]


@pytest.mark.parametrize("body", [b"{not json", b'{"prompt": "x"', b"\xff\xfe"])
def test_a_body_that_is_not_json_gets_a_400(client: TestClient, body: bytes) -> None:
    response = client.post("/process", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert response.json()["detail"].startswith("invalid JSON")


@pytest.mark.parametrize("top_p", [1.0, 1e-9, 5e-324])  # 5e-324 is 0 in float32: the fuzzer's find
@pytest.mark.parametrize("temperature", [1.1e-5, 100.0])
def test_extreme_sampling_settings_still_answer(
    client: TestClient, temperature: float, top_p: float
) -> None:
    body = {"prompt": FRANCE, "temperature": temperature, "top_k": 10**6, "seed": 2**63 - 1}
    result = process(client, **body, max_new_tokens=4, min_new_tokens=4, top_p=top_p)
    assert len(result["tokens"]) == 4
    assert all(t["logprob"] <= 0 for t in result["tokens"])


def test_token_ids_outside_the_vocabulary_get_a_422(client: TestClient) -> None:
    response = client.post("/decode", json={"tokens": [1, 10**6]})
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", "tokens", 1] and "outside the vocabulary" in error["msg"]


def _mixed_requests() -> list[dict[str, Any]]:
    prompts = [FRANCE, "a", "question : what is two plus three ? answer :", "the lazy dog " * 9]
    return [
        {
            "prompt": prompt,
            "max_new_tokens": n,
            "min_new_tokens": n,
            "echo_prompt": n == 2,
            **GREEDY,
        }
        for prompt in prompts
        for n in (2, 7)
    ]


def _record_batches(engine: Any, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Spy on the real decoding step: how many sequences each step decoded together."""
    sizes: list[int] = []
    original = engine._advance

    def spy(batch: Any) -> Any:
        sizes.append(len(batch.rows))
        return original(batch)

    monkeypatch.setattr(engine, "_advance", spy)
    return sizes


def test_parallel_greedy_requests_match_serial_ones(
    client: TestClient, engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    requests = _mixed_requests()
    serial = [process(client, **body) for body in requests]
    requests, serial = requests + requests[:3], serial + serial[:3]  # identical ones at once too
    sizes = _record_batches(engine, monkeypatch)
    with ThreadPoolExecutor(len(requests)) as pool:
        parallel = list(pool.map(lambda body: process(client, **body), requests))
    assert max(sizes) > 1, f"no batching happened: {sizes}"
    for alone, batched in zip(serial, parallel, strict=True):
        assert batched["text"] == alone["text"]
        assert [t["text"] for t in batched["tokens"]] == [t["text"] for t in alone["tokens"]]
        assert [t["logprob"] for t in batched["tokens"]] == pytest.approx(
            [t["logprob"] for t in alone["tokens"]], abs=1e-4
        )


def test_identical_requests_beyond_the_batch_limit_are_all_answered(
    client: TestClient, engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine, "settings", dataclasses.replace(engine.settings, max_batch_size=2))
    body = {"prompt": FRANCE, "max_new_tokens": 6, "min_new_tokens": 6, **GREEDY}
    with ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(process, client, **body) for _ in range(6)]
        answers = [future.result(timeout=60) for future in futures]
    assert len({a["text"] for a in answers}) == 1


def test_requests_join_a_running_batch_and_leave_it_early(
    client: TestClient, engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    long = {"prompt": "a", "max_new_tokens": 120, "min_new_tokens": 120, **GREEDY}
    short = _mixed_requests()
    expected_long, expected_short = process(client, **long), [process(client, **b) for b in short]
    sizes = _record_batches(engine, monkeypatch)
    with ThreadPoolExecutor(len(short) + 1) as pool:
        running = pool.submit(process, client, **long)
        while not sizes:  # the long generation is decoding
            time.sleep(0.001)
        answered = list(pool.map(lambda body: process(client, **body), short))
        assert not running.done()  # the short ones did not wait for the long one
        assert running.result()["text"] == expected_long["text"]
    assert max(sizes) > sizes[0], f"nothing joined the running batch: {sizes[:20]}"
    assert [r["text"] for r in answered] == [r["text"] for r in expected_short]


def test_a_failing_request_gets_a_500_and_the_rest_are_served(
    client: TestClient, engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A CUDA out-of-memory error cannot happen on CPU: raise one from the real forward pass.
    poison = engine.encode("poison")
    original: Forward = engine._forward

    def failing_forward(ids: torch.Tensor, mask: torch.Tensor, cache: Any) -> torch.Tensor:
        for row in ids.tolist():
            if row[-len(poison) :] == poison:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(ids, mask, cache)

    monkeypatch.setattr(engine, "_forward", failing_forward)
    requests = _mixed_requests()
    expected = [process(client, **body) for body in requests]
    with ThreadPoolExecutor(len(requests) + 1) as pool:
        bad = pool.submit(client.post, "/process", json={"prompt": "poison", **GREEDY})
        good = list(pool.map(lambda body: process(client, **body), requests))
    assert bad.result().status_code == 500
    assert "out of memory" in bad.result().json()["detail"]
    assert [r["text"] for r in good] == [r["text"] for r in expected]
    assert process(client, prompt=FRANCE, max_new_tokens=1)["request_time"] > 0


def test_a_step_that_fails_once_is_retried_request_by_request(
    client: TestClient, engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    requests = _mixed_requests()
    expected = [process(client, **body) for body in requests]
    original: Forward = engine._forward
    failures: list[int] = []

    def flaky_forward(ids: torch.Tensor, mask: torch.Tensor, cache: Any) -> torch.Tensor:
        if ids.shape[0] > 1 and ids.shape[1] == 1 and not failures:  # a batched decoding step
            failures.append(ids.shape[0])
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return original(ids, mask, cache)

    monkeypatch.setattr(engine, "_forward", flaky_forward)
    with ThreadPoolExecutor(len(requests)) as pool:
        answered = list(pool.map(lambda body: process(client, **body), requests))
    assert failures, "no batched decoding step ran"
    assert [r["text"] for r in answered] == [r["text"] for r in expected]


def test_settings_come_from_the_environment(
    server: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MODEL_PATH", raising=False)
    with pytest.raises(ValueError, match="MODEL_PATH"):
        server.Settings.from_env()
    monkeypatch.setenv("MODEL_PATH", "/models/merged")
    monkeypatch.setenv("LOAD_IN_4BIT", "1")
    monkeypatch.setenv("MAX_BATCH_SIZE", "4")
    monkeypatch.setenv("BATCH_WINDOW_MS", "2.5")
    settings = server.Settings.from_env()
    assert (settings.load_in_4bit, settings.max_batch_size, settings.batch_window_ms) == (
        True,
        4,
        2.5,
    )
    assert settings.device == "auto" and settings.dtype == "auto"
    monkeypatch.setenv("DTYPE", "float8")
    with pytest.raises(ValueError, match="DTYPE"):
        server.Settings.from_env()


def test_health_is_503_until_the_model_is_loaded(
    server: ModuleType, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded = server.load_engine
    gate = threading.Event()

    def held_load(settings: Any) -> Any:
        assert gate.wait(30)
        return loaded(settings)

    monkeypatch.setattr(server, "load_engine", held_load)
    with TestClient(server.create_app(server.Settings(model_path=str(tiny_model_dir)))) as early:
        assert early.get("/health").status_code == 503
        assert early.post("/process", json={"prompt": "x"}).status_code == 503
        assert early.post("/tokenize", json={"text": "x"}).status_code == 503
        gate.set()
        wait_ready(early)
        assert process(early, prompt=FRANCE, max_new_tokens=1)["request_time"] > 0


@pytest.mark.parametrize("model_path", ["missing-model", None])
def test_a_model_that_cannot_load_is_reported(
    server: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, model_path: str | None
) -> None:
    monkeypatch.delenv("MODEL_PATH", raising=False)
    settings = server.Settings(model_path=str(tmp_path / model_path)) if model_path else None
    with TestClient(server.create_app(settings)) as broken:
        health = until(
            lambda: (answer := broken.get("/health")).status_code != 503 and answer,
            "the server stopped loading",
            interval_s=0.05,
        )
        assert health.status_code == 500
        expected = "missing-model" if model_path else "MODEL_PATH is not set"
        assert expected in health.json()["detail"]
        response = broken.post("/process", json={"prompt": "x"})
        assert response.status_code == 500 and expected in response.json()["detail"]


def test_4bit_loading_serves_the_same_protocol(server: ModuleType, tiny_model_dir: Path) -> None:
    from bitsandbytes.nn.modules import Linear4bit

    settings = server.Settings(model_path=str(tiny_model_dir), load_in_4bit=True)
    with TestClient(server.create_app(settings)) as quantized:
        wait_ready(quantized)
        model = quantized.app.state.server.engine.model  # type: ignore[attr-defined]
        assert any(isinstance(module, Linear4bit) for module in model.modules())
        result = process(quantized, prompt=FRANCE, max_new_tokens=3, min_new_tokens=3, **GREEDY)
    assert len(result["tokens"]) == 3
    assert all(t["logprob"] < 0 for t in result["tokens"])


@pytest.mark.parametrize("window", [16, 4096])
def test_sliding_window_models_batch_correctly(
    server: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, window: int
) -> None:
    # A window shorter than the context needs its own cache kind: batches then run to their end.
    from harness.submission.tiny_model import write_tiny_model

    model_dir = write_tiny_model(tmp_path / "mistral", arch="mistral")
    config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps({**config, "sliding_window": window}))
    settings = server.Settings(model_path=str(model_dir), batch_window_ms=50)
    with TestClient(server.create_app(settings)) as mistral:
        wait_ready(mistral)
        engine = mistral.app.state.server.engine  # type: ignore[attr-defined]
        assert engine.joinable is (window >= engine.context)
        requests = _mixed_requests()
        serial = [process(mistral, **body) for body in requests]
        sizes = _record_batches(engine, monkeypatch)
        with ThreadPoolExecutor(len(requests)) as pool:
            parallel = list(pool.map(lambda body: process(mistral, **body), requests))
    assert max(sizes) > 1
    assert [r["text"] for r in parallel] == [r["text"] for r in serial]


def test_the_training_template_beside_the_model_wraps_every_generation_prompt(
    server: ModuleType, tiny_model_dir: Path, tmp_path: Path
) -> None:
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    template = "### Question\n{prompt}\n### Answer:"
    (model_dir / "prompt_template.json").write_text(json.dumps({"prompt_template": template}))
    with TestClient(server.create_app(server.Settings(model_path=str(model_dir)))) as wrapped:
        wait_ready(wrapped)
        echoed = process(wrapped, prompt=FRANCE, max_new_tokens=0, echo_prompt=True)
        # The model read the wrapped prompt; HELM's text and token count stay its own.
        read = "".join(token["text"] for token in echoed["tokens"])
        assert read == template.replace("{prompt}", FRANCE) and echoed["text"] == FRANCE
        engine = wrapped.app.state.server.engine  # type: ignore[attr-defined]
        tokens = wrapped.post("/tokenize", json={"text": FRANCE}).json()["tokens"]
        assert tokens == engine.encode(FRANCE)


@pytest.mark.parametrize(
    "content", ['{"prompt_template": "no slot"}', "not json", '{"template": "{prompt}"}']
)
def test_a_broken_template_file_stops_the_server_rather_than_serve_unwrapped(
    server: ModuleType, tiny_model_dir: Path, tmp_path: Path, content: str
) -> None:
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    (model_dir / "prompt_template.json").write_text(content)
    with TestClient(server.create_app(server.Settings(model_path=str(model_dir)))) as broken:
        deadline = time.monotonic() + 30
        while (health := broken.get("/health")).status_code == 503:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert health.status_code == 500
        assert "prompt_template.json" in health.json()["detail"]
