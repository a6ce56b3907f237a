"""`harness sweep SWEEP.yaml`: train, merge and score variants of one training config, in turn,
and compare them.

    submission: .            # the submission folder: train.py, merge.py, the server's main.py
    base: config.yaml        # the base training config, relative to the submission
    instances: packs/open    # the instance pack every variant is scored on
    budget: null             # its first N instances (null: all)
    out: sweep-out           # the sweep's folder
    variants:                # a list: a name and overrides by dotted key (datasets.0.weight)
      - {name: short, overrides: {max_steps: 10}}
    grid:                    # and/or a grid: every combination, named after its values
      lora.r: [8, 64]
      learning_rate: [1.0e-4, 2.0e-4]

Relative paths are read from the sweep file's folder. Each variant gets OUT/variants/NAME/:
config.yaml (the base with its overrides, its outputs inside the folder), train.log and
merge.log (the template's train.py and merge.py, run as a competitor runs them, from the
submission folder), train/ and merged/ (its adapter and model, kept: the best one is what gets
submitted), eval/ (`harness eval`'s server log, request log and HELM run) and result.json,
written whole (beside, then renamed) once the variant was trained, merged and scored: the record
that it is finished. A killed sweep run again starts at the first variant
without one; a variant that failed is tried again.

After every variant, OUT/results/ is rewritten from the records: a results store with one entry
per variant, the leaderboard (`harness report`'s rendering: win rates, score intervals, ties,
efficiency) and comparison.{md,json,html}: each scenario's raw metric with its 95% interval, and
each variant against the best with the paired bootstrap interval of the difference and whether
it is significant (leaderboard/compare.py). `plan(sweep)` is `--dry-run`: every variant's config
checked by the template's own config.py, and time estimates from the variants already measured.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from harness.errors import ConfigError, HarnessError
from harness.evaluate.local import SERVER_MODULE, EvalOptions, EvalResult, evaluate_model
from harness.helm.packs import verify_pack
from harness.infra.lock import die_with_parent
from harness.leaderboard import write_leaderboard
from harness.leaderboard.build import build_leaderboard
from harness.leaderboard.compare import compare, to_comparison_json, to_comparison_markdown
from harness.leaderboard.html import to_comparison_html
from harness.secrets import redact
from harness.store import STORE_FILENAME, Status, Step, Store

KEYS = {"submission", "base", "instances", "budget", "out", "variants", "grid"}
RESULT = "result.json"
STAGE = "open"  # the stage a variant is recorded under in the results store
SCRIPTS = ("train.py", "merge.py")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.=,+-]{0,99}$")
LOG_TAIL = 2000


@dataclass(frozen=True)
class Variant:
    name: str
    overrides: dict[str, Any]

    def describe(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.overrides.items()) or "the base config"


@dataclass(frozen=True)
class Sweep:
    path: Path
    submission: Path
    base: Path
    instances: Path
    budget: int | None
    out: Path
    variants: tuple[Variant, ...]

    def folder(self, variant: Variant) -> Path:
        return self.out / "variants" / variant.name

    @property
    def results(self) -> Path:
        return self.out / "results"


@dataclass(frozen=True)
class VariantResult:
    """A variant's record (RESULT): how it ended, its times and its evaluation."""

    name: str
    overrides: dict[str, Any]
    status: str  # scored | train-failed | merge-failed | eval-failed
    reason: str
    train_s: float | None
    steps: int | None  # optimizer steps trained (train_summary.json)
    merge_s: float | None
    evaluation: EvalResult | None
    finished_at: float

    @property
    def finished(self) -> bool:
        return self.status == "scored"

    def to_json(self) -> str:
        data = asdict(self)
        data["evaluation"] = (
            None if self.evaluation is None else json.loads(self.evaluation.to_json())
        )
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def read(cls, path: Path) -> VariantResult | None:
        """The record at `path`, None when there is none (a record is written whole or not)."""
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path} is not a variant's record: {exc}") from exc
        evaluation = data.pop("evaluation")
        return cls(
            **data,
            evaluation=None if evaluation is None else EvalResult.from_json(json.dumps(evaluation)),
        )


# -- the sweep file ------------------------------------------------------------------------------


def _slug(overrides: Mapping[str, Any]) -> str:
    text = ",".join(f"{key}={value}" for key, value in overrides.items())
    return re.sub(r"[^A-Za-z0-9_.=,+-]+", "-", text)[:100]


def _variants(raw: Any, grid: Any, where: Path) -> tuple[Variant, ...]:
    variants = []
    for i, item in enumerate(raw or []):
        if not isinstance(item, dict) or set(item) - {"name", "overrides"}:
            raise ConfigError(f"{where}: variants[{i}] takes `name` and `overrides`, got {item!r}")
        overrides = item.get("overrides") or {}
        if not isinstance(overrides, dict):
            raise ConfigError(f"{where}: variants[{i}].overrides must be a mapping")
        variants.append(Variant(str(item.get("name") or _slug(overrides) or "base"), overrides))
    if grid:
        if not isinstance(grid, dict) or not all(
            isinstance(values, list) and values for values in grid.values()
        ):
            raise ConfigError(f"{where}: grid maps each dotted key to a non-empty list of values")
        for combination in itertools.product(*grid.values()):
            overrides = dict(zip(grid, combination, strict=True))
            variants.append(Variant(_slug(overrides), overrides))
    if not variants:
        raise ConfigError(f"{where}: no variants (give `variants`, `grid` or both)")
    names = [variant.name for variant in variants]
    for name in names:
        if not _NAME.match(name):
            raise ConfigError(f"{where}: variant name {name!r} must match {_NAME.pattern}")
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}: two variants are named alike: {sorted(names)}")
    return tuple(variants)


def load_sweep(path: Path) -> Sweep:
    """The sweep file at `path`, checked; ConfigError names what is wrong."""
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read the sweep file {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with {sorted(KEYS)}")
    if unknown := set(raw) - KEYS:
        raise ConfigError(f"{path}: unknown key(s) {sorted(unknown)}; the keys are {sorted(KEYS)}")
    for key in ("base", "instances"):
        if not raw.get(key):
            raise ConfigError(f"{path}: `{key}` is required")
    here = path.resolve().parent
    submission = here / str(raw.get("submission") or ".")
    base = submission / str(raw["base"])
    if not base.is_file():
        raise ConfigError(f"{path}: the base config {base} does not exist")
    missing = [script for script in SCRIPTS if not (submission / script).is_file()]
    if missing:
        raise ConfigError(f"{path}: the submission {submission} has no {', '.join(missing)}")
    budget = raw.get("budget")
    if budget is not None and (not isinstance(budget, int) or budget < 1):
        raise ConfigError(f"{path}: budget must be a positive number of instances or null")
    return Sweep(
        path=path,
        submission=submission,
        base=base,
        instances=here / str(raw["instances"]),
        budget=budget,
        out=here / str(raw.get("out") or f"{path.stem}-out"),
        variants=_variants(raw.get("variants"), raw.get("grid"), path),
    )


def apply_override(config: dict[str, Any], key: str, value: Any) -> None:
    """Set `key` (dotted: `lora.r`, `datasets.0.weight`) in `config`; its parents must exist."""
    node: Any = config
    parts = key.split(".")
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        where = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"override {key}: {where} is not an index of a {len(node)}-list")
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            elif part not in node:
                raise ConfigError(f"override {key}: the base config has no {where}")
            else:
                node = node[part]
        else:
            raise ConfigError(f"override {key}: {'.'.join(parts[:depth])} is not a mapping or list")


def variant_config(sweep: Sweep, variant: Variant, folder: Path) -> dict[str, Any]:
    """The base config with the variant's overrides; its outputs go into `folder`."""
    config = yaml.safe_load(sweep.base.read_text())
    if not isinstance(config, dict):
        raise ConfigError(f"{sweep.base} is not a training config (a mapping)")
    for key, value in variant.overrides.items():
        if key in ("output_dir", "merge.output_dir"):
            raise ConfigError(f"override {key}: the sweep puts each variant's outputs itself")
        apply_override(config, key, value)
    config["output_dir"] = str((folder / "train").resolve())
    config.setdefault("merge", {})["output_dir"] = str((folder / "merged").resolve())
    return config


def _write_whole(path: Path, text: str) -> None:
    """Written beside and renamed: a reader (a rerun) sees all of it or nothing."""
    partial = path.with_name(path.name + ".partial")
    with partial.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    partial.replace(path)


# -- the plan (--dry-run) -----------------------------------------------------------------------


@dataclass(frozen=True)
class Planned:
    variant: Variant
    done: VariantResult | None  # its record, when it has one
    train_estimate_s: float | None
    eval_estimate_s: float | None
    estimate_basis: str  # how the estimate was made


def _checked_config(sweep: Sweep, config_file: Path) -> dict[str, Any]:
    """The config as the template's own validation reads it (`python config.py FILE`, from the
    submission folder: durations in seconds, defaults filled in)."""
    done = subprocess.run(
        [sys.executable, "config.py", str(config_file)],
        cwd=sweep.submission, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise ConfigError(f"{config_file.parent.name}: {done.stderr.strip() or done.stdout}")
    checked = yaml.safe_load(done.stdout)
    return checked if isinstance(checked, dict) else {}


def plan(sweep: Sweep) -> list[Planned]:
    """Every variant: its record if finished, else estimates of its training and evaluation
    from the variants this sweep measured (seconds per optimizer step, evaluation time); a time
    budget bounds a training. Every variant's config is checked by the template's config.py,
    and the pack against its manifest."""
    verify_pack(sweep.instances)
    records = {v.name: VariantResult.read(sweep.folder(v) / RESULT) for v in sweep.variants}
    measured = [r for r in records.values() if r is not None and r.finished]
    per_step = [r.train_s / r.steps for r in measured if r.train_s and r.steps]
    evals = [r.evaluation.seconds for r in measured if r.evaluation]
    step_s = statistics.mean(per_step) if per_step else None
    eval_s = statistics.mean(evals) if evals else None
    planned = []
    with tempfile.TemporaryDirectory(prefix="harness-sweep-") as tmp:
        for variant in sweep.variants:
            folder = Path(tmp) / variant.name
            folder.mkdir()
            config = variant_config(sweep, variant, sweep.folder(variant))
            (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
            checked = _checked_config(sweep, folder / "config.yaml")
            steps, budget = checked.get("max_steps"), checked.get("time_budget")
            train, basis = None, "nothing measured yet"
            if step_s is not None and isinstance(steps, int):
                train, basis = step_s * steps, f"{step_s:.2f} s per step measured"
            elif isinstance(budget, int | float):
                train, basis = float(budget), "at most: its time_budget"
            planned.append(Planned(variant, records[variant.name], train, eval_s, basis))
    return planned


# -- running ------------------------------------------------------------------------------------


def _run_script(sweep: Sweep, script: str, config: Path, log: Path) -> tuple[bool, float, str]:
    """Run the template's `script` on `config` from the submission folder; (ok, seconds, why)."""
    started = time.monotonic()
    args = ["--fresh"] if script == "train.py" else []
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, script, "--config", str(config), *args],
            cwd=sweep.submission, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, preexec_fn=die_with_parent,
        )  # fmt: skip
        code = process.wait()
    seconds = time.monotonic() - started
    if code == 0:
        return True, seconds, ""
    tail = redact(log.read_text(errors="replace")[-LOG_TAIL:])
    return False, seconds, f"{script} exited with {code}; the end of {log}:\n{tail}"


def run_variant(sweep: Sweep, variant: Variant, *, start_timeout_s: float = 600.0) -> VariantResult:
    """Train, merge and score one variant from scratch, and record how it ended (RESULT)."""
    folder = sweep.folder(variant)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    config = variant_config(sweep, variant, folder)
    config_file = folder / "config.yaml"
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))

    def ended(status: str, reason: str, **times: Any) -> VariantResult:
        result = VariantResult(
            name=variant.name, overrides=variant.overrides, status=status, reason=reason,
            finished_at=time.time(), **{"train_s": None, "steps": None, "merge_s": None,
                                        "evaluation": None, **times},
        )  # fmt: skip
        _write_whole(folder / RESULT, result.to_json())
        return result

    ok, train_s, why = _run_script(sweep, "train.py", config_file, folder / "train.log")
    if not ok:
        return ended("train-failed", why, train_s=train_s)
    summary_file = folder / "train" / "train_summary.json"
    steps = (
        json.loads(summary_file.read_text()).get("global_step") if summary_file.exists() else None
    )
    ok, merge_s, why = _run_script(sweep, "merge.py", config_file, folder / "merge.log")
    times = {"train_s": train_s, "steps": steps, "merge_s": merge_s}
    if not ok:
        return ended("merge-failed", why, **times)
    server = sweep.submission if (sweep.submission / SERVER_MODULE).is_file() else None
    try:
        evaluation = evaluate_model(
            EvalOptions(
                model_dir=folder / "merged",
                instances=sweep.instances,
                out=folder / "eval",
                budget=sweep.budget,
                submission=server,
                track=str(config.get("track", "4090")),
                start_timeout_s=start_timeout_s,
            )
        )
    except HarnessError as exc:
        # A bad pack or a missing HELM (exit codes 2, 3) is the sweep's problem, not the variant's.
        if exc.exit_code != 1:
            raise
        return ended("eval-failed", str(exc), **times)
    return ended("scored", _summary(evaluation), evaluation=evaluation, **times)


def _summary(evaluation: EvalResult) -> str:
    scored = len(evaluation.metrics) - len(evaluation.failed)
    text = f"{scored} run spec(s) scored" + (
        f", {len(evaluation.failed)} failed" if evaluation.failed else ""
    )
    return text + (f"; {evaluation.error}" if evaluation.error else "")


@dataclass(frozen=True)
class SweepOutcome:
    results: dict[str, VariantResult]  # by variant, in the sweep's order
    kept: list[str]  # finished before this run: not trained again
    paths: list[Path]  # the comparison's and leaderboard's files

    @property
    def ok(self) -> bool:
        return all(result.finished for result in self.results.values())


def run_sweep(
    sweep: Sweep, *, on_progress: Callable[[str, str], None] = lambda variant, step: None
) -> SweepOutcome:
    """Every unfinished variant in turn; the comparison rewritten after each one."""
    verify_pack(sweep.instances)  # before hours of training, not after
    results: dict[str, VariantResult] = {}
    kept = []
    paths: list[Path] = []
    for variant in sweep.variants:
        record = VariantResult.read(sweep.folder(variant) / RESULT)
        if record is not None and record.finished:
            kept.append(variant.name)
            on_progress(variant.name, "finished before: kept")
            results[variant.name] = record
            continue
        on_progress(variant.name, f"train, merge and evaluate ({variant.describe()})")
        results[variant.name] = run_variant(sweep, variant)
        on_progress(variant.name, f"{results[variant.name].status}: {results[variant.name].reason}")
        paths = write_comparison(sweep, results)
    if not paths:
        paths = write_comparison(sweep, results)
    return SweepOutcome(results, kept, paths)


# -- the comparison ------------------------------------------------------------------------------


def _record(store: Store, sweep: Sweep, result: VariantResult) -> None:
    folder = sweep.folder(Variant(result.name, result.overrides))
    store.add_entry(result.name, folder)
    evaluation = result.evaluation
    attempt = store.start_attempt(
        result.name, STAGE, instances_sha256=evaluation.pack_sha256 if evaluation else None
    )
    if evaluation is None:
        # The store's statuses are an entry's; a variant that never got a model to score ends
        # like an entry whose evaluation failed, the reason saying where it stopped.
        store.record_status(attempt, Status.EVAL_FAILED, f"{result.status}: {result.reason}")
        return
    at = result.finished_at - evaluation.seconds
    step = store.start_step(attempt, Step.EVALUATE, at=at)
    store.finish_step(
        step, ok=True, detail=result.reason, log_path=folder / "eval" / "helm" / "helm-run.log",
        at=result.finished_at,
    )  # fmt: skip
    store.record_metrics(attempt, evaluation.metrics)
    store.record_gateway_stats(attempt, evaluation.stats, folder / "eval" / "requests.jsonl")
    store.record_status(attempt, Status.SCORED, result.reason)


def _note(result: VariantResult) -> str:
    variant = Variant(result.name, result.overrides).describe()
    times = [
        f"{what} {seconds:.0f} s"
        for what, seconds in (("train", result.train_s), ("merge", result.merge_s))
        if seconds is not None
    ]
    if result.evaluation is not None:
        times.append(f"eval {result.evaluation.seconds:.0f} s")
    steps = [f"{result.steps} step(s)"] if result.steps is not None else []
    return "; ".join([variant, ", ".join([*steps, *times])]).rstrip("; ")


def write_comparison(sweep: Sweep, results: Mapping[str, VariantResult]) -> list[Path]:
    """Rewrite OUT/results/ from the variants' records; returns the files written."""
    folder = sweep.results
    folder.mkdir(parents=True, exist_ok=True)
    # The store is made again from the records, so it holds exactly their latest state.
    for suffix in ("", "-wal", "-shm"):
        (folder / (STORE_FILENAME + suffix)).unlink(missing_ok=True)
    track = _track(sweep)
    with Store(folder) as store:
        for result in results.values():
            _record(store, sweep, result)
        board = build_leaderboard(store, track=track)
        metrics = store.metrics(STAGE)
    paths = write_leaderboard(board, folder)
    comparison = compare(
        board, metrics, STAGE, notes={name: _note(r) for name, r in results.items()}
    )
    for name, text in (
        ("comparison.md", to_comparison_markdown(comparison)),
        ("comparison.json", to_comparison_json(comparison)),
        ("comparison.html", to_comparison_html(comparison, board)),
    ):
        _write_whole(folder / name, text)
        paths.append(folder / name)
    return paths


def _track(sweep: Sweep) -> str | None:
    config = yaml.safe_load(sweep.base.read_text())
    track = config.get("track") if isinstance(config, dict) else None
    return str(track) if track is not None else None


def format_seconds(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "unknown"
    return f"{seconds / 60:.1f} min" if seconds >= 120 else f"{seconds:.0f} s"


def plan_lines(sweep: Sweep, planned: Sequence[Planned]) -> list[str]:
    """`--dry-run`'s output."""
    lines = [
        f"sweep {sweep.path}: {len(planned)} variant(s) of {sweep.base}, scored on "
        f"{sweep.instances}" + (f" (budget {sweep.budget})" if sweep.budget else ""),
    ]
    total = 0.0
    unknown = False
    for item in planned:
        if item.done is not None and item.done.finished:
            lines.append(f"  {item.variant.name}: finished, kept ({item.variant.describe()})")
            continue
        todo = [item.train_estimate_s, item.eval_estimate_s]
        unknown |= None in todo
        total += sum(s for s in todo if s is not None)
        lines.append(
            f"  {item.variant.name}: {item.variant.describe()}; train "
            f"{format_seconds(item.train_estimate_s)} ({item.estimate_basis}), evaluate "
            f"{format_seconds(item.eval_estimate_s)}"
        )
    lines.append(
        f"estimated {format_seconds(total)} in all"
        + (" plus what is not measured yet (the first variant measures it)" if unknown else "")
    )
    lines.append(f"outputs: {sweep.out}/variants/NAME/, {sweep.results}/comparison.html")
    return lines
