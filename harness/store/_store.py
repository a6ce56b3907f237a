"""The Store: the results store's writes and reads over its SQLite file."""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from harness.errors import ConfigError
from harness.infra.sqlite import SQLiteFile
from harness.store._records import (
    Attempt,
    Decision,
    EntryResult,
    Finding,
    FindingLike,
    GatewayStats,
    Metric,
    Status,
    Step,
    StepRecord,
    StepStatus,
)
from harness.store._schema import (
    _DECISIONS,
    _IMAGES,
    _INSTANCE_VALUES,
    _MIGRATIONS,
    _RESOURCES,
    _SCHEMA,
    _TIERS,
    SCHEMA_VERSION,
)

STORE_FILENAME = "results.sqlite"


def _finding_values(f: FindingLike) -> tuple[Any, ...]:
    return (f.rule, str(f.severity), f.path, f.line, f.message)


def _metric_values(m: Metric) -> tuple[Any, ...]:
    return (m.run_spec, m.scenario, m.metric, m.value, int(m.lower_is_better), m.reason)


def _replace_rows(
    db: sqlite3.Connection, table: str, attempt: Attempt, values: list[tuple[Any, ...]]
) -> None:
    rows = [(attempt.entry, attempt.stage, attempt.id, *row) for row in values]
    marks = ", ".join("?" * (3 + len(values[0]))) if values else ""
    db.execute(f"DELETE FROM {table} WHERE entry = ? AND stage = ?", (attempt.entry, attempt.stage))
    if rows:
        db.executemany(f"INSERT INTO {table} VALUES ({marks})", rows)


class Store(SQLiteFile):
    """The results store of one RESULTS_DIR; safe to share between threads of one process.

    Several processes may open the same file: SQLite serializes their writes.
    """

    def __init__(self, results_dir: Path | str, *, create: bool = True) -> None:
        self.results_dir = Path(results_dir)
        self.path = self.results_dir / STORE_FILENAME
        if not create and not self.path.exists():
            raise ConfigError(f"no results store in {self.results_dir} (expected {self.path})")
        self.results_dir.mkdir(parents=True, exist_ok=True)
        super().__init__(self.path)
        self._create_or_migrate(_SCHEMA, SCHEMA_VERSION, _MIGRATIONS, what="RESULTS_DIR")
        with self._write() as db:  # tables added since without a version (stores open as they are)
            db.execute(_TIERS)
            db.execute(_DECISIONS)
            db.execute(_RESOURCES)
            db.execute(_IMAGES)
            db.execute(_INSTANCE_VALUES)

    def _relative(self, path: Path | str | None) -> str | None:
        """Log paths inside RESULTS_DIR are kept relative, so the folder can be moved or served."""
        if path is None:
            return None
        absolute = Path(path).resolve()
        try:
            return absolute.relative_to(self.results_dir.resolve()).as_posix()
        except ValueError:
            return os.fspath(path)

    # -- writes ------------------------------------------------------------------------------

    def add_entry(self, name: str, path: Path | str) -> None:
        with self._write() as db:
            db.execute(
                "INSERT INTO entries (name, path, added_at) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET path = excluded.path",
                (name, os.fspath(path), time.time()),
            )

    def start_attempt(
        self, entry: str, stage: str, *, instances_sha256: str | None = None
    ) -> Attempt:
        """A new attempt; `instances_sha256` names the instance pack it is scored on, if any."""
        with self._write() as db:
            cursor = db.execute(
                "INSERT INTO attempts (entry, stage, started_at, instances_sha256) "
                "VALUES (?, ?, ?, ?)",
                (entry, stage, time.time(), instances_sha256),
            )
        assert cursor.lastrowid is not None
        return Attempt(cursor.lastrowid, entry, stage)

    def finish_attempt(self, attempt: Attempt) -> None:
        with self._write() as db:
            db.execute(
                "UPDATE attempts SET finished_at = ? WHERE id = ?", (time.time(), attempt.id)
            )

    def start_step(self, attempt: Attempt, step: Step, *, at: float | None = None) -> int:
        """Record that `step` began (`at`, default now); returns the id `finish_step` takes."""
        started = time.time() if at is None else at
        with self._write() as db:
            cursor = db.execute(
                "INSERT INTO steps (attempt_id, step, status, started_at) VALUES (?, ?, ?, ?)",
                (attempt.id, step.value, StepStatus.RUNNING.value, started),
            )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def finish_step(
        self,
        step_id: int,
        *,
        ok: bool,
        detail: str = "",
        log_path: Path | str | None = None,
        at: float | None = None,
    ) -> None:
        """Record how a step ended (`at`, default now). `detail` is stored as given: redact
        secrets before."""
        now = time.time() if at is None else at
        with self._write() as db:
            updated = db.execute(
                "UPDATE steps SET status = ?, finished_at = ?, duration_s = ? - started_at, "
                "detail = ?, log_path = ? WHERE id = ? AND status = ?",
                (
                    (StepStatus.OK if ok else StepStatus.FAILED).value,
                    now,
                    now,
                    detail,
                    self._relative(log_path),
                    step_id,
                    StepStatus.RUNNING.value,
                ),
            ).rowcount
            if updated != 1:
                raise ValueError(f"step {step_id} is not running")

    def mark_interrupted(self) -> int:
        """Close steps and attempts left open by a harness that died; returns the steps closed.

        Call it once at the start of a run, while no other harness process writes to this store.
        """
        now = time.time()
        with self._write() as db:
            closed = db.execute(
                "UPDATE steps SET status = ?, finished_at = ?, duration_s = ? - started_at "
                "WHERE status = ?",
                (StepStatus.INTERRUPTED.value, now, now, StepStatus.RUNNING.value),
            ).rowcount
            db.execute("UPDATE attempts SET finished_at = ? WHERE finished_at IS NULL", (now,))
        return closed

    def record_status(self, attempt: Attempt, status: Status, reason: str) -> None:
        """Record the entry's result and end the attempt, in one transaction: an attempt records
        one result, and none once it was ended (by `mark_interrupted` for a harness presumed
        dead, say): that raises ValueError."""
        now = time.time()
        with self._write() as db:
            ended = db.execute(
                "UPDATE attempts SET finished_at = ?, status = ? "
                "WHERE id = ? AND finished_at IS NULL AND status IS NULL",
                (now, status.value, attempt.id),
            ).rowcount
            if ended != 1:
                raise ValueError(f"attempt {attempt.id} has ended: its result is not recorded")
            db.execute(
                "INSERT OR REPLACE INTO results (entry, stage, attempt_id, status, reason, "
                "updated_at) VALUES (?, ?, ?, ?, ?, ?)",
                (attempt.entry, attempt.stage, attempt.id, status.value, reason, now),
            )

    def record_findings(self, attempt: Attempt, findings: Iterable[FindingLike]) -> None:
        """Replace the entry's findings for this stage with `findings`."""
        self._replace("findings", attempt, [_finding_values(f) for f in findings])

    def record_metrics(self, attempt: Attempt, metrics: Iterable[Metric]) -> None:
        """Replace the entry's metrics for this stage with `metrics` (one per run spec), and
        their per-instance values, in one transaction."""
        metrics = list(metrics)
        instances = [
            (attempt.entry, attempt.stage, m.run_spec, instance, value)
            for m in metrics
            for instance, value in m.instances.items()
        ]
        with self._write() as db:
            _replace_rows(db, "metrics", attempt, [_metric_values(m) for m in metrics])
            db.execute(
                "DELETE FROM instance_values WHERE entry = ? AND stage = ?",
                (attempt.entry, attempt.stage),
            )
            db.executemany("INSERT INTO instance_values VALUES (?, ?, ?, ?, ?)", instances)

    def record_tier(self, entry: str, stage: str, tier: int, budget: int) -> None:
        """`entry` was evaluated on tier `tier` (1-based) of a coarse-to-fine run, on `budget`."""
        with self._write() as db:
            db.execute(
                "INSERT INTO tiers (entry, stage, tier, budget) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (entry, stage) DO UPDATE SET tier = excluded.tier, "
                "budget = excluded.budget",
                (entry, stage, tier, budget),
            )

    def record_decisions(
        self, stage: str, round_: int, verdicts: Mapping[str, tuple[str, float]]
    ) -> None:
        """The verdicts after round `round_` (entry -> (verdict, probability)), all at once: a
        round is decided entirely or not at all."""
        with self._write() as db:
            db.executemany(
                "INSERT INTO decisions (entry, stage, round, verdict, probability) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (entry, stage) DO UPDATE SET "
                "round = excluded.round, verdict = excluded.verdict, "
                "probability = excluded.probability",
                [(e, stage, round_, str(v), p) for e, (v, p) in sorted(verdicts.items())],
            )

    def clear_decisions(self, stage: str) -> None:
        with self._write() as db:
            db.execute("DELETE FROM decisions WHERE stage = ?", (stage,))

    def record_resources(
        self,
        entry: str,
        stage: str,
        *,
        image_bytes: int | None = None,
        gpu_peak_bytes: int | None = None,
        image_id: str | None = None,
    ) -> None:
        """What the entry's image and evaluation took, and which image it was; None leaves the
        stored value as it was."""
        with self._write() as db:
            db.execute(
                "INSERT INTO resources (entry, stage, image_bytes, gpu_peak_bytes) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (entry, stage) DO UPDATE SET "
                "image_bytes = COALESCE(excluded.image_bytes, image_bytes), "
                "gpu_peak_bytes = COALESCE(excluded.gpu_peak_bytes, gpu_peak_bytes)",
                (entry, stage, image_bytes, gpu_peak_bytes),
            )
            if image_id is not None:
                db.execute(
                    "INSERT OR REPLACE INTO images (entry, stage, image_id) VALUES (?, ?, ?)",
                    (entry, stage, image_id),
                )

    def _replace(self, table: str, attempt: Attempt, values: list[tuple[Any, ...]]) -> None:
        """Replace an entry's rows of `table` for this stage, in one transaction."""
        with self._write() as db:
            _replace_rows(db, table, attempt, values)

    def record_gateway_stats(
        self, attempt: Attempt, stats: GatewayStats, log_path: Path | str | None = None
    ) -> None:
        values = asdict(stats)
        columns = ", ".join(["entry", "stage", "attempt_id", "log_path", *values])
        marks = ", ".join("?" * (4 + len(values)))
        with self._write() as db:
            db.execute(
                f"INSERT OR REPLACE INTO gateway_stats ({columns}) VALUES ({marks})",
                (
                    attempt.entry,
                    attempt.stage,
                    attempt.id,
                    self._relative(log_path),
                    *values.values(),
                ),
            )

    # -- reads -------------------------------------------------------------------------------

    def finished_step(self, entry: str, stage: str, step: Step) -> StepRecord | None:
        """The latest run of `step` that ended (ok or failed) for this entry and stage, if any."""
        records = self._steps(
            "AND s.step = ? AND s.status IN (?, ?) ORDER BY s.id DESC LIMIT 1",
            entry,
            stage,
            step.value,
            StepStatus.OK.value,
            StepStatus.FAILED.value,
        )
        return records[0] if records else None

    def is_finished(self, entry: str, stage: str, step: Step) -> bool:
        return self.finished_step(entry, stage, step) is not None

    def step_durations(self, step: Step) -> list[float]:
        """How long every run of `step` that ended (ok or failed) took, any entry and stage."""
        rows = self._read(
            "SELECT duration_s FROM steps WHERE step = ? AND status IN (?, ?) "
            "AND duration_s IS NOT NULL",
            step.value,
            StepStatus.OK.value,
            StepStatus.FAILED.value,
        )
        return [row["duration_s"] for row in rows]

    def latest_steps(self, entry: str, stage: str) -> dict[Step, StepRecord]:
        """The latest record of each step, whatever its status (for reports)."""
        return {record.step: record for record in self._steps("ORDER BY s.id", entry, stage)}

    def _steps(self, where: str, entry: str, stage: str, *params: Any) -> list[StepRecord]:
        rows = self._read(
            "SELECT a.entry, a.stage, s.attempt_id, s.step, s.status, s.started_at, "
            "s.finished_at, s.duration_s, s.detail, s.log_path FROM steps s "
            f"JOIN attempts a ON a.id = s.attempt_id WHERE a.entry = ? AND a.stage = ? {where}",
            entry,
            stage,
            *params,
        )
        return [
            StepRecord(
                **{**dict(row), "step": Step(row["step"]), "status": StepStatus(row["status"])}
            )
            for row in rows
        ]

    def entries(self) -> dict[str, str]:
        """Every entry ever added: name -> path."""
        return {row["name"]: row["path"] for row in self._read("SELECT name, path FROM entries")}

    def stages(self) -> list[str]:
        """The stages that have at least one attempt."""
        return [row[0] for row in self._read("SELECT DISTINCT stage FROM attempts ORDER BY stage")]

    def instances_sha256(self, entry: str, stage: str) -> str | None:
        """The instance pack of the entry's latest attempt at the stage (None: no pack)."""
        rows = self._read(
            "SELECT instances_sha256 FROM attempts WHERE entry = ? AND stage = ? "
            "ORDER BY id DESC LIMIT 1",
            entry,
            stage,
        )
        return rows[0][0] if rows else None

    def results(self, stage: str) -> dict[str, EntryResult]:
        rows = self._read(
            "SELECT entry, stage, status, reason, updated_at FROM results WHERE stage = ?", stage
        )
        return {
            row["entry"]: EntryResult(**{**dict(row), "status": Status(row["status"])})
            for row in rows
        }

    def findings(self, entry: str, stage: str) -> list[Finding]:
        rows = self._read(
            "SELECT rule, severity, path, line, message FROM findings "
            "WHERE entry = ? AND stage = ? ORDER BY rowid",
            entry,
            stage,
        )
        return [Finding(**dict(row)) for row in rows]

    def metrics(self, stage: str) -> dict[str, list[Metric]]:
        """entry -> its metrics in this stage, for every entry that has any."""
        rows = self._read(
            "SELECT entry, run_spec, scenario, metric, value, lower_is_better, reason FROM metrics "
            "WHERE stage = ? ORDER BY entry, run_spec",
            stage,
        )
        instances: dict[tuple[str, str], dict[str, float]] = {}
        for row in self._read(
            "SELECT entry, run_spec, instance, value FROM instance_values WHERE stage = ?", stage
        ):
            key = (row["entry"], row["run_spec"])
            instances.setdefault(key, {})[row["instance"]] = row["value"]
        by_entry: dict[str, list[Metric]] = {}
        for row in rows:
            values = dict(row)
            entry = values.pop("entry")
            values["lower_is_better"] = bool(values["lower_is_better"])
            values["instances"] = instances.get((entry, values["run_spec"]), {})
            by_entry.setdefault(entry, []).append(Metric(**values))
        return by_entry

    def tiers(self, stage: str) -> dict[str, tuple[int, int]]:
        """entry -> (tier reached, its budget) in this stage, for entries of a tiered run."""
        rows = self._read("SELECT entry, tier, budget FROM tiers WHERE stage = ?", stage)
        return {row["entry"]: (row["tier"], row["budget"]) for row in rows}

    def decisions(self, stage: str) -> dict[str, Decision]:
        """entry -> its latest adaptive verdict in this stage."""
        rows = self._read(
            "SELECT entry, round, verdict, probability FROM decisions WHERE stage = ?", stage
        )
        return {
            row["entry"]: Decision(row["round"], row["verdict"], row["probability"]) for row in rows
        }

    def resources(self, entry: str, stage: str) -> tuple[int | None, int | None]:
        """(image bytes, peak GPU memory bytes) of this entry and stage; None: not measured."""
        rows = self._read(
            "SELECT image_bytes, gpu_peak_bytes FROM resources WHERE entry = ? AND stage = ?",
            entry,
            stage,
        )
        return (rows[0]["image_bytes"], rows[0]["gpu_peak_bytes"]) if rows else (None, None)

    def image_id(self, entry: str, stage: str) -> str | None:
        """The ID (`sha256:...`) of the image this entry was last served from in this stage."""
        rows = self._read("SELECT image_id FROM images WHERE entry = ? AND stage = ?", entry, stage)
        return rows[0]["image_id"] if rows else None

    def gateway_stats(self, entry: str, stage: str) -> tuple[GatewayStats, str | None] | None:
        """The gateway's counts for this entry and stage, with its request log's path."""
        rows = self._read("SELECT * FROM gateway_stats WHERE entry = ? AND stage = ?", entry, stage)
        if not rows:
            return None
        values = dict(rows[0])
        return GatewayStats(**{f.name: values[f.name] for f in fields(GatewayStats)}), values[
            "log_path"
        ]
