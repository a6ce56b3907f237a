"""`harness run`: build, serve and score every entry under the stage's time limit.

The driver: it discovers the entries, decides from the results store what is left to do, hands
each entry to an executor (harness/run/executor.py; local threads by default) and records how each
ended. Per entry, each step is recorded as it ends:

    check ─> build ─> serve (wait until healthy) ─> evaluate (HELM through the gateway) ─> record

A failing entry is a result, not a crash: it ends with a status and a reason and the batch goes
on. An entry whose stage result is already stored is skipped unless `force`; an unfinished one
resumes (its image is reused when its build had succeeded, HELM skips the runs it finished).
Each result is recorded as soon as its entry ends, once. Every container carries the run label
and is removed when its entry ends, when the harness is interrupted (SIGINT, SIGTERM) and, for a
harness that was killed outright, on the next start. One harness at a time writes a results
folder (harness/infra/lock.py); an engine that goes away ends the batch with InfrastructureError.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Collection, Iterator, Sequence
from concurrent.futures import Future, as_completed
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from harness.checks import discover
from harness.infra.lock import command_line, hold_results_lock
from harness.run.executor import Executor, LocalExecutor
from harness.run.options import RunOptions
from harness.run.pipeline import Ending, EntryJob
from harness.run.recorder import StoreRecorder
from harness.store import (
    Attempt,
    Status,
    Step,
    StepStatus,
    Store,
    results_id,
)

__all__ = [
    "EntryOutcome",
    "RunOptions",
    "Runner",
    "exit_code",
    "run_entries",
]


@dataclass(frozen=True)
class EntryOutcome:
    entry: str
    status: Status
    reason: str
    skipped: bool = False


class _Interrupted(BaseException):
    """SIGINT or SIGTERM: stop every entry, remove their containers."""


class Runner:
    """Runs one stage over a folder of entries; `run()` returns an outcome per entry."""

    def __init__(
        self,
        entries_dir: Path,
        options: RunOptions,
        *,
        executor: Executor | None = None,
        on_progress: Callable[[str, str], None] = lambda entry, step: None,
        only: Collection[str] | None = None,
        again: Collection[str] = (),
    ) -> None:
        """`only`: the entries to consider (default: all); `again`: entries evaluated again
        though they have a result (a later tier: their image is reused)."""
        self.entries = [p for p in discover(entries_dir) if only is None or p.name in only]
        self.again = set(again)
        self.options = options
        # A bad conf or pack is a usage error before anything starts.
        pack, _ = options.scored_run_specs()
        self.instances_sha256 = pack.sha256 if pack else None
        self.store = Store(options.out)
        self.executor = executor or LocalExecutor(options.jobs)
        self.on_progress = on_progress
        self.run_id = results_id(options.out)

    def run(self) -> list[EntryOutcome]:
        with hold_results_lock(self.options.out, command_line()):
            self.executor.start(self.options, self.run_id)
            self.store.mark_interrupted()
            with self._signals():
                try:
                    pending = [self._submit(path) for path in self.entries]
                    outcomes = self._collect(pending)
                except BaseException as exc:
                    # A signal, or an engine that went away: stop what runs, leave nothing running.
                    self.executor.interrupt()
                    if isinstance(exc, _Interrupted):
                        raise KeyboardInterrupt(str(exc)) from None
                    raise
            self.executor.close()
        return outcomes

    def _collect(
        self, pending: list[EntryOutcome | tuple[Attempt, Future[Ending]]]
    ) -> list[EntryOutcome]:
        """Record each entry as it ends (a harness killed later loses none of them); the
        outcomes come back in the entries' order."""
        attempts = {item[1]: item[0] for item in pending if not isinstance(item, EntryOutcome)}
        ended = {}
        for future in as_completed(attempts):
            ended[future] = self._finish(attempts[future], future.result())
        return [item if isinstance(item, EntryOutcome) else ended[item[1]] for item in pending]

    def _submit(self, path: Path) -> EntryOutcome | tuple[Attempt, Future[Ending]]:
        name, stage = path.name, self.options.stage
        self.store.add_entry(name, path)
        previous = self.store.results(stage).get(name)
        again = name in self.again
        if previous is not None and not self.options.force and not again:
            return EntryOutcome(name, previous.status, previous.reason, skipped=True)
        built = self.store.finished_step(name, stage, Step.BUILD)
        job = EntryJob(
            name,
            path,
            self.options,
            self.run_id,
            reuse_build=built is not None
            and built.status is StepStatus.OK
            and (again or not self.options.force),
        )
        attempt = self.store.start_attempt(name, stage, instances_sha256=self.instances_sha256)
        recorder = StoreRecorder(self.store, attempt, self.on_progress)
        return attempt, self.executor.submit(job, recorder)

    def _finish(self, attempt: Attempt, ending: Ending) -> EntryOutcome:
        self.store.record_status(attempt, ending.status, ending.reason)
        if self.options.tier is not None and self.options.budget is not None:
            self.store.record_tier(
                attempt.entry, attempt.stage, self.options.tier, self.options.budget
            )
        self.on_progress(attempt.entry, ending.status.value)
        return EntryOutcome(attempt.entry, ending.status, ending.reason)

    @contextmanager
    def _signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def interrupt(signum: int, frame: FrameType | None) -> None:
            raise _Interrupted(signal.Signals(signum).name)

        previous = {s: signal.signal(s, interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def run_entries(
    entries_dir: Path,
    options: RunOptions,
    *,
    executor: Executor | None = None,
    on_progress: Callable[[str, str], None] = lambda entry, step: None,
    only: Collection[str] | None = None,
    again: Collection[str] = (),
) -> list[EntryOutcome]:
    """Run one stage over every entry of `entries_dir`; see the module docstring and Runner."""
    return Runner(
        entries_dir, options, executor=executor, on_progress=on_progress, only=only, again=again
    ).run()


def exit_code(outcomes: Sequence[EntryOutcome]) -> int:
    """0 when every entry was scored, 1 when one failed or was flagged."""
    return 0 if all(o.status is Status.SCORED for o in outcomes) else 1
