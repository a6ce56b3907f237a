"""Instance packs: built by HELM's own scenario code from raw files in the real formats, pinned
by hash, nested across budgets, and scored by real helm-run with networking refused.

Every test here runs the real crfm-helm 0.5.16 (.venv-helm). Raw data sets are made at test time
by tests/harness/helm/raw_tasks.py in the formats HELM downloads; nothing is downloaded.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.errors import ConfigError
from harness.helm.confs import RunSpecConf, load_conf, shipped_conf
from harness.helm.packs import (
    INSTANCES_DIR,
    INSTANCES_FILE,
    Pack,
    PackError,
    build_pack,
    install_pack,
    nested_counts,
    verify_pack,
)
from harness.helm.runner import HelmEndpoint, run_helm, write_prod_env
from harness.helm.tasks import import_task
from harness.leaderboard.build import build_leaderboard
from harness.run.driver import RunOptions, run_entries
from harness.run.gateway import Gateway
from harness.run.health import HealthSchedule
from harness.store import Metric, Status, Store, entry_slug
from harness.submission.render import render_submission
from tests.harness.helm.raw_tasks import write_closed_sources, write_open_data

pytestmark = pytest.mark.helm

# One run spec per open-stage scenario: the whole conf (88 run specs) is sampled in the pack
# tests and scored end to end by the Docker test in test_run.py.
OPEN_SCENARIO_ENTRIES = (
    "mmlu:subject=anatomy",
    "big_bench:task=auto_debugging,subtask=,max_train_instances=3",
    "truthful_qa:task=mc_single",
    "summarization_cnndm_rouge",
    "gsm",
    "bbq:subject=all",
)
# Refuses and records every connection or name lookup that is not to the local machine; loaded
# into helm-run's Python through PYTHONPATH.
NETWORK_GUARD = """\
import os
import sys

LOG = os.environ["NETWORK_GUARD_LOG"]
LOCAL = ("127.", "::1", "localhost")


def _guard(event, args):
    if event == "socket.connect":
        address = args[1]
        host = address[0] if isinstance(address, tuple) else None
    elif event == "socket.getaddrinfo":
        host = args[0]
        host = host.decode() if isinstance(host, bytes) else host
    else:
        return
    if host is None or str(host).startswith(LOCAL):
        return
    with open(LOG, "a") as f:
        f.write(f"{event} {host}\\n")
    raise OSError(f"network refused by the test: {host}")


sys.addaudithook(_guard)
"""


def _files(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


def _instances(pack: Pack, key: str) -> list[dict[str, object]]:
    path = pack.path / INSTANCES_DIR / key / INSTANCES_FILE
    return list(json.loads(path.read_text()))


@pytest.fixture(scope="module")
def open_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    conf = load_conf(shipped_conf("open"))
    return write_open_data(tmp_path_factory.mktemp("scenarios"), conf)


@pytest.fixture(scope="module")
def closed_conf(tmp_path_factory: pytest.TempPathFactory) -> RunSpecConf:
    """closed.conf copied beside the four task files that `harness tasks import` wrote."""
    folder = tmp_path_factory.mktemp("closed")
    for kind, source in write_closed_sources(folder / "sources").items():
        import_task(kind, source, folder / f"{kind}.jsonl")
    (folder / "closed.conf").write_text(shipped_conf("closed").read_text())
    return load_conf(folder / "closed.conf")


@pytest.fixture(scope="module")
def open_pack(open_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Pack:
    conf = load_conf(shipped_conf("open"))
    return build_pack(conf, budget=120, data_dir=open_data, out=tmp_path_factory.mktemp("p") / "o")


def test_open_pack_holds_every_run_spec_and_is_byte_identical_when_rebuilt(
    open_pack: Pack, open_data: Path, tmp_path: Path
) -> None:
    conf = load_conf(shipped_conf("open"))
    assert [entry.description for entry in open_pack.entries] == [
        entry.description for entry in conf.entries
    ]
    assert {entry.scenario for entry in open_pack.entries} == set(conf.scenarios)
    assert all(entry.instances >= 1 for entry in open_pack.entries)
    # The budget's share, capped by what the data holds (6 GSM8K test questions).
    by_scenario = {entry.scenario: entry for entry in open_pack.entries}
    assert by_scenario["gsm"].instances == 6 and by_scenario["gsm"].train == 5
    assert by_scenario["bbq"].instances == 20 and by_scenario["bbq"].train == 0
    # In-context examples come with the pack, and BIG-bench's task definitions without examples.
    task = open_pack.path / "scenarios/big_bench/auto_debugging/task.json"
    assert json.loads(task.read_text())["examples"] == []
    assert sum(len(content) for content in _files(open_pack.path).values()) < 2_000_000

    again = build_pack(conf, budget=120, data_dir=open_data, out=tmp_path / "again")
    assert _files(again.path) == _files(open_pack.path)
    assert again.sha256 == open_pack.sha256


def test_smaller_budgets_are_prefixes_of_larger_ones(
    open_pack: Pack, open_data: Path, tmp_path: Path
) -> None:
    conf = load_conf(shipped_conf("open"))
    small = build_pack(conf, budget=60, data_dir=open_data, out=tmp_path / "small")
    assert nested_counts(open_pack, 60) == [entry.instances for entry in small.entries]
    for big_entry, small_entry in zip(open_pack.entries, small.entries, strict=True):
        big, little = _instances(open_pack, big_entry.key), _instances(small, small_entry.key)
        assert big[: small_entry.train + small_entry.instances] == little
    # Installing the big pack at the small budget gives HELM exactly the small pack's files.
    install_pack(open_pack, tmp_path / "from-big", budget=60)
    install_pack(small, tmp_path / "from-small")
    assert _files(tmp_path / "from-big" / "benchmark_output") == _files(
        tmp_path / "from-small" / "benchmark_output"
    )
    conf_text = (tmp_path / "from-big" / "run_specs.conf").read_text()
    assert conf_text == (tmp_path / "from-small" / "run_specs.conf").read_text()
    with pytest.raises(PackError, match="larger than the pack's budget 120"):
        nested_counts(open_pack, 121)


def test_an_edited_pack_fails_verify_and_says_what_differs(open_pack: Pack, tmp_path: Path) -> None:
    runner = CliRunner(env={"COLUMNS": "250"})
    result = runner.invoke(app, ["instances", "verify", str(open_pack.path)])
    assert result.exit_code == 0, result.output
    shown = runner.invoke(app, ["instances", "show", str(open_pack.path)])
    assert shown.exit_code == 0 and "final_number_exact_match" in shown.output

    edited = tmp_path / "edited"
    edited.mkdir()
    for name, content in _files(open_pack.path).items():
        (edited / name).parent.mkdir(parents=True, exist_ok=True)
        (edited / name).write_bytes(content)
    gsm = edited / INSTANCES_DIR / "gsm" / INSTANCES_FILE
    gsm.write_text(gsm.read_text().replace("apples", "pears"))
    (edited / "extra.txt").write_text("not built")
    (edited / INSTANCES_DIR / "bbq:subject=all" / INSTANCES_FILE).unlink()
    (edited / "tasks").mkdir(exist_ok=True)
    result = runner.invoke(app, ["instances", "verify", str(edited)])
    assert result.exit_code == 1
    assert "changed since the build: scenario_instances/gsm/input_instances.json" in result.output
    assert "not in the manifest: extra.txt" in result.output
    assert "input_instances.json (the instances of bbq:subject=all)" in result.output
    with pytest.raises(PackError):
        install_pack(verify_pack(edited), tmp_path / "run")
    assert runner.invoke(app, ["instances", "verify", str(tmp_path)]).exit_code == 1
    # harness run refuses it before building or serving anything: a usage error.
    (tmp_path / "entries" / "team").mkdir(parents=True)
    run = ["run", str(tmp_path / "entries"), "--track", "4090", "--stage", "open",
           "--out", str(tmp_path / "results")]  # fmt: skip
    result = runner.invoke(app, [*run, "--instances", str(edited)])
    assert result.exit_code == 2 and "changed since the build" in result.output
    result = runner.invoke(app, [*run, "--instances", str(open_pack.path), "--budget", "500"])
    assert result.exit_code == 2 and "larger than the pack's budget 120" in result.output


def test_build_refuses_bad_requests_with_a_reason(open_data: Path, tmp_path: Path) -> None:
    conf = load_conf(shipped_conf("open"))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "file").write_text("x")
    with pytest.raises(ConfigError, match="not empty"):
        build_pack(conf, budget=10, data_dir=open_data, out=tmp_path / "full")
    with pytest.raises(ConfigError, match="at least 1"):
        build_pack(conf, budget=0, data_dir=open_data, out=tmp_path / "zero")
    with pytest.raises(ConfigError, match="is not a folder"):
        build_pack(conf, budget=10, data_dir=tmp_path / "nowhere", out=tmp_path / "p")
    # Two entries over one scenario instance set would need two samples in one file.
    anatomy = next(e for e in conf.entries if e.description == "mmlu:subject=anatomy")
    twice = RunSpecConf(conf.path, (anatomy, replace(anatomy, scenario="again")))
    with pytest.raises(ConfigError, match=r"read the same instances \(mmlu:subject=anatomy\)"):
        build_pack(twice, budget=10, data_dir=open_data, out=tmp_path / "twice")
    assert not (tmp_path / "twice").exists()  # no half-written pack


def _guard_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Load NETWORK_GUARD into every Python started from now on; returns its log."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(NETWORK_GUARD)
    monkeypatch.setenv("PYTHONPATH", str(site))
    monkeypatch.setenv("NETWORK_GUARD_LOG", str(tmp_path / "network.log"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    return tmp_path / "network.log"


def _score(
    pack: Pack, run_dir: Path, url: str, budget: int | None, guard_log: Path
) -> tuple[dict[str, float | None], int]:
    """Score `pack` (its `budget` sample) through a gateway; the metrics and /process calls."""
    conf = install_pack(pack, run_dir, budget)
    requests = run_dir / f"requests-{budget}.jsonl"
    with Gateway(url, deadline=float("inf"), request_log=requests) as gateway:
        endpoint = HelmEndpoint("tiny", gateway.url, max_sequence_length=4096, cache_requests=True)
        write_prod_env(run_dir / "prod_env", [endpoint])
        run = run_helm(run_dir, conf, [endpoint.model], max_eval_instances=1000, timeout_s=900,
                       metrics=pack.run_spec_conf().metrics(), cache_instances=True)  # fmt: skip
    log = run.log.read_text()
    assert run.error is None and not run.failed_runs, log[-4000:]
    assert "scenario.get_instances" not in log  # every instance came from the pack
    assert not guard_log.exists(), guard_log.read_text()
    processed = sum(
        json.loads(line)["endpoint"] == "/process" for line in requests.read_text().splitlines()
    )
    return {r.scenario: r.value for r in run.runs if r.metric}, processed


def test_every_scenario_of_both_stages_scores_from_packs_offline_and_reuses_requests(
    open_data: Path,
    closed_conf: RunSpecConf,
    helm_bin: Path,
    tiny_server_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    guard_log = _guard_network(tmp_path, monkeypatch)
    # The guard is live in HELM's Python: a lookup of a public name is refused and recorded.
    probe = "import socket; socket.getaddrinfo('example.org', 443)"
    probed = subprocess.run([str(helm_bin / "python"), "-c", probe], capture_output=True, text=True)
    assert "network refused by the test" in probed.stderr
    assert guard_log.read_text() == "socket.getaddrinfo example.org\n"
    guard_log.unlink()

    full = load_conf(shipped_conf("open"))
    open_conf = RunSpecConf(
        full.path, tuple(e for e in full.entries if e.description in OPEN_SCENARIO_ENTRIES)
    )
    open_pack = build_pack(open_conf, budget=18, data_dir=open_data, out=tmp_path / "open")
    closed_pack = build_pack(closed_conf, budget=12, data_dir=open_data, out=tmp_path / "closed")
    assert not guard_log.exists()

    # The open pack first at a budget of 6 (one instance a scenario), then whole: the second
    # run asks the model only what the first did not.
    run_dir = tmp_path / "run-open"
    first, asked_first = _score(open_pack, run_dir, tiny_server_url, 6, guard_log)
    whole, asked_whole = _score(open_pack, run_dir, tiny_server_url, None, guard_log)
    assert asked_first == sum(nested_counts(open_pack, 6)) == 6
    assert asked_whole == sum(nested_counts(open_pack)) - asked_first > 0
    expected = {"mmlu": "exact_match", "big_bench": "exact_match",
                "truthful_qa": "exact_match", "summarization_cnndm": "rouge_2",
                "gsm": "final_number_exact_match", "bbq": "quasi_exact_match"}  # fmt: skip
    assert set(first) == set(whole) == set(expected)
    assert all(value is not None and 0.0 <= value <= 1.0 for value in whole.values())

    closed, asked = _score(closed_pack, tmp_path / "run-closed", tiny_server_url, None, guard_log)
    assert set(closed) == {"samsum", "corr2cause", "ethics", "math"}
    assert all(value is not None and 0.0 <= value <= 1.0 for value in closed.values())
    assert asked == sum(entry.instances for entry in closed_pack.entries) == 12


@pytest.mark.docker
def test_a_rendered_submission_is_scored_on_every_scenario_of_both_stages_from_packs(
    open_data: Path,
    closed_conf: RunSpecConf,
    tiny_model_dir: Path,
    base_image: str,
    docker_client: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The acceptance run: the whole open.conf (88 run specs) and closed.conf, each from a pack,
    scored by `harness run` on a tiny-model submission built and served in Docker."""
    guard_log = _guard_network(tmp_path, monkeypatch)
    packs = {
        "open": build_pack(load_conf(shipped_conf("open")), budget=6, data_dir=open_data,
                           out=tmp_path / "open-pack"),
        "closed": build_pack(closed_conf, budget=8, data_dir=open_data,
                             out=tmp_path / "closed-pack"),
    }  # fmt: skip
    render_submission("4090", "tiny", tmp_path / "entries" / "tiny", model_dir=tiny_model_dir)
    out = tmp_path / "results"
    for stage, pack in packs.items():
        options = RunOptions(
            track="4090", stage=stage, out=out, instances=pack.path, base_image=base_image,
            health=HealthSchedule(tries=1, interval_s=600, poll_s=1), build_timeout_s=1800,
            deadline_s=1800,
        )  # fmt: skip
        [outcome] = run_entries(tmp_path / "entries", options)
        assert outcome.status is Status.SCORED, outcome.reason
    assert not guard_log.exists(), guard_log.read_text()

    with Store(out) as store:
        board = build_leaderboard(store)
        for stage, pack in packs.items():
            assert store.instances_sha256("tiny", stage) == pack.sha256
            metrics = store.metrics(stage)["tiny"]
            assert len(metrics) == len(pack.entries)
            assert all(m.value is not None and 0.0 <= m.value <= 1.0 for m in metrics)
    for stage, pack in packs.items():
        scenarios = sorted({entry.scenario for entry in pack.entries})
        assert board.scenarios[stage] == scenarios
        [row] = board.rows
        assert row.stages[stage].score is not None
        assert sorted(row.stages[stage].scenarios) == scenarios
        assert all(s.value is not None for s in row.stages[stage].scenarios.values())
        assert len(row.stages[stage].run_specs) == len(pack.entries)


def test_reproduce_needs_the_pack_the_original_was_scored_on(
    open_pack: Pack, open_data: Path, tmp_path: Path
) -> None:
    results, entry = tmp_path / "results", tmp_path / "entries" / "team"
    entry.mkdir(parents=True)
    install_pack(open_pack, results / "helm" / entry_slug("team") / "open", budget=60)
    with Store(results) as store:
        store.add_entry("team", entry)
        attempt = store.start_attempt("team", "open", instances_sha256=open_pack.sha256)
        store.record_metrics(attempt, [Metric("gsm", "gsm", "final_number_exact_match", 0.0)])
    other = build_pack(
        RunSpecConf(open_pack.path, (load_conf(shipped_conf("open")).entries[-2],)),
        budget=2, data_dir=open_data, out=tmp_path / "other",
    )  # fmt: skip
    runner = CliRunner(env={"COLUMNS": "250"})
    common = ["reproduce", str(entry), "--track", "4090", "--results", str(results)]
    result = runner.invoke(app, common)
    assert result.exit_code == 2 and "give that pack with --instances" in result.output
    result = runner.invoke(app, [*common, "--instances", str(other.path)])
    assert result.exit_code == 2 and "is not the pack 'team' was scored on" in result.output
