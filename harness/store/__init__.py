"""The results store: one SQLite file in RESULTS_DIR that `harness run` writes and `report` reads.

Every write is its own transaction (WAL, synchronous=FULL), so killing the harness at any moment
loses nothing already recorded and never leaves half a write behind. History is kept (attempts,
steps); current facts (status, findings, metrics, gateway stats) are replaced per entry and stage.

    entries         name, path
    attempts        one per `harness run` invocation, entry and stage, with the status it ended
                    with and its instance pack
    steps           check / build / serve / evaluate of an attempt: status, times, detail, log
    results         the entry's status and reason per stage
    findings        the static checks' findings per entry and stage
    metrics         the main metric of every run spec per entry and stage
    instance_values that metric per evaluated instance (what the leaderboard's bootstrap draws)
    gateway_stats   requests answered / unanswered and latency percentiles per entry and stage
    tiers           the coarse-to-fine tier (or adaptive round) an entry reached per stage, and
                    its budget
    decisions       an adaptive run's verdict on the entry after its last round (in, out, on)
                    and its chance of being in the top k then
    resources       the entry's image size and peak GPU memory per stage (None: not measured)
    images          the Docker image ID (sha256 of its config: the content digest of a local
                    build) the entry was served from per stage, for a release's manifest

Resuming is the caller's: `finished_step` says whether (and how) a step already ended; `--force`
means not asking.
"""

from __future__ import annotations

from harness.store._records import (
    RUN_LABEL,
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
    entry_slug,
    results_id,
)
from harness.store._schema import SCHEMA_VERSION
from harness.store._store import STORE_FILENAME, Store

__all__ = [
    "RUN_LABEL",
    "SCHEMA_VERSION",
    "STORE_FILENAME",
    "Attempt",
    "Decision",
    "EntryResult",
    "Finding",
    "FindingLike",
    "GatewayStats",
    "Metric",
    "Status",
    "Step",
    "StepRecord",
    "StepStatus",
    "Store",
    "entry_slug",
    "results_id",
]
