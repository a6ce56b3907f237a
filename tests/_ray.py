"""Ray for the tests that start a real cluster (ray.cluster_utils.Cluster) on this machine.

ray = import_ray()                # a skip where Ray is not installed; under CI, a failure
with ray_cluster(__name__, gpu_node(), gpu_node("A100")) as (cluster, (_, a100)):
    ...                           # Ray connected to a head and those nodes; all shut down after
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.conftest import IN_CI


def import_ray() -> ModuleType:
    if IN_CI:  # CI installs Ray: a missing one fails here instead of skipping every Ray test
        return importlib.import_module("ray")
    ray: ModuleType = pytest.importorskip("ray", reason="Ray is not installed (make ray)")
    return ray


def pickle_by_value(module_name: str) -> None:
    """Ship `module_name` to the workers by value: they cannot import tests/."""
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[module_name])


def gpu_node(track: str = "4090", node_dir: Path | None = None) -> dict[str, Any]:
    """A node of one GPU for `track` (`add_node`'s arguments); `node_dir`: its own local folder,
    as on a fleet without shared storage."""
    node: dict[str, Any] = {"num_cpus": 1, "num_gpus": 1, "resources": {track: 1}}
    if node_dir is not None:
        from harness.run.shipping import NODE_DIR_ENV

        node["env_vars"] = {NODE_DIR_ENV: str(node_dir)}
    return node


@contextmanager
def ray_cluster(module_name: str, *nodes: dict[str, Any]) -> Iterator[tuple[Any, list[Any]]]:
    """A cluster of a head (one CPU, no GPU) and `nodes`, Ray connected to it, and the nodes
    added; `module_name`'s functions are shipped by value. Everything is shut down after."""
    ray = import_ray()
    from ray.cluster_utils import Cluster

    pickle_by_value(module_name)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        added = [cluster.add_node(**node) for node in nodes]
        ray.init(address=cluster.address, log_to_driver=False)
        cluster.wait_for_nodes()
        yield cluster, added
    finally:
        ray.shutdown()
        cluster.shutdown()
