"""`harness run`: build, serve and score every entry under the stage's time limit.

Per entry, each step recorded in the results store as it ends:

    check ─> build ─> serve (wait until healthy) ─> evaluate (HELM through the gateway) ─> record

A failing entry is a result, not a crash: it ends with a status and a reason and the batch goes
on. An entry whose stage result is already stored is skipped unless `force`; an unfinished one
resumes (its image is reused when its build had succeeded, HELM skips the runs it finished).
Every container carries the run label and is removed when its entry ends, when the harness is
interrupted (SIGINT, SIGTERM) and, for a harness that was killed outright, on the next start.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from harness import docker as engine
from harness.checks import EntryReport, Limits, check_entry, discover, extract_zip
from harness.errors import ConfigError, EntryError
from harness.failures import GpuMemorySampler, classify_build_log, classify_container
from harness.gateway import Gateway, GatewayStats
from harness.health import HealthSchedule, wait_healthy
from harness.helm import (
    SHIPPED_CONFS,
    HelmEndpoint,
    HelmRun,
    load_conf,
    run_helm,
    shipped_conf,
    write_helm_conf,
    write_prod_env,
)
from harness.secrets import redact
from harness.store import Attempt, Metric, Status, Step, StepStatus, Store

STAGE_MINUTES = {"open": 300, "closed": 600}
TRACK_GPU_GIB = {"4090": 24, "A100": 40}
# Containers and images carry RUN_LABEL=<results id>: a harness cleans up after a killed run on
# the same results folder and leaves alone the containers of other runs on the same engine.
RUN_LABEL = "org.harness.run"


def results_id(out: Path) -> str:
    """The RUN_LABEL value of the runs writing into the results folder `out`."""
    return hashlib.sha256(str(out.resolve()).encode()).hexdigest()[:16]


EVAL_NETWORK = "harness-eval"


@dataclass(frozen=True)
class RunOptions:
    """Everything `harness run` takes; the defaults are the competition's."""

    track: str
    stage: str
    out: Path
    jobs: int = 1
    max_eval_instances: int = 100
    budget: int | None = None
    run_specs: str | None = None  # a shipped conf name or a conf file; default: the stage's
    base_image: str | None = None
    force: bool = False
    evaluate_flagged: bool = False
    build_timeout_s: float = 2 * 3600
    deadline_s: float | None = None  # default: the stage's limit
    health: HealthSchedule = field(default_factory=HealthSchedule)
    allow_network: bool = False
    gpus: bool | None = None  # None: when the engine has an NVIDIA runtime
    mem_limit: str | None = None
    max_sequence_length: int = 4096
    process_timeout_s: float = 600.0
    tokenizer_timeout_s: float = 30.0
    # HELM's own hard stop, past the deadline: the gateway answers /process at once by then, but
    # HELM retries failing /tokenize calls with long back-offs.
    helm_grace_s: float = 600.0
    build_secrets: Mapping[str, Path] = field(default_factory=dict)
    build_args: Mapping[str, str] = field(default_factory=dict)  # besides BASE_IMAGE
    # A HELM-ready conf used as it is instead of one written from `run_specs` (which then only
    # names the scenarios and their metrics): `harness reproduce` replays the original run's.
    helm_conf: Path | None = None

    @property
    def helm_offline(self) -> bool:
        """HELM may download data sets only for the competition's confs, which need them."""
        return (self.run_specs or self.stage) not in ("open", "closed")

    def __post_init__(self) -> None:
        if self.track not in TRACK_GPU_GIB:
            raise ConfigError(f"unknown track {self.track!r}; choose one of 4090, A100")
        if self.stage not in STAGE_MINUTES:
            raise ConfigError(f"unknown stage {self.stage!r}; choose one of open, closed")
        if self.jobs < 1:
            raise ConfigError(f"--jobs must be at least 1, got {self.jobs}")

    @property
    def stage_limit_s(self) -> float:
        return self.deadline_s if self.deadline_s is not None else STAGE_MINUTES[self.stage] * 60

    def conf_path(self) -> Path:
        name = self.run_specs or self.stage
        if name in SHIPPED_CONFS:
            return shipped_conf(name)
        path = Path(name)
        if not path.is_file():
            raise ConfigError(f"--run-specs {name!r} is neither {SHIPPED_CONFS} nor a file")
        return path


@dataclass(frozen=True)
class EntryOutcome:
    entry: str
    status: Status
    reason: str
    skipped: bool = False


class _Ended(Exception):
    """An entry reached its final status before the last step."""

    def __init__(self, status: Status, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class _Interrupted(BaseException):
    """SIGINT or SIGTERM: stop every entry, remove their containers."""


def entry_slug(name: str) -> str:
    """An entry's folder name under RESULTS_DIR/logs and /helm: readable, and unique by a hash."""
    slug = re.sub(r"[^a-z0-9_.-]+", "-", name.lower()).strip("-.") or "entry"
    return f"{slug[:40]}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def _redact_file(path: Path) -> None:
    """Rewrite a log with every credential in it redacted: only that form is ever stored."""
    if path.exists():
        text = path.read_text(errors="replace")
        clean = redact(text)
        if clean != text:
            path.write_text(clean)


def _summary(report: EntryReport) -> str:
    errors = [f for f in report.findings if str(f.severity) == "error"]
    rules = sorted({f.rule for f in errors})
    return f"{len(errors)} error finding(s): {', '.join(rules)}"


class Runner:
    """Runs one stage over a folder of entries; `run()` returns an outcome per entry."""

    def __init__(
        self,
        entries_dir: Path,
        options: RunOptions,
        *,
        on_progress: Callable[[str, str], None] = lambda entry, step: None,
    ) -> None:
        self.entries = discover(entries_dir)
        self.options = options
        self.conf = load_conf(options.conf_path())
        self.out = options.out
        self.store = Store(self.out)
        self.on_progress = on_progress
        self.run_id = results_id(self.out)
        self._sdk: Any = None
        self._containers: dict[str, engine.RunningContainer] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    # -- the batch ------------------------------------------------------------------------------

    def run(self) -> list[EntryOutcome]:
        self._sdk = engine.client()
        self._remove_stale_containers()
        self.store.mark_interrupted()
        network = None if self.options.allow_network else self._eval_network()
        gpus = self._gpus() if self.options.gpus is None else self.options.gpus
        pool = ThreadPoolExecutor(max_workers=self.options.jobs, thread_name_prefix="entry")
        with self._signals():
            try:
                futures = [
                    pool.submit(self._run_entry, path, network, gpus) for path in self.entries
                ]
                outcomes = [future.result() for future in futures]
            except BaseException as exc:
                # A signal, or an engine that went away: removing the containers makes whatever
                # the workers wait on fail fast, and leaves nothing running.
                self._stopping.set()
                self._remove_containers()
                pool.shutdown(wait=False, cancel_futures=True)
                if isinstance(exc, _Interrupted):
                    raise KeyboardInterrupt(str(exc)) from None
                raise
        pool.shutdown()
        return outcomes

    @contextmanager
    def _signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def interrupt(signum: int, frame: FrameType | None) -> None:
            self._stopping.set()
            raise _Interrupted(signal.Signals(signum).name)

        previous = {s: signal.signal(s, interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _remove_stale_containers(self) -> None:
        stale = self._sdk.containers.list(all=True, filters={"label": f"{RUN_LABEL}={self.run_id}"})
        for container in stale:
            with suppress(Exception):
                container.remove(force=True)

    def _remove_containers(self) -> None:
        with self._lock:
            running = list(self._containers.values())
            self._containers.clear()
        for served in running:
            served.remove()

    def _eval_network(self) -> str:
        """An internal network: entries are reachable from here but reach nothing outside."""
        existing = self._sdk.networks.list(names=[EVAL_NETWORK])
        if existing:
            return EVAL_NETWORK
        self._sdk.networks.create(
            EVAL_NETWORK, internal=True, labels={engine.LABEL: "true"}, check_duplicate=True
        )
        return EVAL_NETWORK

    def _gpus(self) -> bool:
        runtimes = self._sdk.info().get("Runtimes", {})
        return "nvidia" in runtimes

    # -- one entry ------------------------------------------------------------------------------

    def _run_entry(self, path: Path, network: str | None, gpus: bool) -> EntryOutcome:
        name, stage = path.name, self.options.stage
        self.store.add_entry(name, path)
        previous = self.store.results(stage).get(name)
        if previous is not None and not self.options.force:
            return EntryOutcome(name, previous.status, previous.reason, skipped=True)
        attempt = self.store.start_attempt(name, stage)
        logs = self.out / "logs" / entry_slug(name) / stage
        logs.mkdir(parents=True, exist_ok=True)
        try:
            with tempfile.TemporaryDirectory(prefix="harness-entry-") as tmp:
                status, reason = self._pipeline(path, attempt, logs, Path(tmp), network, gpus)
        except _Ended as ended:
            status, reason = ended.status, ended.reason
        except EntryError as exc:
            status, reason = Status.EVAL_FAILED, str(exc)
        reason = redact(reason)
        self.store.record_status(attempt, status, reason)
        self.store.finish_attempt(attempt)
        self.on_progress(name, status.value)
        return EntryOutcome(name, status, reason)

    @contextmanager
    def _step(self, attempt: Attempt, step: Step, log: Path | None = None) -> Iterator[list[str]]:
        """Record a step; the body appends its detail, and raising `_Ended` fails the step."""
        self.on_progress(attempt.entry, step.value)
        step_id = self.store.start_step(attempt, step)
        detail: list[str] = []
        try:
            yield detail
        except _Ended as ended:
            self.store.finish_step(step_id, ok=False, detail=redact(ended.reason), log_path=log)
            raise
        except BaseException as exc:
            why = redact(f"{type(exc).__name__}: {exc}")
            self.store.finish_step(step_id, ok=False, detail=why, log_path=log)
            raise
        self.store.finish_step(step_id, ok=True, detail=redact("; ".join(detail)), log_path=log)

    def _pipeline(
        self, path: Path, attempt: Attempt, logs: Path, tmp: Path, network: str | None, gpus: bool
    ) -> tuple[Status, str]:
        # The checks first: they record a malformed zip's findings before extraction refuses it.
        dockerfile = self._check(path, attempt)
        root = self._context(path, tmp)
        image = self._build(root, dockerfile, attempt, logs)
        served = self._serve(image, attempt, logs, network, gpus)
        try:
            return self._evaluate(served, attempt, logs, gpus)
        finally:
            self._release(attempt.entry, served, logs)

    def _release(self, entry: str, served: engine.RunningContainer, logs: Path) -> str:
        """Keep the container's log (redacted) and remove it; returns the log as it was."""
        text = served.logs(tail=5000)
        (logs / "container.log").write_text(redact(text))
        with self._lock:
            self._containers.pop(entry, None)
        served.remove()
        return text

    def _context(self, path: Path, tmp: Path) -> Path:
        """The entry's files on disk: the folder itself, or a zip extracted (safely) to `tmp`."""
        if path.is_dir():
            return path
        findings: list[Any] = []
        if not extract_zip(path, tmp, Limits(), findings):
            raise _Ended(Status.FLAGGED, "; ".join(f.message for f in findings) or "bad zip")
        return tmp

    def _check(self, path: Path, attempt: Attempt) -> str:
        with self._step(attempt, Step.CHECK) as detail:
            report = check_entry(path)
            self.store.record_findings(attempt, report.findings)
            detail.append(f"{len(report.findings)} finding(s)")
            if report.dockerfile is None:
                # An entry that could not be read has no Dockerfile to find: it is malformed.
                if any(f.rule == "malformed-entry" for f in report.findings):
                    raise _Ended(Status.FLAGGED, _summary(report))
                raise _Ended(Status.NO_DOCKERFILE, "no file named Dockerfile in the entry")
            if report.status == "flagged":
                if not self.options.evaluate_flagged:
                    raise _Ended(Status.FLAGGED, _summary(report))
                detail.append(f"flagged, evaluated anyway ({_summary(report)})")
            return report.dockerfile

    def _build(self, root: Path, dockerfile: str, attempt: Attempt, logs: Path) -> str:
        tag = f"harness-entry/{entry_slug(attempt.entry)}:{self.options.stage}"
        log = logs / "build.log"
        done = self.store.finished_step(attempt.entry, attempt.stage, Step.BUILD)
        if done is not None and done.status is StepStatus.OK and not self.options.force:
            with suppress(Exception):
                self._sdk.images.get(tag)
                return tag
        with self._step(attempt, Step.BUILD, log) as detail:
            result = engine.build(
                (root / dockerfile).parent,
                tag=tag,
                log_path=log,
                dockerfile=root / dockerfile,
                build_args={
                    **({"BASE_IMAGE": self.options.base_image} if self.options.base_image else {}),
                    **self.options.build_args,
                },
                secrets=self.options.build_secrets,
                labels={RUN_LABEL: self.run_id, "org.harness.entry": entry_slug(attempt.entry)},
                timeout=self.options.build_timeout_s,
            )
            _redact_file(log)
            detail.append(f"{result.seconds:.0f} s")
            if result.timed_out:
                raise _Ended(
                    Status.BUILD_TIMEOUT,
                    f"the build ran past its {self.options.build_timeout_s / 60:.0f}-minute limit",
                )
            if not result.ok:
                failure = classify_build_log(log.read_text(errors="replace"))
                raise _Ended(Status.BUILD_FAILED, f"{failure.cause.value}: {failure.reason}")
            return tag

    def _serve(
        self, image: str, attempt: Attempt, logs: Path, network: str | None, gpus: bool
    ) -> engine.RunningContainer:
        with self._step(attempt, Step.SERVE, logs / "container.log") as detail:
            served = engine.start_container(
                self._sdk,
                image,
                labels={RUN_LABEL: self.run_id},
                network=network,
                gpus=gpus,
                mem_limit=self.options.mem_limit,
            )
            with self._lock:
                self._containers[attempt.entry] = served
            health = wait_healthy(
                served.url,
                schedule=self.options.health,
                alive=lambda: served.alive() and not self._stopping.is_set(),
            )
            detail.append(f"{health.reason} after {health.seconds:.0f} s")
            if not health.healthy:
                state = served.state()
                logs_text = self._release(attempt.entry, served, logs)
                if state.get("Status") in ("exited", "dead"):
                    failure = classify_container(
                        state.get("ExitCode"), bool(state.get("OOMKilled")), logs_text
                    )
                    raise _Ended(failure.status, failure.reason)
                raise _Ended(Status.UNHEALTHY, health.reason)
            return served

    def _evaluate(
        self, served: engine.RunningContainer, attempt: Attempt, logs: Path, gpus: bool
    ) -> tuple[Status, str]:
        run_dir = self.out / "helm" / entry_slug(attempt.entry) / attempt.stage
        run_dir.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.options.stage_limit_s
        sampler, sampling = GpuMemorySampler.from_nvml() if gpus else (None, "no GPU in use")
        with (
            self._step(attempt, Step.EVALUATE, run_dir / "helm-run.log") as detail,
            Gateway(
                served.url,
                deadline=deadline,
                request_log=logs / "requests.jsonl",
                process_timeout_s=self.options.process_timeout_s,
                tokenizer_timeout_s=self.options.tokenizer_timeout_s,
            ) as gateway,
        ):
            detail.append(sampling)
            endpoint = HelmEndpoint(
                attempt.entry, gateway.url, max_sequence_length=self.options.max_sequence_length
            )
            write_prod_env(run_dir / "prod_env", [endpoint])
            conf = run_dir / "run_specs.conf"
            if self.options.helm_conf is not None:
                shutil.copyfile(self.options.helm_conf, conf)
            else:
                write_helm_conf(
                    self.conf,
                    conf,
                    max_eval_instances=self.options.max_eval_instances,
                    budget=self.options.budget,
                )
            if sampler:
                sampler.start()
            try:
                helm = run_helm(
                    run_dir,
                    conf,
                    [endpoint.model],
                    max_eval_instances=self.options.max_eval_instances,
                    timeout_s=self.options.stage_limit_s + self.options.helm_grace_s,
                    metrics=self.conf.metrics(),
                    offline=self.options.helm_offline,
                )
            finally:
                if sampler:
                    sampler.stop()
            stats = gateway.stats()
        self.store.record_gateway_stats(attempt, stats, logs / "requests.jsonl")
        self.store.record_metrics(
            attempt, [Metric(r.run_spec, r.scenario, r.metric or "", r.value) for r in helm.runs]
        )
        return self._verdict(served, helm, stats, sampler)

    def _verdict(
        self,
        served: engine.RunningContainer,
        helm: HelmRun,
        stats: GatewayStats,
        sampler: GpuMemorySampler | None,
    ) -> tuple[Status, str]:
        state = served.state()
        if state.get("Status") in ("exited", "dead"):
            failure = classify_container(
                state.get("ExitCode"), bool(state.get("OOMKilled")), served.logs()
            )
            return failure.status, f"during evaluation: {failure.reason}"
        budget = TRACK_GPU_GIB[self.options.track] * 1024**3
        if sampler and (over := sampler.over_budget(budget)):
            return over.status, over.reason
        scored = [run for run in helm.runs if run.ok]
        if helm.timed_out:
            return (
                Status.EVAL_TIMEOUT,
                f"HELM was stopped {self.options.helm_grace_s:.0f} s past the deadline; "
                f"{len(scored)} run(s) had finished",
            )
        if not scored:
            why = helm.error or "; ".join(sorted({str(r.error) for r in helm.runs})) or "no runs"
            return Status.EVAL_FAILED, f"HELM scored no run: {why}"
        failed = len(helm.runs) - len(scored)
        summary = f"{len(scored)} run(s) scored" + (f", {failed} failed" if failed else "")
        if stats.unanswered:
            return (
                Status.EVAL_TIMEOUT,
                f"{summary}; {stats.unanswered} request(s) unanswered by the deadline score 0",
            )
        return Status.SCORED, f"{summary}; {stats.answered} request(s) answered"


def run_entries(
    entries_dir: Path,
    options: RunOptions,
    *,
    on_progress: Callable[[str, str], None] = lambda entry, step: None,
) -> list[EntryOutcome]:
    """Run one stage over every entry of `entries_dir`; see the module docstring."""
    return Runner(entries_dir, options, on_progress=on_progress).run()


def exit_code(outcomes: Sequence[EntryOutcome]) -> int:
    """0 when every entry was scored, 1 when one failed or was flagged."""
    return 0 if all(o.status is Status.SCORED for o in outcomes) else 1
