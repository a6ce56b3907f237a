"""One entry's evaluation, runnable wherever an executor puts it:

    check ─> build ─> serve (wait until healthy) ─> evaluate (HELM through the gateway)

`evaluate_entry(job, recorder, machine)` runs those steps on `machine` (its Docker engine, network
and GPUs) and returns how the entry ended. It never writes the results store itself: it tells a
`Recorder` (recorder.py). A failing
entry is an ending, not a crash: the steps' failures become a status and a reason.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from harness.checks import EntryReport, Limits, check_entry, extract_zip
from harness.competition import TRACKS
from harness.errors import DiskFullError, InfrastructureError, disk_full
from harness.helm.fit import Fit
from harness.helm.runner import HelmRun
from harness.infra import docker as engine
from harness.infra.gpus import GpuPool
from harness.run.failures import GpuMemorySampler, classify_build_log, classify_container
from harness.run.health import wait_healthy
from harness.run.options import RunOptions
from harness.run.recorder import Recorder
from harness.run.scoring import HelmConf, prepare_helm, score_served
from harness.secrets import redact
from harness.store import (
    RUN_LABEL,
    GatewayStats,
    Status,
    Step,
    entry_slug,
)

EVAL_NETWORK = "harness-eval"
# Less free space than this under the results folder when an entry fails: a full disk is to blame
# (a build log, HELM's output or a container log could not be written), not the entry.
MIN_FREE_BYTES = 1024**2
_VANISHED = "the container disappeared (removed from outside the harness)"


class Ending(NamedTuple):
    """How an entry ended in one stage."""

    status: Status
    reason: str


@dataclass(frozen=True)
class EntryJob:
    """What a worker needs to evaluate one entry (picklable: it may travel to another node)."""

    name: str  # the entry's folder or zip file name: its key in the store
    path: Path
    options: RunOptions
    run_id: str  # the RUN_LABEL value of the results folder
    reuse_build: bool = False  # an earlier attempt built the image: reuse it when it still exists

    @property
    def stage(self) -> str:
        return self.options.stage

    @property
    def logs(self) -> Path:
        return self.options.out / "logs" / entry_slug(self.name) / self.stage

    @property
    def helm_dir(self) -> Path:
        return self.options.out / "helm" / entry_slug(self.name) / self.stage

    @property
    def image(self) -> str:
        return f"harness-entry/{entry_slug(self.name)}:{self.stage}"

    @property
    def container(self) -> str:
        """Deterministic: a retry (another attempt, a Ray task re-run after its node died)
        replaces what an earlier one left on the same engine instead of running beside it."""
        return f"harness-{self.run_id}-{entry_slug(self.name)}-{self.stage}"


# -- the machine a job runs on ------------------------------------------------------------------


class Machine:
    """The worker side: one Docker engine, its evaluation network and GPUs, and what runs on it.

    `stop()` (an interrupt) makes every pipeline on this machine end fast: health waits give up and
    the containers are removed, so whatever waits on them fails at once. An engine that goes away
    (`engine_lost`) does the same, and the pipelines then raise InfrastructureError instead of
    ending their entries: the entries did nothing wrong, a rerun evaluates them.
    """

    def __init__(
        self,
        sdk: Any,
        *,
        allow_network: bool,
        gpus: tuple[int, ...] | None,
        labels: Mapping[str, str] | None = None,
    ) -> None:
        self.sdk = sdk
        self.labels = dict(labels or {})  # put on every container (the Ray executor: its node)
        self.network = None if allow_network else self._eval_network()
        self.gpus = GpuPool(engine.resolve_gpus(sdk, gpus))
        self.stopping = threading.Event()
        self._watch = engine.EngineWatch()
        self.engine_lost = self._watch.lost
        self._containers: dict[str, engine.RunningContainer] = {}
        self._lock = threading.Lock()

    def engine_gone(self) -> bool:
        """Whether the engine went away: its event stream broke, or it does not answer now (a
        stopping dockerd closes its socket at once, its event streams only when it exits)."""
        if not self.engine_lost.is_set():
            try:
                self.sdk.ping()
            except Exception:  # whatever the reason, an engine that cannot answer a ping
                self.engine_lost.set()
        return self.engine_lost.is_set()

    def should_stop(self) -> bool:
        return self.stopping.is_set() or self.engine_lost.is_set()

    def close(self) -> None:
        self._watch.close()

    def _eval_network(self) -> str:
        """An internal network: entries are reachable from here but reach nothing outside."""
        if not self.sdk.networks.list(names=[EVAL_NETWORK]):
            self.sdk.networks.create(
                EVAL_NETWORK, internal=True, labels={engine.LABEL: "true"}, check_duplicate=True
            )
        return EVAL_NETWORK

    def remove_stale_containers(self, run_id: str) -> None:
        """Containers a killed harness left for the same results folder."""
        engine.remove_containers(self.sdk, {"label": f"{RUN_LABEL}={run_id}"})

    def remove_container(self, name: str) -> None:
        with suppress(Exception):  # none by that name: nothing to do
            self.sdk.containers.get(name).remove(force=True)

    def hold(self, key: str, served: engine.RunningContainer) -> None:
        with self._lock:
            self._containers[key] = served

    def release(self, key: str) -> None:
        with self._lock:
            self._containers.pop(key, None)

    def stop(self) -> None:
        self.stopping.set()
        with self._lock:
            running = list(self._containers.values())
            self._containers.clear()
        for served in running:
            served.remove()


# -- the pipeline -------------------------------------------------------------------------------


class _Ended(Exception):
    """An entry reached its final status before the last step."""

    def __init__(self, status: Status, reason: str) -> None:
        super().__init__(reason)
        self.ending = Ending(status, reason)


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


def evaluate_entry(job: EntryJob, recorder: Recorder, machine: Machine) -> Ending:
    """Check, build, serve and score one entry on `machine`; see the module docstring.

    Raises InfrastructureError when the engine went away meanwhile, whatever the steps saw, and
    DiskFullError when the results folder's disk is full (a write failed, or the entry failed
    with less than MIN_FREE_BYTES left there).
    """
    try:
        with engine.engine_calls("while an entry was evaluated"):
            job.logs.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(prefix="harness-entry-") as tmp:
                ending = _Pipeline(job, recorder, machine).run(Path(tmp))
    except _Ended as ended:
        ending = ended.ending
    except OSError as exc:
        if (full := disk_full(exc, job.options.out)) is None:
            raise
        raise full from exc
    except DiskFullError:
        raise
    except InfrastructureError:
        # An engine going away is seen by whoever calls it first: give the watch a moment.
        if not machine.engine_lost.wait(timeout=2.0):
            raise
    if machine.engine_gone():
        raise InfrastructureError(
            "the Docker engine went away (stopped or restarted) during the batch; finished "
            "entries are stored: run the same command again to evaluate the rest"
        )
    if ending.status is not Status.SCORED:
        free = shutil.disk_usage(job.options.out).free
        if free < MIN_FREE_BYTES:
            raise DiskFullError.on(
                job.options.out, f"{free} bytes free when {job.name} ended {ending.status}"
            )
    return Ending(ending.status, redact(ending.reason))


class _Pipeline:
    def __init__(self, job: EntryJob, recorder: Recorder, machine: Machine) -> None:
        self.job = job
        self.options = job.options
        self.recorder = recorder
        self.machine = machine

    def run(self, tmp: Path) -> Ending:
        # The checks first: they record a malformed zip's findings before extraction refuses it.
        dockerfile = self._check()
        root = self._context(tmp)
        image = self._build(root, dockerfile)
        helm_conf = prepare_helm(self.options, self.job.name, self.job.helm_dir)
        # The GPU is held while the entry is served only: other entries build meanwhile.
        with self.machine.gpus.lease(self.machine.stopping) as gpu:
            served = self._serve(image, gpu)
            try:
                return self._evaluate(served, gpu, helm_conf)
            finally:
                self._release(served)

    @contextmanager
    def _step(self, step: Step, log: Path | None = None) -> Iterator[list[str]]:
        """Record a step; the body appends its detail, and raising `_Ended` fails the step."""
        step_id = self.recorder.start_step(step, at=time.time())
        detail: list[str] = []

        def finish(ok: bool, text: str) -> None:
            self.recorder.finish_step(
                step_id, ok=ok, detail=redact(text), log_path=log, at=time.time()
            )

        try:
            yield detail
        except _Ended as ended:
            finish(False, ended.ending.reason)
            raise
        except BaseException as exc:
            finish(False, f"{type(exc).__name__}: {exc}")
            raise
        finish(True, "; ".join(detail))

    def _release(self, served: engine.RunningContainer) -> str:
        """Keep the container's log (redacted) and remove it; returns the log as it was."""
        self.machine.release(self.job.name)
        try:
            text = served.logs(tail=5000)
            (self.job.logs / "container.log").write_text(redact(text))
        finally:
            served.remove()
        return text

    def _context(self, tmp: Path) -> Path:
        """The entry's files on disk: the folder itself, or a zip extracted (safely) to `tmp`."""
        if self.job.path.is_dir():
            return self.job.path
        findings: list[Any] = []
        if not extract_zip(self.job.path, tmp, Limits(), findings):
            raise _Ended(Status.FLAGGED, "; ".join(f.message for f in findings) or "bad zip")
        return tmp

    def _check(self) -> str:
        with self._step(Step.CHECK) as detail:
            report = check_entry(self.job.path)
            self.recorder.record_findings(report.findings)
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

    def _build(self, root: Path, dockerfile: str) -> str:
        tag = self.job.image
        log = self.job.logs / "build.log"
        if self.job.reuse_build:
            with suppress(Exception):
                self._record_image(self.machine.sdk.images.get(tag))
                return tag
        # HELM's request cache holds the answers of the image it is about to replace.
        shutil.rmtree(self.job.helm_dir / "prod_env" / "cache", ignore_errors=True)
        with self._step(Step.BUILD, log) as detail:
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
                labels={RUN_LABEL: self.job.run_id, "org.harness.entry": entry_slug(self.job.name)},
                network=self.options.build_network,
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
            self._record_image(self.machine.sdk.images.get(tag))
            return tag

    def _record_image(self, image: Any) -> None:
        self.recorder.record_resources(image_bytes=image.attrs.get("Size"), image_id=image.id)

    def _serve(self, image: str, gpu: int | None) -> engine.RunningContainer:
        with self._step(Step.SERVE, self.job.logs / "container.log") as detail:
            self.machine.remove_container(self.job.container)
            served = engine.start_container(
                self.machine.sdk,
                image,
                name=self.job.container,
                labels={RUN_LABEL: self.job.run_id, **self.machine.labels},
                network=self.machine.network,
                gpu=gpu,
                mem_limit=self.options.mem_limit,
            )
            self.machine.hold(self.job.name, served)
            health = wait_healthy(
                served.url,
                schedule=self.options.health,
                alive=lambda: served.alive() and not self.machine.should_stop(),
            )
            detail.append(f"{health.reason} after {health.seconds:.0f} s")
            if not health.healthy:
                state = served.state()
                logs_text = self._release(served)
                if state.get("Status") == engine.REMOVED:
                    raise _Ended(Status.CRASHED, _VANISHED)
                if state.get("Status") in ("exited", "dead"):
                    failure = classify_container(
                        state.get("ExitCode"), bool(state.get("OOMKilled")), logs_text
                    )
                    raise _Ended(failure.status, failure.reason)
                raise _Ended(Status.UNHEALTHY, health.reason)
            return served

    def _evaluate(
        self, served: engine.RunningContainer, gpu: int | None, helm_conf: HelmConf
    ) -> Ending:
        run_dir = self.job.helm_dir
        sampler, sampling = (
            GpuMemorySampler.from_nvml(gpu) if gpu is not None else (None, "no GPU in use")
        )
        request_log = self.job.logs / "requests.jsonl"
        with self._step(Step.EVALUATE, run_dir / "helm-run.log") as detail:
            detail.append(sampling)
            if sampler:
                sampler.start()
            try:
                scored = score_served(
                    served.url,
                    self.options,
                    helm_conf,
                    name=self.job.name,
                    run_dir=run_dir,
                    request_log=request_log,
                    should_stop=lambda: self.machine.should_stop() or not served.alive(),
                )
            finally:
                if sampler:
                    sampler.stop()
                    # Kept whatever HELM did: the peak matters most when the entry ran out.
                    self.recorder.record_resources(gpu_peak_bytes=sampler.peak_bytes)
            detail.extend(filter(None, [scored.fit.detail]))
        if scored.log_error is not None:
            raise scored.log_error
        self.recorder.record_gateway_stats(scored.stats, request_log)
        self.recorder.record_metrics(scored.metrics())
        return self._verdict(served, scored.helm, scored.stats, sampler, scored.fit, scored.runaway)

    def _verdict(
        self,
        served: engine.RunningContainer,
        helm: HelmRun,
        stats: GatewayStats,
        sampler: GpuMemorySampler | None,
        fit: Fit,
        runaway: str | None,
    ) -> Ending:
        state = served.state()
        if state.get("Status") == engine.REMOVED:
            return Ending(Status.CRASHED, f"during evaluation: {_VANISHED}")
        if state.get("Status") in ("exited", "dead"):
            failure = classify_container(
                state.get("ExitCode"), bool(state.get("OOMKilled")), served.logs()
            )
            return Ending(failure.status, f"during evaluation: {failure.reason}")
        budget = TRACKS[self.options.track].gpu_bytes
        if sampler and (over := sampler.over_budget(budget)):
            return Ending(over.status, over.reason)
        scored = [run for run in helm.runs if run.ok]
        if runaway is not None:
            return Ending(
                Status.EVAL_FAILED,
                f"{runaway}; {len(scored)} of {len(helm.runs)} run(s) had finished",
            )
        if helm.killed or helm.stopped:
            # Only runs HELM finished count, but a run it never reached must not go unnoticed.
            return Ending(
                Status.EVAL_FAILED,
                f"{helm.error}; {len(scored)} of {len(helm.runs)} run(s) had finished",
            )
        if helm.timed_out:
            return Ending(
                Status.EVAL_TIMEOUT,
                f"HELM was stopped {self.options.helm_grace_s:.0f} s past the deadline; "
                f"{len(scored)} run(s) had finished",
            )
        if not scored and not fit.refused:
            why = helm.error or "; ".join(sorted({str(r.error) for r in helm.runs})) or "no runs"
            return Ending(Status.EVAL_FAILED, f"HELM scored no run: {why}")
        failed = len(helm.runs) - len(scored)
        summary = f"{len(scored)} run(s) scored" + (f", {failed} failed" if failed else "")
        if fit.refused:
            summary += f", {fit.summary()}"
        if stats.unanswered:
            return Ending(
                Status.EVAL_TIMEOUT,
                f"{summary}; {stats.unanswered} request(s) unanswered by the deadline score 0",
            )
        return Ending(Status.SCORED, f"{summary}; {stats.answered} request(s) answered")
