"""Ray for the tests that start a real cluster (ray.cluster_utils.Cluster) on this machine.

ray = import_ray()                # a skip where Ray is not installed; under CI, a failure
pickle_by_value(__name__)         # the test module's task functions reach the workers
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

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
