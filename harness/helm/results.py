"""Reading what HELM wrote: the main metric of every run of a suite, per instance too, and the
error of a run HELM did not finish (from helm-run's log).

    RUN_DIR/benchmark_output/runs/SUITE/RUN/stats.json                the run's metrics per split
    RUN_DIR/benchmark_output/runs/SUITE/RUN/per_instance_stats.json   its per-instance values

A run's name carries its scenario as `groups=SCENARIO` (harness/helm/runner.py).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from harness.helm.confs import MAIN_METRICS

SUITE = "harness"

# For run specs whose metrics depend on their arguments (BIG-bench tasks declare their own):
# the first of these that the run's stats hold.
FALLBACK_METRICS = ("exact_match", "quasi_exact_match", "f1_score", "rouge_2", "bleu_4")
# The evaluation splits HELM draws instances from (TruthfulQA, for one, has only valid).
SPLITS = ("test", "valid")
_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")
_RUN_ERROR = re.compile(r"Error when running (?P<run>.+):$")
# What HELM itself requires of a finished run (`Runner._is_run_completed`, crfm-helm 0.5.16). It
# writes them in this order with a plain open and write once the run's metrics are computed, so a
# helm-run killed mid-run leaves a run folder with none or some of them, the last one cut short.
RUN_OUTPUTS = (
    "run_spec.json", "scenario.json", "scenario_state.json", "stats.json",
    "per_instance_stats.json",
)  # fmt: skip


@dataclass(frozen=True)
class RunResult:
    """One HELM run of one model: its main metric, or why it has none.

    `run_spec` names the run without the model, so the same run spec of different entries
    compares; `value` (higher is better for every metric chosen here) is the mean over the
    `instances` of `split` ("test", "valid" or "test+valid"), None when the run failed or lacks
    the metric, and `error` then says why. `per_instance` holds the same metric per instance id
    (averaged over HELM's train trials), what the leaderboard's bootstrap resamples; empty when
    HELM's per_instance_stats.json is unreadable.
    """

    run: str
    run_spec: str
    scenario: str
    model: str
    metric: str | None = None
    value: float | None = None
    split: str | None = None
    instances: int = 0
    error: str | None = None
    per_instance: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.value is not None


def read_metrics(
    output_dir: Path,
    suite: str = SUITE,
    metrics: Mapping[str, str] | None = None,
    *,
    log_text: str = "",
    timed_out: bool = False,
) -> list[RunResult]:
    """The main metric of every run under `output_dir/runs/suite` that HELM finished.

    `metrics` maps a scenario to its main metric (`RunSpecConf.metrics()`); other scenarios use
    `MAIN_METRICS` by run-spec name, then the first of `FALLBACK_METRICS` present. A run folder
    without all of `RUN_OUTPUTS` failed or was cut short (a killed helm-run leaves such folders):
    its error comes from `log_text` (helm-run's log) where HELM reported one there.
    """
    runs_dir = output_dir / "runs" / suite
    if not runs_dir.is_dir():
        return []
    errors = _run_errors(log_text)
    results = []
    for run_dir in sorted(runs_dir.iterdir()):
        if not run_dir.is_dir() or run_dir.name == "eval_cache":
            continue
        result = describe_run(run_dir.name)
        if not all((run_dir / name).is_file() for name in RUN_OUTPUTS):
            reason = errors.get(run_dir.name) or (
                "stopped by the time limit" if timed_out else "HELM did not finish this run"
            )
            results.append(replace(result, error=reason))
            continue
        try:
            stats = json.loads((run_dir / "stats.json").read_text())
        except (OSError, ValueError):
            results.append(replace(result, error="HELM's stats.json of this run is unreadable"))
            continue
        result = _main_value(result, stats, main_metric(result, metrics))
        if result.ok and result.metric and result.split:
            per_instance = _per_instance(run_dir, result.metric, result.split.split("+"))
            result = replace(result, per_instance=per_instance)
        results.append(result)
    return results


def main_metric(run: RunResult, metrics: Mapping[str, str] | None = None) -> str | None:
    """The metric a run is scored on: its scenario's in `metrics` (`RunSpecConf.metrics()`),
    else `MAIN_METRICS` by scenario or run-spec name; None: the first of FALLBACK_METRICS."""
    return (
        (metrics or {}).get(run.scenario)
        or MAIN_METRICS.get(run.scenario)
        or MAIN_METRICS.get(run.run_spec.split(":", 1)[0])
    )


def describe_run(run: str) -> RunResult:
    """Split a HELM run name into its model-free run spec, scenario and model."""
    name, _, rest = run.partition(":")
    kept, scenario, model = [], name, ""
    for part in filter(None, rest.split(",")):
        key, _, value = part.partition("=")
        if key == "groups":
            scenario = value
        elif key == "model":
            model = value.replace("_", "/", 1)
        else:
            kept.append(part)
    run_spec = name + (":" + ",".join(kept) if kept else "")
    return RunResult(run=run, run_spec=run_spec, scenario=scenario, model=model)


def _main_value(result: RunResult, stats: list[dict[str, Any]], metric: str | None) -> RunResult:
    # HELM's headline numbers: unperturbed, over a whole split. HELM draws a run's instances from
    # the test and valid splits together, so both count, weighted by their instances, or a sparse
    # run would discard what it paid for.
    table: dict[tuple[str, str], dict[str, Any]] = {}
    for stat in stats:
        name = stat["name"]
        if "perturbation" not in name and "sub_split" not in name:
            table[(name["name"], name.get("split", ""))] = stat
    for candidate in [metric] if metric else FALLBACK_METRICS:
        total, weight, splits = 0.0, 0, []
        for split in SPLITS:
            found = table.get((candidate, split))
            if found is None or not found["count"] or not math.isfinite(found["mean"]):
                continue
            counted = table.get(("num_instances", split))
            instances = int(counted["mean"]) if counted else 1
            total, weight = total + found["mean"] * instances, weight + instances
            splits.append(split)
        if splits:
            return replace(
                result, metric=candidate, value=total / weight, split="+".join(splits),
                instances=weight,
            )  # fmt: skip
    wanted = metric or " or ".join(FALLBACK_METRICS)
    return replace(result, metric=metric, error=f"stats.json has no {wanted} on {SPLITS}")


def _per_instance(run_dir: Path, metric: str, splits: Sequence[str]) -> dict[str, float]:
    """instance id -> the mean of `metric` over its unperturbed train trials on `splits`."""
    try:
        records = json.loads((run_dir / "per_instance_stats.json").read_text())
    except (OSError, ValueError):
        return {}
    sums: dict[str, list[float]] = {}
    for record in records if isinstance(records, list) else []:
        if not isinstance(record, dict) or record.get("perturbation"):
            continue
        for stat in record.get("stats") or []:
            name = stat.get("name") or {}
            if (
                name.get("name") == metric
                and name.get("split") in splits
                and "perturbation" not in name
                and stat.get("count")
                and isinstance(stat.get("mean"), int | float)
                and math.isfinite(stat["mean"])
            ):
                sums.setdefault(str(record.get("instance_id")), []).append(stat["mean"])
    return {instance: math.fsum(means) / len(means) for instance, means in sums.items()}


def _run_errors(log_text: str) -> dict[str, str]:
    """Run name -> the exception HELM logged for it ("Error when running RUN:" + traceback)."""
    errors: dict[str, str] = {}
    lines = log_text.splitlines()
    for i, line in enumerate(lines):
        match = _RUN_ERROR.search(line)
        if not match or not _LOG_LINE.match(line):
            continue
        end = next((j for j in range(i + 1, len(lines)) if _LOG_LINE.match(lines[j])), len(lines))
        errors[match["run"]] = last_exception(lines[i + 1 : end]) or "HELM reported an error"
    return errors


def last_exception(lines: Sequence[str]) -> str | None:
    """The final exception line of a Python traceback: unindented, `Type: message`."""
    for line in reversed(lines):
        if line and not line[0].isspace() and re.match(r"^[\w.]+(Error|Exception|Exit)\b", line):
            return line.strip()[:500]
    return None
