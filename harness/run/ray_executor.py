"""The fleet executor: every entry a Ray task on whichever GPU machine of the cluster is free.

    harness run ENTRIES --track 4090 --stage open --out results/ --executor ray --ray-address auto

Each entry is a task asking for one GPU, no CPU and one unit of its track's resource (a node
declares `--num-gpus 4 --resources '{"4090": 4}'`). The task runs `pipeline.evaluate_entry` on its
node, with that node's Docker engine and HELM environment, into a `BufferedRecorder`, and returns
the ending and the records; the driver replays them into its store, which nothing else writes.

Nodes need no storage in common with the driver (shipping.py): the entry and the files its
options name travel to the node with the task, the node works in a folder of its own
(shipping.NODE_DIR_ENV, default: the system's temporary folder), and the entry's logs and HELM
folder travel back with the result, through Ray's object store, compressed and capped; the driver
unpacks them into its RESULTS_DIR, the only copy. With `shared_storage` (`--shared-storage`)
nothing travels: entries and results are read and written at the driver's paths, which every
node must then see (NFS).

While it evaluates, the task sends a heartbeat every `heartbeat_s` to an actor on the driver's
machine, unless a process in its HELM folder is stopped by a signal (frozen); the service renews
the entry's lease from them (`heartbeats()`; service/leases.py), so a node that dies or an
evaluation that freezes lets the lease lapse. `cancel(name)` stops one entry on its node: the task
cancelled, its processes killed, its containers removed (each carries its task's token).

Failures, and who covers them:

    a node dies mid-entry      Ray re-runs the task elsewhere (`retries`; an entry that fails
                               on its own is an ending, never retried). Its records died with it.
                               Out of retries (the service asks none: its leases re-queue the
                               entry), the future raises EntryLost.
    its containers             outlive the node (they belong to dockerd): each carries the node's
                               id, and whatever task next runs on that engine removes the ones of
                               nodes the cluster no longer has; `start` removes all of the run's
    no node can ever run it    `start` fails at once (Ray would wait forever)
    the head or driver dies    in-flight tasks are lost; the store is the ledger: the next
                               `harness run` resubmits what has no result and skips what has one

Ray is an optional extra (`pip install .[ray]`, lockfiles/ray.txt): only this module imports it.
"""

from __future__ import annotations

import functools
import logging
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from harness.errors import ConfigError, EntryLost, InfrastructureError
from harness.infra import docker as engine
from harness.run import processes, shipping
from harness.run.executor import Heartbeat, Node
from harness.run.options import RunOptions
from harness.run.pipeline import Ending, EntryJob, Machine, evaluate_entry
from harness.run.recorder import BufferedRecorder, Recorder
from harness.store import RUN_LABEL

log = logging.getLogger("harness.run")
NODE_LABEL = "org.harness.ray-node"
TASK_LABEL = "org.harness.ray-task"  # the token of the task that started the container
# Node deaths a task survives; an entry's own failure is an ending, not an exception, so this
# only ever re-runs work a dead machine took with it.
MAX_RETRIES = 3
HEARTBEAT_S = 5.0
# Resources Ray keeps for its own accounting: not what an organizer gave a node.
_BOOKKEEPING = frozenset({"memory", "object_store_memory"})

Evaluate = Callable[[EntryJob, Recorder, Machine], Ending]
T = TypeVar("T")


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "--executor ray needs Ray: make ray (or pip install --require-hashes -r "
            "lockfiles/ray.txt)"
        ) from None
    return ray


def remove_orphans(sdk: Any, run_id: str, alive: set[str] | None) -> int:
    """Remove the run's containers left by nodes not in `alive` (None: every one of the run's)."""
    return engine.remove_containers(
        sdk,
        {"label": f"{RUN_LABEL}={run_id}"},
        keep=lambda container: alive is not None and container.labels.get(NODE_LABEL) in alive,
    )


def _alive_nodes(ray: Any) -> set[str]:
    return {str(node["NodeID"]) for node in ray.nodes() if node.get("Alive")}


@functools.cache
def _engine() -> Any:
    """This worker process's Docker client (one per process, reused by its tasks)."""
    return engine.client()


class _Heartbeats:
    """The actor on the driver's machine that tasks send their heartbeats to; it stamps them
    with its own clock, so the nodes' clocks do not matter."""

    def __init__(self) -> None:
        self._beats: dict[str, Heartbeat] = {}

    def beat(self, token: str, where: str) -> None:
        self._beats[token] = Heartbeat(where, time.time())

    def forget(self, token: str) -> None:
        self._beats.pop(token, None)

    def beats(self) -> dict[str, Heartbeat]:
        return dict(self._beats)


@dataclass(frozen=True)
class _Task:
    """What travels with a job besides it."""

    token: str  # this submission of the job: its heartbeats, folder and containers
    board: Any  # the _Heartbeats actor
    heartbeat_s: float
    inputs: bytes | None  # shipping.ship_inputs; None: storage shared with the driver


@contextmanager
def _beating(task: _Task, folder: Path, where: str) -> Iterator[None]:
    """Heartbeats while the body runs, none while a process working in `folder` is frozen."""
    stop = threading.Event()

    def beat() -> None:
        while True:
            if not processes.frozen(processes.entry_processes(folder)):
                task.board.beat.remote(task.token, where)
            if stop.wait(task.heartbeat_s):
                return

    thread = threading.Thread(target=beat, name="heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _run_on_node(
    job: EntryJob, evaluate: Evaluate, task: _Task
) -> tuple[Ending, BufferedRecorder, bytes | None]:
    """The task body, on the node Ray picked: the ending, the records and (without shared
    storage) the entry's logs and HELM folder, packed."""
    import ray

    sdk = _engine()
    node = ray.get_runtime_context().get_node_id()
    remove_orphans(sdk, job.run_id, _alive_nodes(ray))
    # Ray hands out the GPU (CUDA_VISIBLE_DEVICES); a node without an NVIDIA runtime (a test
    # cluster declaring GPUs it has not) serves on the CPU.
    gpus = tuple(int(g) for g in ray.get_gpu_ids()) if engine.has_nvidia_runtime(sdk) else ()
    machine = Machine(
        sdk,
        allow_network=job.options.allow_network,
        gpus=gpus,
        labels={NODE_LABEL: node, TASK_LABEL: task.token},
    )
    recorder = BufferedRecorder()
    where = _where(socket.gethostname(), node)
    if task.inputs is None:
        with _beating(task, job.helm_dir, where):
            return evaluate(job, recorder, machine), recorder, None
    work = shipping.node_folder(job.run_id, task.token)
    try:
        local = shipping.receive_inputs(job, task.inputs, work)
        with _beating(task, local.helm_dir, where):
            ending = evaluate(local, recorder, machine)
        results = shipping.ship_results(local)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    recorder.relocate(local.options.out, job.options.out)
    return ending, recorder, results


def _where(host: str, node: str) -> str:
    """A node as heartbeats and the admin page name it."""
    return f"{host} (Ray node {node[:12]})"


def _task_on_node(task: Callable[[int | None], T]) -> T:
    """A `submit_task` body, on the node Ray picked: the task gets the GPU Ray handed out (None
    on a node without an NVIDIA runtime, as `_run_on_node` serves)."""
    import ray

    gpus = [int(g) for g in ray.get_gpu_ids()] if engine.has_nvidia_runtime(_engine()) else []
    return task(gpus[0] if gpus else None)


def _clean_node(run_id: str) -> int:
    return remove_orphans(_engine(), run_id, None)


def _stop_on_node(job: EntryJob, token: str, shared_storage: bool) -> None:
    """Stop one task's entry on this node: its processes killed, its containers removed (and
    those of nodes the cluster no longer has)."""
    import ray

    folder = job.helm_dir if shared_storage else shipping.node_folder(job.run_id, token)
    processes.kill(processes.entry_processes(folder))
    if not shared_storage:  # a task cancelled by force leaves its folder behind
        shutil.rmtree(folder, ignore_errors=True)
    sdk = _engine()
    engine.remove_containers(sdk, {"label": f"{TASK_LABEL}={token}"})
    remove_orphans(sdk, job.run_id, _alive_nodes(ray))


class RayExecutor:
    """Evaluates entries as Ray tasks on a cluster; see the module docstring."""

    def __init__(
        self,
        address: str | None = "auto",
        *,
        evaluate: Evaluate = evaluate_entry,
        shared_storage: bool = False,
        retries: int = MAX_RETRIES,
        heartbeat_s: float = HEARTBEAT_S,
    ) -> None:
        self.address = address
        self.evaluate = evaluate
        self.shared_storage = shared_storage
        self.retries = retries
        self.heartbeat_s = heartbeat_s
        self._ray: Any = None
        self._refs: list[Any] = []
        self._run_id = ""
        self._resources: dict[str, float] = {}
        self._task: Any = None
        self._board: Any = None
        # What runs: name -> (job, token, task's ref); the lock: Ray calls back in its threads.
        self._running: dict[str, tuple[EntryJob, str, Any]] = {}
        self._lock = threading.Lock()

    def start(self, options: RunOptions, run_id: str) -> None:
        ray = self._ray = _ray()
        if not ray.is_initialized():
            try:
                ray.init(address=self.address, log_to_driver=False)
            except (ConnectionError, RuntimeError) as exc:
                raise InfrastructureError(
                    f"no Ray cluster at {self.address!r}: {exc} (start one with `ray start --head`)"
                ) from exc
        self._run_id = run_id
        self._resources = {"GPU": 1, options.track: 1}
        self._check_satisfiable(options.track)
        self._clean_nodes()
        self._task = ray.remote(_run_on_node)
        if self._board is None:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            # Here, on the driver's machine: a heartbeat must not die with a GPU node.
            here = NodeAffinitySchedulingStrategy(
                ray.get_runtime_context().get_node_id(), soft=False
            )
            actor = ray.remote(num_cpus=0)(_Heartbeats)
            self._board = actor.options(scheduling_strategy=here).remote()

    def _check_satisfiable(self, track: str) -> None:
        """Ray would queue a task no node can run forever; say so now instead."""
        nodes = [node for node in self._ray.nodes() if node.get("Alive")]
        fits = [
            node
            for node in nodes
            if all(node.get("Resources", {}).get(k, 0) >= v for k, v in self._resources.items())
        ]
        if not fits:
            raise InfrastructureError(
                f"no node of the Ray cluster ({len(nodes)} alive) offers a GPU and the "
                f"{track!r} resource that a track-{track} entry needs: start its GPU machines "
                f"with `ray start --address HEAD:6379 --num-gpus N --resources "
                f"'{{\"{track}\": N}}'`"
            )

    def _clean_nodes(self) -> None:
        """Remove every container of this run on every node: none of it runs yet (or still)."""
        ray = self._ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        clean = ray.remote(num_cpus=0)(_clean_node)
        refs = [
            clean.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)
            ).remote(self._run_id)
            for node in _alive_nodes(ray)
        ]
        for ref in refs:
            # A node that just died may still be listed alive: it has nothing left to clean.
            with suppress(ray.exceptions.TaskUnschedulableError, ray.exceptions.NodeDiedError):
                ray.get(ref, timeout=120)

    def submit(self, job: EntryJob, recorder: Recorder) -> Future[Ending]:
        if self._task is None:
            raise RuntimeError("RayExecutor.start() was not called")
        done: Future[Ending] = Future()
        try:
            inputs = None if self.shared_storage else shipping.ship_inputs(job)
        except ConfigError as exc:  # too big to send: nothing runs
            done.set_exception(exc)
            return done
        token = uuid.uuid4().hex
        task = self._task.options(
            num_gpus=1,
            num_cpus=0,
            resources={job.options.track: 1},
            max_retries=self.retries,
            retry_exceptions=False,
            name=f"harness:{job.name}",
        )
        ref = task.remote(job, self.evaluate, _Task(token, self._board, self.heartbeat_s, inputs))
        self._refs.append(ref)
        with self._lock:
            self._running[job.name] = (job, token, ref)

        def replay(result: Future[tuple[Ending, BufferedRecorder, bytes | None]]) -> None:
            with self._lock:
                if self._running.get(job.name, (None, None))[1] == token:
                    del self._running[job.name]
            with suppress(Exception):  # the driver's actor is gone: nothing to forget
                self._board.forget.remote(token)
            try:
                ending, records, results = result.result()
                if results is not None:
                    shipping.receive_results(job, results)
                records.replay(recorder)
            except BaseException as exc:
                error = _translate(exc)
                if isinstance(error, EntryLost):
                    self._stop(job, token)  # what its node left where it still can be reached
                done.set_exception(error)
                return
            done.set_result(ending)

        ref.future().add_done_callback(replay)
        return done

    def submit_task(
        self, task: Callable[[int | None], T], *, track: str | None = None
    ) -> Future[T]:
        """`task(gpu)` as a Ray task asking what an entry's evaluation asks: one GPU, no CPU,
        one unit of the track's resource (`track`, default the one `start` was given)."""
        if self._task is None:
            raise RuntimeError("RayExecutor.start() was not called")
        resources = {k: v for k, v in self._resources.items() if k != "GPU"}
        remote = self._ray.remote(_task_on_node).options(
            num_gpus=1,
            num_cpus=0,
            resources={track: 1} if track else resources,
            max_retries=MAX_RETRIES,
            retry_exceptions=False,
        )
        ref = remote.remote(task)
        self._refs.append(ref)
        done: Future[T] = Future()

        def result(finished: Future[T]) -> None:
            try:
                done.set_result(finished.result())
            except BaseException as exc:
                done.set_exception(_translate(exc))

        ref.future().add_done_callback(result)
        return done

    def heartbeats(self) -> dict[str, Heartbeat]:
        """Each running entry's last heartbeat; one Ray has not started yet (waiting for a
        node) is renewed here: nothing of it can freeze yet."""
        with self._lock:
            running = dict(self._running)
        if not running:
            return {}
        beats = self._ray.get(self._board.beats.remote(), timeout=30)
        return {
            name: beats.get(token) or Heartbeat("waiting for a Ray node", time.time())
            for name, (_, token, _) in running.items()
        }

    def nodes(self) -> list[Node]:
        """Every node Ray knows (a dead one until Ray forgets it), with the last heartbeat of
        an entry running there."""
        if self._ray is None:
            return []
        beats = self._ray.get(self._board.beats.remote(), timeout=30).values()
        found = []
        for node in self._ray.nodes():
            name = _where(node.get("NodeManagerHostname", "?"), str(node["NodeID"]))
            found.append(
                Node(
                    name=name,
                    alive=bool(node.get("Alive")),
                    resources={
                        key: value
                        for key, value in node.get("Resources", {}).items()
                        if key not in _BOOKKEEPING and not key.startswith("node:")
                    },
                    heartbeat_at=max((b.at for b in beats if b.where == name), default=None),
                    note=node.get("DeathReasonMessage") or "",
                )
            )
        return found

    def cancel(self, name: str) -> None:
        with self._lock:
            found = self._running.get(name)
        if found is None:
            return
        job, token, ref = found
        with suppress(Exception):  # it ended meanwhile
            self._ray.cancel(ref, force=True)
        self._stop(job, token)

    def _stop(self, job: EntryJob, token: str) -> None:
        """Stop one task's entry on every live node (which one runs it is not known here),
        without waiting; a node that died keeps its containers until it is back (its next task
        removes them, as orphans)."""
        ray = self._ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        try:
            stop = ray.remote(num_cpus=0)(_stop_on_node)
            for node in _alive_nodes(ray):
                stop.options(
                    scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)
                ).remote(job, token, self.shared_storage)
        except Exception:  # the cluster is away: its nodes' next tasks remove the orphans
            log.warning("could not stop %s on the Ray cluster", job.name, exc_info=True)

    def interrupt(self) -> None:
        for ref in self._refs:
            with suppress(Exception):
                self._ray.cancel(ref, force=True)
        with suppress(Exception):
            self._clean_nodes()

    def close(self) -> None:
        self._refs.clear()


def _translate(exc: BaseException) -> BaseException:
    """A task that ran out of retries: the fleet failed, not the entry."""
    name = type(exc).__name__
    if name in ("NodeDiedError", "WorkerCrashedError", "OwnerDiedError", "TaskCancelledError"):
        log.warning("a Ray task was lost: %s: %s", name, exc)
        lost = EntryLost(f"its Ray task was lost ({name})")
        lost.__cause__ = exc
        return lost
    return exc
