"""`harness serve` under a competition's load: API latency while entries are evaluated.

    make bench-serve-api    (or: .venv/bin/python benchmarks/bench_service.py [--teams 20])

Starts a real `harness serve` (real Docker engine, real HELM, `--jobs 2`) on a fresh data folder
with N teams, then posts N x M stand-in entries (tests/harness/data/entries/server.py: each builds
in seconds) all at once from as many threads, with the default quota of 3 per team and day. While
the accepted entries are evaluated, pollers hit the API (a submission, a team's list, the public
leaderboard) and every request's latency is kept. Printed, in the same run:

- the uploads: accepted (201) and refused (429) per team: exactly the quota must get through;
- API latency percentiles while evaluations run, against the same requests once the queue is
  idle (the baseline);
- that every accepted submission ended with exactly one result (one run, one finished attempt).

The target: p99 under 200 ms while evaluations run. Exit code 1 when a check fails.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from harness.infra import docker as engine  # noqa: E402
from harness.service.db import ServiceDB  # noqa: E402
from harness.store import RUN_LABEL, results_id  # noqa: E402
from tests.harness.run.test_driver import write_conf  # noqa: E402
from tests.harness.service.conftest import free_port, stand_in_zip  # noqa: E402

TARGET_P99_MS = 200.0


def start(data: Path, conf: Path, base_image: str, jobs: int, quota: int) -> tuple[Any, str]:
    port = free_port()
    process = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "harness"), "serve", "--data", str(data),
            "--port", str(port), "--jobs", str(jobs), "--quota", str(quota),
            "--run-specs", str(conf), "--max-eval-instances", "3", "--base-image", base_image,
            "--health-tries", "3", "--health-interval", "2", "--max-sequence-length", "256",
            "--mem-limit", "256m",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(f"{url}/api/v1/health", timeout=1).status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.2)
    raise SystemExit("harness serve did not start")


def remove_images(data: Path) -> None:
    """The entries' images this run built (they share their layers; the tags go)."""
    sdk = engine.client()
    label = f"{RUN_LABEL}={results_id(data / 'results')}"
    for image in sdk.images.list(filters={"label": label}):
        sdk.images.remove(image.id, force=True)
    sdk.close()


def percentiles(samples: list[float]) -> str:
    cuts = statistics.quantiles(samples, n=100)
    p50, p90, p99 = cuts[49], cuts[89], cuts[98]
    return f"n={len(samples):5d} p50 {p50:6.1f} ms  p90 {p90:6.1f} ms  p99 {p99:6.1f} ms"


def poll(url: str, tokens: list[str], ids: list[str], stop: threading.Event) -> list[float]:
    """Ask the API what teams ask it, round robin, until `stop`; returns latencies in ms."""
    latencies: list[float] = []
    with httpx.Client(base_url=url, timeout=30) as client:
        i = 0
        while not stop.is_set():
            token = tokens[i % len(tokens)]
            headers = {"Authorization": f"Bearer {token}"}
            path = [
                f"/api/v1/submissions/{ids[i % len(ids)]}" if ids else "/api/v1/submissions",
                "/api/v1/submissions",
                "/api/v1/leaderboard/4090",
            ][i % 3]
            started = time.perf_counter()
            response = client.get(path, headers=headers)
            latencies.append((time.perf_counter() - started) * 1000)
            assert response.status_code in (200, 404), response.text
            i += 1
    return latencies


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--teams", type=int, default=20)
    parser.add_argument("--per-team", type=int, default=10)
    parser.add_argument("--quota", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--pollers", type=int, default=4)
    parser.add_argument(
        "--base-image", default=os.environ.get("BASE_IMAGE", "harness-base:bookworm")
    )
    args = parser.parse_args()
    ok = True
    with tempfile.TemporaryDirectory(prefix="bench-service-") as tmp_name:
        tmp = Path(tmp_name)
        data = tmp / "data"
        with ServiceDB(data) as db:
            tokens = [db.add_team(f"team-{i:02d}") for i in range(args.teams)]
        body = stand_in_zip(tmp, "entry")
        process, url = start(data, write_conf(tmp, 3), args.base_image, args.jobs, args.quota)
        try:

            def post(token: str) -> tuple[str, int, str | None]:
                with httpx.Client(base_url=url, timeout=120) as client:
                    response = client.post(
                        "/api/v1/submissions",
                        headers={"Authorization": f"Bearer {token}"},
                        files={"file": ("entry.zip", body, "application/zip")},
                        data={"track": "4090"},
                    )
                answer = response.json() if response.status_code == 201 else {}
                return token, response.status_code, answer.get("id")

            posts = [t for t in tokens for _ in range(args.per_team)]
            started = time.monotonic()
            with concurrent.futures.ThreadPoolExecutor(32) as pool:
                answers = list(pool.map(post, posts))
            posting_s = time.monotonic() - started
            accepted = Counter(token for token, code, _ in answers if code == 201)
            codes = Counter(code for _, code, _ in answers)
            ids = [sub_id for _, _, sub_id in answers if sub_id]
            print(f"posted {len(posts)} uploads in {posting_s:.1f} s: {dict(codes)}")
            quota_ok = all(accepted[t] == args.quota for t in tokens) and set(codes) <= {201, 429}
            print(f"quota: every team got exactly {args.quota} slot(s): {quota_ok}")
            ok &= quota_ok

            stop = threading.Event()
            with concurrent.futures.ThreadPoolExecutor(args.pollers) as pool:
                pollers = [pool.submit(poll, url, tokens, ids, stop) for _ in range(args.pollers)]
                evaluating = time.monotonic()
                while True:
                    with sqlite3.connect(data / "service.sqlite") as conn:
                        left = conn.execute(
                            "SELECT COUNT(*) FROM submissions WHERE state IN ('queued', 'running')"
                        ).fetchone()[0]
                    if not left:
                        break
                    time.sleep(2)
                stop.set()
                busy = [x for f in pollers for x in f.result()]
            print(f"evaluated {len(ids)} entries with --jobs {args.jobs} in "
                  f"{time.monotonic() - evaluating:.0f} s")  # fmt: skip

            stop = threading.Event()
            with concurrent.futures.ThreadPoolExecutor(args.pollers) as pool:
                pollers = [pool.submit(poll, url, tokens, ids, stop) for _ in range(args.pollers)]
                time.sleep(20)
                stop.set()
                idle = [x for f in pollers for x in f.result()]
            print(f"API latency, queue idle (baseline): {percentiles(idle)}")
            print(f"API latency, while evaluating:      {percentiles(busy)}")
            p99 = statistics.quantiles(busy, n=100)[98]
            print(f"p99 while evaluating {p99:.1f} ms (target < {TARGET_P99_MS:.0f} ms)")
            ok &= p99 < TARGET_P99_MS

            with sqlite3.connect(data / "service.sqlite") as conn:
                rows = conn.execute("SELECT id, state, status, runs FROM submissions").fetchall()
            with sqlite3.connect(data / "results" / "results.sqlite") as conn:
                attempts = Counter(
                    entry for (entry,) in conn.execute(
                        "SELECT entry FROM attempts WHERE finished_at IS NOT NULL"
                    )
                )  # fmt: skip
            once = all(
                state == "finished" and runs == 1 and attempts[sub_id] == 1
                for sub_id, state, _, runs in rows
            )
            print(f"results: {dict(Counter(status for _, _, status, _ in rows))}; "
                  f"each accepted entry ran and finished exactly once: {once}")  # fmt: skip
            ok &= once and len(rows) == len(ids)
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=60)
            remove_images(data)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
