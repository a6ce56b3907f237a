"""The results store: round trips, resume queries, and nothing lost when the writer is killed."""

from __future__ import annotations

import multiprocessing
import multiprocessing.synchronize
import os
import signal
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.errors import ConfigError, DiskFullError
from harness.store import STORE_FILENAME, GatewayStats, Metric, Status, Step, StepStatus, Store
from tests.conftest import fill_disk

METRICS = [
    Metric("mmlu:subject=anatomy", "mmlu", "exact_match", 0.5),
    Metric("gsm:", "gsm8k", "final_number_exact_match", None, reason="HELM did not finish"),
    Metric("ppl:", "lm", "perplexity", 12.5, lower_is_better=True),
]


@dataclass(frozen=True)
class CheckFinding:
    """Stands for the checks' own finding type: the store takes anything shaped like it."""

    rule: str
    severity: str
    path: str | None
    line: int | None
    message: str


def test_round_trip(tmp_path: Path) -> None:
    with Store(tmp_path) as store:
        store.add_entry("alpha", tmp_path / "entries" / "alpha")
        attempt = store.start_attempt("alpha", "open")
        step = store.start_step(attempt, Step.BUILD)
        store.finish_step(step, ok=True, detail="built", log_path=tmp_path / "alpha" / "build.log")
        store.record_findings(
            attempt, [CheckFinding("secret-in-file", "error", "Dockerfile", 3, "hf_…AbCd")]
        )
        store.record_metrics(attempt, METRICS)
        stats = GatewayStats(10, 7, 2, 1, 0.1, 0.2, 0.3, 0.4)
        store.record_gateway_stats(attempt, stats, tmp_path / "alpha" / "requests.jsonl")
        store.record_status(attempt, Status.EVAL_TIMEOUT, "the deadline passed: 2 unanswered")
        store.finish_attempt(attempt)

    with Store(tmp_path, create=False) as store:
        assert store.entries() == {"alpha": str(tmp_path / "entries" / "alpha")}
        assert store.stages() == ["open"]
        build = store.finished_step("alpha", "open", Step.BUILD)
        assert build is not None
        assert (build.status, build.detail, build.log_path) == (
            StepStatus.OK,
            "built",
            "alpha/build.log",
        )
        assert build.duration_s is not None and build.duration_s >= 0
        assert store.findings("alpha", "open")[0].line == 3
        assert store.metrics("open") == {"alpha": sorted(METRICS, key=lambda m: m.run_spec)}
        assert store.gateway_stats("alpha", "open") == (stats, "alpha/requests.jsonl")
        result = store.results("open")["alpha"]
        assert (result.status, result.reason) == (
            Status.EVAL_TIMEOUT,
            "the deadline passed: 2 unanswered",
        )
        assert store.results("closed") == {}
        assert store.gateway_stats("alpha", "closed") is None


def test_rewrites_replace_current_facts_and_keep_history(tmp_path: Path) -> None:
    with Store(tmp_path) as store:
        store.add_entry("alpha", "a")
        first = store.start_attempt("alpha", "open")
        store.record_metrics(first, METRICS)
        store.record_findings(first, [CheckFinding("r", "warning", None, None, "m")] * 2)
        store.record_status(first, Status.EVAL_FAILED, "no stats.json")
        failed = store.start_step(first, Step.EVALUATE)
        store.finish_step(failed, ok=False, detail="helm-run exited 1")

        forced = store.start_attempt("alpha", "open")
        store.record_metrics(forced, METRICS[:1])
        store.record_findings(forced, [])
        store.record_status(forced, Status.SCORED, "")
        store.finish_step(store.start_step(forced, Step.EVALUATE), ok=True)

        assert store.metrics("open") == {"alpha": METRICS[:1]}
        assert store.findings("alpha", "open") == []
        assert store.results("open")["alpha"].status is Status.SCORED
        latest = store.finished_step("alpha", "open", Step.EVALUATE)
        assert latest is not None and (latest.attempt_id, latest.status) == (
            forced.id,
            StepStatus.OK,
        )


def test_resume_queries_and_interrupted_steps(tmp_path: Path) -> None:
    with Store(tmp_path) as store:
        store.add_entry("alpha", "a")
        attempt = store.start_attempt("alpha", "open")
        store.finish_step(store.start_step(attempt, Step.CHECK), ok=True)
        build = store.start_step(attempt, Step.BUILD)
        store.finish_step(build, ok=False, detail="dependency-resolution")
        serve = store.start_step(attempt, Step.SERVE)

        assert store.is_finished("alpha", "open", Step.CHECK)
        assert store.is_finished("alpha", "open", Step.BUILD)  # failed is finished too
        assert not store.is_finished("alpha", "open", Step.SERVE)  # still running
        assert not store.is_finished("alpha", "closed", Step.CHECK)  # another stage
        with pytest.raises(ValueError, match="not running"):
            store.finish_step(build, ok=True)

        assert store.mark_interrupted() == 1
        assert store.latest_steps("alpha", "open")[Step.SERVE].status is StepStatus.INTERRUPTED
        assert not store.is_finished("alpha", "open", Step.SERVE)
        with pytest.raises(ValueError, match="not running"):
            store.finish_step(serve, ok=True)


def test_constraints_and_a_failed_write_leaves_nothing(tmp_path: Path) -> None:
    with Store(tmp_path) as store:
        with pytest.raises(sqlite3.IntegrityError):
            store.start_attempt("nobody", "open")  # entries come first
        store.add_entry("alpha", "a")
        attempt = store.start_attempt("alpha", "open")
        store.record_metrics(attempt, METRICS)
        # Two metrics for one run spec violate the key: the whole replacement is rolled back.
        with pytest.raises(sqlite3.IntegrityError):
            store.record_metrics(attempt, [METRICS[0], METRICS[0]])
        assert len(store.metrics("open")["alpha"]) == len(METRICS)


def test_wal_mode_and_schema_version(tmp_path: Path) -> None:
    Store(tmp_path).close()
    with closing(sqlite3.connect(tmp_path / STORE_FILENAME)) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        db.execute("PRAGMA user_version = 99")
        db.commit()
    with pytest.raises(ConfigError, match="schema version 99"):
        Store(tmp_path)
    with pytest.raises(ConfigError, match="no results store"):
        Store(tmp_path / "missing", create=False)


def _write_until_killed(results_dir: Path, ready: multiprocessing.synchronize.Event) -> None:
    """A harness that finishes one entry, then keeps rewriting another's metrics forever."""
    store = Store(results_dir)
    store.add_entry("done", "d")
    done = store.start_attempt("done", "open")
    store.finish_step(store.start_step(done, Step.BUILD), ok=True)
    store.record_metrics(done, METRICS)
    store.record_status(done, Status.SCORED, "")
    store.add_entry("busy", "b")
    busy = store.start_attempt("busy", "open")
    store.start_step(busy, Step.EVALUATE)
    many = [Metric(f"spec-{i}", "s", "m", float(i)) for i in range(200)]
    store.record_metrics(busy, many)
    ready.set()
    while True:
        store.record_metrics(busy, many)


def _stop_inside_a_write(results_dir: Path, ready: multiprocessing.synchronize.Event) -> None:
    """A harness killed halfway through replacing metrics: old ones deleted, half the new in."""
    store = Store(results_dir)
    store.add_entry("busy", "b")
    busy = store.start_attempt("busy", "open")
    store.record_metrics(busy, METRICS)
    with store._write() as db:  # the store's own transaction, held open on purpose
        db.execute("DELETE FROM metrics")
        db.execute(
            "INSERT INTO metrics VALUES ('busy', 'open', ?, 'x', 's', 'm', 1.0, 0, NULL)",
            (busy.id,),
        )
        ready.set()
        time.sleep(600)


def _kill_when_ready(
    target: Callable[[Path, multiprocessing.synchronize.Event], None], results_dir: Path
) -> None:
    context = multiprocessing.get_context("spawn")  # a fresh interpreter, like a real harness
    ready = context.Event()
    child = context.Process(target=target, args=(results_dir, ready))
    child.start()
    try:
        assert ready.wait(60), "the writer did not start"
    finally:
        # SIGKILL: no handler runs, no rollback is sent, the journal is left as it is.
        assert child.pid is not None
        os.kill(child.pid, signal.SIGKILL)
        child.join()


def test_a_write_interrupted_halfway_leaves_the_previous_state(tmp_path: Path) -> None:
    _kill_when_ready(_stop_inside_a_write, tmp_path)
    with Store(tmp_path) as store:
        assert store.metrics("open") == {"busy": sorted(METRICS, key=lambda m: m.run_spec)}


def test_a_killed_writer_loses_nothing_committed(tmp_path: Path) -> None:
    _kill_when_ready(_write_until_killed, tmp_path)

    with closing(sqlite3.connect(tmp_path / STORE_FILENAME)) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    with Store(tmp_path) as store:
        assert store.results("open")["done"].status is Status.SCORED
        assert store.is_finished("done", "open", Step.BUILD)
        assert not store.is_finished("busy", "open", Step.EVALUATE)
        # Each rewrite was one transaction: the last committed one is there whole.
        assert len(store.metrics("open")["busy"]) == 200
        assert len(store.metrics("open")["done"]) == len(METRICS)
        assert store.mark_interrupted() == 1


def test_threads_share_a_store(tmp_path: Path) -> None:
    with Store(tmp_path) as store:

        def run(name: str) -> None:
            store.add_entry(name, name)
            attempt = store.start_attempt(name, "closed")
            for step in Step:
                store.finish_step(store.start_step(attempt, step), ok=True)
            store.record_status(attempt, Status.SCORED, "")

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(run, [f"e{i}" for i in range(20)]))
        assert len(store.results("closed")) == 20
        assert all(store.is_finished(f"e{i}", "closed", Step.EVALUATE) for i in range(20))


def test_a_result_is_recorded_once_per_attempt(tmp_path: Path) -> None:
    with Store(tmp_path) as store:
        store.add_entry("alpha", "a")
        attempt = store.start_attempt("alpha", "open")
        store.record_status(attempt, Status.SCORED, "1 run(s) scored")
        with pytest.raises(ValueError, match="has ended"):
            store.record_status(attempt, Status.EVAL_FAILED, "again")
        # A harness presumed dead (its attempt closed by the next start) records nothing later.
        zombie = store.start_attempt("alpha", "open")
        store.mark_interrupted()
        with pytest.raises(ValueError, match="has ended"):
            store.record_status(zombie, Status.CRASHED, "late")
        assert store.results("open")["alpha"].reason == "1 run(s) scored"
        with closing(sqlite3.connect(store.path)) as db:
            rows = db.execute("SELECT id, status FROM attempts ORDER BY id").fetchall()
        assert rows == [(attempt.id, "scored"), (zombie.id, None)]


def test_a_version_1_store_is_migrated(tmp_path: Path) -> None:
    with closing(sqlite3.connect(tmp_path / STORE_FILENAME)) as db:
        db.executescript(
            "CREATE TABLE attempts (id INTEGER PRIMARY KEY, entry TEXT NOT NULL, "
            "stage TEXT NOT NULL, started_at REAL NOT NULL, finished_at REAL);"
            "INSERT INTO attempts VALUES (1, 'alpha', 'open', 0, 1);"
            "CREATE TABLE metrics (entry TEXT NOT NULL, stage TEXT NOT NULL, attempt_id INTEGER "
            "NOT NULL, run_spec TEXT NOT NULL, scenario TEXT NOT NULL, metric TEXT NOT NULL, "
            "value REAL, lower_is_better INTEGER NOT NULL, PRIMARY KEY (entry, stage, run_spec));"
            "INSERT INTO metrics VALUES ('alpha', 'open', 1, 'gsm', 'gsm', 'exact_match', 0.5, 0);"
            "PRAGMA user_version = 1;"
        )
    with Store(tmp_path) as store, closing(sqlite3.connect(store.path)) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 4
        assert db.execute("SELECT status, instances_sha256 FROM attempts").fetchall() == [
            (None, None)
        ]
        # Metrics stored before run specs carried a reason have none.
        assert store.metrics("open") == {"alpha": [Metric("gsm", "gsm", "exact_match", 0.5)]}


def test_a_version_2_store_gains_the_pack_hash_of_attempts(tmp_path: Path) -> None:
    with Store(tmp_path) as store:
        store.add_entry("alpha", "a")
        store.start_attempt("alpha", "open")
    # Back to what a version-2 store looked like: no instances_sha256 column, no metric reasons.
    with closing(sqlite3.connect(tmp_path / STORE_FILENAME)) as db:
        db.execute("ALTER TABLE attempts DROP COLUMN instances_sha256")
        db.execute("ALTER TABLE metrics DROP COLUMN reason")
        db.execute("PRAGMA user_version = 2")
        db.commit()
    with Store(tmp_path) as store:
        assert store.instances_sha256("alpha", "open") is None  # kept, with no pack
        store.start_attempt("alpha", "open", instances_sha256="ab" * 32)
        assert store.instances_sha256("alpha", "open") == "ab" * 32
        assert store.instances_sha256("alpha", "closed") is None
    with closing(sqlite3.connect(tmp_path / STORE_FILENAME)) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 4


def test_resources_update_only_what_each_call_gives_and_old_stores_gain_the_table(
    tmp_path: Path,
) -> None:
    with Store(tmp_path) as store:
        store.add_entry("alpha", "a")
        assert store.resources("alpha", "open") == (None, None)
        store.record_resources("alpha", "open", image_bytes=5 * 2**30)
        store.record_resources("alpha", "open", gpu_peak_bytes=3 * 2**30)
        store.record_resources("alpha", "open", image_bytes=None)  # nothing new: nothing lost
        assert store.resources("alpha", "open") == (5 * 2**30, 3 * 2**30)
        assert store.resources("alpha", "closed") == (None, None)
        with pytest.raises(sqlite3.IntegrityError):  # an unknown entry is refused
            store.record_resources("nobody", "open", image_bytes=1)
    # A store written before the table existed opens as it is and gains it.
    with closing(sqlite3.connect(tmp_path / STORE_FILENAME)) as db:
        db.execute("DROP TABLE resources")
        db.commit()
    with Store(tmp_path) as store:
        assert store.resources("alpha", "open") == (None, None)
        store.record_resources("alpha", "open", image_bytes=7)
        assert store.resources("alpha", "open") == (7, None)


def test_the_image_id_is_kept_per_stage_and_old_stores_gain_the_table(tmp_path: Path) -> None:
    first, second = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    with Store(tmp_path) as store:
        store.add_entry("alpha", "a")
        assert store.image_id("alpha", "open") is None
        store.record_resources("alpha", "open", image_bytes=1, image_id=first)
        store.record_resources("alpha", "open", gpu_peak_bytes=2)  # no image given: kept
        assert store.image_id("alpha", "open") == first
        store.record_resources("alpha", "open", image_id=second)  # rebuilt: the new one
        assert (store.image_id("alpha", "open"), store.image_id("alpha", "closed")) == (
            second,
            None,
        )
    with closing(sqlite3.connect(tmp_path / STORE_FILENAME)) as db:
        db.execute("DROP TABLE images")
        db.commit()
    with Store(tmp_path) as store:
        assert store.image_id("alpha", "open") is None


def test_a_full_disk_keeps_what_was_recorded_and_records_once_space_is_freed(
    small_disk: Path,
) -> None:
    """On a real full filesystem: a write that finds no space is rolled back whole and raises
    DiskFullError (exit code 3) naming the folder; once space is freed the same write succeeds,
    once."""
    out = small_disk / "results"
    with Store(out) as store:
        store.add_entry("done", "/entries/done")
        done = store.start_attempt("done", "open")
        store.record_status(done, Status.SCORED, "1 run(s) scored")
        store.add_entry("next", "/entries/next")
        attempt = store.start_attempt("next", "open")
        filler = fill_disk(small_disk)

        with pytest.raises(DiskFullError) as raised:
            store.record_metrics(attempt, METRICS)  # several rows: all or none
        with pytest.raises(DiskFullError):
            store.record_status(attempt, Status.SCORED, "1 run(s) scored")
        assert raised.value.exit_code == 3
        assert str(raised.value).startswith(f"no space left on the disk of {out} (")
        assert "free space there and run the same command again" in str(raised.value)
        assert set(store.results("open")) == {"done"}
        assert store.metrics("open") == {}

        filler.unlink()
        store.record_metrics(attempt, METRICS)
        store.record_status(attempt, Status.SCORED, "1 run(s) scored")
        with pytest.raises(ValueError, match="has ended"):
            store.record_status(attempt, Status.SCORED, "1 run(s) scored")
    with Store(out) as store:
        assert set(store.results("open")) == {"done", "next"}
        assert len(store.metrics("open")["next"]) == len(METRICS)


def test_a_store_cannot_be_opened_on_a_full_disk(small_disk: Path) -> None:
    fill_disk(small_disk)
    with pytest.raises(DiskFullError, match="no space left on the disk of"):
        Store(small_disk / "new")
