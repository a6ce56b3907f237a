"""`harness reproduce --top` on a fleet without shared storage (reproduce/shipped.py): the entry and
what its reproduction reads of the original run travel to the node, the reproduction's folder
travels back, the driver's RESULTS_DIR is the only copy.

The reproduction itself is a stand-in (`_on_the_node`): it checks that every path it is given lies
in its node's own folder, reads what a real one reads there (the results store, the original's
HELM conf, the entry, the instance pack) and writes a folder as a real one does, weights included.
Training, building and scoring are test_top.py's (7.5 minutes of Docker): what is tested here is
what travels. The first test runs the task in this process; the second on a real 2-node
`ray.cluster_utils.Cluster` (no GPU: the nodes declare one they have not), each node in a folder of
its own. Skipped with the reason when Ray is not installed; under CI=true that fails instead."""

from __future__ import annotations

import json
import os
import tarfile
from dataclasses import replace
from io import BytesIO
from pathlib import Path

import pytest

from harness.errors import InfrastructureError
from harness.helm.confs import load_conf, write_helm_conf
from harness.reproduce.options import ReproduceOptions, Reproduction, Verdict
from harness.reproduce.shipped import ShippedReproduction, receive
from harness.reproduce.top import reproduce_top
from harness.run.shipping import DROPPED_NOTE, NODE_DIR_ENV
from harness.store import Metric, Store, entry_slug, results_id
from tests._ray import gpu_node, ray_cluster
from tests.harness.run.test_driver import write_conf

WEIGHTS_BYTES = 64 * 1024


def _results(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A scored field of two entries (their original run's traces, not the run), the entries,
    and an instance pack: RESULTS_DIR, entries folder, pack."""
    results, entries = tmp_path / "results", tmp_path / "entries"
    conf = write_conf(tmp_path, 3)
    with Store(results) as store:
        for name, value in [("alpha", 1.0), ("beta", 0.5)]:
            entry = entries / name
            entry.mkdir(parents=True)
            (entry / "Dockerfile").write_text(f"FROM scratch\n# {name}\n")
            helm = results / "helm" / entry_slug(name) / "open"
            write_helm_conf(load_conf(conf), helm / "run_specs.conf", max_eval_instances=3)
            (helm / "prod_env").mkdir()
            (helm / "prod_env" / "model_deployments.yaml").write_text(f"# {name}\n")
            (helm / "benchmark_output").mkdir()  # stays on the driver
            (helm / "benchmark_output" / "big.json").write_bytes(b"x" * 4096)
            store.add_entry(name, entry)
            attempt = store.start_attempt(name, "open")
            metric = Metric("local_task", "local_task", "exact_match", value)
            store.record_metrics(attempt, [metric])
    pack = tmp_path / "pack.json"
    pack.write_text("[]\n")
    return results, entries, pack


def _on_the_node(
    name: str, entry: Path, options: ReproduceOptions, gpu: int | None
) -> Reproduction:
    """A reproduction that reads what a real one reads and writes what it writes."""
    node = Path(os.environ[NODE_DIR_ENV])
    assert options.instances is not None
    for path in (entry, options.results, options.instances):
        assert node in path.parents, f"{path} is not under {node}"
    helm = options.results / "helm" / entry_slug(name) / options.stage
    with Store(options.results, create=False) as store:
        field = {name: [m.value for m in ms] for name, ms in store.metrics("open").items()}
    folder = options.results / "reproduce" / entry_slug(name)
    (folder / "weights").mkdir(parents=True)
    (folder / "weights" / "model.bin").write_bytes(os.urandom(WEIGHTS_BYTES))
    (folder / "train.log").write_text(f"trained on {node.name}\n")
    (folder / "seen.json").write_text(
        json.dumps(
            {
                "field": field,
                "conf": json.loads((helm / "run_specs.conf").read_text()),
                "deployments": (helm / "prod_env" / "model_deployments.yaml").read_text(),
                "dockerfile": (entry / "Dockerfile").read_text(),
                "pack": options.instances.read_text(),
                "benchmark_output": (helm / "benchmark_output").exists(),
                "node": str(node),
            }
        )
    )
    (folder / "reproduction.json").write_text('{"folder": "on the node"}')  # the driver's own
    return Reproduction(
        entry=entry.name, track=options.track, stage=options.stage, verdict=Verdict.REPRODUCED,
        reason=f"reproduced on {node.name}", time_limit_s=options.time_limit_s,
        tolerance=options.tolerance, training=None, weights={}, comparison=None, log_tail="",
        folder=folder, seeds=(None,),
    )  # fmt: skip


def _options(results: Path, pack: Path) -> ReproduceOptions:
    return ReproduceOptions(track="4090", results=results, instances=pack)


def test_a_reproduction_travels_and_comes_back_capped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    results, entries, pack = _results(tmp_path)
    node = tmp_path / "node"
    monkeypatch.setenv(NODE_DIR_ENV, str(node))
    options = _options(results, pack)
    task = ShippedReproduction.pack("alpha", entries / "alpha", options, _on_the_node)
    folder = results / "reproduce" / entry_slug("alpha")
    folder.mkdir(parents=True)
    (folder / "stale.txt").write_text("a killed run's")

    # Under the weights' size: they stay behind, listed; the rest travels.
    result = receive("alpha", options, *replace(task, cap_bytes=WEIGHTS_BYTES - 1)(None))

    seen = json.loads((folder / "seen.json").read_text())
    assert seen["field"] == {"alpha": [1.0], "beta": [0.5]}
    assert seen["conf"]["entries"] and seen["deployments"] == "# alpha\n"
    assert seen["dockerfile"].endswith("# alpha\n") and seen["pack"] == "[]\n"
    assert seen["benchmark_output"] is False  # what a reproduction does not read stays here
    assert (folder / "train.log").read_text() == "trained on node\n"
    assert not (folder / "weights").exists() and not (folder / "stale.txt").exists()
    assert "weights/model.bin" in (folder / DROPPED_NOTE).read_text()
    # The reports are the driver's, written from the result: they name its folder.
    assert result.folder == folder
    report = json.loads((folder / "reproduction.json").read_text())
    assert report["folder"] == str(folder) and report["verdict"] == "reproduced"
    assert (folder / "reproduction.html").is_file() and (folder / "reproduction.md").is_file()
    assert list(node.rglob("*")) == [node / results_id(results)]  # the task's folder is gone

    # With the default cap everything comes back.
    receive("alpha", options, *task(None))
    assert (folder / "weights" / "model.bin").stat().st_size == WEIGHTS_BYTES
    assert not (folder / DROPPED_NOTE).exists()


def test_a_folder_that_would_leave_its_place_is_refused_and_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    results, entries, pack = _results(tmp_path)
    monkeypatch.setenv(NODE_DIR_ENV, str(tmp_path / "node"))
    options = _options(results, pack)
    task = ShippedReproduction.pack("alpha", entries / "alpha", options, _on_the_node)
    result = receive("alpha", options, *task(None))
    buffer = BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        member = tarfile.TarInfo("reproduce/../helm/evil.txt")
        member.size = 4
        archive.addfile(member, BytesIO(b"evil"))

    with pytest.raises(InfrastructureError, match="leaves the folder"):
        receive("alpha", options, result, buffer.getvalue())

    folder = results / "reproduce" / entry_slug("alpha")
    assert (folder / "train.log").is_file() and (folder / "reproduction.json").is_file()
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]


@pytest.mark.docker  # RayExecutor.start cleans each node's Docker engine
def test_top_2_on_a_ray_fleet_without_shared_storage(tmp_path: Path) -> None:
    from harness.run.ray_executor import RayExecutor

    results, _, pack = _results(tmp_path)
    nodes = tmp_path / "nodes"
    fleet = [gpu_node(node_dir=nodes / f"node-{index}") for index in range(2)]
    with ray_cluster(__name__, *fleet) as (cluster, _):
        options = _options(results, pack)
        report = reproduce_top(
            2, options, executor=RayExecutor(cluster.address), reproduce=_on_the_node
        )
        again = reproduce_top(
            2, options, executor=RayExecutor(cluster.address), reproduce=_on_the_node
        )

    assert [(e.rank, e.entry, e.verdict) for e in report.entries] == [
        (1, "alpha", "reproduced"),
        (2, "beta", "reproduced"),
    ]
    assert report.exit_code == 0 and all(e.kept for e in again.entries)
    seen = {}
    for entry in report.entries:
        assert entry.folder.parent == results / "reproduce"
        seen[entry.entry] = json.loads((entry.folder / "seen.json").read_text())
        assert seen[entry.entry]["field"] == {"alpha": [1.0], "beta": [0.5]}
        assert (entry.folder / "weights" / "model.bin").stat().st_size == WEIGHTS_BYTES
        assert entry.document()["folder"] == str(entry.folder)
        assert nodes in Path(seen[entry.entry]["node"]).parents
    assert "reproduced on node-" in (results / "reproduce" / "report.md").read_text()
    # The nodes kept nothing: each task's folder went with it.
    assert [p for p in nodes.rglob("*") if p.is_file()] == []
