"""The top finalists' reproductions as `harness serve` runs them (service/reproductions.py holds
the queue; the service may not import this layer, so cli/serve.py hands it a QueuedReproducer),
and as `harness competition reveal` runs the same requests when no service runs.

    reproducer = QueuedReproducer(results, "closed", zip_path, instances=pack)
    reproducer.kept(request)                 (verdict, reason) finished earlier, or None
    task = reproducer.task(request, shared_storage)      -> the executor's task(gpu)
    reproducer.verdict(request, task's result, shared_storage) -> (verdict, reason)
    reproducer.stop(request)                 a stopped one: its containers removed

Each request is one finalist: its name in the results store is its submission, its zip is where
the service keeps uploads; its reproduction is top.py's (`harness reproduce --top`'s) job for one
entry, against the final phase's stage and pack, into RESULTS_DIR/reproduce/<slug>/, so the
leaderboards and the release read its verdict from there. What the reveal asked (a base image,
the training time limit, read-only mounts such as a model cache) travels in the request
(`asked()` makes it).

A reproduction stopped with the service leaves a STOPPED mark in its folder: whatever its worker
writes there afterwards (a training whose container was removed ends `train-failed`) is not kept
as its verdict; the rerun starts from an empty folder (flow.reproduce_locked), mark included.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from harness.infra import docker as engine
from harness.reproduce.flow import remove_leftovers
from harness.reproduce.options import DEFAULT_TIME_LIMIT_S, ReproduceOptions
from harness.reproduce.top import entry_result, entry_task, finished
from harness.run.executor import Task
from harness.run.health import HealthSchedule
from harness.store import entry_slug

STOPPED = ".stopped"


class Request(Protocol):
    """What a queued request says (service/reproductions.py's Reproduction, which this layer
    may not import)."""

    @property
    def track(self) -> str: ...

    @property
    def submission(self) -> str: ...

    @property
    def options(self) -> dict[str, Any]: ...


def asked(
    *,
    base_image: str | None = None,
    time_limit_s: float = DEFAULT_TIME_LIMIT_S,
    mounts: Mapping[Path, str] | None = None,
) -> dict[str, Any]:
    """What a reveal asks of its reproductions, as a request keeps it (JSON)."""
    return {
        "base_image": base_image,
        "time_limit_s": time_limit_s,
        "mounts": {str(host): inside for host, inside in (mounts or {}).items()},
    }


class QueuedReproducer:
    """service/reproductions.py's Reproducer: see the module docstring. `base_image`, the build
    limit, health schedule and memory limit are the service's (a request's base image wins)."""

    def __init__(
        self,
        results: Path,
        stage: str,
        zip_path: Callable[[str], Path],
        *,
        instances: Path | None = None,
        base_image: str | None = None,
        build_timeout_s: float = 2 * 3600,
        health: HealthSchedule | None = None,
        mem_limit: str | None = None,
    ) -> None:
        self.results, self.stage, self.zip_path, self.instances = (
            results,
            stage,
            zip_path,
            instances,
        )
        self.base_image, self.build_timeout_s, self.mem_limit = (
            base_image,
            build_timeout_s,
            mem_limit,
        )
        self.health = health or HealthSchedule()

    def options(self, request: Request) -> ReproduceOptions:
        wanted = request.options
        return ReproduceOptions(
            track=request.track,
            results=self.results,
            stage=self.stage,
            instances=self.instances,
            base_image=wanted.get("base_image") or self.base_image,
            time_limit_s=float(wanted.get("time_limit_s") or DEFAULT_TIME_LIMIT_S),
            mounts={Path(host): inside for host, inside in wanted.get("mounts", {}).items()},
            build_timeout_s=self.build_timeout_s,
            health=self.health,
            mem_limit=self.mem_limit,
        )

    def _folder(self, request: Request) -> Path:
        return self.results / "reproduce" / entry_slug(request.submission)

    def kept(self, request: Request) -> tuple[str, str] | None:
        folder = self._folder(request)
        if (folder / STOPPED).exists():
            return None
        data = finished(folder, request.submission, self.options(request))
        return None if data is None else (str(data["verdict"]), str(data.get("reason", "")))

    def task(self, request: Request, shared_storage: bool) -> Task[Any]:
        return entry_task(
            request.submission,
            self.zip_path(request.submission),
            self.options(request),
            shared_storage=shared_storage,
        )

    def verdict(self, request: Request, result: Any, shared_storage: bool) -> tuple[str, str]:
        done = entry_result(
            request.submission, self.options(request), result, shared_storage=shared_storage
        )
        return done.verdict.value, done.reason

    def stop(self, request: Request) -> None:
        folder = self._folder(request)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / STOPPED).touch()
        sdk = engine.client()
        try:
            remove_leftovers(sdk, folder)
        finally:
            sdk.close()
