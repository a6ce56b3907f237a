"""What `harness reproduce` takes and gives: its options, an entry's training manifest
(entry.yaml), the verdicts and the result, and the result's reports (reproduction.json, .md).

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
from harness.run.driver import RunOptions
from harness.run.health import HealthSchedule
from harness.secrets import redact

DEFAULT_TIME_LIMIT_S = 24 * 3600
DEFAULT_TOLERANCE = 0.05
REPRODUCE_LABEL = "org.harness.reproduce"
LOG_TAIL_LINES = 40
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class Verdict(StrEnum):
    REPRODUCED = "reproduced"
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

    def __post_init__(self) -> None:
        RunOptions(track=self.track, stage=self.stage, out=self.results)  # validates both
        if self.time_limit_s <= 0:
            raise ConfigError(f"the time limit must be positive, got {self.time_limit_s:g} s")
        if not self.tolerance >= 0:
            raise ConfigError(f"--tolerance must be 0 or more, got {self.tolerance}")


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
    comparison: Comparison | None
    log_tail: str
    folder: Path

    @property
    def exit_code(self) -> int:
        return 0 if self.verdict is Verdict.REPRODUCED else 1


class Stop(Exception):
    """The reproduction reached its verdict before the comparison."""

    def __init__(self, verdict: Verdict, reason: str, log_tail: str = "") -> None:
        super().__init__(reason)
        self.verdict = verdict
        self.reason = reason
        self.log_tail = log_tail


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
    for key in ("weights_path", "output_dir"):
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
            "## Training",
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
        lines += ["## Produced weights", "", "| file | bytes | sha256 |", "|---|---:|---|"]
        lines += [f"| {p} | {h['bytes']} | `{h['sha256']}` |" for p, h in result.weights.items()]
        lines.append("")
    if result.comparison is not None:
        c = result.comparison
        lines += [
            "## Scores",
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
    if result.log_tail:
        lines += ["## Log tail", "", "```", result.log_tail, "```", ""]
    return "\n".join(lines)


def write_reports(result: Reproduction) -> list[Path]:
    paths = [result.folder / "reproduction.json", result.folder / "reproduction.md"]
    paths[0].write_text(redact(to_json(result)))
    paths[1].write_text(redact(to_markdown(result)))
    return paths
