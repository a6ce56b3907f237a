"""Where the per-entry pipeline writes what happens, as it happens (`at`: time.time()):

StoreRecorder      straight into the results store (the local executor, the service)
BufferedRecorder   picklable records, replayed into a StoreRecorder by the driver
                   (a Ray worker, which cannot reach the store; `relocate` moves their log
                   paths from the node's results folder to the driver's)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from harness.store import Attempt, FindingLike, GatewayStats, Metric, Step, Store


class Recorder(Protocol):
    """Where the pipeline writes its steps and results (`at`: when it happened, time.time())."""

    def start_step(self, step: Step, at: float) -> int: ...

    def finish_step(
        self, step_id: int, *, ok: bool, detail: str, log_path: Path | None, at: float
    ) -> None: ...

    def record_findings(self, findings: Sequence[FindingLike]) -> None: ...

    def record_metrics(self, metrics: Sequence[Metric]) -> None: ...

    def record_gateway_stats(self, stats: GatewayStats, log_path: Path) -> None: ...

    def record_resources(
        self,
        *,
        image_bytes: int | None = None,
        gpu_peak_bytes: int | None = None,
        image_id: str | None = None,
    ) -> None: ...


class StoreRecorder:
    """Writes one attempt's records straight into the results store."""

    def __init__(
        self,
        store: Store,
        attempt: Attempt,
        on_progress: Callable[[str, str], None] = lambda entry, step: None,
    ) -> None:
        self.store = store
        self.attempt = attempt
        self.on_progress = on_progress

    def start_step(self, step: Step, at: float) -> int:
        self.on_progress(self.attempt.entry, step.value)
        return self.store.start_step(self.attempt, step, at=at)

    def finish_step(
        self, step_id: int, *, ok: bool, detail: str, log_path: Path | None, at: float
    ) -> None:
        self.store.finish_step(step_id, ok=ok, detail=detail, log_path=log_path, at=at)

    def record_findings(self, findings: Sequence[FindingLike]) -> None:
        self.store.record_findings(self.attempt, findings)

    def record_metrics(self, metrics: Sequence[Metric]) -> None:
        self.store.record_metrics(self.attempt, metrics)

    def record_gateway_stats(self, stats: GatewayStats, log_path: Path) -> None:
        self.store.record_gateway_stats(self.attempt, stats, log_path)

    def record_resources(
        self,
        *,
        image_bytes: int | None = None,
        gpu_peak_bytes: int | None = None,
        image_id: str | None = None,
    ) -> None:
        self.store.record_resources(
            self.attempt.entry,
            self.attempt.stage,
            image_bytes=image_bytes,
            gpu_peak_bytes=gpu_peak_bytes,
            image_id=image_id,
        )


@dataclass
class BufferedRecorder:
    """Keeps the calls as picklable records; `replay` hands them to another recorder later."""

    calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = field(default_factory=list)

    def _keep(self, method: str, *args: Any, **kwargs: Any) -> None:
        self.calls.append((method, args, kwargs))

    def start_step(self, step: Step, at: float) -> int:
        self._keep("start_step", step, at)
        return len(self.calls) - 1  # a step id is the index of its start record

    def finish_step(
        self, step_id: int, *, ok: bool, detail: str, log_path: Path | None, at: float
    ) -> None:
        self._keep("finish_step", step_id, ok=ok, detail=detail, log_path=log_path, at=at)

    def record_findings(self, findings: Sequence[FindingLike]) -> None:
        from harness.store import Finding

        kept = [Finding(f.rule, str(f.severity), f.path, f.line, f.message) for f in findings]
        self._keep("record_findings", kept)

    def record_metrics(self, metrics: Sequence[Metric]) -> None:
        self._keep("record_metrics", list(metrics))

    def record_gateway_stats(self, stats: GatewayStats, log_path: Path) -> None:
        self._keep("record_gateway_stats", stats, log_path)

    def record_resources(
        self,
        *,
        image_bytes: int | None = None,
        gpu_peak_bytes: int | None = None,
        image_id: str | None = None,
    ) -> None:
        self._keep(
            "record_resources",
            image_bytes=image_bytes,
            gpu_peak_bytes=gpu_peak_bytes,
            image_id=image_id,
        )

    def relocate(self, old: Path, new: Path) -> None:
        """Log paths under `old` (a Ray node's results folder) point under `new` instead (the
        driver's, where the node's files were unpacked)."""

        def moved(path: Any) -> Any:
            if isinstance(path, Path) and path.is_relative_to(old):
                return new / path.relative_to(old)
            return path

        self.calls = [
            (method, tuple(moved(a) for a in args), {k: moved(v) for k, v in kwargs.items()})
            for method, args, kwargs in self.calls
        ]

    def replay(self, recorder: Recorder) -> None:
        step_ids: dict[int, int] = {}
        for index, (method, args, kwargs) in enumerate(self.calls):
            if method == "start_step":
                step_ids[index] = recorder.start_step(*args, **kwargs)
            elif method == "finish_step":
                recorder.finish_step(step_ids[args[0]], **kwargs)
            else:
                getattr(recorder, method)(*args, **kwargs)
