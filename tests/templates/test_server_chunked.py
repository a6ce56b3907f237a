"""Chunked prefill (templates/server/engine.py): a prompt read in chunks while other rows decode
answers exactly as one read whole, and the decoding rows keep producing tokens meanwhile."""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient

from tests._wait import until
from tests.templates.test_server import GREEDY, Forward, import_server, process, wait_ready
from tests.templates.test_server_prefix import assert_same

CHUNK = 16  # tokens per chunk: the prompts below take 7 to 13 chunks
WORDS = ["science", "history", "the", "lazy", "dog", "paris", "?", "five", "answer", ":"]
RNG = random.Random(0)
SHARED = " ".join(RNG.choice(WORDS) for _ in range(60))
PROMPT = SHARED + " " + " ".join(RNG.choice(WORDS) for _ in range(40))
# Decodes for as long as the context allows while the prompt above is read beside it.
LONG_GENERATION = {"prompt": "a", "max_new_tokens": 240, "min_new_tokens": 240, **GREEDY}


@pytest.fixture(scope="module")
def server() -> ModuleType:
    return import_server()


def _serving(server: ModuleType, model_dir: Path, chunk: int, cache_mb: float) -> TestClient:
    settings = server.Settings(
        model_path=str(model_dir), prefill_chunk=chunk, prefix_cache_mb=cache_mb
    )
    return TestClient(server.create_app(settings))


@pytest.fixture(scope="module")
def whole(server: ModuleType, tiny_model_dir: Path) -> Iterator[TestClient]:
    with _serving(server, tiny_model_dir, 0, 0) as client:
        wait_ready(client)
        yield client


@pytest.fixture(scope="module")
def chunked(server: ModuleType, tiny_model_dir: Path) -> Iterator[TestClient]:
    with _serving(server, tiny_model_dir, CHUNK, 64) as client:
        wait_ready(client)
        yield client


def _record_forwards(engine: Any, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Spy on the real forward pass: ("decode", rows) for a decoding step, ("read", tokens) for
    a prompt read (a chunk, or a whole prompt when nothing decodes)."""
    events: list[tuple[str, int]] = []
    original: Forward = engine._forward

    def spy(ids: torch.Tensor, mask: torch.Tensor, cache: Any) -> torch.Tensor:
        rows, columns = ids.shape
        events.append(("decode", rows) if columns == 1 else ("read", rows * columns))
        return original(ids, mask, cache)

    monkeypatch.setattr(engine, "_forward", spy)
    return events


@pytest.mark.parametrize(
    ("body", "cached_prefix"),
    [
        ({"max_new_tokens": 4, "min_new_tokens": 4}, False),
        ({"max_new_tokens": 2, "echo_prompt": True}, False),  # every prompt position scored
        ({"max_new_tokens": 3, "num_return_sequences": 2}, False),
        ({"max_new_tokens": 4, "min_new_tokens": 4}, True),  # chunks after a reused prefix
    ],
    ids=["greedy", "echo", "two-sequences", "after-cached-prefix"],
)
def test_a_prompt_read_in_chunks_beside_decoding_rows_answers_as_one_read_whole(
    whole: TestClient,
    chunked: TestClient,
    monkeypatch: pytest.MonkeyPatch,
    body: dict[str, Any],
    cached_prefix: bool,
) -> None:
    request = {"prompt": PROMPT, **GREEDY, **body}
    expected = process(whole, **request)
    engine = chunked.app.state.server.engine  # type: ignore[attr-defined]
    prompt_tokens = len(engine.encode(PROMPT))
    assert prompt_tokens > 4 * CHUNK
    engine.prefix.clear()
    if cached_prefix:
        process(chunked, prompt=SHARED, max_new_tokens=1)
    reused = engine.prefix.reused_tokens
    events = _record_forwards(engine, monkeypatch)
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(process, chunked, **LONG_GENERATION)
        # Its prompt was read, then it stepped: it is decoding.
        until(lambda: len(events) >= 2, "the long generation is decoding", interval_s=0.001)
        start = len(events)
        answer = process(chunked, **request)
        during = events[start:]
        assert running.result()["completions"][0]["finish_reason"] == "length"
    assert_same(answer, expected)
    if cached_prefix:
        assert engine.prefix.reused_tokens > reused, "the shared prefix was not reused"
    # The prompt was read in pieces of at most CHUNK tokens, the decoding row stepping between
    # every two of them: it kept producing tokens while the prompt was read.
    reads = [i for i, (kind, _) in enumerate(during) if kind == "read"]
    assert len(reads) >= 2, during
    assert all(during[i][1] <= CHUNK for i in reads[:-1]), during
    for before, after in itertools.pairwise(reads):
        assert ("decode", 1) in during[before + 1 : after], during


def test_a_prompt_is_read_whole_when_nothing_decodes(
    chunked: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = chunked.app.state.server.engine  # type: ignore[attr-defined]
    engine.prefix.clear()
    events = _record_forwards(engine, monkeypatch)
    process(chunked, prompt=PROMPT, max_new_tokens=1, **GREEDY)
    assert events == [("read", len(engine.start_ids) + len(engine.encode(PROMPT)))]


def test_prefill_chunk_comes_from_the_environment(
    server: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODEL_PATH", "/models/merged")
    assert server.Settings.from_env().prefill_chunk == 512
    monkeypatch.setenv("PREFILL_CHUNK", "0")
    assert server.Settings.from_env().prefill_chunk == 0
    monkeypatch.setenv("PREFILL_CHUNK", "-1")
    with pytest.raises(ValueError, match="PREFILL_CHUNK"):
        server.Settings.from_env()
