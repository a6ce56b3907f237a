"""The executor seam's tasks (`submit_task`, what `harness reproduce --top` runs its entries as):
on this machine's threads, and as Ray tasks on a real Ray cluster (ray.cluster_utils.Cluster, one
node declaring a GPU and the 4090 track; no GPU here, so the node has no NVIDIA runtime and each
task is handed None, as the evaluations are served on the CPU)."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest

from harness.errors import InfrastructureError
from harness.run.executor import LocalExecutor
from harness.run.options import RunOptions
from harness.store import results_id
from tests._ray import gpu_node, ray_cluster

pytestmark = pytest.mark.docker


def _where(gpu: int | None) -> tuple[int | None, int, str]:
    """A task: the GPU it was handed, the process and the thread it ran in."""
    return gpu, os.getpid(), threading.current_thread().name


def _node(gpu: int | None) -> str:
    """A task: the Ray node it ran on."""
    import ray

    return str(ray.get_runtime_context().get_node_id())


def _fails(gpu: int | None) -> None:
    raise ValueError(f"a task's own error (gpu {gpu})")


def test_local_tasks_run_in_the_pool_with_the_gpu_they_hold(tmp_path: Path) -> None:
    executor = LocalExecutor(2)
    options = RunOptions(track="4090", stage="open", out=tmp_path, gpus=())
    executor.start(options, results_id(tmp_path))
    futures = [executor.submit_task(_where) for _ in range(3)]
    failing = executor.submit_task(_fails)
    results = [future.result(timeout=60) for future in futures]
    executor.close()
    assert {gpu for gpu, _, _ in results} == {None}  # no GPU in the pool: none handed out
    assert {pid for _, pid, _ in results} == {os.getpid()}
    assert all(thread.startswith("entry") for _, _, thread in results)
    with pytest.raises(ValueError, match="a task's own error"):
        failing.result()


def test_ray_tasks_run_on_a_node_with_the_tracks_resource(tmp_path: Path) -> None:
    from harness.run.ray_executor import RayExecutor

    with ray_cluster(__name__, gpu_node(), gpu_node("A100")) as (cluster, (_, a100)):
        executor: Any = RayExecutor(cluster.address)
        executor.start(RunOptions(track="4090", stage="open", out=tmp_path), results_id(tmp_path))
        results = [f.result(timeout=120) for f in [executor.submit_task(_where) for _ in range(2)]]
        assert [gpu for gpu, _, _ in results] == [None, None]
        assert all(pid != os.getpid() for _, pid, _ in results)  # in the node's worker
        # The head and the GPU node, idle: alive, with what they offer and no heartbeat.
        # A task of another track than the one `start` was given runs on that track's machine.
        assert executor.submit_task(_node, track="A100").result(timeout=120) == a100.node_id
        nodes = sorted(executor.nodes(), key=lambda node: sorted(node.resources))
        assert [n.resources for n in nodes] == [
            {"CPU": 1, "GPU": 1, "4090": 1},
            {"CPU": 1, "GPU": 1, "A100": 1},
            {"CPU": 1},
        ]
        assert all(n.alive and n.heartbeat_at is None and "Ray node" in n.name for n in nodes)
        with pytest.raises(ValueError, match="a task's own error"):
            executor.submit_task(_fails).result(timeout=120)
        executor.close()
        cluster.remove_node(a100)
        cluster.wait_for_nodes()
        with pytest.raises(InfrastructureError, match="'A100' resource"):
            RayExecutor(cluster.address).start(
                RunOptions(track="A100", stage="open", out=tmp_path), results_id(tmp_path)
            )
