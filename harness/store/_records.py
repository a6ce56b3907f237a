"""What the results store records: an entry's statuses and steps, the row types its queries
return, and the names a results folder gives to a run (its Docker label) and to an entry's
folders."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Protocol

# Containers and images carry RUN_LABEL=<results id>: a harness cleans up after a killed run on
# the same results folder and leaves alone the containers of other runs on the same engine.
RUN_LABEL = "org.harness.run"


def results_id(out: Path) -> str:
    """The RUN_LABEL value of the runs writing into the results folder `out`."""
    return hashlib.sha256(str(out.resolve()).encode()).hexdigest()[:16]


def entry_slug(name: str) -> str:
    """An entry's folder name under RESULTS_DIR/logs and /helm: readable, and unique by a hash."""
    slug = re.sub(r"[^a-z0-9_.-]+", "-", name.lower()).strip("-.") or "entry"
    return f"{slug[:40]}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


@dataclass(frozen=True)
class GatewayStats:
    """What went through the gateway; latencies: real ones, of /process requests answered."""

    requests: int
    answered: int  # /process requests the entry answered
    unanswered: int  # /process requests answered empty (deadline passed or timed out)
    errors: int  # requests that failed, timed out (but /process) or were refused (runaway)
    latency_p50_s: float | None
    latency_p90_s: float | None
    latency_p99_s: float | None
    latency_max_s: float | None


class Status(StrEnum):
    """How an entry ended in one stage."""

    SCORED = "scored"
    NO_DOCKERFILE = "no-dockerfile"
    FLAGGED = "flagged"
    BUILD_FAILED = "build-failed"
    BUILD_TIMEOUT = "build-timeout"
    UNHEALTHY = "unhealthy"
    CRASHED = "crashed"
    OOM = "oom"
    EVAL_TIMEOUT = "eval-timeout"
    EVAL_FAILED = "eval-failed"


class Step(StrEnum):
    CHECK = "check"
    BUILD = "build"
    SERVE = "serve"
    EVALUATE = "evaluate"


class StepStatus(StrEnum):
    RUNNING = "running"
    OK = "ok"
    FAILED = "failed"
    # A step still running when its harness died; set by `mark_interrupted` on the next start.
    INTERRUPTED = "interrupted"


@dataclass(frozen=True)
class Attempt:
    id: int
    entry: str
    stage: str


@dataclass(frozen=True)
class StepRecord:
    entry: str
    stage: str
    attempt_id: int
    step: Step
    status: StepStatus
    started_at: float
    finished_at: float | None
    duration_s: float | None
    detail: str
    log_path: str | None  # relative to RESULTS_DIR when the log lies inside it


@dataclass(frozen=True)
class EntryResult:
    entry: str
    stage: str
    status: Status
    reason: str
    updated_at: float


@dataclass(frozen=True)
class Metric:
    """The main metric of one run spec for one entry."""

    run_spec: str
    scenario: str
    metric: str
    value: float | None  # None: HELM gave no value (the entry loses this run spec)
    lower_is_better: bool = False
    reason: str | None = None  # why it has no value, or was refused and scored 0
    # instance id -> the metric on it; empty when HELM's per-instance stats were not read
    instances: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Decision:
    """An adaptive run's verdict on an entry after round `round` (harness/run/adaptive.py)."""

    round: int
    verdict: str  # in (clearly in the top k), out, on (evaluated on the next round)
    probability: float  # its estimated chance of being in the top k then


@dataclass(frozen=True)
class Finding:
    rule: str
    severity: str
    path: str | None
    line: int | None
    message: str


class FindingLike(Protocol):
    """What `record_findings` needs of a finding, so the checks' own type can be passed as is."""

    @property
    def rule(self) -> str: ...
    @property
    def severity(self) -> str: ...
    @property
    def path(self) -> str | None: ...
    @property
    def line(self) -> int | None: ...
    @property
    def message(self) -> str: ...
