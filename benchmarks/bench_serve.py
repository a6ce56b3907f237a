"""Serving throughput: the submission server against a naive one-request-at-a-time baseline.

    .venv/bin/python benchmarks/bench_serve.py [--model-dir DIR] [--requests 480] [--clients 8]

Both servers run under uvicorn on the same model (the tiny random Llama unless --model-dir is
given) and receive the same HELM-like workload from N concurrent clients: mostly few-shot
multiple-choice prompts asking for 1-5 greedy tokens with top-5 alternatives, and some longer
generations. Every request asks for `min_new_tokens = max_new_tokens` so both servers do the same
work whatever the model's end-of-sequence habits. Prints requests/s, generated tokens/s, p50/p99
latency, the server process's peak resident memory, and how many greedy answers agree.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from harness.health import HealthSchedule, wait_healthy

REPO = Path(__file__).resolve().parents[1]
SERVERS = {
    "naive (sample-style)": (REPO / "benchmarks", "naive_server:app"),
    "submission server": (REPO / "templates" / "server", "main:app"),
}
WORDS = [
    "the",
    "capital",
    "of",
    "france",
    "is",
    "paris",
    "and",
    "italy",
    "rome",
    "a",
    "model",
    "answers",
    "questions",
    "about",
    "science",
]


def workload(count: int, seed: int = 0) -> list[dict[str, Any]]:
    """HELM-like requests: 85% multiple choice (1-5 tokens), 15% longer generations."""
    rng = random.Random(seed)
    requests = []
    for _ in range(count):
        if rng.random() < 0.85:
            shots = "".join(
                f"Question: {' '.join(rng.choices(WORDS, k=rng.randint(4, 9)))}?\n"
                f"A. {rng.choice(WORDS)}\nB. {rng.choice(WORDS)}\nAnswer: {rng.choice('AB')}\n\n"
                for _ in range(rng.randint(1, 3))
            )
            prompt, new_tokens = (
                shots + "Question: is it true?\nA. yes\nB. no\nAnswer:",
                rng.randint(1, 5),
            )
        else:
            prompt = " ".join(rng.choices(WORDS, k=rng.randint(8, 30)))
            new_tokens = rng.randint(32, 64)
        requests.append(
            {
                "prompt": prompt,
                "temperature": 1e-7,  # what HELM sends for temperature 0
                "max_new_tokens": new_tokens,
                "min_new_tokens": new_tokens,
                "top_k_per_token": 5,
                "num_return_sequences": 1,
                "top_p": 1,
                "echo_prompt": False,
                "stop_sequences": [],
            }
        )
    return requests


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def running(folder: Path, target: str, model_dir: Path) -> Iterator[tuple[str, int]]:
    """A uvicorn server on a free port; yields its URL and process id once /health says 200."""
    port = free_port()
    env = {**os.environ, "MODEL_PATH": str(model_dir)}
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


def percentile(values: list[float], q: float) -> float:
    return (
        statistics.quantiles(values, n=100, method="inclusive")[q - 1]
        if len(values) > 1
        else values[0]
    )


def report(results: dict[str, Result], requests: int, clients: int, model: str) -> None:
    print(f"\nmodel: {model}   requests: {requests}   concurrent clients: {clients}\n")
    names = list(results)
    rows = [
        ("requests/s", lambda r: requests / r.seconds, "{:.1f}"),
        ("generated tokens/s", lambda r: r.tokens / r.seconds, "{:.1f}"),
        ("p50 latency (ms)", lambda r: 1000 * percentile(r.latencies, 50), "{:.0f}"),
        ("p99 latency (ms)", lambda r: 1000 * percentile(r.latencies, 99), "{:.0f}"),
        ("wall time (s)", lambda r: r.seconds, "{:.1f}"),
        ("peak server RSS (MiB)", lambda r: r.peak_mib, "{:.0f}"),
    ]
    print(f"{'':24}" + "".join(f"{name:>24}" for name in names) + f"{'ratio':>10}")
    for label, value, fmt in rows:
        cells = [value(results[name]) for name in names]
        ratio = cells[-1] / cells[0] if cells[0] else float("nan")
        print(f"{label:24}" + "".join(f"{fmt.format(c):>24}" for c in cells) + f"{ratio:>9.2f}x")
    first, last = (results[name].texts for name in (names[0], names[-1]))  # same request order
    same = sum(a == b for a, b in zip(first, last, strict=True))
    print(f"\ngreedy answers identical in both servers: {same}/{requests}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, help="a Hugging Face model folder")
    parser.add_argument("--requests", type=int, default=480)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=4, help="alternations between the servers")
    args = parser.parse_args()
    requests = workload(args.requests)
    with tempfile.TemporaryDirectory() as scratch:
        model_dir = args.model_dir
        if model_dir is None:
            sys.path.insert(0, str(REPO))
            from harness.tiny_model import write_tiny_model

            model_dir = write_tiny_model(Path(scratch) / "tiny-model")
        with contextlib.ExitStack() as stack:
            servers = {
                name: stack.enter_context(running(folder, target, model_dir))
                for name, (folder, target) in SERVERS.items()
            }
            results = {name: Result() for name in servers}
            for url, _ in servers.values():  # neither side pays first-call costs in the runs
                httpx.post(f"{url}/process", json=requests[0], timeout=600).raise_for_status()
            # Rounds alternate between the servers so a change in the machine's load hits both.
            for round_number in range(args.rounds):
                chunk = requests[round_number :: args.rounds]
                for name, (url, _) in servers.items():
                    print(f"round {round_number + 1}/{args.rounds}: {name} ...", flush=True)
                    drive(url, chunk, args.clients, results[name])
            for name, (_, pid) in servers.items():
                results[name].peak_mib = peak_rss_mib(pid)
    report(results, args.requests, args.clients, str(args.model_dir or "tiny random Llama (CPU)"))


if __name__ == "__main__":
    main()
