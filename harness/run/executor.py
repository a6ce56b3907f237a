"""Where entries are evaluated: the seam between the driver (`harness run`, `harness serve`) and
the machines that build, serve and score entries.

    Executor.start(options, run_id)     prepare the machines (leftovers of a killed run removed)
    Executor.submit(job, recorder)      evaluate one entry somewhere -> Future[Ending]
    TaskExecutor.submit_task(task)      any other job on one GPU: task(gpu) -> Future[result]
    Executor.interrupt()                stop everything in flight (its containers removed)
    Executor.cancel(name)               stop one entry wherever it runs (its containers removed)
    Executor.heartbeats()               the last sign of life of entries running elsewhere
    Executor.nodes()                    the fleet's machines, idle ones too (admin page)
    Executor.close()

`LocalExecutor` (the default) runs `pipeline.evaluate_entry` in threads against this machine's
Docker engine. The driver owns the results store; an executor only hands records to the recorder
it is given.

`submit_task` is the seam for work that is not one evaluation (`harness reproduce --top` trains,
builds and scores whole entries): `task(gpu)` runs where the executor puts it, with the GPU it
holds for the task (None: the machine has none). A Ray task's callable and result are pickled.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import NamedTuple, Protocol, TypeVar

from harness.infra import docker as engine
from harness.run.options import RunOptions
from harness.run.pipeline import Ending, EntryJob, Machine, evaluate_entry
from harness.run.recorder import Recorder

T = TypeVar("T")
Task = Callable[[int | None], T]


class Heartbeat(NamedTuple):
    """An entry's last sign of life: where it runs, and when (time.time() of this machine)."""

    where: str
    at: float


class Node(NamedTuple):
    """A machine of a fleet, idle or not, for the admin page."""

    name: str  # as its entries' heartbeats name it (Heartbeat.where)
    alive: bool
    resources: dict[str, float]  # what it offers tasks: GPU, CPU, its tracks
    heartbeat_at: float | None  # the last heartbeat of an entry running there (None: none runs)
    note: str  # why it died, where the fleet says


class Executor(Protocol):
    def start(self, options: RunOptions, run_id: str) -> None: ...

    def submit(self, job: EntryJob, recorder: Recorder) -> Future[Ending]: ...

    def interrupt(self) -> None: ...

    def cancel(self, name: str) -> None:
        """Stop the entry `name` (its job's name) wherever it runs, never raising; its future
        then ends with whatever its pipeline makes of it."""
        ...

    def heartbeats(self) -> dict[str, Heartbeat]:
        """Entries running on other machines, by name. Entries on this machine are not listed:
        whoever watches them looks at their processes here (run/processes.py)."""
        ...

    def nodes(self) -> list[Node]:
        """The fleet's machines, idle and dead ones too; none for this machine's executor (its
        worker slots are the queue's)."""
        ...

    def close(self) -> None: ...


class TaskExecutor(Executor, Protocol):
    """An executor that also runs tasks (both below do). `shared_storage`: its tasks see this
    machine's files at their paths; where they do not, what a task reads and writes travels
    with it (run/shipping.py)."""

    shared_storage: bool

    def submit_task(self, task: Task[T], *, track: str | None = None) -> Future[T]:
        """`task(gpu)` on one GPU of `track`'s machines (default: the track `start` was
        given)."""
        ...


class LocalExecutor:
    """Evaluates up to `jobs` entries at once on this machine's Docker engine."""

    shared_storage = True  # this machine's

    def __init__(self, jobs: int = 1) -> None:
        self.jobs = jobs
        self.machine: Machine | None = None
        self._pool = ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="entry")
        self._jobs: dict[str, EntryJob] = {}

    def start(self, options: RunOptions, run_id: str) -> None:
        with engine.engine_calls("preparing this machine"):
            self.machine = Machine(
                engine.client(), allow_network=options.allow_network, gpus=options.gpus
            )
            self.machine.remove_stale_containers(run_id)

    def submit(self, job: EntryJob, recorder: Recorder) -> Future[Ending]:
        if self.machine is None:
            raise RuntimeError("LocalExecutor.start() was not called")
        self._jobs[job.name] = job
        return self._pool.submit(evaluate_entry, job, recorder, self.machine)

    def submit_task(self, task: Task[T], *, track: str | None = None) -> Future[T]:
        if self.machine is None:
            raise RuntimeError("LocalExecutor.start() was not called")
        machine = self.machine

        def on_a_gpu() -> T:
            with machine.gpus.lease(machine.stopping) as gpu:
                return task(gpu)

        return self._pool.submit(on_a_gpu)

    def cancel(self, name: str) -> None:
        # Its health wait or HELM run then fails fast (a build under way runs to its end).
        if self.machine is not None and (job := self._jobs.get(name)) is not None:
            self.machine.remove_container(job.container)

    def heartbeats(self) -> dict[str, Heartbeat]:
        return {}

    def nodes(self) -> list[Node]:
        return []

    def interrupt(self) -> None:
        # Removing the containers makes whatever the workers wait on fail fast.
        if self.machine is not None:
            self.machine.stop()
            self.machine.close()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        self._pool.shutdown()
        if self.machine is not None:
            self.machine.close()
