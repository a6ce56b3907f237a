"""The Ray executor on a real multi-node Ray cluster on this machine (ray.cluster_utils.Cluster:
a head and 3 nodes, each declaring one GPU and the 4090 track, all sharing this Docker engine).

No GPU here: nodes declare GPUs they have not, so entries are stand-ins (a real container on the
node's engine, held for a while, steps recorded through the recorder) instead of the full
build/serve/HELM pipeline, which test_run.py covers on the local executor. The executors run with
--shared-storage (the stand-ins mark their starts in the driver's RESULTS_DIR);
test_fleet_storage.py runs the fleet without it. Skipped with the reason when Ray is not
installed; under CI=true that fails instead.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from harness.errors import InfrastructureError
from harness.run.driver import run_entries
from harness.run.options import RunOptions
from harness.run.pipeline import Ending, EntryJob, Machine
from harness.run.recorder import Recorder
from harness.store import RUN_LABEL, Status, Step, Store, results_id
from tests._ray import gpu_node, import_ray, ray_cluster
from tests.conftest import TEST_LABELS

ray = import_ray()

pytestmark = pytest.mark.docker

HOLD_S = 6.0


def stand_in(job: EntryJob, recorder: Recorder, machine: Machine) -> Ending:
    """An entry: a real container named and labelled as the pipeline does, held HOLD_S seconds."""
    step = recorder.start_step(Step.SERVE, at=time.time())
    node = machine.labels["org.harness.ray-node"]
    marker = job.options.out / "started" / f"{job.name}.{node}"
    marker.parent.mkdir(parents=True, exist_ok=True)
    machine.remove_container(job.container)
    machine.sdk.containers.run(
        os.environ.get("HARNESS_BASE_IMAGE", "harness-base:bookworm"),
        ["sleep", "300"],
        detach=True,
        name=job.container,
        labels={RUN_LABEL: job.run_id, **machine.labels, **TEST_LABELS},
    )
    marker.write_text(json.dumps({"pid": os.getpid()}))
    time.sleep(HOLD_S)
    machine.remove_container(job.container)
    recorder.finish_step(step, ok=True, detail=f"on {node}", log_path=None, at=time.time())
    return Ending(Status.SCORED, f"scored on {node}")


@pytest.fixture(scope="module")
def cluster(base_image: str) -> Any:
    with ray_cluster(__name__, *[gpu_node()] * 3) as (cluster, _):
        yield cluster


def _entries(root: Path, names: list[str]) -> Path:
    for name in names:
        (root / "entries" / name).mkdir(parents=True)
    return root / "entries"


def test_entries_spread_over_nodes_and_one_result_each_when_a_node_dies(
    cluster: Any, tmp_path: Path, docker_client: Any
) -> None:
    from harness.run.ray_executor import RayExecutor

    entries = _entries(tmp_path, ["team-a", "team-b", "team-c"])
    options = RunOptions(track="4090", stage="open", out=tmp_path / "results", run_specs="offline")
    started = options.out / "started"
    workers = {node.node_id: node for node in cluster.worker_nodes}

    import threading

    def kill_one_node_mid_entry() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            markers = list(started.glob("*")) if started.exists() else []
            if len(markers) == 3:
                victim = workers[markers[0].name.rsplit(".", 1)[1]]
                cluster.remove_node(victim, allow_graceful=False)
                return
            time.sleep(0.2)

    killer = threading.Thread(target=kill_one_node_mid_entry)
    killer.start()
    outcomes = run_entries(
        entries,
        options,
        executor=RayExecutor(cluster.address, evaluate=stand_in, shared_storage=True),
    )
    killer.join()

    assert sorted(o.entry for o in outcomes) == ["team-a", "team-b", "team-c"]
    assert all(o.status is Status.SCORED for o in outcomes)
    markers = [m.name for m in started.glob("*")]
    assert len(markers) == 4, markers  # three first runs, one re-run after the node died
    assert len({m.rsplit(".", 1)[1] for m in markers}) == 3  # every node had an entry
    with Store(options.out) as store:
        assert set(store.results("open")) == {"team-a", "team-b", "team-c"}
        for name in ("team-a", "team-b", "team-c"):
            serve = store.latest_steps(name, "open")[Step.SERVE]
            assert serve.detail.startswith("on ")
    # The dead node's container outlived it; the re-run removed it as an orphan.
    left = docker_client.containers.list(
        all=True, filters={"label": f"{RUN_LABEL}={results_id(options.out)}"}
    )
    assert left == []

    # The store is the ledger: a second driver re-runs nothing that finished.
    for marker in started.glob("*"):
        marker.unlink()
    again = run_entries(
        entries,
        options,
        executor=RayExecutor(cluster.address, evaluate=stand_in, shared_storage=True),
    )
    assert all(o.skipped for o in again)
    assert list(started.glob("*")) == []


def test_a_track_no_node_offers_fails_at_once(cluster: Any, tmp_path: Path) -> None:
    from harness.run.ray_executor import RayExecutor

    entries = _entries(tmp_path, ["team-a"])
    options = RunOptions(track="A100", stage="open", out=tmp_path / "results", run_specs="offline")
    began = time.monotonic()
    with pytest.raises(InfrastructureError, match="'A100' resource"):
        run_entries(
            entries,
            options,
            executor=RayExecutor(cluster.address, evaluate=stand_in, shared_storage=True),
        )
    assert time.monotonic() - began < 30
