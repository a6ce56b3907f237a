"""Leases of entries running on a Ray fleet: renewed by their Ray task's own heartbeats, so that a
frozen evaluation on a node, or a node killed outright, ends with the entry re-queued (not
counted; once: a second interruption ends it, cancelled and not counted), its containers gone
and its team told.

A real 3-node `ray.cluster_utils.Cluster` on this machine and the service's real queue
(in-process) with the Ray executor; the entries are stand-ins (a real container on the node's
engine, named and labelled as the pipeline does, and a process working in the entry's HELM
folder on the node, as helm-run would), so that no build or HELM run is needed. Skipped with the
reason when Ray is not installed; under CI=true that fails instead.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from harness.run import processes
from harness.run.options import RunOptions
from harness.run.pipeline import Ending, EntryJob, Machine
from harness.run.recorder import Recorder
from harness.service.db import ServiceDB, State, Submission
from harness.service.notify import Notifier
from harness.service.queue import Queue
from harness.store import RUN_LABEL, Status, Step, Store, results_id
from tests._ray import gpu_node, import_ray, ray_cluster
from tests._wait import until
from tests.conftest import TEST_LABELS
from tests.harness.run.test_driver import write_conf
from tests.harness.service.conftest import SECRET, Receiver, queued

ray = import_ray()

pytestmark = pytest.mark.docker

# Where the stand-ins tell the test what they run (pickled by value with them: one folder).
CONTROL = Path(tempfile.gettempdir()) / f"harness-fleet-leases-{os.getpid()}"
LEASE_S = 6.0
HEARTBEAT_S = 1.0


def stand_in(job: EntryJob, recorder: Recorder, machine: Machine) -> Ending:
    """Runs 1 and 2 hold a container and a process in the HELM folder until they are stopped;
    run 3 is scored."""
    step = recorder.start_step(Step.EVALUATE, at=time.time())
    runs = sorted(CONTROL.glob(f"{job.name}.*"))
    if len(runs) >= 2:
        recorder.finish_step(step, ok=True, detail="third run", log_path=None, at=time.time())
        return Ending(Status.SCORED, "1 run(s) scored on the third run")
    machine.remove_container(job.container)
    container = machine.sdk.containers.run(
        os.environ.get("HARNESS_BASE_IMAGE", "harness-base:bookworm"),
        ["sleep", "600"],
        detach=True,
        name=job.container,
        labels={RUN_LABEL: job.run_id, **machine.labels, **TEST_LABELS},
    )
    job.helm_dir.mkdir(parents=True, exist_ok=True)
    helm_run = subprocess.Popen(["sleep", "600"], cwd=job.helm_dir, start_new_session=True)
    node = machine.labels["org.harness.ray-node"]
    told = {"node": node, "pid": helm_run.pid, "container": container.id}
    (CONTROL / f"{job.name}.{len(runs) + 1}").write_text(json.dumps(told))
    helm_run.wait()  # until it is killed
    recorder.finish_step(step, ok=False, detail="killed", log_path=None, at=time.time())
    return Ending(Status.EVAL_FAILED, "its HELM run was killed")


def _fleet_table(queue: Queue, db: ServiceDB) -> str:
    """The admin page's fleet table, rendered from the queue's data as the page is."""
    from harness.service.web import templates

    html = templates.env.get_template("admin.html").render(
        nodes=queue.nodes(), leases=queue.leases(), workers=[], queue=[], recent=[], teams=[],
        now=time.time(), lease_s=LEASE_S, team=None, csrf="", tracks=[], refresh=10,
    )  # fmt: skip
    return html[html.index('<table id="nodes">') : html.index("<h1>Queue</h1>")]


class Told(Notifier):
    """Keeps what the queue asked to tell, as it asks (deliveries follow in a pool)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.told: list[tuple[str, str]] = []

    def entry(self, sub: Submission, what: str) -> None:
        self.told.append((what, sub.id))
        super().entry(sub, what)


@pytest.fixture
def cluster(base_image: str) -> Any:
    CONTROL.mkdir()
    with ray_cluster(__name__, *[gpu_node()] * 3) as (cluster, _):
        yield cluster
    for path in CONTROL.iterdir():
        path.unlink()
    CONTROL.rmdir()


def test_a_frozen_evaluation_on_a_node_requeues_the_entry_a_killed_node_then_ends_it_uncounted(
    cluster: Any, tmp_path: Path, receiver: Receiver, docker_client: Any
) -> None:
    from harness.run.ray_executor import RayExecutor

    options = RunOptions(
        track="4090", stage="open", out=tmp_path / "results", run_specs=str(write_conf(tmp_path, 1))
    )
    executor = RayExecutor(cluster.address, evaluate=stand_in, retries=0, heartbeat_s=HEARTBEAT_S)
    workers = {node.node_id: node for node in cluster.worker_nodes}

    def run(number: int, sub_id: str | None = None) -> dict[str, Any]:
        marker = CONTROL / f"{sub_id or sub.id}.{number}"
        until(marker.exists, f"run {number} started", timeout_s=120)
        return dict(json.loads(marker.read_text()))

    def containers() -> list[Any]:
        label = f"{RUN_LABEL}={results_id(options.out)}"
        # Sparse: no inspect of each one, which fails for a container removed meanwhile.
        return list(docker_client.containers.list(all=True, filters={"label": label}, sparse=True))

    with ServiceDB(tmp_path) as db, Store(options.out) as store:
        team = db.team_for_token(db.add_team("team-a"))
        assert team is not None
        db.set_webhook("team-a", receiver.url, SECRET)
        sub = queued(db, team)
        (tmp_path / f"{sub.id}.zip").write_bytes(b"stands in for the upload")
        notifier = Told(db, retries=2, backoff_s=0.05)
        queue = Queue(
            db, store, replace(options, jobs=1), executor, lambda s: tmp_path / f"{s}.zip",
            lease_s=LEASE_S, notifier=notifier,
        )  # fmt: skip
        queue.start()
        try:
            first = run(1)
            # The lease is renewed from the node, and the admin page's data says by which.
            until(
                lambda: first["node"][:12] in ((db.submission(sub.id) or sub).worker or ""),
                "a heartbeat from the node renewed the lease",
            )
            # The admin page lists every node, the idle ones too, and what each runs.
            nodes = {node.name: node for node in queue.nodes()}
            running = (db.submission(sub.id) or sub).worker
            assert running in nodes and nodes[running].heartbeat_at is not None
            assert nodes[running].resources == {"CPU": 1, "GPU": 1, "4090": 1}
            idle = [n for n in nodes.values() if n.name != running and "GPU" in n.resources]
            assert len(idle) == 2 and all(n.alive and n.heartbeat_at is None for n in idle)
            fleet = _fleet_table(queue, db)
            assert f"<td>{running}</td><td>alive</td>" in fleet and f"{sub.id}</a>" in fleet
            assert fleet.count("<td>idle</td>") == 3  # two GPU nodes and the head
            time.sleep(LEASE_S * 1.5)  # a lease's length: a live evaluation keeps it
            assert (db.submission(sub.id) or sub).runs == 1

            # 1. Its HELM run frozen on the node: the heartbeats stop, the lease lapses.
            frozen_at = time.monotonic()
            os.kill(first["pid"], signal.SIGSTOP)
            until(lambda: len(receiver.deliveries) == 1, "the team was told", timeout_s=60)
            print(f"frozen -> re-queued, team told: {time.monotonic() - frozen_at:.1f} s")
            second = run(2)
            until(lambda: processes.state(first["pid"]) in (None, "Z"), "it was killed on its node")
            assert receiver.deliveries[0]["event"] == "entry.requeued"
            assert "not counted against the team" in receiver.deliveries[0]["reason"]
            until(
                lambda: first["container"] not in {c.id for c in containers()},
                "the first run's container was removed",
            )

            # 2. Its node killed outright: the infrastructure interrupted it a second time, so it
            # is not re-queued again (issue 23: once) but cancelled, not counted, the team told.
            killed_at = time.monotonic()
            cluster.remove_node(workers[second["node"]], allow_graceful=False)
            until(lambda: len(receiver.deliveries) == 2, "the team was told again", timeout_s=60)
            print(f"node killed -> ended, team told: {time.monotonic() - killed_at:.1f} s")
            ended = db.submission(sub.id)
            assert ended is not None and ended.state is State.CANCELLED and ended.runs == 2
            assert (ended.charged, ended.counts) == ("none", False)
            # Listed dead while Ray remembers it, once its health checks have missed it.
            until(
                lambda: (
                    [n.alive for n in queue.nodes() if second["node"][:12] in n.name] == [False]
                ),
                "the admin page lists the killed node as dead",
                timeout_s=120,
            )
            events = [d["event"] for d in receiver.deliveries]
            assert events == ["entry.requeued", "entry.cancelled"]
            assert "not counted, submit it again" in receiver.deliveries[1]["reason"]
            print("reasons:", [d.get("reason") for d in receiver.deliveries[:2]])
            until(lambda: containers() == [], "the dead node's container was removed")

            # 3. A team cancels its running entry: stopped on its node, not re-queued.
            other = queued(db, team, filename="f.zip")
            (tmp_path / f"{other.id}.zip").write_bytes(b"stands in for the upload")
            cancelled = run(1, other.id)
            assert db.cancel(other.id) is State.RUNNING
            queue.stop(other.id)
            until(lambda: containers() == [], "the cancelled entry's container was removed")
            until(
                lambda: all(slot.submission != other.id for slot in queue.workers()),
                "the queue let it go",
            )
            time.sleep(1.0)  # what the queue does after that (it would tell the team) is quick
            assert ("requeued", other.id) not in notifier.told
            until(
                lambda: processes.state(cancelled["pid"]) in (None, "Z"),
                "it was killed on its node",
            )
            assert (db.submission(other.id) or other).state is State.CANCELLED
            assert receiver.bad_signatures == 0
        finally:
            queue.close()
            notifier.close()
