"""`harness reproduce`: re-run an entry's training under the time limit, then rebuild and re-score.

What the organizers of the NeurIPS 2023 challenge did by hand for every top entry:

    build the training image ─> train (GPUs, time limit, output volume, secrets at run time only)
      ─> collect the weights and hash them ─> copy the entry with the weights in its model folder
      ─> `harness run`'s pipeline on the copy, replaying the original run's HELM conf
      ─> compare with the original ─> reproduction.md, reproduction.json

Everything lands in RESULTS_DIR/reproduce/<slug>/ (redone from scratch on every call, after
removing the containers and volumes a killed call left):

    train-build.log, train.log    the training image's build and the training run (redacted)
    weights/                      the produced weights, as the training container left them
    work/<entry>-reproduced/      the entry's copy the inference image is built from
    results.sqlite, logs/, helm/  the copy's run, a results folder like `harness run --out`'s
    seeds.json, record/           the seeds drawn before training; the run's own record
    reproduction.md, .html, .json the report (report.py; the JSON last: it marks it finished)

An entry may describe its training in entry.yaml; every key is optional, the defaults fit the
submissions our templates render:

    train_dockerfile: Dockerfile.train   # relative to the entry; also the build context's folder
    weights_path: /app/out/merged        # where the training container leaves the merged weights
    output_dir: /app/out                 # a fresh volume is mounted here [default: its parent]
    record_path: /app/out/train          # where it leaves metrics.jsonl and run_record.json
    model_dir: model                     # where the inference Dockerfile reads the weights from
    secrets: [HF_TOKEN]                  # environment variables passed to training at run time
    build_args: {WEIGHTS: local}         # inference build arguments (BASE_IMAGE comes from the CLI)

A secret is read from the organizer's environment and given to the training container only, as
an environment variable: never as a build argument, so never in an image. Logs are redacted, and
every declared secret's value is masked in them even when it does not look like a credential.

Runs: one by default, with the seed the entry logged in training/run_record.json (its config's
when it logged none); `replay` the same with determinism on, its loss curve checked step by step
against training/metrics.jsonl (curves.py); `runs` N fresh seeds drawn before the first training
(seeds.json), each run in runs/run-K/ laid out as above. The training gets the seed as
$TRAIN_SEED and determinism as TRAIN_DETERMINISTIC=1; entry.yaml's `record_path` (default
/app/out/train) is where it leaves its own record, collected into record/.

Verdicts: `reproduced`, `within-noise`, `differs` (verdict.py judges the scores against the
original's evaluation noise, stats.py holds the statistics; a replay whose curve parts differs),
`train-timeout`, `train-failed`, `build-failed` (the training or the inference image) when it
never got that far. The stage score (the leaderboard's win-rate arithmetic) is recomputed with the
reproduced metrics in place of the original's against the same field of entries.

This module holds the flow: the original run, scoring the copy, the whole reproduction. The
training run is training.py's; the options, manifest, result dataclasses and
reports are options.py's (shared by both, so neither imports the other).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from harness.checks import TRAINING_RECORD, Limits, extract_zip
from harness.errors import ConfigError
from harness.helm.confs import SHIPPED_CONFS, load_conf, shipped_conf
from harness.helm.packs import verify_pack
from harness.infra import docker as engine
from harness.infra.lock import command_line, hold_results_lock
from harness.leaderboard.intervals import Interval, stratified_interval
from harness.reproduce.curves import (
    METRICS_FILE,
    RECORD_FILE,
    CurveComparison,
    Point,
    compare_curves,
    describe,
    read_curve,
    read_seed,
)
from harness.reproduce.options import (
    Comparison,
    Manifest,
    ReproduceOptions,
    Reproduction,
    RunScores,
    Stop,
    Training,
    Verdict,
    duration_text,
    load_manifest,
    tail,
)
from harness.reproduce.report import write_reports
from harness.reproduce.stats import BOOTSTRAP_RESAMPLES, Judgement
from harness.reproduce.training import build_training_image, hash_files, train
from harness.reproduce.verdict import compare, judge
from harness.run.driver import RunOptions, run_entries
from harness.secrets import redact
from harness.store import RUN_LABEL, Metric, Status, Store, entry_slug, results_id

# The training's environment a reproduction sets (templates/train/train.py reads them).
SEED_ENV = "TRAIN_SEED"
DETERMINISTIC_ENV = "TRAIN_DETERMINISTIC"

# -- the original run ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Original:
    helm_conf: Path
    harness_conf: str  # RunOptions.run_specs for the copy: a shipped conf's name or a file
    max_eval_instances: int
    max_sequence_length: int
    metrics: dict[str, list[Metric]]  # the whole field's, entry -> metrics
    instances: Path | None  # the original's instance pack, checked against its recorded hash


def _original(name: str, options: ReproduceOptions, out: Path) -> _Original:
    run_dir = options.results / "helm" / entry_slug(name) / options.stage
    helm_conf = run_dir / "run_specs.conf"
    if not helm_conf.is_file():
        raise ConfigError(
            f"no {options.stage} run of {name!r} in {options.results} (expected {helm_conf}); "
            "reproduce compares with an earlier `harness run --out RESULTS_DIR`"
        )
    with Store(options.results, create=False) as store:
        metrics = store.metrics(options.stage)
        pack_sha256 = store.instances_sha256(name, options.stage)
    if pack_sha256 is not None:
        if options.instances is None:
            raise ConfigError(
                f"{name!r} was scored on an instance pack (sha256 {pack_sha256}); "
                "give that pack with --instances"
            )
        given = verify_pack(options.instances).sha256
        if given != pack_sha256:
            raise ConfigError(
                f"{options.instances} is not the pack {name!r} was scored on "
                f"(sha256 {given}, recorded {pack_sha256})"
            )
    if not metrics.get(name):
        raise ConfigError(f"{name!r} has no {options.stage} metrics in {options.results}")
    entries = json.loads(helm_conf.read_text())["entries"]
    limits = [_limit(item["description"]) for item in entries]
    return _Original(
        helm_conf=helm_conf,
        harness_conf=_harness_conf(entries, metrics[name], out / "run_specs.conf"),
        max_eval_instances=max(limits),
        max_sequence_length=_sequence_length(run_dir / "prod_env" / "model_deployments.yaml"),
        metrics=metrics,
        instances=options.instances if pack_sha256 is not None else None,
    )


def _limit(description: str) -> int:
    for part in description.partition(":")[2].split(","):
        key, _, value = part.partition("=")
        if key == "max_eval_instances":
            return int(value)
    raise ConfigError(f"the original conf's entry {description!r} has no max_eval_instances")


def _harness_conf(entries: list[dict[str, Any]], metrics: list[Metric], dest: Path) -> str:
    """The conf naming the original's scenarios and metrics (the run uses the HELM conf as is).

    A shipped conf that holds every original run spec and scenario is used by name, so the copy
    downloads data exactly when the original did; otherwise one is written from the HELM conf and
    the metrics.
    """
    wanted = {(_without_limit(item["description"]), item["groups"][0]) for item in entries}
    for name in SHIPPED_CONFS:
        try:
            entries_of = load_conf(shipped_conf(name)).entries
        except ConfigError:  # closed.conf's task files are the organizers' to put beside it
            continue
        shipped = {(e.description, e.scenario) for e in entries_of}
        if wanted <= shipped:
            return name
    metric_of = {m.scenario: m.metric for m in metrics if m.metric}
    rows = []
    for item in entries:
        scenario = item["groups"][0]
        row = {
            "description": _without_limit(item["description"]),
            "priority": item.get("priority", 1),
            "scenario": scenario,
        }
        rows.append(row | ({"metric": metric_of[scenario]} if scenario in metric_of else {}))
    lines = ",\n".join(f"  {json.dumps(row)}" for row in rows)
    dest.write_text(f'{{"entries": [\n{lines}\n]}}\n')
    return str(dest)


def _without_limit(description: str) -> str:
    name, _, rest = description.partition(":")
    kept = [part for part in rest.split(",") if part and not part.startswith("max_eval_instances=")]
    return name + (":" + ",".join(kept) if kept else "")


def _sequence_length(deployments: Path) -> int:
    """The context HELM fitted prompts into in the original run, so prompts are cut the same."""
    with suppress(OSError, yaml.YAMLError, KeyError, IndexError, TypeError):
        raw = yaml.safe_load(deployments.read_text())
        return int(raw["model_deployments"][0]["max_sequence_length"])
    return RunOptions.max_sequence_length


# -- scoring the copy and comparing -----------------------------------------------------------


def _copy_entry(entry: Path, dest: Path) -> None:
    if entry.is_dir():
        shutil.copytree(entry, dest, symlinks=True)
        return
    findings: list[Any] = []
    dest.mkdir(parents=True)
    if not extract_zip(entry, dest, Limits(), findings):
        raise ConfigError(f"{entry} cannot be extracted: {'; '.join(f.message for f in findings)}")


def _place_weights(weights: Path, copy: Path, model_dir: str) -> None:
    target = copy / model_dir
    if target.is_symlink() or target.is_file():
        target.unlink()
    elif target.is_dir():
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)

    def link_or_copy(source: str, dest: str) -> None:
        # Hard links: merged 7B weights are ~14 GB, and both folders lie in RESULTS_DIR.
        try:
            os.link(source, dest)
        except OSError:
            shutil.copy2(source, dest)

    shutil.copytree(weights, target, copy_function=link_or_copy)
    # The training container's user may have written them private, and `COPY` keeps the mode:
    # the inference image's non-root server must read them.
    for path in [target, *target.rglob("*")]:
        if not path.is_symlink():
            path.chmod(path.stat().st_mode | (0o555 if path.is_dir() else 0o444))


def _noise(name: str, original: _Original) -> dict[str, Interval]:
    """The original's evaluation noise: a bootstrap over its instances (the per-instance values
    the store keeps with its metrics), per scenario."""
    strata: dict[str, list[list[float]]] = {}
    for metric in original.metrics[name]:
        if metric.instances:
            strata.setdefault(metric.scenario, []).append(list(metric.instances.values()))
    return {
        scenario: stratified_interval(found, resamples=BOOTSTRAP_RESAMPLES)
        for scenario, found in strata.items()
    }


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def _score_copy(
    copy: Path,
    out: Path,
    original: _Original,
    options: ReproduceOptions,
    manifest: Manifest,
    gpu: int | None,
) -> tuple[Verdict | None, str, list[Metric], str]:
    """Run the copy (alone in its folder) through `harness run`'s pipeline with `out` as its
    results folder: a verdict when it failed, a note, its metrics and a log tail."""
    outcome = run_entries(
        copy.parent,
        RunOptions(
            track=options.track,
            stage=options.stage,
            out=out,
            max_eval_instances=original.max_eval_instances,
            run_specs=original.harness_conf,
            helm_conf=original.helm_conf,
            instances=original.instances,
            base_image=options.base_image,
            force=True,
            evaluate_flagged=True,  # its checks were the original run's business
            build_timeout_s=options.build_timeout_s,
            deadline_s=options.eval_deadline_s,
            health=options.health,
            gpus=() if gpu is None else (gpu,),
            mem_limit=options.mem_limit,
            max_sequence_length=original.max_sequence_length,
            build_args=manifest.build_args,
        ),
    )[0]
    logs = out / "logs" / entry_slug(copy.name) / options.stage
    if outcome.status in (Status.BUILD_FAILED, Status.BUILD_TIMEOUT):
        return (
            Verdict.BUILD_FAILED,
            f"the inference image did not build on the reproduced weights: {outcome.reason}",
            [],
            tail(_read(logs / "build.log")),
        )
    with Store(out) as store:
        metrics = store.metrics(options.stage).get(copy.name, [])
    if not metrics:
        return (
            Verdict.DIFFERS,
            f"the reproduced entry was not scored: {outcome.status.value}: {outcome.reason}",
            [],
            tail(_read(logs / "container.log")),
        )
    note = "" if outcome.status is Status.SCORED else f"{outcome.status.value}: {outcome.reason}"
    return None, note, metrics, ""


# -- the whole reproduction -------------------------------------------------------------------


def reproduce_entry(
    entry: Path,
    options: ReproduceOptions,
    *,
    on_progress: Callable[[str], None] = lambda step: None,
) -> Reproduction:
    """Reproduce `entry` (a folder or .zip) against its run in `options.results`, holding that
    folder's lock (no `harness run` or other reproduction writes it meanwhile)."""
    if not entry.exists():
        raise ConfigError(f"no entry at {entry}")
    if not options.results.is_dir():
        raise ConfigError(
            f"no {options.stage} run in {options.results} (no such folder); reproduce compares "
            "with an earlier `harness run --out RESULTS_DIR`"
        )
    with hold_results_lock(options.results, command_line()):
        return reproduce_locked(entry, options, on_progress)


def _seeds(copy: Path, options: ReproduceOptions) -> list[int | None]:
    """Every run's seed, fixed before the first one trains (never chosen after the fact): the
    entry's logged one (a replay, or one run), or fresh ones drawn from the OS (`--runs`)."""
    logged = copy / TRAINING_RECORD[1]
    if options.runs is not None:
        seeds: set[int] = set()
        while len(seeds) < options.runs:
            seeds.add(int.from_bytes(os.urandom(4)) >> 1)  # 31 bits, as train.py draws
        return list(seeds)
    if options.replay and not all((copy / rel).is_file() for rel in TRAINING_RECORD):
        raise ConfigError(
            f"--replay needs the entry's training record ({', '.join(TRAINING_RECORD)}), which "
            "train.py writes and `harness submission weights` copies; this entry has none"
        )
    return [read_seed(logged) if logged.is_file() else None]


@dataclass(frozen=True)
class _Run:
    training: Training
    weights: dict[str, dict[str, Any]]
    metrics: list[Metric]
    note: str
    seed_taken: bool | None  # the seed the run's record logged is the one asked for


def _train_and_score(
    sdk: Any,
    image: str,
    copy: Path,
    out: Path,
    seed: int | None,
    context: tuple[_Original, ReproduceOptions, Manifest, int | None],
    on_progress: Callable[[str], None],
) -> _Run:
    """One training of the entry, its weights placed in `copy` and scored with `out` as the
    results folder; Stop when it did not get that far."""
    original, options, manifest, gpu = context
    settings = {} if seed is None else {SEED_ENV: str(seed)}
    if options.replay:
        settings[DETERMINISTIC_ENV] = "1"
    on_progress("training" + ("" if seed is None else f" (seed {seed})"))
    training, missing = train(
        sdk, image, manifest, entry_slug(copy.name), options, out, gpu, settings
    )
    train_log = (out / "train.log").read_text(errors="replace")
    if training.timed_out:
        limit = duration_text(options.time_limit_s)
        why = f"the training was stopped at the {limit} limit"
        raise Stop(Verdict.TRAIN_TIMEOUT, why, tail(train_log), training)
    if not training.finished or missing:
        why = missing or f"the training container exited with status {training.exit_code}"
        raise Stop(Verdict.TRAIN_FAILED, why, tail(train_log), training)
    on_progress("hashing the weights")
    weights = hash_files(out / "weights")
    record = out / "record" / RECORD_FILE
    seed_taken = None if seed is None or not record.is_file() else read_seed(record) == seed
    _place_weights(out / "weights", copy, manifest.model_dir)
    on_progress("building, serving and scoring the reproduced entry")
    failed, note, metrics, log_tail = _score_copy(copy, out, original, options, manifest, gpu)
    if failed is not None:
        raise Stop(failed, note, log_tail, training)
    return _Run(training, weights, metrics, note, seed_taken)


def remove_leftovers(sdk: Any, folder: Path) -> None:
    """The containers and volumes of the reproduction into `folder` (RESULTS_DIR/reproduce/
    <slug>): a killed one's, or (an interrupt) one still running. Its run label is on the
    training's container and volume (through `labels`), and the copy's `harness run` puts it
    on its containers (one run: into the same folder)."""
    label = f"{RUN_LABEL}={results_id(folder)}"
    engine.remove_containers(sdk, {"label": label})
    for volume in sdk.volumes.list(filters={"label": label}):
        engine.remove_quietly(volume)


def reproduce_locked(
    entry: Path,
    options: ReproduceOptions,
    on_progress: Callable[[str], None] = lambda step: None,
) -> Reproduction:
    """`reproduce_entry` for a caller that holds the results folder's lock (`--top` holds it
    for all its entries); the entry's folder under RESULTS_DIR/reproduce/ is redone. Its
    reproduction.json, written last and whole, marks it finished."""
    name = entry.name
    slug = entry_slug(name)
    out = options.results / "reproduce" / slug
    sdk = engine.client()
    remove_leftovers(sdk, out)
    options = replace(options, labels={**options.labels, RUN_LABEL: results_id(out)})
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    original = _original(name, options, out)
    copy = out / "work" / f"{name}-reproduced"
    _copy_entry(entry, copy)
    manifest = load_manifest(copy)
    seeds = _seeds(copy, options)
    (out / "seeds.json").write_text(json.dumps(seeds) + "\n")
    submitted = copy / manifest.model_dir
    submitted_weights = hash_files(submitted) if options.replay and submitted.is_dir() else None
    gpus = engine.resolve_gpus(sdk, options.gpus)
    context = (original, options, manifest, gpus[0] if gpus else None)

    runs: list[_Run] = []
    comparisons: list[Comparison] = []
    curve: CurveComparison | None = None
    judgements: dict[str, Judgement] = {}
    noise: dict[str, Interval] = {}
    log_tail = ""
    stopped: Training | None = None
    trained: list[Path] = []  # each run's folder, once its training started
    try:
        on_progress("building the training image")
        image = build_training_image(copy, manifest, slug, options, out)
        try:
            for i, seed in enumerate(seeds):
                # One run keeps the flat layout; each of --runs gets a folder of its own.
                run_out = out if options.runs is None else out / "runs" / f"run-{i + 1}"
                run_copy = run_out / "work" / copy.name
                if run_out != out:
                    shutil.copytree(copy, run_copy, symlinks=True)
                trained.append(run_out)
                try:
                    run = _train_and_score(
                        sdk, image, run_copy, run_out, seed, context, on_progress
                    )
                except Stop as stop:
                    if options.runs is not None:  # say which run, keep the verdict
                        stop.reason = f"run {i + 1} of {len(seeds)}: {stop.reason}"
                    raise
                runs.append(run)
                comparisons.append(compare(name, original.metrics, run.metrics))
        finally:
            with suppress(Exception):
                sdk.images.remove(image, force=True)
        noise = _noise(name, original)
        verdict, reason, judgements = judge(comparisons, options.tolerance, noise)
        notes = [f"run {i + 1} ended {r.note}" for i, r in enumerate(runs) if r.note]
        if options.replay:
            replayed = out / "record" / METRICS_FILE
            curve = compare_curves(
                read_curve(copy / TRAINING_RECORD[0]),
                read_curve(replayed) if replayed.is_file() else (),
                options.loss_tolerance,
            )
            if not curve.matches:
                verdict = Verdict.DIFFERS
            reason = f"{describe(curve)}; {reason}"
            if runs[0].seed_taken is False:
                notes.append(f"the training did not take the logged seed {seeds[0]}")
        reason = "; ".join([reason, *notes])
    except Stop as stop:
        verdict, reason, log_tail, stopped = stop.verdict, stop.reason, stop.log_tail, stop.training
    first = runs[0] if runs else None
    weights = first.weights if first else {}
    result = Reproduction(
        entry=name,
        track=options.track,
        stage=options.stage,
        verdict=verdict,
        reason=redact(reason),
        time_limit_s=options.time_limit_s,
        tolerance=options.tolerance,
        training=first.training if first else stopped,
        weights=weights,
        comparison=comparisons[0] if comparisons else None,
        log_tail=log_tail,
        folder=out,
        seeds=tuple(seeds),
        curve=curve,
        # Every file the replay produced against the submitted file of that name (model/ may
        # hold more: the template's README).
        weights_identical=None
        if submitted_weights is None or not weights
        else all(submitted_weights.get(path) == found for path, found in weights.items()),
        runs=tuple(
            RunScores(
                seed=seed,
                scenarios={s.scenario: s.reproduced for s in c.scenarios},
                stage_score=c.reproduced_score,
                wall_time_s=r.training.wall_time_s,
            )
            for seed, r, c in zip(seeds, runs, comparisons, strict=False)
        ),
        noise=noise,
        judgements=judgements,
        request=options.request,
        curves=_curves(copy, trained, options),
    )
    write_reports(result)
    return result


def _curves(
    copy: Path, trained: list[Path], options: ReproduceOptions
) -> dict[str, tuple[Point, ...]]:
    """The loss curves for the report: the entry's logged one, then each training's as far as
    it logged (a failed run's too). One that cannot be read is left out: the report's pictures
    are no reason to lose the verdict."""
    label = "replay" if options.replay else "reproduced"
    files = {"original": copy / TRAINING_RECORD[0]} | {
        label if options.runs is None else f"run {i}": folder / "record" / METRICS_FILE
        for i, folder in enumerate(trained, 1)
    }
    curves = {}
    for name, path in files.items():
        with suppress(ConfigError, OSError):
            curves[name] = read_curve(path)
    return {name: points for name, points in curves.items() if points}
