"""What `harness reproduce` takes and gives: its options, an entry's training manifest
(entry.yaml), the verdicts and the result, and the result as JSON and Markdown (report.py writes
them, with the HTML page).

Shared by the flow (flow.py) and the training run (training.py), which import these from here and
not from each other. The keys and verdicts are described in flow.py's docstring.
"""

from __future__ import annotations

import json
import math
import posixpath
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml

from harness.checks import MANIFEST, clean_relative
from harness.competition import GIB
from harness.errors import ConfigError
from harness.leaderboard.intervals import Interval
from harness.reproduce.curves import (
    DEFAULT_LOSS_TOLERANCE,
    CurveComparison,
    Point,
    relative_difference,
)
from harness.reproduce.stats import CONFIDENCE, TRIM_FROM, Judgement
from harness.run.driver import RunOptions
from harness.run.health import HealthSchedule

DEFAULT_TIME_LIMIT_S = 24 * 3600
DEFAULT_TOLERANCE = 0.05
REPRODUCE_LABEL = "org.harness.reproduce"
LOG_TAIL_LINES = 40
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class Verdict(StrEnum):
    REPRODUCED = "reproduced"
    WITHIN_NOISE = "within-noise"
    DIFFERS = "differs"
    TRAIN_TIMEOUT = "train-timeout"
    TRAIN_FAILED = "train-failed"
    BUILD_FAILED = "build-failed"


@dataclass(frozen=True)
class Manifest:
    """How an entry trains; see harness/reproduce/flow.py's docstring for the entry.yaml keys."""

    train_dockerfile: str = "Dockerfile.train"
    weights_path: str = "/app/out/merged"
    output_dir: str | None = None
    model_dir: str = "model"
    # Where the training leaves metrics.jsonl and run_record.json (train.py's output_dir).
    record_path: str = "/app/out/train"
    secrets: tuple[str, ...] = ("HF_TOKEN",)
    build_args: dict[str, str] = field(default_factory=lambda: {"WEIGHTS": "local"})

    @property
    def volume_path(self) -> str:
        return self.output_dir or posixpath.dirname(self.weights_path.rstrip("/"))


@dataclass(frozen=True)
class ReproduceOptions:
    track: str
    results: Path  # the original run's --out folder
    stage: str = "open"
    time_limit_s: float = DEFAULT_TIME_LIMIT_S
    tolerance: float = DEFAULT_TOLERANCE
    base_image: str | None = None
    # Host folder -> container path, read-only in the training container (e.g. a model cache).
    mounts: Mapping[Path, str] = field(default_factory=dict)
    # `harness run --gpus`: the reproduction uses the first; None: the engine's first GPU, if any.
    gpus: tuple[int, ...] | None = None
    environment: Mapping[str, str] | None = None  # where secrets are read; default os.environ
    build_timeout_s: float = 2 * 3600
    health: HealthSchedule = field(default_factory=HealthSchedule)
    eval_deadline_s: float | None = None  # default: the stage's
    mem_limit: str | None = None  # of the served container, as `harness run --mem-limit`
    stats_interval_s: float = 1.0
    # Extra labels on the images, containers and volume made here (tests mark theirs).
    labels: Mapping[str, str] = field(default_factory=dict)
    # The instance pack the original run was scored on (required when it used one).
    instances: Path | None = None
    # Re-run with the entry's logged seed and determinism on, its loss curve checked step by step.
    replay: bool = False
    loss_tolerance: float = DEFAULT_LOSS_TOLERANCE  # relative, per step
    # Train this many times with fresh seeds; None: once, with the entry's logged seed if any.
    runs: int | None = None

    def __post_init__(self) -> None:
        RunOptions(track=self.track, stage=self.stage, out=self.results)  # validates both
        if self.time_limit_s <= 0:
            raise ConfigError(f"the time limit must be positive, got {self.time_limit_s:g} s")
        if not self.tolerance >= 0:
            raise ConfigError(f"--tolerance must be 0 or more, got {self.tolerance}")
        if not self.loss_tolerance >= 0:
            raise ConfigError(f"--loss-tolerance must be 0 or more, got {self.loss_tolerance}")
        if self.runs is not None and self.runs < 1:
            raise ConfigError(f"--runs must be 1 or more, got {self.runs}")
        if self.replay and self.runs is not None:
            raise ConfigError("--replay re-runs the logged seed once; --runs draws fresh seeds")

    @property
    def request(self) -> str:
        """What was asked, as a reproduction records it (`--top` redoes one asked otherwise)."""
        return "replay" if self.replay else f"runs={self.runs}" if self.runs else "once"


@dataclass(frozen=True)
class Training:
    """How the training run went."""

    finished: bool  # in time, with exit status 0
    timed_out: bool
    exit_code: int | None
    wall_time_s: float
    peak_memory: dict[str, int]  # what was measured -> peak bytes
    memory_note: str
    secrets_passed: tuple[str, ...]  # names only
    secrets_missing: tuple[str, ...]


@dataclass(frozen=True)
class ScenarioComparison:
    scenario: str
    original: float | None
    reproduced: float | None
    lower_is_better: bool = False

    @property
    def difference(self) -> float | None:
        if self.original is None or self.reproduced is None:
            return None
        return self.reproduced - self.original


@dataclass(frozen=True)
class Comparison:
    scenarios: tuple[ScenarioComparison, ...]
    original_score: float
    reproduced_score: float
    original_rank: int
    reproduced_rank: int
    field_size: int  # entries the score is a win rate against, this one included


@dataclass(frozen=True)
class RunScores:
    """One of `--runs`' trainings, scored."""

    seed: int | None  # None: the entry's own config chose
    scenarios: dict[str, float | None]  # scenario -> mean main metric
    stage_score: float  # against the original field
    wall_time_s: float


@dataclass(frozen=True)
class Reproduction:
    entry: str
    track: str
    stage: str
    verdict: Verdict
    reason: str
    time_limit_s: float
    tolerance: float
    training: Training | None
    weights: dict[str, dict[str, Any]]  # path relative to the weights folder -> sha256, bytes
    comparison: Comparison | None  # the first run's
    log_tail: str
    folder: Path
    seeds: tuple[int | None, ...] = ()  # drawn (or read from the entry) before any training
    curve: CurveComparison | None = None  # a replay's loss curve against the entry's
    weights_identical: bool | None = None  # a replay's weights against the submitted ones
    runs: tuple[RunScores, ...] = ()
    noise: dict[str, Interval] = field(default_factory=dict)  # the original's, per scenario
    judgements: dict[str, Judgement] = field(default_factory=dict)  # scenario -> judgement
    request: str = "once"  # ReproduceOptions.request
    # Loss per logged step: "original" (the entry's training/metrics.jsonl), then "run K" (or
    # "replay") as each training logged it; a curve nobody logged is left out.
    curves: dict[str, tuple[Point, ...]] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return 0 if self.verdict in (Verdict.REPRODUCED, Verdict.WITHIN_NOISE) else 1


class Stop(Exception):
    """The reproduction reached its verdict before the comparison."""

    def __init__(
        self,
        verdict: Verdict,
        reason: str,
        log_tail: str = "",
        training: Training | None = None,
    ) -> None:
        super().__init__(reason)
        self.verdict = verdict
        self.reason = reason
        self.log_tail = log_tail
        self.training = training  # the run that stopped, when it trained


def parse_duration(text: str) -> float:
    """Seconds in `24h`, `90m`, `1.5h`, `2s`, `1d`; a bare number is seconds."""
    value = text.strip().lower()
    unit = value[-1:] if value[-1:] in _UNITS else "s"
    number = value[:-1] if value[-1:] in _UNITS else value
    try:
        seconds = float(number) * _UNITS[unit]
    except ValueError:
        raise ConfigError(f"not a duration: {text!r} (e.g. 24h, 90m, 30s)") from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise ConfigError(f"a duration must be positive, got {text!r}")
    return seconds


def load_manifest(entry: Path) -> Manifest:
    """The entry's training manifest: entry.yaml's keys over the defaults."""
    path = entry / MANIFEST
    if not path.is_file():
        return Manifest()
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid YAML: {type(exc).__name__}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must be a mapping")
    values: dict[str, Any] = {}
    for key in ("train_dockerfile", "model_dir"):
        if key in raw:
            relative = clean_relative(raw[key]) if isinstance(raw[key], str) else None
            if relative is None:
                raise ConfigError(f"{path}: `{key}` must be a relative path inside the entry")
            values[key] = relative
    for key in ("weights_path", "output_dir", "record_path"):
        if key in raw:
            if not isinstance(raw[key], str) or not posixpath.isabs(raw[key]):
                raise ConfigError(f"{path}: `{key}` must be an absolute path in the container")
            values[key] = posixpath.normpath(raw[key])
    if "secrets" in raw:
        secrets = raw["secrets"]
        if not isinstance(secrets, list) or not all(isinstance(s, str) for s in secrets):
            raise ConfigError(f"{path}: `secrets` must be a list of environment variable names")
        values["secrets"] = tuple(secrets)
    if "build_args" in raw:
        args = raw["build_args"]
        if not isinstance(args, dict):
            raise ConfigError(f"{path}: `build_args` must be a mapping")
        values["build_args"] = {str(k): str(v) for k, v in args.items()}
    manifest = Manifest(**values)
    if manifest.volume_path in ("", "/"):
        raise ConfigError(f"{path}: give `output_dir`, the folder to mount the output volume on")
    return manifest


def tail(text: str, lines: int = LOG_TAIL_LINES) -> str:
    """The last lines of a log, for a report."""
    return "\n".join(text.rstrip().splitlines()[-lines:])


def duration_text(seconds: float) -> str:
    for unit in ("d", "h", "m"):
        if seconds >= _UNITS[unit] and seconds % _UNITS[unit] == 0:
            return f"{seconds / _UNITS[unit]:g} {unit}"
    return f"{seconds:g} s"


# -- reports ------------------------------------------------------------------------------------


def to_json(result: Reproduction) -> str:
    data = asdict(result)
    data["folder"] = str(result.folder)
    data["verdict"] = result.verdict.value
    if result.comparison is not None:
        for row, scenario in zip(
            data["comparison"]["scenarios"], result.comparison.scenarios, strict=True
        ):
            row["difference"] = scenario.difference
    return json.dumps(data, indent=2) + "\n"


def _bytes(value: int) -> str:
    return f"{value / GIB:.2f} GiB" if value >= GIB else f"{value / 2**20:.1f} MiB"


def _number(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def to_markdown(result: Reproduction) -> str:
    lines = [
        f"# Reproduction of {result.entry}",
        "",
        f"**Verdict: {result.verdict.value}** — {result.reason}",
        "",
        f"Track {result.track}, stage {result.stage}, training time limit "
        f"{duration_text(result.time_limit_s)}, tolerance {result.tolerance:g} (absolute, on "
        "each scenario's mean main metric).",
        "",
    ]
    # With --runs, these sections are the first run's; the statistics below hold them all.
    first = f" (run 1 of {len(result.runs)})" if len(result.runs) > 1 else ""
    if result.training is not None:
        training = result.training
        state = (
            "finished in time"
            if training.finished
            else "stopped at the time limit"
            if training.timed_out
            else f"failed (exit status {training.exit_code})"
        )
        memory = ", ".join(f"{k} {_bytes(v)}" for k, v in training.peak_memory.items()) or "n/a"
        lines += [
            f"## Training{first}",
            "",
            f"- {state}, wall time {training.wall_time_s:.1f} s",
            f"- peak memory: {memory} ({training.memory_note})",
            f"- secrets passed at run time: {', '.join(training.secrets_passed) or 'none'}"
            + (
                f"; declared but not set here: {', '.join(training.secrets_missing)}"
                if training.secrets_missing
                else ""
            ),
            "",
        ]
    if result.weights:
        lines += [f"## Produced weights{first}", "", "| file | bytes | sha256 |", "|---|---:|---|"]
        lines += [f"| {p} | {h['bytes']} | `{h['sha256']}` |" for p, h in result.weights.items()]
        lines.append("")
    if result.comparison is not None:
        c = result.comparison
        lines += [
            f"## Scores{first}",
            "",
            "| scenario | original | reproduced | difference |",
            "|---|---:|---:|---:|",
        ]
        lines += [
            f"| {s.scenario} | {_number(s.original)} | {_number(s.reproduced)} "
            f"| {_number(s.difference)} |"
            for s in c.scenarios
        ]
        lines += [
            "",
            f"Stage score against the original field ({c.field_size} entries): "
            f"{c.original_score:.4f} (rank {c.original_rank}) originally, "
            f"{c.reproduced_score:.4f} (rank {c.reproduced_rank}) reproduced.",
            "",
        ]
    lines += _judgement_lines(result) + _curve_lines(result)
    if result.log_tail:
        lines += ["## Log tail", "", "```", result.log_tail, "```", ""]
    return "\n".join(lines)


def _judgement_lines(result: Reproduction) -> list[str]:
    """The statistics behind the verdict: each scenario's original with its bootstrap interval,
    every run, the mean the test used, its difference and one-sided p-value."""
    if not result.judgements:
        return []
    seeds = ", ".join("the entry's config" if s is None else str(s) for s in result.seeds)
    runs = len(next(iter(result.judgements.values())).runs)
    lines = [
        "## Verdict statistics",
        "",
        f"{runs} run(s), seeds drawn before training: {seeds}. Original: its score with the "
        f"{CONFIDENCE:.0%} bootstrap interval over its instances (the evaluation's noise); "
        f"mean: of the runs the test used (from {TRIM_FROM} runs, the best and the worst "
        "dropped); p: one-sided Welch test that the runs fall short of the original.",
        "",
        "| scenario | original | interval | runs | mean | difference | p | verdict |",
        "|---|---:|---:|---|---:|---:|---:|---|",
    ]
    for name, j in result.judgements.items():
        interval = result.noise.get(name)
        span = "n/a" if interval is None else f"[{interval.low:.4f}, {interval.high:.4f}]"
        values = ", ".join(f"{v:.4f}" for v in j.runs)
        p_value = "n/a" if j.p_value is None else f"{j.p_value:.3g}"
        lines.append(
            f"| {name} | {j.original:.4f} | {span} | {values} | {j.mean:.4f} "
            f"| {j.difference:+.4f} | {p_value} | {j.verdict} |"
        )
    return [*lines, ""]


def _curve_lines(result: Reproduction) -> list[str]:
    curve = result.curve
    if curve is None:
        return []
    identical = {True: "identical to", False: "different from", None: "not compared with"}
    lines = [
        "## Loss curve (replay)",
        "",
        f"Seed {result.seeds[0]}, deterministic settings on; relative tolerance "
        f"{curve.tolerance:.2%} per step; {curve.steps} common steps, largest relative "
        f"difference {curve.largest_relative_difference:.3g}; "
        + (
            "the curves agree."
            if curve.matches
            else f"first step where they part: {curve.parted_at}."
            if curve.parted_at is not None
            else "the replay did not log every step."
        ),
        f"The replay's weights are {identical[result.weights_identical]} the submitted ones "
        "(sha256 of every file).",
        "",
        "| step | original loss | replayed loss | relative difference |",
        "|---:|---:|---:|---:|",
    ]
    replayed = {point.step: point.loss for point in curve.replayed}
    for point in curve.original:
        theirs = replayed.get(point.step)
        difference = "n/a" if theirs is None else f"{relative_difference(point.loss, theirs):.3g}"
        mark = " ⟵ parts" if point.step == curve.parted_at else ""
        lines.append(
            f"| {point.step} | {point.loss:.6g} | {_number(theirs, 6)} | {difference}{mark} |"
        )
    return [*lines, ""]
