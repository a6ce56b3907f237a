"""The submission server under a real uvicorn, driven by crfm-helm itself (from .venv-helm)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness.helm.runner import HelmEndpoint, model_name, write_prod_env

ENTRY = "tiny-served"
MODEL = model_name(ENTRY)

pytestmark = pytest.mark.helm


HELM_CLIENTS = """
import json, sys
from helm.clients.http_model_client import HTTPModelClient
from helm.common.cache import BlackHoleCacheConfig
from helm.common.request import Request
from helm.common.tokenization_request import DecodeRequest, TokenizationRequest
from helm.tokenizers.http_model_tokenizer import HTTPModelTokenizer

url, model, prompt = sys.argv[1:4]
client = HTTPModelClient(BlackHoleCacheConfig(), base_url=url)
tokenizer = HTTPModelTokenizer(BlackHoleCacheConfig(), base_url=url)

def complete(**kwargs):
    request = Request(model=model, model_deployment=model, prompt=prompt, **kwargs)
    result = client.make_request(request)
    assert result.success, result.error
    (completion,) = result.completions
    return {
        "text": completion.text,
        "logprob": completion.logprob,
        "tokens": [[token.text, token.logprob] for token in completion.tokens],
        "request_time": result.request_time,
    }

tokens = tokenizer.tokenize(TokenizationRequest(text=prompt, tokenizer=model, encode=True))
cut = tokenizer.tokenize(
    TokenizationRequest(text=prompt, tokenizer=model, encode=True, truncation=True, max_length=3)
)
decoded = tokenizer.decode(DecodeRequest(tokens=[t.value for t in tokens.tokens], tokenizer=model))
print(json.dumps({
    "greedy": complete(temperature=0, max_tokens=5),
    "stopped": complete(temperature=0, max_tokens=5, stop_sequences=[sys.argv[4]]),
    "echo": complete(temperature=0, max_tokens=0, echo_prompt=True),
    "sampled": complete(temperature=0.7, max_tokens=4, num_completions=2),
    "tokens": [t.value for t in tokens.tokens],
    "truncated": [t.value for t in cut.tokens],
    "decoded": decoded.text,
    "tokenizer_ok": tokens.success and cut.success and decoded.success,
}))
"""


def run_helm_clients(helm_bin: Path, url: str, prompt: str, stop: str) -> dict[str, Any]:
    result = subprocess.run(
        [str(helm_bin / "python"), "-c", HELM_CLIENTS, url, MODEL, prompt, stop],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    answer: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return answer


def test_helm_http_client_and_tokenizer_read_the_answers(
    helm_bin: Path, tiny_server_url: str
) -> None:
    base_url = tiny_server_url
    prompt = "Question: what is two plus three? Answer:"
    direct = httpx.post(
        f"{base_url}/process",
        json={"prompt": prompt, "temperature": 0, "max_new_tokens": 5},
    ).json()
    stop = direct["tokens"][2]["text"]
    helm = run_helm_clients(helm_bin, base_url, prompt, stop)
    assert helm["greedy"]["text"] == direct["text"]
    assert [t[1] for t in helm["greedy"]["tokens"]] == pytest.approx(
        [t["logprob"] for t in direct["tokens"]]
    )
    assert helm["greedy"]["request_time"] > 0
    assert len(helm["greedy"]["tokens"]) <= 5
    assert helm["stopped"]["text"] == direct["text"][: direct["text"].index(stop)]
    assert helm["echo"]["text"] == prompt
    assert len(helm["echo"]["tokens"]) == len(helm["tokens"])
    assert len(helm["sampled"]["tokens"]) <= 4
    assert helm["tokenizer_ok"]
    assert helm["truncated"] == helm["tokens"][:3]
    assert helm["decoded"] == prompt


def test_helm_run_scores_the_server(helm_bin: Path, tiny_server_url: str, tmp_path: Path) -> None:
    base_url = tiny_server_url
    # The harness's own registration: the shipped neurips/local has no base_url.
    prod_env = write_prod_env(
        tmp_path / "prod_env", [HelmEndpoint(ENTRY, base_url, max_sequence_length=256)]
    )
    output = tmp_path / "benchmark_output"
    command = [
        str(helm_bin / "helm-run"),
        "--run-entries",
        f"simple_mcqa:model={MODEL}",
        "--suite",
        "server-test",
        "--max-eval-instances",
        "5",
        "--local-path",
        str(prod_env),
        "--output-path",
        str(output),
        "--disable-cache",
    ]
    result = subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=os.environ
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    stats_files = list((output / "runs" / "server-test").glob("*/stats.json"))
    assert stats_files, (result.stdout + result.stderr)[-4000:]
    stats = json.loads(stats_files[0].read_text())
    names = {entry["name"]["name"] for entry in stats}
    assert "exact_match" in names
    counts = [e for e in stats if e["name"]["name"] == "num_instances" and e["count"]]
    assert counts and counts[0]["sum"] > 0
    state = json.loads((stats_files[0].parent / "scenario_state.json").read_text())
    results = [request_state["result"] for request_state in state["request_states"]]
    assert len(results) == 5
    assert all(r["success"] and len(r["completions"][0]["tokens"]) <= 5 for r in results)
