"""The fleet executor: every entry a Ray task on whichever GPU machine of the cluster is free.

    harness run ENTRIES --track 4090 --stage open --out results/ --executor ray --ray-address auto

Each entry is a task asking for one GPU, no CPU and one unit of its track's resource (a node
declares `--num-gpus 4 --resources '{"4090": 4}'`). The task runs `pipeline.evaluate_entry` on its
node, with that node's Docker engine and HELM environment, into a `BufferedRecorder`, and returns
the ending and the records; the driver replays them into its store, which nothing else writes.

Failures, and who covers them:

    a node dies mid-entry      Ray re-runs the task elsewhere (`max_retries`; an entry that fails
                               on its own is an ending, never retried). Its records died with it.
    its containers             outlive the node (they belong to dockerd): each carries the node's
                               id, and whatever task next runs on that engine removes the ones of
                               nodes the cluster no longer has; `start` removes all of the run's
    no node can ever run it    `start` fails at once (Ray would wait forever)
    the head or driver dies    in-flight tasks are lost; the store is the ledger: the next
                               `harness run` resubmits what has no result and skips what has one

Ray is an optional extra (`pip install .[ray]`, lockfiles/ray.txt): only this module imports it.
Results paths (RESULTS_DIR) must be on storage every node sees at the same path.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from concurrent.futures import Future
from contextlib import suppress
from typing import Any, TypeVar

from harness.errors import ConfigError, InfrastructureError
from harness.infra import docker as engine
from harness.run.options import RunOptions
from harness.run.pipeline import Ending, EntryJob, Machine, evaluate_entry
from harness.run.recorder import BufferedRecorder, Recorder
from harness.store import RUN_LABEL

NODE_LABEL = "org.harness.ray-node"
# Node deaths a task survives; an entry's own failure is an ending, not an exception, so this
# only ever re-runs work a dead machine took with it.
MAX_RETRIES = 3

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


def _run_on_node(job: EntryJob, evaluate: Evaluate) -> tuple[Ending, BufferedRecorder]:
    """The task body, on the node Ray picked."""
    import ray

    sdk = _engine()
    node = ray.get_runtime_context().get_node_id()
    remove_orphans(sdk, job.run_id, _alive_nodes(ray))
    # Ray hands out the GPU (CUDA_VISIBLE_DEVICES); a node without an NVIDIA runtime (a test
    # cluster declaring GPUs it has not) serves on the CPU.
    gpus = tuple(int(g) for g in ray.get_gpu_ids()) if engine.has_nvidia_runtime(sdk) else ()
    machine = Machine(
        sdk, allow_network=job.options.allow_network, gpus=gpus, labels={NODE_LABEL: node}
    )
    recorder = BufferedRecorder()
    return evaluate(job, recorder, machine), recorder


def _task_on_node(task: Callable[[int | None], T]) -> T:
    """A `submit_task` body, on the node Ray picked: the task gets the GPU Ray handed out (None
    on a node without an NVIDIA runtime, as `_run_on_node` serves)."""
    import ray

    gpus = [int(g) for g in ray.get_gpu_ids()] if engine.has_nvidia_runtime(_engine()) else []
    return task(gpus[0] if gpus else None)


def _clean_node(run_id: str) -> int:
    return remove_orphans(_engine(), run_id, None)


class RayExecutor:
    """Evaluates entries as Ray tasks on a cluster; see the module docstring."""

    def __init__(
        self, address: str | None = "auto", *, evaluate: Evaluate = evaluate_entry
    ) -> None:
        self.address = address
        self.evaluate = evaluate
        self._ray: Any = None
        self._refs: list[Any] = []
        self._run_id = ""
        self._resources: dict[str, float] = {}
        self._task: Any = None

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
        task = self._task.options(
            num_gpus=1,
            num_cpus=0,
            resources={job.options.track: 1},
            max_retries=MAX_RETRIES,
            retry_exceptions=False,
            name=f"harness:{job.name}",
        )
        ref = task.remote(job, self.evaluate)
        self._refs.append(ref)
        done: Future[Ending] = Future()

        def replay(result: Future[tuple[Ending, BufferedRecorder]]) -> None:
            try:
                ending, records = result.result()
                records.replay(recorder)
            except BaseException as exc:
                done.set_exception(_translate(exc))
                return
            done.set_result(ending)

        ref.future().add_done_callback(replay)
        return done

    def submit_task(self, task: Callable[[int | None], T]) -> Future[T]:
        """`task(gpu)` as a Ray task asking what an entry's evaluation asks: one GPU, no CPU,
        one unit of the track's resource."""
        if self._task is None:
            raise RuntimeError("RayExecutor.start() was not called")
        remote = self._ray.remote(_task_on_node).options(
            num_gpus=1,
            num_cpus=0,
            resources={k: v for k, v in self._resources.items() if k != "GPU"},
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
        return InfrastructureError(f"the Ray task was lost: {name}: {exc}")
    return exc
