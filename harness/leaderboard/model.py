"""The leaderboard's data: what `build.build_leaderboard` makes and every renderer reads.

One row per entry, one StageRow per stage it was run in; every number comes from the results
folder (see build.py). Frozen dataclasses: the JSON output is their `asdict`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from harness.leaderboard.intervals import Bootstrap, ScoreInterval
from harness.leaderboard.scoring import RankAgreement


@dataclass(frozen=True)
class ScenarioResult:
    win_rate: float | None  # the entry's mean win rate over the scenario's run specs
    value: float | None  # the mean of its main metric over those run specs (None: no value)
    metric: str


@dataclass(frozen=True)
class RunSpecResult:
    scenario: str
    metric: str
    value: float | None
    lower_is_better: bool
    reason: str | None = None  # why it has no value, or was refused and scored 0


@dataclass(frozen=True)
class StepTime:
    step: str
    status: str
    duration_s: float | None
    detail: str
    log: str | None


@dataclass(frozen=True)
class Efficiency:
    """What the harness measured of one entry in one stage; None where nothing was recorded."""

    answered: int | None
    unanswered: int | None
    latency_p50_s: float | None
    latency_p99_s: float | None
    prompt_tokens: int | None
    completion_tokens: int | None
    prompt_tokens_per_s: float | None  # over the evaluation's wall time
    completion_tokens_per_s: float | None
    eval_s: float | None
    eval_limit_s: float  # the stage's limit in the competition
    build_s: float | None
    image_bytes: int | None  # the entry's image as Docker reports its size
    gpu_peak_bytes: int | None  # the GPU memory sampler's peak (None: no GPU, or not sampled)
    gpu_hours: float  # serve + evaluate: the time the entry held its GPU


@dataclass(frozen=True)
class StageRow:
    """One entry in one stage."""

    status: str | None  # None: the entry has no result in this stage (not run, or interrupted)
    reason: str
    score: float | None
    scenarios: dict[str, ScenarioResult]
    run_specs: dict[str, RunSpecResult]
    efficiency: Efficiency
    steps: list[StepTime]
    findings: list[dict[str, Any]]  # rule, severity, path, line, message (redacted)
    logs: dict[str, str]  # label -> path relative to RESULTS_DIR
    # "2/2 (600)": the coarse-to-fine tier reached and its budget (--tiers); an adaptive run
    # adds its verdict: "3/5 (240) in"
    tier: str = ""
    # the score's and rank's 95% intervals (intervals.py); None: not ranked, or nothing resampled
    interval: ScoreInterval | None = None


@dataclass(frozen=True)
class Cost:
    track: str | None
    price_per_gpu_hour: float | None
    eval_gpu_hours: float
    train_gpu_hours: float | None  # from `harness reproduce`, when it ran for this entry
    usd: float | None  # None: no price for the track (or no track known)


@dataclass(frozen=True)
class Row:
    entry: str
    rank: int | None
    final: float | None
    stages: dict[str, StageRow]
    cost: Cost
    # Why the organizers disqualified the entry (None: not disqualified). It is kept on the board,
    # struck through with this reason, and out of the ranking: rank None, scored by win rates
    # against the whole field while the others are scored without it.
    disqualified: str | None = None
    # `harness reproduce`'s verdict on the entry (its reproduce/<slug>/reproduction.json), if any
    reproduction: str | None = None
    # The entry's fact sheet (the competition file's `facts`: base_model, lora_r, ...), shown as
    # columns in the order the service fills it (the file's); empty outside a competition
    facts: dict[str, str] = field(default_factory=dict)

    @property
    def status(self) -> str:
        parts = [(stage, row.status or "not run") for stage, row in self.stages.items()]
        if len(parts) == 1:
            return parts[0][1]
        return "; ".join(f"{stage}: {status}" for stage, status in parts)

    @property
    def reason(self) -> str:
        reasons = [(stage, row.reason) for stage, row in self.stages.items() if row.reason]
        if len(self.stages) == 1:
            return reasons[0][1] if reasons else ""
        return "; ".join(f"{stage}: {reason}" for stage, reason in reasons)

    @property
    def unanswered(self) -> int | None:
        counts = [
            row.efficiency.unanswered
            for row in self.stages.values()
            if row.efficiency.unanswered is not None
        ]
        return sum(counts) if counts else None

    @property
    def logs(self) -> dict[str, str]:
        prefix = len(self.stages) > 1
        return {
            f"{stage} {label}" if prefix else label: path
            for stage, row in self.stages.items()
            for label, path in row.logs.items()
        }

    @property
    def scenarios(self) -> dict[str, ScenarioResult]:
        """Every stage's scenarios; named `stage/scenario` when the board has both stages."""
        prefix = len(self.stages) > 1
        return {
            f"{stage}/{name}" if prefix else name: result
            for stage, row in self.stages.items()
            for name, result in row.scenarios.items()
        }


@dataclass(frozen=True)
class Leaderboard:
    stages: list[str]
    rows: list[Row]  # ranked rows by rank, then the others by name
    scenarios: dict[str, list[str]]  # stage -> its scenarios
    agreement: RankAgreement | None  # open vs closed, when both stages have scores
    total_usd: float | None
    bootstrap: dict[str, Bootstrap] = field(default_factory=dict)  # stage -> how its intervals came
    generated_at: float = field(default_factory=time.time)

    @property
    def columns(self) -> list[str]:
        """The scenario columns, named like `Row.scenarios`' keys."""
        prefix = len(self.stages) > 1
        return [
            f"{stage}/{name}" if prefix else name
            for stage in self.stages
            for name in self.scenarios.get(stage, [])
        ]
