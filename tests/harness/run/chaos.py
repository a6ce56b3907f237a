"""Chaos for `harness run`: faults at random moments, reruns until every entry has a result.

Shared by the seeded short version in the test suite (test_chaos.py) and the benchmark
(benchmarks/bench_chaos.py). Everything is real: the `harness run` command line in its own
process, a Docker engine, HELM. The faults, drawn from a seeded generator:

    kill-9            SIGKILL the harness (its children must die with it, the rerun resumes)
    rm-container      `docker rm -f` a running entry container (that entry ends, the others go on)
    second-harness    start a second `harness run` on the same folder (refused at once, exit 3)
    engine-restart    stop and start dockerd (the batch ends with exit 3; the rerun finishes)

The engine is a private dockerd of its own, in a network namespace of its own where the harness
runs too (socket and data under the work folder): restarting it disturbs no one else's containers,
and its bridges and iptables rules are its own. (A second dockerd in the host's namespace deletes
the host's docker0, the main engine's bridge, when started with `--bridge=none` or restarted.)
When all entries of a results folder have a result and faults remain to be injected, the next
round starts a new results folder on the same entries. At the end it counts what must be zero:
results lost (a result seen once and later gone or changed), duplicates (an entry with two
attempts that recorded a result), orphan processes, leftover containers and tracebacks.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import closing, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.infra.lock import CHILD_MARKER, die_with_parent
from harness.store import entry_slug
from tests.conftest import REPO
from tests.harness.run.test_driver import make_entry, write_conf

HARNESS = Path(sys.executable).parent / "harness"
KINDS = ("kill-9", "rm-container", "second-harness", "engine-restart")
# Entries: most answer slowly (a second a request), so evaluations last long enough to be hit.
BEHAVIOURS = ("slow", "slow", "answer-a", "answer-c")
INSTANCES = 4


class PrivateEngine:
    """A dockerd of our own that can be restarted without touching the machine's engine."""

    def __init__(self, root: Path, base_image: str) -> None:
        self.root = root
        self.base_image = base_image
        # Sockets live in a short folder of their own: containerd refuses a unix socket path over
        # 104 bytes, which a test's temporary folder can exceed.
        self.sockets = Path(tempfile.mkdtemp(prefix="hchaos-", dir="/run"))
        self.socket = self.sockets / "docker.sock"
        self.env = {**os.environ, "DOCKER_HOST": f"unix://{self.socket}"}
        self.process: subprocess.Popen[bytes] | None = None
        self.netns = f"harness-chaos-{os.getpid()}"
        # A prefix running a command in there; not `ip netns exec`, whose own /sys hides cgroups.
        self.inside = ["nsenter", f"--net=/run/netns/{self.netns}"]

    def _make_netns(self) -> None:
        # Those of runs that were killed (named after their dead process, empty) go first.
        for stale in Path("/run/netns").glob("harness-chaos-*"):
            in_use = subprocess.run(["ip", "netns", "pids", stale.name], capture_output=True)
            if not Path(f"/proc/{stale.name.rsplit('-', 1)[1]}").exists() and not in_use.stdout:
                subprocess.run(["ip", "netns", "delete", stale.name], capture_output=True)
        if not Path(f"/run/netns/{self.netns}").exists():
            subprocess.run(["ip", "netns", "add", self.netns], check=True, capture_output=True)
            subprocess.run([*self.inside, "ip", "link", "set", "lo", "up"], check=True)

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self._make_netns()
        with (self.root / "dockerd.log").open("ab") as log:
            self.process = subprocess.Popen(
                [*self.inside, "dockerd", "--storage-driver", "overlay2",
                 "-H", f"unix://{self.socket}", "--data-root", str(self.root / "data"),
                 "--exec-root", str(self.sockets / "exec"),
                 "--pidfile", str(self.root / "docker.pid")],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=die_with_parent,  # a killed test or benchmark leaves no dockerd
            )  # fmt: skip
        for _ in range(60):
            if self.docker("info", check=False).returncode == 0:
                return
            time.sleep(0.5)
        raise RuntimeError(f"the private dockerd did not start; see {self.root / 'dockerd.log'}")

    def load_base_image(self) -> None:
        saved = subprocess.run(
            ["/usr/bin/docker", "save", self.base_image], capture_output=True, check=True
        )
        subprocess.run(
            ["/usr/bin/docker", "load"], input=saved.stdout, env=self.env, check=True,
            capture_output=True,
        )  # fmt: skip

    def docker(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["/usr/bin/docker", *args], env=self.env, capture_output=True, text=True,
            check=check, timeout=120,
        )  # fmt: skip

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def destroy(self) -> None:
        """Remove every container and image it holds, stop it, delete its data."""
        with suppress(Exception):
            ids = self.docker("ps", "-aq").stdout.split()
            if ids:
                self.docker("rm", "-f", *ids, check=False)
        self.stop()
        subprocess.run(["ip", "netns", "delete", self.netns], capture_output=True)
        # A dockerd that died before cleaning up leaves its data root mounted on itself.
        subprocess.run(["umount", "-R", str(self.root / "data")], capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)
        shutil.rmtree(self.sockets, ignore_errors=True)

    def containers(self, all_states: bool = False) -> list[str]:
        return self.docker("ps", "-q", *(["-a"] if all_states else [])).stdout.split()


@dataclass
class ChaosReport:
    faults: Counter[str] = field(default_factory=Counter)
    entries: int = 0  # entries run, over every results folder
    finished: int = 0  # of those, with a result
    statuses: Counter[str] = field(default_factory=Counter)
    lost: int = 0
    duplicates: int = 0
    orphans: int = 0
    leftover_containers: int = 0
    tracebacks: int = 0
    second_harness_not_refused: int = 0
    restarts_not_exit_3: int = 0
    harness_runs: int = 0
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["faults"], data["statuses"] = dict(self.faults), dict(self.statuses)
        return data


class Chaos:
    def __init__(
        self, work: Path, engine: PrivateEngine, *, entries: int, seed: int, jobs: int = 2
    ) -> None:
        self.work = work
        self.engine = engine
        self.rng = random.Random(seed)
        self.jobs = jobs
        self.report = ChaosReport()
        self.entries_dir = work / "entries"
        for i in range(entries):
            behaviour = BEHAVIOURS[i % len(BEHAVIOURS)]
            make_entry(self.entries_dir, f"e{i:03d}-{behaviour}", behaviour)
        self.conf = write_conf(work, INSTANCES)
        self.entry_names = sorted(p.name for p in self.entries_dir.iterdir())
        self.logs = work / "harness-logs"
        self.logs.mkdir()
        self.removed: set[tuple[Path, str]] = set()  # (results folder, entry) hit by rm-container

    # -- one `harness run` ----------------------------------------------------------------------

    def _command(self, out: Path) -> list[str]:
        return [
            str(HARNESS), "run", str(self.entries_dir), "--track", "4090", "--stage", "open",
            "--out", str(out), "--run-specs", str(self.conf), "--max-eval-instances",
            str(INSTANCES), "--base-image", self.engine.base_image, "--jobs", str(self.jobs),
            "--health-tries", "3", "--health-interval", "2", "--max-sequence-length", "256",
        ]  # fmt: skip

    def _start(self, out: Path) -> tuple[subprocess.Popen[bytes], Path]:
        self.report.harness_runs += 1
        log = self.logs / f"run-{self.report.harness_runs:04d}.log"
        env = {**self.engine.env, "PYTHONPATH": str(REPO), "COLUMNS": "200"}
        with log.open("wb") as sink:
            process = subprocess.Popen(
                [*self.engine.inside, *self._command(out)], stdout=sink,
                stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        return process, log

    # -- faults ---------------------------------------------------------------------------------

    def _choose(self, restarts_left: int, cover: bool) -> str:
        kinds = ["kill-9", "rm-container", "second-harness"]
        weights = [4, 4, 2]
        if restarts_left > 0:
            kinds.append("engine-restart")
            weights.append(1)
        untried = [kind for kind in kinds if not self.report.faults[kind]]
        if cover and untried:  # a short run still meets every kind once
            return self.rng.choice(untried)
        return self.rng.choices(kinds, weights)[0]

    def _inject(self, kind: str, process: subprocess.Popen[bytes], out: Path, log: Path) -> bool:
        """Inject one fault; False when it could not be (nothing to hit)."""
        if kind == "kill-9":
            process.kill()  # the harness alone: its children must die with it by themselves
            process.wait()
        elif kind == "rm-container":
            running = self.engine.containers()
            if not running:
                return False
            victim = self.rng.choice(running)
            image = self.engine.docker("inspect", "-f", "{{.Config.Image}}", victim, check=False)
            self.engine.docker("rm", "-f", victim, check=False)
            for name in self.entry_names:
                if image.stdout.strip() == f"harness-entry/{entry_slug(name)}:open":
                    self.removed.add((out, name))
        elif kind == "second-harness":
            second, second_log = self._start(out)
            try:
                code = second.wait(timeout=60)
            except subprocess.TimeoutExpired:
                code = None
            text = second_log.read_text(errors="replace")
            if process.poll() is None and (code != 3 or "is in use by" not in text):
                self.report.second_harness_not_refused += 1
                self.report.problems.append(f"second harness not refused: {second_log}")
            if code is None:  # the first had finished meanwhile: this one is a real run
                second.wait()
        elif kind == "engine-restart":
            self.engine.restart()
            try:
                code = process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                code = None
                process.kill()
                process.wait()
            text = log.read_text(errors="replace")
            if code != 3 or "Docker engine" not in text:
                self.report.restarts_not_exit_3 += 1
                self.report.problems.append(f"engine restart ended the run with {code}: {log}")
        self.report.faults[kind] += 1
        return True

    # -- invariants -----------------------------------------------------------------------------

    @staticmethod
    def _results(out: Path) -> dict[str, tuple[int, str, str]]:
        if not (out / "results.sqlite").exists():
            return {}
        with closing(sqlite3.connect(out / "results.sqlite", timeout=30)) as db:
            rows = db.execute("SELECT entry, attempt_id, status, reason FROM results").fetchall()
        return {entry: (attempt, status, reason) for entry, attempt, status, reason in rows}

    def _check_kept(self, out: Path, seen: dict[str, tuple[int, str, str]]) -> None:
        now = self._results(out)
        for entry, result in seen.items():
            if now.get(entry) != result:
                self.report.lost += 1
                self.report.problems.append(f"{out.name}/{entry}: {result} became {now.get(entry)}")
        seen.update(now)

    def _finish_folder(self, out: Path) -> None:
        results = self._results(out)
        self.report.entries += len(self.entry_names)
        self.report.finished += len(results)
        with closing(sqlite3.connect(out / "results.sqlite", timeout=30)) as db:
            self.report.duplicates += db.execute(
                "SELECT COUNT(*) FROM (SELECT entry FROM attempts WHERE status IS NOT NULL "
                "GROUP BY entry, stage HAVING COUNT(*) > 1)"
            ).fetchone()[0]
        for entry, (_, status, reason) in results.items():
            self.report.statuses[status] += 1
            expected = {"scored"} | ({"crashed"} if (out, entry) in self.removed else set())
            if status not in expected:
                self.report.problems.append(f"{out.name}/{entry}: {status}: {reason}")

    def _orphans(self) -> list[int]:
        """Processes started by a harness on one of our results folders, still running."""
        marker = f"{CHILD_MARKER}={self.work.resolve()}".encode()
        found = []
        for proc in Path("/proc").iterdir():
            with suppress(OSError):
                if proc.name.isdigit() and any(
                    var.startswith(marker) for var in (proc / "environ").read_bytes().split(b"\0")
                ):
                    found.append(int(proc.name))
        return found

    # -- the whole run --------------------------------------------------------------------------

    def run(
        self, faults: int, *, restarts: int, cover: bool = False, max_runs: int = 400
    ) -> ChaosReport:
        started = time.monotonic()
        injected, folder = 0, 0
        while injected < faults and self.report.harness_runs < max_runs:
            out = self.work / f"results-{folder}"
            seen: dict[str, tuple[int, str, str]] = {}
            while len(self._results(out)) < len(self.entry_names):
                if self.report.harness_runs >= max_runs:
                    self.report.problems.append(f"{out.name}: not finished after {max_runs} runs")
                    break
                process, log = self._start(out)
                while process.poll() is None and injected < faults:
                    time.sleep(self.rng.uniform(1.0, 8.0))
                    if process.poll() is not None:
                        break
                    kind = self._choose(restarts - self.report.faults["engine-restart"], cover)
                    injected += self._inject(kind, process, out, log)
                    self._check_kept(out, seen)
                process.wait()
                self._check_kept(out, seen)
            self._finish_folder(out)
            folder += 1
        self.report.orphans = len(self._orphans())
        leftovers = self.engine.containers(all_states=True)
        self.report.leftover_containers = len(leftovers)
        if leftovers:
            listing = self.engine.docker("ps", "-a", "--format", "{{.Image}} {{.Status}}")
            self.report.problems.append(f"leftover containers: {listing.stdout.strip()}")
        self.report.tracebacks = sum(
            "Traceback (most recent call last)" in log.read_text(errors="replace")
            for log in self.logs.iterdir()
        )
        self.report.seconds = round(time.monotonic() - started, 1)
        return self.report


def run_chaos(
    work: Path,
    *,
    faults: int,
    seed: int,
    entries: int,
    restarts: int,
    base_image: str,
    cover: bool = False,
) -> ChaosReport:
    """The whole chaos run in `work` on a private engine, which is destroyed at the end.
    `cover`: the first faults are one of each kind."""
    engine = PrivateEngine(work / "engine", base_image)
    try:
        engine.start()
        engine.load_base_image()
        chaos = Chaos(work, engine, entries=entries, seed=seed)
        report = chaos.run(faults, restarts=restarts, cover=cover)
    finally:
        engine.destroy()
    (work / "chaos-report.json").write_text(json.dumps(report.to_json(), indent=2))
    return report
