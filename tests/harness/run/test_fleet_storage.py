"""A Ray fleet without shared storage: a real 3-node `ray.cluster_utils.Cluster` on this machine,
each node working in a folder of its own (HARNESS_NODE_DIR), evaluating real stand-in entries
(tests/harness/data/entries/server.py: real Docker builds, containers and HELM).

The entry and its conf travel to the node, the logs and HELM outputs travel back through Ray's
object store, and the driver's RESULTS_DIR ends up the only copy: the node folders are empty
after. The nodes share this machine, so what they must not read is checked where they run: every
path the pipeline gets lies in the node's own folder. (The conf's local task file, which the conf
names by its absolute path, is read where the driver wrote it: see README, "A fleet without
NFS".) No GPU: nodes declare GPUs they have not, and entries serve on the CPU. Skipped with the
reason when Ray is not installed; under CI=true that fails instead."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from harness.run.driver import run_entries
from harness.run.pipeline import Ending, EntryJob, Machine, evaluate_entry
from harness.run.recorder import Recorder
from harness.store import RUN_LABEL, Status, Step, Store, results_id
from tests._ray import gpu_node, import_ray, ray_cluster
from tests.harness.run.test_driver import make_entry, options

ray = import_ray()

pytestmark = [pytest.mark.docker, pytest.mark.helm]


def on_this_node_only(job: EntryJob, recorder: Recorder, machine: Machine) -> Ending:
    """`evaluate_entry`, once it is checked that the job names nothing outside the node's folder."""
    from harness.run.shipping import NODE_DIR_ENV

    node_dir = Path(os.environ[NODE_DIR_ENV])
    run_specs = Path(job.options.run_specs or "")
    for path in (job.path, job.options.out, run_specs):
        assert node_dir in path.parents, f"{path} is not under {node_dir}"
    ending = evaluate_entry(job, recorder, machine)
    # What the node wrote, before it travels: the driver compares its copy with it.
    written = sorted(
        p.relative_to(job.options.out).as_posix() for p in job.options.out.rglob("*") if p.is_file()
    )
    seen = node_dir.parent / "seen" / f"{job.name}.json"
    seen.parent.mkdir(exist_ok=True)
    seen.write_text(json.dumps({"node_dir": str(node_dir), "files": written}))
    return ending


@pytest.fixture(scope="module")
def cluster(base_image: str, tmp_path_factory: pytest.TempPathFactory) -> Any:
    nodes = tmp_path_factory.mktemp("nodes")
    fleet = [gpu_node(node_dir=nodes / f"node-{index}") for index in range(3)]
    with ray_cluster(__name__, *fleet) as (cluster, _):
        yield cluster, nodes


def test_results_travel_back_and_the_driver_folder_is_the_only_copy(
    cluster: Any, tmp_path: Path, base_image: str, docker_client: Any, helm_bin: Path
) -> None:
    from harness.run.ray_executor import RayExecutor

    cluster, nodes = cluster
    entries = tmp_path / "entries"
    make_entry(entries, "good", "answer-a")
    make_entry(entries, "wrong", "answer-c")
    run = options(tmp_path, base_image)

    outcomes = run_entries(
        entries, run, executor=RayExecutor(cluster.address, evaluate=on_this_node_only)
    )

    assert {o.entry: o.status for o in outcomes} == {
        "good": Status.SCORED,
        "wrong": Status.SCORED,
    }
    seen = {p.stem: json.loads(p.read_text()) for p in (nodes / "seen").iterdir()}
    assert len({s["node_dir"] for s in seen.values()}) == 2  # each on a node of its own
    out = run.out
    with Store(out) as store:
        scores = {name: [m.value for m in ms] for name, ms in store.metrics("open").items()}
        for name, node in seen.items():
            # Everything the node wrote for the entry is here, where its records say.
            assert {"build.log", "container.log", "requests.jsonl"} <= {
                Path(f).name for f in node["files"]
            }
            for relative in node["files"]:
                assert (out / relative).is_file(), relative
            assert any(f.endswith("/stats.json") for f in node["files"])
            steps = store.latest_steps(name, "open")
            build_log, evaluate_log = steps[Step.BUILD].log_path, steps[Step.EVALUATE].log_path
            assert build_log and (out / build_log).is_file()
            assert evaluate_log and (out / evaluate_log).is_file()
    assert scores == {"good": [1.0], "wrong": [0.0]}
    # The nodes kept nothing: each task's folder went with it.
    for node_dir in {Path(s["node_dir"]) for s in seen.values()}:
        assert list((node_dir / results_id(out)).iterdir()) == []
    left = docker_client.containers.list(
        all=True, filters={"label": f"{RUN_LABEL}={results_id(out)}"}
    )
    assert left == []
