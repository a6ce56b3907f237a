"""The results store's tables (see harness/store/__init__.py) and the migrations that bring an
older store to SCHEMA_VERSION."""

from __future__ import annotations

from dataclasses import fields

from harness.store._records import GatewayStats, Status, Step, StepStatus

SCHEMA_VERSION = 4

# NULL while running, and for an attempt that ended without a result (its harness died).
_ATTEMPT_STATUS = f"status TEXT CHECK (status IN ({', '.join(repr(s.value) for s in Status)}))"
# Statements that bring a store of version N (the key) to N + 1; new stores get _SCHEMA at once.
_MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (f"ALTER TABLE attempts ADD COLUMN {_ATTEMPT_STATUS}",),
    2: ("ALTER TABLE attempts ADD COLUMN instances_sha256 TEXT",),
    3: ("ALTER TABLE metrics ADD COLUMN reason TEXT",),
}
_SCHEMA = f"""
CREATE TABLE entries (
    name TEXT PRIMARY KEY,
    path TEXT NOT NULL,
    added_at REAL NOT NULL
);
CREATE TABLE attempts (
    id INTEGER PRIMARY KEY,
    entry TEXT NOT NULL REFERENCES entries(name),
    stage TEXT NOT NULL,
    started_at REAL NOT NULL,
    finished_at REAL,
    {_ATTEMPT_STATUS},
    instances_sha256 TEXT
);
CREATE TABLE steps (
    id INTEGER PRIMARY KEY,
    attempt_id INTEGER NOT NULL REFERENCES attempts(id),
    step TEXT NOT NULL CHECK (step IN ({", ".join(repr(s.value) for s in Step)})),
    status TEXT NOT NULL CHECK (status IN ({", ".join(repr(s.value) for s in StepStatus)})),
    started_at REAL NOT NULL,
    finished_at REAL,
    duration_s REAL,
    detail TEXT NOT NULL DEFAULT '',
    log_path TEXT
);
CREATE INDEX steps_by_attempt ON steps (attempt_id, step);
CREATE TABLE results (
    entry TEXT NOT NULL REFERENCES entries(name),
    stage TEXT NOT NULL,
    attempt_id INTEGER NOT NULL REFERENCES attempts(id),
    status TEXT NOT NULL CHECK (status IN ({", ".join(repr(s.value) for s in Status)})),
    reason TEXT NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (entry, stage)
);
CREATE TABLE findings (
    entry TEXT NOT NULL REFERENCES entries(name),
    stage TEXT NOT NULL,
    attempt_id INTEGER NOT NULL REFERENCES attempts(id),
    rule TEXT NOT NULL,
    severity TEXT NOT NULL,
    path TEXT,
    line INTEGER,
    message TEXT NOT NULL
);
CREATE INDEX findings_by_entry ON findings (entry, stage);
CREATE TABLE metrics (
    entry TEXT NOT NULL REFERENCES entries(name),
    stage TEXT NOT NULL,
    attempt_id INTEGER NOT NULL REFERENCES attempts(id),
    run_spec TEXT NOT NULL,
    scenario TEXT NOT NULL,
    metric TEXT NOT NULL,
    value REAL,
    lower_is_better INTEGER NOT NULL,
    reason TEXT,
    PRIMARY KEY (entry, stage, run_spec)
);
CREATE TABLE gateway_stats (
    entry TEXT NOT NULL REFERENCES entries(name),
    stage TEXT NOT NULL,
    attempt_id INTEGER NOT NULL REFERENCES attempts(id),
    log_path TEXT,
    {", ".join(field.name for field in fields(GatewayStats))},
    PRIMARY KEY (entry, stage)
);
PRAGMA user_version = {SCHEMA_VERSION};
"""
# Added after schema 1 without changing it: stores written before them gain the tables on open.
_TIERS = """
CREATE TABLE IF NOT EXISTS tiers (
    entry TEXT NOT NULL REFERENCES entries(name),
    stage TEXT NOT NULL,
    tier INTEGER NOT NULL,
    budget INTEGER NOT NULL,
    PRIMARY KEY (entry, stage)
)
"""
_DECISIONS = """
CREATE TABLE IF NOT EXISTS decisions (
    entry TEXT NOT NULL REFERENCES entries(name),
    stage TEXT NOT NULL,
    round INTEGER NOT NULL,
    verdict TEXT NOT NULL CHECK (verdict IN ('in', 'out', 'on')),
    probability REAL NOT NULL,
    PRIMARY KEY (entry, stage)
)
"""
_RESOURCES = """
CREATE TABLE IF NOT EXISTS resources (
    entry TEXT NOT NULL REFERENCES entries(name),
    stage TEXT NOT NULL,
    image_bytes INTEGER,
    gpu_peak_bytes INTEGER,
    PRIMARY KEY (entry, stage)
)
"""
_IMAGES = """
CREATE TABLE IF NOT EXISTS images (
    entry TEXT NOT NULL REFERENCES entries(name),
    stage TEXT NOT NULL,
    image_id TEXT NOT NULL,
    PRIMARY KEY (entry, stage)
)
"""
_INSTANCE_VALUES = """
CREATE TABLE IF NOT EXISTS instance_values (
    entry TEXT NOT NULL REFERENCES entries(name),
    stage TEXT NOT NULL,
    run_spec TEXT NOT NULL,
    instance TEXT NOT NULL,
    value REAL NOT NULL,
    PRIMARY KEY (entry, stage, run_spec, instance)
)
"""
