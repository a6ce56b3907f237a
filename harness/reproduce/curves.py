"""Loss curves: the training record train.py leaves (metrics.jsonl, run_record.json), read
back, and a replay's curve checked against the original's step by step.

A step's losses agree when they are within a relative tolerance (1% by default, as Megatron-LM's
CI compares per-step losses: exact values differ across GPUs, and a 4-bit QLoRA run is not
bit-reproducible on one). The first step where they do not is where the runs parted.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import ConfigError

DEFAULT_LOSS_TOLERANCE = 0.01
METRICS_FILE = "metrics.jsonl"
RECORD_FILE = "run_record.json"


@dataclass(frozen=True)
class Point:
    step: int
    loss: float


def read_curve(path: Path) -> tuple[Point, ...]:
    """The (step, loss) points of a metrics.jsonl, in step order; ConfigError names a bad line."""
    points: dict[int, float] = {}
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            step, loss = int(row["step"]), float(row["loss"])
        except (ValueError, KeyError, TypeError):
            raise ConfigError(f"{path}:{number}: not a metrics line (step, loss)") from None
        points[step] = loss  # a resumed run's repeated step: its last value counts
    return tuple(Point(step, loss) for step, loss in sorted(points.items()))


def read_seed(path: Path) -> int:
    """The seed a run_record.json logged."""
    try:
        record: Any = json.loads(path.read_text())
        return int(record["seed"])
    except (OSError, ValueError, KeyError, TypeError):
        raise ConfigError(f"{path} has no seed (a run_record.json as train.py writes)") from None


@dataclass(frozen=True)
class CurveComparison:
    tolerance: float  # relative
    steps: int  # steps both curves logged
    parted_at: int | None  # the first common step whose losses are further apart
    original_loss: float | None  # at parted_at
    replayed_loss: float | None
    largest_relative_difference: float
    missing_steps: tuple[int, ...]  # logged by the original, not by the replay
    original: tuple[Point, ...]
    replayed: tuple[Point, ...]

    @property
    def matches(self) -> bool:
        return self.parted_at is None and not self.missing_steps and self.steps > 0


def relative_difference(a: float, b: float) -> float:
    if a == b or (math.isnan(a) and math.isnan(b)):  # also two infinities of one sign
        return 0.0
    if math.isnan(a) or math.isnan(b):  # a loss that blew up on one side only
        return math.inf
    scale = max(abs(a), abs(b))
    return math.inf if not math.isfinite(scale) else abs(a - b) / scale


def compare_curves(
    original: tuple[Point, ...], replayed: tuple[Point, ...], tolerance: float
) -> CurveComparison:
    theirs = {p.step: p.loss for p in replayed}
    common = [p for p in original if p.step in theirs]
    differences = [relative_difference(p.loss, theirs[p.step]) for p in common]
    parted = next((p for p, d in zip(common, differences, strict=True) if d > tolerance), None)
    return CurveComparison(
        tolerance=tolerance,
        steps=len(common),
        parted_at=None if parted is None else parted.step,
        original_loss=None if parted is None else parted.loss,
        replayed_loss=None if parted is None else theirs[parted.step],
        largest_relative_difference=max(differences, default=0.0),
        missing_steps=tuple(p.step for p in original if p.step not in theirs),
        original=original,
        replayed=replayed,
    )


def describe(comparison: CurveComparison) -> str:
    """One sentence for the report's reason."""
    tolerance = f"{comparison.tolerance:.2%}"
    if comparison.steps == 0:
        return "the replay logged none of the original's steps"
    if comparison.parted_at is not None:
        return (
            f"the loss curves part at step {comparison.parted_at} "
            f"({comparison.original_loss:.6g} -> {comparison.replayed_loss:.6g}, "
            f"more than {tolerance} apart)"
        )
    text = f"the loss curves agree within {tolerance} over {comparison.steps} steps"
    if comparison.missing_steps:
        text += f", but the replay stopped before step {comparison.missing_steps[0]}"
    return text
