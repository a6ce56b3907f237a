"""`harness reproduce`: re-run an entry's training under the time limit, then rebuild and re-score.

What the organizers of the NeurIPS 2023 challenge did by hand for every top entry:

    build the training image ─> train (GPUs, time limit, output volume, secrets at run time only)
      ─> collect the weights and hash them ─> copy the entry with the weights in its model folder
      ─> `harness run`'s pipeline on the copy, replaying the original run's HELM conf
      ─> compare with the original ─> reproduction.md, reproduction.json

Everything lands in RESULTS_DIR/reproduce/<slug>/ (redone from scratch on every call):

    train-build.log, train.log    the training image's build and the training run (redacted)
    weights/                      the produced weights, as the training container left them
    work/<entry>-reproduced/      the entry's copy the inference image is built from
    results.sqlite, logs/, helm/  the copy's run, a results folder like `harness run --out`'s
    reproduction.json, .md        the report

An entry may describe its training in entry.yaml; every key is optional, the defaults fit the
submissions our templates render:

    train_dockerfile: Dockerfile.train   # relative to the entry; also the build context's folder
    weights_path: /app/out/merged        # where the training container leaves the merged weights
    output_dir: /app/out                 # a fresh volume is mounted here [default: its parent]
    model_dir: model                     # where the inference Dockerfile reads the weights from
    secrets: [HF_TOKEN]                  # environment variables passed to training at run time
    build_args: {WEIGHTS: local}         # inference build arguments (BASE_IMAGE comes from the CLI)

A secret is read from the organizer's environment and given to the training container only, as
an environment variable: never as a build argument, so never in an image. Logs are redacted, and
every declared secret's value is masked in them even when it does not look like a credential.

Verdicts: `reproduced` when every scenario's mean main metric is within the tolerance of the
original's; `differs` otherwise (or when the reproduced entry could not be scored); `train-timeout`,
`train-failed`, `build-failed` (the training or the inference image) when it never got that far.
The stage score (the leaderboard's win-rate arithmetic) is recomputed with the reproduced metrics
in place of the original's against the same field of entries, and reported beside.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import posixpath
import shutil
import tarfile
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml

from harness import docker as engine
from harness.checks import MANIFEST, Limits, clean_relative, extract_zip
from harness.confs import SHIPPED_CONFS, load_conf, shipped_conf
from harness.errors import ConfigError, InfrastructureError
from harness.failures import GIB, GpuMemorySampler, classify_build_log
from harness.gpus import device_request, gpu_environment, resolve_gpus
from harness.health import HealthSchedule
from harness.instances import verify_pack
from harness.lock import command_line, hold_results_lock
from harness.run import RunOptions, entry_slug, run_entries
from harness.scoring import RunSpec, ranks, score_stage
from harness.secrets import mask, redact
from harness.store import Metric, Status, Store

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
    """How an entry trains; see the module docstring for the entry.yaml keys."""

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


class _Stop(Exception):
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


# -- training -----------------------------------------------------------------------------------


class _MemoryPeaks:
    """Container memory from the engine's stats (and the GPU's through NVML): peaks, in bytes."""

    def __init__(self, gpu: GpuMemorySampler | None, gpu_note: str) -> None:
        self.gpu = gpu
        self.notes = [gpu_note] if gpu_note else []
        self.peaks: dict[str, int] = {}

    def sample(self, container: Any) -> None:
        with suppress(Exception):  # stats of a container that is exiting may be empty or fail
            stats = container.stats(stream=False, one_shot=True).get("memory_stats", {})
            # As `docker stats` shows it: page cache that can be dropped does not count.
            inner = stats.get("stats", {})
            cache = inner.get("total_inactive_file", inner.get("inactive_file", 0))
            if "usage" in stats:
                self._keep("container_memory_sampled", int(stats["usage"]) - int(cache))
            if "max_usage" in stats:  # cgroup v1 only: the kernel's own peak
                self._keep("container_memory_max_usage", int(stats["max_usage"]))

    def _keep(self, key: str, value: int) -> None:
        self.peaks[key] = max(self.peaks.get(key, 0), value)

    def result(self, interval_s: float) -> tuple[dict[str, int], str]:
        peaks = dict(self.peaks)
        if self.gpu is not None:
            peaks["gpu_memory"] = self.gpu.peak_bytes
        notes = list(self.notes)
        if not self.peaks:
            notes.append("container memory was not measured (the engine returned no stats)")
        else:
            notes.append(f"container memory sampled every {interval_s:g} s from the engine")
            if "container_memory_max_usage" not in peaks:
                notes.append("no kernel peak (cgroup v2): the sampled peak may miss short spikes")
        return peaks, "; ".join(notes)


def _secret_env(manifest: Manifest, options: ReproduceOptions) -> dict[str, str]:
    source = os.environ if options.environment is None else options.environment
    return {name: source[name] for name in manifest.secrets if source.get(name)}


def _scrub(text: str, secrets: Mapping[str, str]) -> str:
    text = redact(text)
    for value in secrets.values():
        text = text.replace(value, mask(value))
    return text


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def _tail(text: str, lines: int = LOG_TAIL_LINES) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _build_training_image(
    context: Path, manifest: Manifest, slug: str, options: ReproduceOptions, out: Path
) -> str:
    dockerfile = context / manifest.train_dockerfile
    if not dockerfile.is_file():
        raise _Stop(Verdict.BUILD_FAILED, f"the entry has no {manifest.train_dockerfile}")
    log = out / "train-build.log"
    result = engine.build(
        dockerfile.parent,
        tag=f"harness-reproduce/{slug}:train",
        log_path=log,
        dockerfile=dockerfile,
        build_args={"BASE_IMAGE": options.base_image} if options.base_image else None,
        labels={REPRODUCE_LABEL: slug, **options.labels},
        timeout=options.build_timeout_s,
    )
    text = redact(log.read_text(errors="replace"))
    log.write_text(text)
    if result.timed_out:
        minutes = options.build_timeout_s / 60
        raise _Stop(
            Verdict.BUILD_FAILED,
            f"the training image's build ran past its {minutes:.0f}-minute limit",
            _tail(text),
        )
    if not result.ok:
        failure = classify_build_log(text)
        raise _Stop(
            Verdict.BUILD_FAILED,
            f"the training image did not build: {failure.cause.value}: {failure.reason}",
            _tail(text),
        )
    return result.image


@contextmanager
def _volume(sdk: Any, labels: Mapping[str, str]) -> Iterator[str]:
    import docker.errors

    try:
        volume = sdk.volumes.create(
            name=f"harness-reproduce-{labels[REPRODUCE_LABEL]}-{uuid.uuid4().hex[:8]}",
            labels=dict(labels),
        )
    except docker.errors.DockerException as exc:
        raise InfrastructureError(f"could not create the output volume: {exc}") from exc
    try:
        yield str(volume.name)
    finally:
        with suppress(docker.errors.DockerException):
            volume.remove(force=True)


def _train(
    sdk: Any,
    image: str,
    manifest: Manifest,
    slug: str,
    options: ReproduceOptions,
    out: Path,
    gpu: int | None,
) -> tuple[Training, str | None]:
    """Run the training container to its end or the time limit; the weights of a finished run
    land in out/weights. Returns how it went, and why no weights were collected if none were."""
    import docker.errors

    secrets = _secret_env(manifest, options)
    sampler, gpu_note = (
        GpuMemorySampler.from_nvml(gpu) if gpu is not None else (None, "no GPU in use")
    )
    memory = _MemoryPeaks(sampler, gpu_note)
    labels = {engine.LABEL: "true", REPRODUCE_LABEL: slug, **options.labels}
    with _volume(sdk, labels) as volume:
        mounts = {
            str(host.resolve()): {"bind": path, "mode": "ro"}
            for host, path in options.mounts.items()
        }
        run: dict[str, Any] = {
            "detach": True,
            "labels": labels,
            "environment": secrets,
            "volumes": {volume: {"bind": manifest.volume_path, "mode": "rw"}, **mounts},
        }
        if gpu is not None:
            run["device_requests"] = [device_request(gpu)]
            run["environment"] = {**secrets, **gpu_environment(gpu)}
        try:
            container = sdk.containers.run(image, **run)
        except docker.errors.DockerException as exc:
            raise InfrastructureError(f"could not start the training container: {exc}") from exc
        try:
            started = time.monotonic()
            if sampler:
                sampler.start()
            try:
                timed_out = _wait(container, started + options.time_limit_s, memory, options)
            finally:
                if sampler:
                    sampler.stop()
            wall = time.monotonic() - started
            state = container.attrs.get("State", {})
            logs = _scrub(bytes(container.logs()).decode(errors="replace"), secrets)
            (out / "train.log").write_text(logs)
            peaks, note = memory.result(options.stats_interval_s)
            exit_code = None if timed_out else state.get("ExitCode")
            training = Training(
                finished=not timed_out and exit_code == 0,
                timed_out=timed_out,
                exit_code=exit_code,
                wall_time_s=round(wall, 1),
                peak_memory=peaks,
                memory_note=note,
                secrets_passed=tuple(sorted(secrets)),
                secrets_missing=tuple(sorted(set(manifest.secrets) - set(secrets))),
            )
            missing = _collect(container, manifest.weights_path, out / "weights")
            return training, missing if training.finished else None
        finally:
            with suppress(docker.errors.DockerException):
                container.remove(force=True)


def _wait(container: Any, deadline: float, memory: _MemoryPeaks, options: ReproduceOptions) -> bool:
    """Sample memory until the container exits; kill it at `deadline`. True when killed."""
    while True:
        container.reload()
        if container.status in ("exited", "dead"):
            return False
        if time.monotonic() >= deadline:
            with suppress(Exception):
                container.kill()
            container.wait()
            container.reload()
            return True
        memory.sample(container)
        time.sleep(min(options.stats_interval_s, max(0.0, deadline - time.monotonic())))


def _collect(container: Any, weights_path: str, dest: Path) -> str | None:
    """Copy the weights out of the stopped container (its volume included) as the host's user;
    None when done, else why there are none."""
    import docker.errors

    try:
        stream, _ = container.get_archive(weights_path)
    except docker.errors.NotFound:
        return f"the training ended without writing its weights to {weights_path}"
    with tempfile.TemporaryDirectory(prefix="harness-weights-", dir=dest.parent) as tmp:
        archive = Path(tmp) / "weights.tar"
        with archive.open("wb") as file:
            for chunk in stream:
                file.write(chunk)
        with tarfile.open(archive) as tar:
            tar.extractall(Path(tmp) / "x", filter="data")
        archive.unlink()
        shutil.move(Path(tmp) / "x" / posixpath.basename(weights_path.rstrip("/")), dest)
    if not any(path.is_file() for path in dest.rglob("*")):
        return f"the training left {weights_path} empty"
    return None


def hash_files(folder: Path) -> dict[str, dict[str, Any]]:
    """sha256 and size of every file under `folder`, by POSIX path relative to it."""
    hashes: dict[str, dict[str, Any]] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest = hashlib.sha256()
        with path.open("rb") as file:
            while chunk := file.read(1 << 20):
                digest.update(chunk)
        hashes[path.relative_to(folder).as_posix()] = {
            "sha256": digest.hexdigest(),
            "bytes": path.stat().st_size,
        }
    return hashes


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


def compare(
    name: str,
    original: Mapping[str, Sequence[Metric]],
    reproduced: Sequence[Metric],
) -> Comparison:
    """Per-scenario means of the main metric, and the stage score against the original field
    with this entry's metrics swapped for the reproduced ones."""

    def by_scenario(metrics: Sequence[Metric]) -> dict[str, float | None]:
        values: dict[str, list[float | None]] = {}
        for metric in metrics:
            values.setdefault(metric.scenario, []).append(metric.value)
        return {
            scenario: None
            if None in found
            else math.fsum(v for v in found if v is not None) / len(found)
            for scenario, found in values.items()
        }

    mine, theirs = by_scenario(original[name]), by_scenario(reproduced)
    scenarios = tuple(
        ScenarioComparison(scenario, mine.get(scenario), theirs.get(scenario))
        for scenario in sorted(set(mine) | set(theirs))
    )
    run_specs = {
        m.run_spec: RunSpec(m.scenario, m.lower_is_better) for ms in original.values() for m in ms
    }
    field_values = {entry: {m.run_spec: m.value for m in ms} for entry, ms in original.items()}
    before = score_stage(field_values, run_specs).scores
    swapped = field_values | {name: {m.run_spec: m.value for m in reproduced}}
    after = score_stage(swapped, run_specs).scores
    return Comparison(
        scenarios=scenarios,
        original_score=before[name],
        reproduced_score=after[name],
        original_rank=ranks(before)[name],
        reproduced_rank=ranks(after)[name],
        field_size=len(before),
    )


def judge(comparison: Comparison, tolerance: float) -> tuple[Verdict, str]:
    missing = [s.scenario for s in comparison.scenarios if s.difference is None]
    if missing:
        return Verdict.DIFFERS, f"no reproduced value for {', '.join(missing)}"
    worst = max(comparison.scenarios, key=lambda s: abs(s.difference or 0.0))
    gap = abs(worst.difference or 0.0)
    summary = (
        f"largest difference {gap:.4f} on {worst.scenario} "
        f"({worst.original:.4f} -> {worst.reproduced:.4f}); tolerance {tolerance:g}"
    )
    if gap > tolerance:
        return Verdict.DIFFERS, summary
    return Verdict.REPRODUCED, f"every scenario within tolerance: {summary}"


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
            _tail(_read(logs / "build.log")),
        )
    with Store(out) as store:
        metrics = store.metrics(options.stage).get(copy.name, [])
    if not metrics:
        return (
            Verdict.DIFFERS,
            f"the reproduced entry was not scored: {outcome.status.value}: {outcome.reason}",
            [],
            _tail(_read(logs / "container.log")),
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
        return _reproduce(entry, options, on_progress)


def _reproduce(
    entry: Path, options: ReproduceOptions, on_progress: Callable[[str], None]
) -> Reproduction:
    name = entry.name
    slug = entry_slug(name)
    out = options.results / "reproduce" / slug
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    original = _original(name, options, out)
    copy = out / "work" / f"{name}-reproduced"
    _copy_entry(entry, copy)
    manifest = load_manifest(copy)
    sdk = engine.client()
    gpus = resolve_gpus(sdk, options.gpus)
    gpu = gpus[0] if gpus else None

    training: Training | None = None
    weights: dict[str, dict[str, Any]] = {}
    comparison: Comparison | None = None
    log_tail = ""
    try:
        on_progress("building the training image")
        image = _build_training_image(copy, manifest, slug, options, out)
        on_progress("training")
        try:
            training, missing = _train(sdk, image, manifest, slug, options, out, gpu)
        finally:
            with suppress(Exception):
                sdk.images.remove(image, force=True)
        train_log = (out / "train.log").read_text(errors="replace")
        if training.timed_out:
            limit = _duration_text(options.time_limit_s)
            raise _Stop(
                Verdict.TRAIN_TIMEOUT,
                f"the training was stopped at the {limit} limit",
                _tail(train_log),
            )
        if not training.finished or missing:
            why = missing or f"the training container exited with status {training.exit_code}"
            raise _Stop(Verdict.TRAIN_FAILED, why, _tail(train_log))
        on_progress("hashing the weights")
        weights = hash_files(out / "weights")
        _place_weights(out / "weights", copy, manifest.model_dir)
        on_progress("building, serving and scoring the reproduced entry")
        failed, note, metrics, log_tail = _score_copy(copy, out, original, options, manifest, gpu)
        if failed is not None:
            raise _Stop(failed, note, log_tail)
        comparison = compare(name, original.metrics, metrics)
        verdict, reason = judge(comparison, options.tolerance)
        if note:
            reason = f"{reason}; the reproduced run ended {note}"
    except _Stop as stop:
        verdict, reason, log_tail = stop.verdict, stop.reason, stop.log_tail
    result = Reproduction(
        entry=name,
        track=options.track,
        stage=options.stage,
        verdict=verdict,
        reason=redact(reason),
        time_limit_s=options.time_limit_s,
        tolerance=options.tolerance,
        training=training,
        weights=weights,
        comparison=comparison,
        log_tail=log_tail,
        folder=out,
    )
    write_reports(result)
    return result


def _duration_text(seconds: float) -> str:
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
        f"{_duration_text(result.time_limit_s)}, tolerance {result.tolerance:g} (absolute, on "
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
