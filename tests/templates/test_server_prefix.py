"""The shared-prefix cache (templates/server/prefix_cache.py): the same answers, less work."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient

from tests.templates.test_server import GREEDY, import_server, process, wait_ready

SHOTS = [
    "Question: what is the capital of france ?\nA. rome\nB. paris\nAnswer: B",
    "Question: which planet is largest ?\nA. jupiter\nB. the dog\nAnswer: A",
    "Question: what is two plus three ?\nA. five\nB. 9\nAnswer: A",
]
INSTRUCTIONS = "The following are multiple choice questions (with answers) about science.\n\n"


def mcqa(question: str, shots: int = 3) -> str:
    """A prompt built the way HELM's multiple_choice_joint adapter builds one."""
    return INSTRUCTIONS + "\n\n".join([*SHOTS[:shots], question])


def prompts() -> list[str]:
    rng = random.Random(0)
    subjects = [("paris", "large"), ("rome", "a dog"), ("the fox", "five"), ("jupiter", "9")]
    questions = [f"Question: is {a} {b} ?\nA. yes\nB. no\nAnswer:" for a, b in subjects]
    few_shot = [mcqa(q, shots) for q in questions for shots in (1, 3)]
    # Texts that share a prefix but part inside what is one token of the longer one.
    mid_token = [
        "the capital of france is par",
        "the capital of france is paris and",
        "answer : fi",
    ]
    long = " ".join(rng.choice(["science", "history", "?", "the", "lazy"]) for _ in range(400))
    return [*few_shot, *mid_token, mcqa(long), long + " and more", ""]


def requests() -> list[dict[str, Any]]:
    bodies = []
    for i, prompt in enumerate(prompts()):
        new = 1 + i % 4
        bodies.append({"prompt": prompt, "max_new_tokens": new, "min_new_tokens": new, **GREEDY})
    echo = {"prompt": mcqa("Question: echo ?"), "max_new_tokens": 2, "echo_prompt": True}
    bodies.append({**echo, **GREEDY})
    two = {"prompt": mcqa("Question: two ?"), "max_new_tokens": 3, "num_return_sequences": 2}
    bodies.append({**two, **GREEDY})
    return bodies


@pytest.fixture(scope="module")
def server() -> ModuleType:
    return import_server()


def _client(server: ModuleType, model_dir: Path, cache_mb: float) -> TestClient:
    settings = server.Settings(
        model_path=str(model_dir), batch_window_ms=50, prefix_cache_mb=cache_mb
    )
    return TestClient(server.create_app(settings))


@pytest.fixture(scope="module")
def cached(server: ModuleType, tiny_model_dir: Path) -> Iterator[TestClient]:
    with _client(server, tiny_model_dir, 64) as client:
        wait_ready(client)
        yield client


@pytest.fixture(scope="module")
def uncached(server: ModuleType, tiny_model_dir: Path) -> Iterator[TestClient]:
    with _client(server, tiny_model_dir, 0) as client:
        wait_ready(client)
        yield client


def engine_of(client: TestClient) -> Any:
    return client.app.state.server.engine  # type: ignore[attr-defined]


def assert_same(with_cache: dict[str, Any], without: dict[str, Any]) -> None:
    assert with_cache["text"] == without["text"]
    assert with_cache["truncated"] == without["truncated"]
    for mine, theirs in zip(with_cache["completions"], without["completions"], strict=True):
        assert [t["text"] for t in mine["tokens"]] == [t["text"] for t in theirs["tokens"]]
        assert [t["logprob"] for t in mine["tokens"]] == pytest.approx(
            [t["logprob"] for t in theirs["tokens"]], abs=1e-5
        )
        for a, b in zip(mine["tokens"], theirs["tokens"], strict=True):
            assert a["top_logprob"].keys() == b["top_logprob"].keys()
            assert a["top_logprob"] == pytest.approx(b["top_logprob"], abs=1e-5)


def test_answers_are_identical_with_and_without_the_cache(
    cached: TestClient, uncached: TestClient
) -> None:
    bodies = requests()
    expected = [process(uncached, **body) for body in bodies]
    assert engine_of(uncached).prefix is None
    prefix = engine_of(cached).prefix
    before = prefix.reused_tokens
    serial = [process(cached, **body) for body in bodies]
    assert prefix.reused_tokens > before, "no prefix was reused"
    for mine, theirs in zip(serial, expected, strict=True):
        assert_same(mine, theirs)
    # Batched: the same requests at once, a few twice, in shuffled order.
    order = [*range(len(bodies)), 0, 3, 5]
    random.Random(1).shuffle(order)
    with ThreadPoolExecutor(len(order)) as pool:
        batched = list(pool.map(lambda i: process(cached, **bodies[i]), order))
    for i, answer in zip(order, batched, strict=True):
        assert_same(answer, expected[i])


def test_prompts_are_matched_by_token_ids_not_text(cached: TestClient) -> None:
    engine = engine_of(cached)
    short, longer = "the capital of france is par", "the capital of france is paris and"
    ids_short, ids_long = engine.encode(short), engine.encode(longer)
    common = next(i for i, (a, b) in enumerate(zip(ids_short, ids_long, strict=False)) if a != b)
    assert common < len(ids_short)  # the texts part inside a token of the longer one
    engine.prefix.clear()
    process(cached, prompt=short, max_new_tokens=1)
    depth, entry = engine.prefix.longest(ids_long)
    assert depth == common and entry is not None
    assert list(entry.ids[:depth]) == ids_long[:depth]


def test_a_request_never_changes_a_cached_entry(cached: TestClient) -> None:
    engine = engine_of(cached)
    prompt = mcqa("Question: is the dog large ?\nA. yes\nB. no\nAnswer:")
    process(cached, prompt=prompt, max_new_tokens=1)
    _, entry = engine.prefix.longest(engine.encode(prompt))
    snapshot = [(k.clone(), v.clone()) for k, v in entry.layers]
    longer = {"max_new_tokens": 5, "min_new_tokens": 5, **GREEDY}
    with ThreadPoolExecutor(4) as pool:  # extend it, decode after it, batched
        list(pool.map(lambda n: process(cached, prompt=prompt + " A" * n, **longer), range(4)))
    for (k, v), (k0, v0) in zip(entry.layers, snapshot, strict=True):
        assert torch.equal(k, k0) and torch.equal(v, v0)


# ---- the cache on its own ----


def _states(tokens: int, width: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(torch.zeros(1, tokens, width), torch.zeros(1, tokens, width)) for _ in range(2)]


def test_longest_prefix_and_lru_under_the_budget(server: ModuleType) -> None:
    from prefix_cache import PrefixCache

    per_token = 2 * 2 * 4 * 4  # two layers, keys and values, 4 floats of 4 bytes
    cache = PrefixCache(budget_bytes=10 * per_token)
    cache.put([1, 2, 3, 4], _states(4))
    cache.put([1, 2, 9], _states(3))
    assert cache.longest([1, 2, 3, 7])[0] == 3
    assert cache.longest([1, 2, 9, 9])[0] == 3
    assert cache.longest([5])[0] == 0 and cache.longest([])[1] is None
    assert cache.used == 7 * per_token
    cache.longest([1, 2, 3])  # [1, 2, 3, 4] is now the most recently used
    cache.put([7, 7, 7, 7], _states(4))  # over budget: [1, 2, 9] goes first
    assert cache.longest([1, 2, 9])[0] == 2 and cache.longest([7, 7])[0] == 2
    assert cache.used == 8 * per_token and len(cache) == 2
    cache.put([1, 2, 3, 4, 5], _states(5))  # extends [1, 2, 3, 4], which is dropped
    assert len(cache) == 2 and cache.used == 9 * per_token
    cache.put([1, 2, 3, 4, 5], _states(5))  # already there
    assert len(cache) == 2
    cache.put(list(range(11)), _states(11))  # larger than the whole budget: not kept
    assert cache.longest([0, 1])[0] == 0
    cache.clear()
    assert cache.used == 0 and len(cache) == 0 and cache.longest([1])[0] == 0


def _shared(a: Sequence[int], b: Sequence[int]) -> int:
    length = 0
    while length < min(len(a), len(b)) and a[length] == b[length]:
        length += 1
    return length


def test_random_operations_match_a_brute_force_search(server: ModuleType) -> None:
    # Short ids over a 3-token alphabet: edges split, merge into prefixes and branches go often.
    from prefix_cache import PrefixCache

    rng = random.Random(0)
    per_token = 2 * 2 * 4 * 4
    for _ in range(100):
        cache = PrefixCache(budget_bytes=per_token * rng.randint(4, 40))
        for _ in range(60):
            ids = [rng.randint(0, 2) for _ in range(rng.randint(0, 10))]
            if rng.random() < 0.5:
                cache.put(ids, _states(len(ids)))
            live = [entry.ids for entry in cache._lru.values()]
            shared = [_shared(e, ids) for e in live]
            depth, entry = cache.longest(ids)
            assert depth == max(shared, default=0)
            assert entry is None if depth == 0 else list(entry.ids[:depth]) == ids[:depth]
            assert cache.used == per_token * sum(map(len, live)) <= cache.budget
            assert len(set(live)) == len(live)


def test_a_zero_budget_disables_the_cache_and_a_negative_one_is_refused(
    server: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODEL_PATH", "/models/merged")
    monkeypatch.setenv("PREFIX_CACHE_MB", "0")
    assert server.Settings.from_env().prefix_cache_mb == 0
    for bad in ("-1", "nan"):
        monkeypatch.setenv("PREFIX_CACHE_MB", bad)
        with pytest.raises(ValueError, match="PREFIX_CACHE_MB"):
            server.Settings.from_env()
