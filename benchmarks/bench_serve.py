"""Serving throughput, HELM-like workload: a naive server, ours without and with its prefix cache.

    .venv/bin/python benchmarks/bench_serve.py [--model-dir DIR | --hidden 256] [--requests 480]
                                                [--clients 8]

Three servers run under uvicorn on the same model (the tiny random Llama, its context raised to
1024 tokens so few-shot prompts fit as they do on a real model, unless --model-dir is given): the
naive baseline (benchmarks/naive_server.py), the submission server with PREFIX_CACHE_MB=0, and the
submission server as shipped. They receive the same requests from N concurrent clients, built the
way HELM's multiple_choice_joint adapter builds MMLU-style prompts: instructions, five in-context
examples ("Question: ...\nA. ...\nAnswer: B" blocks separated by blank lines, the same five for
every question of a subject, as within one HELM run spec), then the test question; 80% ask for one
token (the letter), 20% are short generations (up to 16 tokens, cut at a newline). Every request
asks for `min_new_tokens = max_new_tokens` so all servers do the same work whatever the model's
end-of-sequence habits. Prints requests/s, generated tokens/s, p50/p99 latency (and the p99 of
one-token answers and of generations apart), the server process's peak resident memory, and how
many greedy answers agree with the naive server's.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from harness.run.health import HealthSchedule, wait_healthy

REPO = Path(__file__).resolve().parents[1]
NAIVE: tuple[Path, str, dict[str, str]] = (REPO / "benchmarks", "naive_server:app", {})
OURS: tuple[Path, str, dict[str, str]] = (REPO / "templates" / "server", "main:app", {})
SERVERS = {
    "naive (sample-style)": NAIVE,
    "ours, no prefix cache": (*OURS[:2], {"PREFIX_CACHE_MB": "0"}),
    "ours": OURS,
}
BENCH_CONTEXT = 1024
SUBJECTS = ["science", "history", "math", "language"]
# Words the tiny model's tokenizer knows whole: prompts are about as long in tokens as in words.
WORDS = (  # noqa: SIM905 (a sentence reads better than a list of words)
    "the capital of france is paris and italy rome a model answers questions about science "
    "history math language what two plus three five which planet largest jupiter quick brown "
    "fox jumps over lazy dog yes no true false"
).split()
LETTERS = "ABCD"


def _question(rng: random.Random, answer: str | None) -> str:
    words = " ".join(rng.choices(WORDS, k=rng.randint(8, 20)))
    options = [
        f"{letter}. {' '.join(rng.choices(WORDS, k=rng.randint(2, 6)))}" for letter in LETTERS
    ]
    ending = f"Answer: {answer}" if answer else "Answer:"
    return "\n".join([f"Question: {words} ?", *options, ending])


def workload(count: int, seed: int = 0, shots: int = 5) -> list[dict[str, Any]]:
    """HELM-like requests, subject after subject: 80% one-token answers, 20% short generations."""
    rng = random.Random(seed)
    examples = {
        subject: [_question(rng, rng.choice(LETTERS)) for _ in range(shots)] for subject in SUBJECTS
    }
    requests = []
    for index in range(count):
        subject = SUBJECTS[index * len(SUBJECTS) // count]
        instructions = (
            f"The following are multiple choice questions (with answers) about {subject}."
        )
        prompt = "\n\n".join([instructions, *examples[subject], _question(rng, None)])
        new_tokens = 1 if rng.random() < 0.8 else rng.randint(4, 16)
        requests.append(
            {
                "prompt": prompt,
                "temperature": 1e-7,  # what HELM sends for temperature 0
                "max_new_tokens": new_tokens,
                "min_new_tokens": new_tokens,
                "top_k_per_token": 1,
                "num_return_sequences": 1,
                "top_p": 1,
                "echo_prompt": False,
                "stop_sequences": [] if new_tokens == 1 else ["\n"],
            }
        )
    return requests


def bench_model(
    out_dir: Path, context: int = BENCH_CONTEXT, arch: str = "llama", hidden: int | None = None
) -> Path:
    """The tiny random model with room for few-shot prompts (its weights do not depend on it);
    `hidden` widens it (4 layers of that width) so that reading a prompt costs what it costs on a
    real model: more than the HTTP and Python around it."""
    from harness.submission.tiny_model import write_tiny_model

    model_dir = write_tiny_model(out_dir, arch=arch)
    config = json.loads((model_dir / "config.json").read_text())
    config["max_position_embeddings"] = context
    if hidden:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        config |= {"hidden_size": hidden, "intermediate_size": 4 * hidden, "num_hidden_layers": 4}
        (model_dir / "config.json").write_text(json.dumps(config))
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
        model.save_pretrained(model_dir, safe_serialization=True)
    (model_dir / "config.json").write_text(json.dumps(config))
    return model_dir


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def running(
    folder: Path, target: str, model_dir: Path, env: dict[str, str] | None = None
) -> Iterator[tuple[str, int]]:
    """A uvicorn server on a free port; yields its URL and process id once /health says 200."""
    port = free_port()
    env = {**os.environ, "MODEL_PATH": str(model_dir), **(env or {})}
    command = [sys.executable, "-m", "uvicorn", target, "--port", str(port), "--log-level", "error"]
    process = subprocess.Popen(command, cwd=folder, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        health = wait_healthy(
            url,
            schedule=HealthSchedule(tries=1, interval_s=300, poll_s=0.2),
            alive=lambda: process.poll() is None,
        )
        if not health.healthy:
            raise RuntimeError(f"{target}: {health.reason}")
        yield url, process.pid
    finally:
        process.terminate()
        process.wait(timeout=60)


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@dataclass
class Result:
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    tokens: int = 0
    texts: list[str] = field(default_factory=list)
    peak_mib: float = 0.0


def drive(url: str, requests: list[dict[str, Any]], clients: int, result: Result) -> None:
    """Send every request once from `clients` threads (each takes the next); add to `result`."""
    texts: list[str] = [""] * len(requests)
    latencies: list[float] = [0.0] * len(requests)
    counts: list[int] = [0] * len(requests)
    order = iter(range(len(requests)))
    lock = threading.Lock()

    def client() -> None:
        with httpx.Client(timeout=600) as http:
            while True:
                with lock:
                    index = next(order, None)
                if index is None:
                    return
                started = time.perf_counter()
                response = http.post(f"{url}/process", json=requests[index])
                latencies[index] = time.perf_counter() - started
                response.raise_for_status()
                body = response.json()
                texts[index], counts[index] = body["text"], len(body["tokens"])

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result.seconds += time.perf_counter() - started
    result.latencies += latencies
    result.tokens += sum(counts)
    result.texts += texts


def percentile(values: list[float], q: int) -> float:
    return (
        statistics.quantiles(values, n=100, method="inclusive")[q - 1]
        if len(values) > 1
        else values[0]
    )


def report(
    results: dict[str, Result], requests: list[dict[str, Any]], clients: int, model: str
) -> None:
    print(f"\nmodel: {model}   requests: {len(requests)}   concurrent clients: {clients}\n")
    names = list(results)
    baseline, cacheless, ours = names
    # The tail belongs to the generations: a server that makes them wait for every one-token
    # answer passing by shows it here first.
    one = [i for i, r in enumerate(requests) if r["max_new_tokens"] == 1]
    more = [i for i, r in enumerate(requests) if r["max_new_tokens"] > 1]

    def p99_of(lines: list[int]) -> Callable[[Result], float]:
        return lambda r: 1000 * percentile([r.latencies[i] for i in lines], 99)

    rows: list[tuple[str, Callable[[Result], float], str]] = [
        ("requests/s", lambda r: len(requests) / r.seconds, "{:.1f}"),
        ("generated tokens/s", lambda r: r.tokens / r.seconds, "{:.1f}"),
        ("p50 latency (ms)", lambda r: 1000 * percentile(r.latencies, 50), "{:.0f}"),
        ("p99 latency (ms)", lambda r: 1000 * percentile(r.latencies, 99), "{:.0f}"),
        ("  p99, one-token (ms)", p99_of(one), "{:.0f}"),
        ("  p99, generations (ms)", p99_of(more), "{:.0f}"),
        ("wall time (s)", lambda r: r.seconds, "{:.1f}"),
        ("peak server RSS (MiB)", lambda r: r.peak_mib, "{:.0f}"),
    ]
    header = "".join(f"{name:>24}" for name in names)
    print(f"{'':24}{header}{'ours/naive':>12}{'cache on/off':>14}")
    for label, value, fmt in rows:
        cells = {name: value(results[name]) for name in names}
        line = "".join(f"{fmt.format(cells[name]):>24}" for name in names)
        vs_naive, vs_cacheless = cells[ours] / cells[baseline], cells[ours] / cells[cacheless]
        print(f"{label:24}{line}{vs_naive:>11.2f}x{vs_cacheless:>13.2f}x")
    # The naive server does not cut at stop sequences; every server saw the same request order.
    expected = [
        cut(text, r["stop_sequences"])
        for text, r in zip(results[baseline].texts, requests, strict=True)
    ]
    for name in names[1:]:
        same = sum(a == b for a, b in zip(results[name].texts, expected, strict=True))
        print(f"greedy answers of {name!r} identical to the naive server's: {same}/{len(requests)}")


def cut(text: str, stops: list[str]) -> str:
    return text[: min((i for i in (text.find(s) for s in stops) if i >= 0), default=len(text))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, help="a Hugging Face model folder")
    parser.add_argument("--requests", type=int, default=480)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=4, help="alternations between the servers")
    parser.add_argument("--hidden", type=int, help="widen the tiny model (e.g. 256): compute-bound")
    args = parser.parse_args()
    requests = workload(args.requests)
    with tempfile.TemporaryDirectory() as scratch:
        model_dir = args.model_dir or bench_model(Path(scratch) / "tiny-model", hidden=args.hidden)
        with contextlib.ExitStack() as stack:
            servers = {
                name: stack.enter_context(running(folder, target, model_dir, env))
                for name, (folder, target, env) in SERVERS.items()
            }
            results = {name: Result() for name in servers}
            warmup = workload(1, seed=1)[0]  # neither side pays first-call costs in the runs
            for url, _ in servers.values():
                httpx.post(f"{url}/process", json=warmup, timeout=600).raise_for_status()
            # Rounds alternate between the servers so a change in the machine's load hits all.
            ordered: list[dict[str, Any]] = []
            for round_number in range(args.rounds):
                chunk = requests[round_number :: args.rounds]
                ordered += chunk
                for name, (url, _) in servers.items():
                    print(f"round {round_number + 1}/{args.rounds}: {name} ...", flush=True)
                    drive(url, chunk, args.clients, results[name])
            for name, (_, pid) in servers.items():
                results[name].peak_mib = peak_rss_mib(pid)
    model = f"tiny random Llama, hidden {args.hidden or 64} (CPU)"
    report(results, ordered, args.clients, str(args.model_dir or model))


if __name__ == "__main__":
    main()
