"""The executor seam: what a worker records reaches the store the same way wherever it ran, and
the driver hands every entry to the executor it is given (no Docker needed here; the pipeline itself
runs on a real engine in test_run.py)."""

from __future__ import annotations

import pickle
from concurrent.futures import Future
from pathlib import Path

from harness.run.driver import run_entries
from harness.run.options import RunOptions
from harness.run.pipeline import Ending, EntryJob
from harness.run.recorder import BufferedRecorder, Recorder, StoreRecorder
from harness.store import Finding, Metric, Status, Step, StepStatus, Store
from tests.harness.run.fakes import InstantExecutor


def test_buffered_records_replay_into_the_store_with_their_own_times(tmp_path: Path) -> None:
    buffered = BufferedRecorder()
    check = buffered.start_step(Step.CHECK, at=100.0)
    buffered.record_findings([Finding("local-path", "error", "a.py", 3, "a home path")])
    buffered.finish_step(check, ok=True, detail="1 finding(s)", log_path=None, at=101.5)
    build = buffered.start_step(Step.BUILD, at=102.0)
    buffered.finish_step(build, ok=False, detail="boom", log_path=tmp_path / "b.log", at=110.0)
    buffered.record_metrics([Metric("mmlu:subject=anatomy", "mmlu", "exact_match", 0.25)])
    buffered.record_resources(image_bytes=5 * 2**30, image_id="sha256:" + "0" * 64)
    buffered.record_resources(gpu_peak_bytes=2**30)  # a later call: the image size stays

    travelled = pickle.loads(pickle.dumps(buffered))  # as a Ray task's return value would
    with Store(tmp_path) as store:
        store.add_entry("team-a", tmp_path)
        attempt = store.start_attempt("team-a", "open")
        travelled.replay(StoreRecorder(store, attempt))
        steps = store.latest_steps("team-a", "open")
        assert steps[Step.CHECK].status is StepStatus.OK
        assert (steps[Step.CHECK].started_at, steps[Step.CHECK].duration_s) == (100.0, 1.5)
        assert steps[Step.BUILD].status is StepStatus.FAILED
        assert steps[Step.BUILD].detail == "boom"
        assert steps[Step.BUILD].log_path == "b.log"
        assert [f.rule for f in store.findings("team-a", "open")] == ["local-path"]
        assert store.metrics("open")["team-a"][0].value == 0.25
        assert store.resources("team-a", "open") == (5 * 2**30, 2**30)
        assert store.image_id("team-a", "open") == "sha256:" + "0" * 64


class _Answering(InstantExecutor):
    """An executor that ends every entry at once by its name: the driver's side of the seam."""

    def __init__(self) -> None:
        self.jobs: list[EntryJob] = []
        self.started_with: str | None = None

    def start(self, options: RunOptions, run_id: str) -> None:
        self.started_with = run_id

    def submit(self, job: EntryJob, recorder: Recorder) -> Future[Ending]:
        self.jobs.append(job)
        step = recorder.start_step(Step.CHECK, at=1.0)
        recorder.finish_step(step, ok=True, detail="", log_path=None, at=2.0)
        future: Future[Ending] = Future()
        status = Status.SCORED if job.name.startswith("good") else Status.FLAGGED
        future.set_result(Ending(status, f"{job.name} ended"))
        return future


def test_the_driver_submits_what_is_left_and_records_how_each_ended(tmp_path: Path) -> None:
    entries = tmp_path / "entries"
    for name in ("good-a", "bad-b"):
        (entries / name).mkdir(parents=True)
    options = RunOptions(track="4090", stage="open", out=tmp_path / "results", run_specs="offline")
    executor = _Answering()

    outcomes = run_entries(entries, options, executor=executor)

    assert {o.entry: o.status for o in outcomes} == {
        "good-a": Status.SCORED,
        "bad-b": Status.FLAGGED,
    }
    assert executor.started_with is not None and len(executor.jobs) == 2
    with Store(options.out) as store:
        assert store.results("open")["bad-b"].reason == "bad-b ended"
        assert store.latest_steps("good-a", "open")[Step.CHECK].status is StepStatus.OK

    again = _Answering()
    rerun = run_entries(entries, options, executor=again)
    assert again.jobs == [] and all(o.skipped for o in rerun)
