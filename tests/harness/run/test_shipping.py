"""What travels between the driver and a Ray node without shared storage (run/shipping.py): the
round trip, the cap on results (the biggest files left out with a note, never the stats), and
archives the driver refuses whole (paths leaving the folder, links, devices, too many bytes)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Any

import pytest

from harness.errors import ConfigError, InfrastructureError
from harness.run import shipping
from harness.run.options import RunOptions
from harness.run.pipeline import EntryJob
from harness.run.recorder import BufferedRecorder
from harness.store import Step, Store


def _job(tmp_path: Path, out: Path, **options: Any) -> EntryJob:
    entry = tmp_path / "entries" / "team-a"
    (entry / "src").mkdir(parents=True)
    (entry / "Dockerfile").write_text("FROM scratch\n")
    (entry / "src" / "server.py").write_text("print('hi')\n")
    (entry / "link").symlink_to("/etc/passwd")  # not followed: stays behind
    return EntryJob(
        "team-a", entry, RunOptions(track="4090", stage="open", out=out, **options), "run1"
    )


def _in(job: EntryJob, name: str) -> str:
    """`logs/...` or `helm/...` as a path relative to RESULTS_DIR, in the entry's folders."""
    folder, rest = name.split("/", 1)
    root = job.logs if folder == "logs" else job.helm_dir
    return (root / rest).relative_to(job.options.out).as_posix()


def _results(job: EntryJob, sizes: dict[str, int]) -> None:
    for name, size in sizes.items():
        path = job.options.out / _in(job, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * size)


def test_inputs_and_results_round_trip_into_the_node_folder_and_back(tmp_path: Path) -> None:
    conf = tmp_path / "specs.conf"
    conf.write_text("entries: []\n")
    job = _job(tmp_path, tmp_path / "driver-results", run_specs=str(conf))

    work = tmp_path / "node" / "task"
    local = shipping.receive_inputs(job, shipping.ship_inputs(job), work)
    assert local.path == work / "inputs" / "entry" / "team-a"
    assert (local.path / "src" / "server.py").read_text() == "print('hi')\n"
    assert not (local.path / "link").exists()
    assert local.options.run_specs == str(work / "inputs" / "run-specs" / "specs.conf")
    assert Path(local.options.run_specs).read_text() == "entries: []\n"
    assert local.options.out == work / "results"

    # The node evaluates: logs and HELM outputs in its folder, records naming them.
    _results(local, {"logs/build.log": 10, "helm/run/stats.json": 5})
    (local.options.out / "elsewhere.txt").write_text("not the entry's")
    records = BufferedRecorder()
    step = records.start_step(Step.BUILD, at=1.0)
    records.finish_step(step, ok=True, detail="", log_path=local.logs / "build.log", at=2.0)
    shipped = shipping.ship_results(local)
    records.relocate(local.options.out, job.options.out)

    written = shipping.receive_results(job, shipped)
    out = job.options.out
    assert sorted(p.relative_to(out).as_posix() for p in written) == [
        _in(job, "helm/run/stats.json"),
        _in(job, "logs/build.log"),
    ]
    with Store(out) as store:
        store.add_entry(job.name, job.path)
        attempt = store.start_attempt(job.name, "open")
        from harness.run.recorder import StoreRecorder

        records.replay(StoreRecorder(store, attempt))
        build = store.latest_steps(job.name, "open")[Step.BUILD]
    assert build.log_path == _in(job, "logs/build.log")
    assert (out / build.log_path).read_bytes() == b"x" * 10


def test_results_over_the_cap_leave_the_biggest_files_behind_never_the_stats(
    tmp_path: Path,
) -> None:
    job = _job(tmp_path, tmp_path / "node-results")
    _results(
        job,
        {
            "helm/runs/s/scenario_state.json": 6000,
            "helm/runs/s/stats.json": 3000,
            "helm/runs/s/per_instance_stats.json": 2500,
            "helm/runs/s/display_predictions.json": 1500,
            "logs/build.log": 100,
        },
    )
    shipped = shipping.ship_results(job, cap_bytes=7000)

    driver = _job(tmp_path / "d", tmp_path / "driver-results")
    shipping.receive_results(driver, shipped)
    out = driver.helm_dir / "runs" / "s"
    assert sorted(p.name for p in out.iterdir()) == ["per_instance_stats.json", "stats.json"]
    note = (driver.logs / shipping.DROPPED_NOTE).read_text()
    assert f"6000\t{_in(job, 'helm/runs/s/scenario_state.json')}" in note
    assert f"1500\t{_in(job, 'helm/runs/s/display_predictions.json')}" in note
    assert (driver.logs / "build.log").exists()


def test_inputs_over_their_cap_are_refused_with_the_way_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shipping, "INPUTS_CAP_BYTES", 10)
    job = _job(tmp_path, tmp_path / "results")
    with pytest.raises(ConfigError, match="--shared-storage"):
        shipping.ship_inputs(job)


def _archive(*members: tuple[tarfile.TarInfo, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for info, data in members:
            archive.addfile(info, io.BytesIO(data) if data else None)
    return buffer.getvalue()


def _file(name: str, data: bytes = b"ok") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _special(name: str, kind: bytes, target: str = "") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, b""


LOGS = "logs/team-a-96c2886c/open"  # the entry's logs folder, relative to RESULTS_DIR


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (_file(f"{LOGS}/../../../../escaped.txt"), "leaves the folder"),
        (_file("/tmp/absolute.txt"), "leaves the folder"),
        (_file("other/file.txt"), "under none of"),
        (_special(f"{LOGS}/link", tarfile.SYMTYPE, "/etc/passwd"), "not a regular"),
        (_special(f"{LOGS}/hard", tarfile.LNKTYPE, f"{LOGS}/a"), "not a regular"),
        (_special(f"{LOGS}/fifo", tarfile.FIFOTYPE), "not a regular"),
        (_file(f"{LOGS}/huge", b"x" * 100), "more than the cap"),
    ],
)
def test_an_unsafe_archive_is_refused_whole(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    bad: tuple[tarfile.TarInfo, bytes],
    message: str,
) -> None:
    monkeypatch.setattr(shipping, "RESULTS_CAP_BYTES", 40)  # the driver accepts twice that
    job = _job(tmp_path, tmp_path / "results")
    assert _in(job, "logs/a") == f"{LOGS}/a"
    data = _archive(_file(f"{LOGS}/a"), bad)
    with pytest.raises(InfrastructureError, match=message):
        shipping.receive_results(job, data)
    assert not job.options.out.exists()  # nothing written, not even the good member
    assert not (tmp_path / "escaped.txt").exists()


def test_a_link_already_in_the_driver_folder_is_replaced_not_followed(tmp_path: Path) -> None:
    job = _job(tmp_path, tmp_path / "results")
    outside = tmp_path / "outside.txt"
    outside.write_text("keep me")
    logs = job.logs
    logs.mkdir(parents=True)
    (logs / "build.log").symlink_to(outside)
    shipping.receive_results(job, _archive(_file(f"{LOGS}/build.log", b"new")))
    assert outside.read_text() == "keep me"
    assert not (logs / "build.log").is_symlink() and (logs / "build.log").read_bytes() == b"new"

    # A linked folder on the way would lead the write elsewhere: refused.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (job.options.out / "helm").symlink_to(elsewhere)
    with pytest.raises(InfrastructureError, match="outside"):
        shipping.receive_results(job, _archive(_file(_in(job, "helm/stats.json"))))
    assert list(elsewhere.iterdir()) == []
