"""`harness run` under 100 faults: kill -9, removed containers, second harnesses, engine restarts.

    make bench-chaos        (or: .venv/bin/python benchmarks/bench_chaos.py [--faults 100])

Runs tests/harness/run/chaos.py (the test suite runs the same with 10 faults) on stand-in entries
that build in seconds from the local base image, in a temporary folder, on a private dockerd in
its own network namespace (root and dockerd needed; the machine's own engine is not touched).
Faults come at seeded random moments 1-8 s apart; engine restarts are rare (`--restarts`, 3 by
default). Then it reruns `harness run` until every entry has a result, starting a new results
folder whenever one is finished and faults remain. Prints the faults by kind, entries finished,
and what must be zero: results lost, duplicate results, orphan processes, leftover containers,
tracebacks. Exit status 1 when one of those is not zero.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.harness.run.chaos import run_chaos  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faults", type=int, default=100)
    parser.add_argument("--entries", type=int, default=8)
    parser.add_argument("--restarts", type=int, default=3, help="engine restarts, at most")
    parser.add_argument("--seed", type=int, default=2023)
    parser.add_argument(
        "--base-image", default=os.environ.get("BASE_IMAGE", "harness-base:bookworm")
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-chaos-", dir="/var/tmp") as tmp:
        report = run_chaos(
            Path(tmp), faults=args.faults, seed=args.seed, entries=args.entries,
            restarts=args.restarts, base_image=args.base_image,
        )  # fmt: skip
    print(json.dumps(report.to_json(), indent=2))
    print(f"\nfaults injected: {sum(report.faults.values())}  " + ", ".join(
        f"{kind} {count}" for kind, count in sorted(report.faults.items())
    ))  # fmt: skip
    print(f"harness runs: {report.harness_runs}, {report.seconds:.0f} s")
    print(
        f"entries finished: {report.finished}/{report.entries}  statuses: {dict(report.statuses)}"
    )
    zeros = {
        "results lost": report.lost,
        "duplicate results": report.duplicates,
        "orphan processes": report.orphans,
        "leftover containers": report.leftover_containers,
        "tracebacks": report.tracebacks,
        "second harness not refused": report.second_harness_not_refused,
        "engine restarts not ending with exit 3": report.restarts_not_exit_3,
    }
    for name, value in zeros.items():
        print(f"{name}: {value}")
    for problem in report.problems:
        print(f"problem: {problem}")
    ok = report.finished == report.entries and not any(zeros.values()) and not report.problems
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
