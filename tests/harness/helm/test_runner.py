"""HELM integration: prod_env, stats reading, and real helm-run runs (the confs: test_confs.py).

Tests marked `helm` run the real crfm-helm 0.5.16 from .venv-helm against the team's inference
server (templates/server) serving the tiny random model; the recorded samples in data/ come
from such a run (a random model scores 0, so value tests edit a copy of the recorded stats).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import textwrap
import threading
import time
from pathlib import Path

import pytest
import yaml

from harness.errors import ConfigError, InfrastructureError
from harness.helm.confs import load_conf, shipped_conf, write_helm_conf
from harness.helm.results import RUN_OUTPUTS, RunResult, read_metrics
from harness.helm.runner import (
    PLUGIN,
    HelmEndpoint,
    check_helm,
    model_name,
    run_helm,
    summarize_helm,
    write_prod_env,
)
from tests.harness.helm.test_confs import write_conf

DATA = Path(__file__).parent / "data"
# The run folders of the recorded run (data/helm-run.log) whose stats.json were kept.
RECORDED = {
    "synthetic_reasoning:mode=pattern_match,max_eval_instances=4,model=harness_tiny,"
    "groups=synthetic_reasoning": "synthetic_reasoning.stats.json",
    "local_task:name=example_mcqa,max_eval_instances=4,model=harness_tiny,"
    "groups=local_task": "local_task.stats.json",
    "mmlu:subject=anatomy,method=multiple_choice_joint,max_eval_instances=4,model=harness_tiny,"
    "groups=mmlu": None,
}


# --- prod_env ----------------------------------------------------------------------------------


def test_model_name_keeps_safe_names_and_disambiguates_the_rest() -> None:
    assert model_name("team-a") == "harness/team-a"
    assert model_name("team_b2") == "harness/team_b2"
    changed = model_name("Team A")
    assert changed.startswith("harness/team-a-") and changed != model_name("team-a")
    assert model_name("Team A") == changed  # stable across runs, so resumed runs find their folders
    assert model_name("TEAM A") != changed
    assert "/" not in model_name("../x/y").removeprefix("harness/")


def test_write_prod_env_registers_each_entry_at_its_own_url(tmp_path: Path) -> None:
    endpoints = [
        HelmEndpoint("alpha", "http://127.0.0.1:9001/", max_sequence_length=256),
        HelmEndpoint("Beta Team", "http://127.0.0.1:9002", end_of_text_token="<|end|>"),
    ]
    folder = write_prod_env(tmp_path / "prod_env", endpoints)

    deployments = yaml.safe_load((folder / "model_deployments.yaml").read_text())
    metadata = yaml.safe_load((folder / "model_metadata.yaml").read_text())
    tokenizers = yaml.safe_load((folder / "tokenizer_configs.yaml").read_text())
    alpha, beta = deployments["model_deployments"]
    assert alpha["name"] == alpha["model_name"] == alpha["tokenizer_name"] == "harness/alpha"
    assert alpha["max_sequence_length"] == 256
    assert alpha["client_spec"]["class_name"] == "helm.clients.http_model_client.HTTPModelClient"
    assert alpha["client_spec"]["args"]["base_url"] == "http://127.0.0.1:9001"
    assert beta["client_spec"]["args"]["base_url"] == "http://127.0.0.1:9002"
    assert beta["name"] == endpoints[1].model
    assert [m["display_name"] for m in metadata["models"]] == ["alpha", "Beta Team"]
    assert "TEXT_MODEL_TAG" in metadata["models"][0]["tags"]
    beta_tokenizer = tokenizers["tokenizer_configs"][1]
    assert beta_tokenizer["tokenizer_spec"]["args"]["base_url"] == "http://127.0.0.1:9002"
    assert beta_tokenizer["end_of_text_token"] == "<|end|>"
    assert beta_tokenizer["prefix_token"] == "<s>"


def test_write_prod_env_refuses_two_entries_with_one_model_name(tmp_path: Path) -> None:
    twins = [HelmEndpoint("a", "http://127.0.0.1:1"), HelmEndpoint("a", "http://127.0.0.1:2")]
    with pytest.raises(ConfigError, match="same HELM model name"):
        write_prod_env(tmp_path, twins)


# --- reading results ---------------------------------------------------------------------------


def recorded_runs(output: Path, edit: dict[str, float] | None = None) -> Path:
    """The recorded run's folders under output/runs/harness; `edit` sets metric means
    (`name/split` keys, unperturbed stats) in the synthetic_reasoning copy."""
    for run, sample in RECORDED.items():
        folder = output / "runs" / "harness" / run
        folder.mkdir(parents=True)
        if sample:
            stats = json.loads((DATA / sample).read_text())
            for stat in stats:
                key = f"{stat['name']['name']}/{stat['name'].get('split')}"
                if edit and key in edit and "synthetic" in sample:
                    stat["mean"] = edit[key] if "perturbation" not in stat["name"] else 0.5
            for name in RUN_OUTPUTS:  # what HELM writes at the end of a run it finished
                (folder / name).write_text("{}")
            (folder / "stats.json").write_text(json.dumps(stats))
    (output / "runs" / "harness" / "eval_cache").mkdir()
    return output


def test_read_metrics_on_a_recorded_run(tmp_path: Path) -> None:
    output = recorded_runs(tmp_path)
    log = (DATA / "helm-run.log").read_text()
    local, mmlu, synthetic = read_metrics(output, "harness", {"mmlu": "exact_match"}, log_text=log)

    assert local == RunResult(
        run="local_task:name=example_mcqa,max_eval_instances=4,model=harness_tiny,groups=local_task",
        run_spec="local_task:name=example_mcqa,max_eval_instances=4",
        scenario="local_task",
        model="harness/tiny",
        metric="quasi_exact_match",
        value=0.0,
        split="test",
        instances=4,
    )
    assert mmlu.scenario == "mmlu" and mmlu.model == "harness/tiny" and not mmlu.ok
    assert (
        mmlu.error == "urllib.error.URLError: <urlopen error [Errno -2] Name or service not known>"
    )
    # HELM drew this run's four instances from both evaluation splits.
    assert (synthetic.metric, synthetic.split, synthetic.instances) == (
        "quasi_exact_match",
        "test+valid",
        4,
    )


def test_read_metrics_weights_splits_by_instances_and_ignores_perturbations(
    tmp_path: Path,
) -> None:
    output = recorded_runs(
        tmp_path, {"quasi_exact_match/test": 1.0, "quasi_exact_match/valid": 0.0}
    )
    stats = json.loads((DATA / "synthetic_reasoning.stats.json").read_text())
    counts = {s["name"]["split"]: s["mean"] for s in stats if s["name"]["name"] == "num_instances"}
    synthetic = read_metrics(output)[2]
    assert synthetic.value == pytest.approx(counts["test"] / (counts["test"] + counts["valid"]))


def test_read_metrics_falls_back_for_scenarios_without_a_known_metric(tmp_path: Path) -> None:
    output = recorded_runs(tmp_path, {"exact_match/test": 1.0, "exact_match/valid": 1.0})
    runs = output / "runs" / "harness"
    [synthetic] = [p for p in runs.iterdir() if p.name.startswith("synthetic")]
    synthetic.rename(runs / "big_bench:task=x,model=harness_tiny,groups=big_bench")
    big_bench = next(r for r in read_metrics(output) if r.scenario == "big_bench")
    assert (big_bench.run_spec, big_bench.metric, big_bench.value) == (
        "big_bench:task=x",
        "exact_match",
        1.0,
    )


def test_read_metrics_says_why_a_run_has_no_value(tmp_path: Path) -> None:
    output = recorded_runs(tmp_path)
    results = read_metrics(output, metrics={"local_task": "rouge_2"}, timed_out=True)
    local, mmlu, _ = results
    assert local.error == "stats.json has no rouge_2 on ('test', 'valid')" and not local.ok
    assert mmlu.error == "stopped by the time limit"
    assert read_metrics(tmp_path / "elsewhere") == []


def test_read_metrics_reads_the_main_metric_per_instance(tmp_path: Path) -> None:
    output = recorded_runs(tmp_path)
    [folder] = (output / "runs" / "harness").glob("synthetic*")

    def record(instance: str, trial: int, value: float, **extra: object) -> dict[str, object]:
        stats = [
            {"name": {"name": "quasi_exact_match", "split": "test"}, "count": 1, "mean": value},
            {"name": {"name": "exact_match", "split": "test"}, "count": 1, "mean": 1 - value},
        ]
        return {"instance_id": instance, "train_trial_index": trial, "stats": stats, **extra}

    records = [
        record("id1", 0, 1.0),
        record("id1", 1, 0.0),  # a second train trial: the instance's value is their mean
        record("id2", 0, 1.0),
        record("id2", 0, 0.0, perturbation={"name": "typos"}),  # a perturbed copy: not counted
        {"instance_id": "id3", "train_trial_index": 0, "stats": []},  # no value on it
    ]
    (folder / "per_instance_stats.json").write_text(json.dumps(records))
    synthetic = read_metrics(output)[2]
    assert synthetic.metric == "quasi_exact_match"
    assert synthetic.per_instance == {"id1": 0.5, "id2": 1.0}

    (folder / "per_instance_stats.json").write_text("[{")  # cut short: the value still counts
    synthetic = read_metrics(output)[2]
    assert synthetic.ok and synthetic.per_instance == {}


def test_read_metrics_trusts_only_runs_helm_finished(tmp_path: Path) -> None:
    output = recorded_runs(tmp_path)
    runs = sorted((output / "runs" / "harness").glob("*groups=*"))
    local, _, synthetic = runs
    # Killed between its writes: stats.json is whole, per_instance_stats.json never came.
    (local / "per_instance_stats.json").unlink()
    # Killed while writing stats.json, then (as HELM checks only that the files exist) kept.
    text = (synthetic / "stats.json").read_text()
    (synthetic / "stats.json").write_text(text[: len(text) // 2])
    results = read_metrics(output)
    assert [(r.ok, r.error) for r in (results[0], results[2])] == [
        (False, "HELM did not finish this run"),
        (False, "HELM's stats.json of this run is unreadable"),
    ]


def test_missing_helm_is_an_infrastructure_error(tmp_path: Path) -> None:
    with pytest.raises(InfrastructureError, match="make setup"):
        check_helm(tmp_path)
    with pytest.raises(InfrastructureError, match="HELM is not installed"):
        run_helm(tmp_path, tmp_path / "c.conf", ["harness/a"], max_eval_instances=1,
                 timeout_s=5, bin_dir=tmp_path)  # fmt: skip


# --- the real HELM -----------------------------------------------------------------------------


def helm_python(helm_bin: Path, code: str) -> str:
    result = subprocess.run(
        [str(helm_bin / "python"), "-c", textwrap.dedent(code)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@pytest.mark.helm
def test_helm_accepts_the_prod_env(helm_bin: Path, tmp_path: Path) -> None:
    endpoint = HelmEndpoint("Team A", "http://127.0.0.1:9001", max_sequence_length=512)
    write_prod_env(tmp_path, [endpoint])
    out = helm_python(
        helm_bin,
        f"""
        from helm.benchmark.config_registry import register_configs_from_directory
        from helm.benchmark.model_deployment_registry import get_model_deployment
        from helm.benchmark.model_metadata_registry import get_model_metadata
        from helm.benchmark.tokenizer_config_registry import get_tokenizer_config
        register_configs_from_directory({str(tmp_path)!r})
        d = get_model_deployment({endpoint.model!r})
        t = get_tokenizer_config(d.tokenizer_name)
        print(d.client_spec.args["base_url"], d.max_sequence_length, t.tokenizer_spec.class_name)
        print(get_model_metadata({endpoint.model!r}).display_name)
        """,
    )
    assert out.splitlines()[-2:] == [
        "http://127.0.0.1:9001 512 helm.tokenizers.http_model_tokenizer.HTTPModelTokenizer",
        "Team A",
    ]


@pytest.mark.helm
def test_shipped_confs_parse_as_helm_parses_them(helm_bin: Path) -> None:
    from harness.helm.confs import parse_hocon

    paths = [str(shipped_conf(name)) for name in ("open", "closed", "offline")]
    out = helm_python(
        helm_bin,
        f"""
        import json
        from helm.benchmark.presentation.run_entry import read_run_entries
        print(json.dumps([[e.description, e.priority] for p in {paths!r}
                          for e in read_run_entries([p]).entries]))
        """,
    )
    ours = [
        [entry["description"], entry["priority"]]
        for path in paths
        for entry in parse_hocon(Path(path).read_text())["entries"]
    ]
    assert json.loads(out.splitlines()[-1]) == ours


@pytest.mark.helm
def test_plugin_rejects_malformed_task_files(helm_bin: Path, tmp_path: Path) -> None:
    cases = {
        "empty": "",
        "no_answer": '{"question": "q", "choices": ["a"]}',
        "bad_index": '{"question": "q", "choices": ["a", "b"], "answer": 2}',
        "no_choices": '{"question": "q", "choices": "ab", "answer": 0}',
        "no_input": '{"answer": "y"}',
        "mixed": '{"question": "q", "choices": ["a"], "answer": 0}\n{"input": "x", "answer": "y"}',
        "bad_split": '{"input": "x", "answer": "y", "split": "dev"}',
    }
    for name, text in cases.items():
        (tmp_path / f"{name}.jsonl").write_text(text)
    out = helm_python(
        helm_bin,
        f"""
        import ubelt
        plugin = ubelt.import_module_from_path({str(PLUGIN)!r})
        for name in {list(cases)!r}:
            try:
                plugin.read_task({str(tmp_path)!r} + "/" + name + ".jsonl")
            except ValueError as exc:
                print(name, "|", str(exc).split(": ", 1)[1])
        """,
    )
    assert out.splitlines() == [
        "empty | no instances",
        "no_answer | expected a JSON object with an 'answer'",
        "bad_index | 'answer' must index one of 2 choices",
        "no_choices | needs a 'question' string and a 'choices' list",
        "no_input | a generation row needs an 'input' and an 'answer'",
        "mixed | mixes multiple-choice and generation rows",
        "bad_split | split must be one of ('train', 'valid', 'test')",
    ]


@pytest.mark.helm
def test_helm_run_scores_offline_and_local_tasks_and_resumes(
    helm_bin: Path, tiny_server_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An empty Hugging Face cache makes mmlu_pro fail the same way everywhere, internet or not.
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    (tmp_path / "qa.jsonl").write_text(
        '{"input": "The capital of France is", "answer": "Paris"}\n'
        '{"input": "Two plus two is", "answer": ["4", "four"]}\n'
        '{"input": "The opposite of hot is", "answer": "cold"}\n'
    )
    example = shipped_conf("offline").parent / "tasks" / "example_mcqa.jsonl"
    conf = load_conf(
        write_conf(
            tmp_path,
            f"""\
            entries: [
              {{description: "simple_mcqa"}}
              {{description: "local_task:path={example}"}}
              {{description: "local_task:path=qa.jsonl", scenario: "qa"}}
              {{description: "mmlu_pro:subject=math", metric: "exact_match"}}
            ]
            """,
        )
    )
    endpoint = HelmEndpoint("tiny entry", tiny_server_url, max_sequence_length=256)
    run_dir = tmp_path / "run"
    write_prod_env(run_dir / "prod_env", [endpoint])
    helm_conf = write_helm_conf(conf, run_dir / "run_specs.conf", max_eval_instances=3)

    def score() -> tuple[int, dict[str, RunResult]]:
        run = run_helm(run_dir, helm_conf, [endpoint.model], max_eval_instances=3,
                       timeout_s=240, metrics=conf.metrics(), bin_dir=helm_bin)  # fmt: skip
        assert not run.timed_out and run.error is None, run.log.read_text()[-3000:]
        return run.returncode, {result.scenario: result for result in run.runs}

    returncode, runs = score()
    assert returncode == 1  # HELM exits 1 when any run failed
    assert set(runs) == {"simple_mcqa", "local_task", "qa", "mmlu_pro"}
    for scenario, metric in [("simple_mcqa", "exact_match"), ("local_task", "quasi_exact_match"),
                             ("qa", "quasi_exact_match")]:  # fmt: skip
        result = runs[scenario]
        assert result.ok and result.metric == metric and result.model == endpoint.model
        assert result.value is not None and 0.0 <= result.value <= 1.0
        assert result.instances == 3 and result.split == "test"
        # What the leaderboard's bootstrap resamples: one value per instance, averaging to it.
        assert len(result.per_instance) == 3
        assert sum(result.per_instance.values()) / 3 == pytest.approx(result.value)
    assert runs["qa"].run_spec == "local_task:name=qa,max_eval_instances=3"
    assert "OfflineModeIsEnabled" in (runs["mmlu_pro"].error or "")

    # Run again, as after a crash: finished runs are kept, not scored twice.
    returncode, again = score()
    assert again == runs
    assert (run_dir / "helm-run.log").read_text().count("Skipping run") == 3

    assert summarize_helm(run_dir, timeout_s=120, bin_dir=helm_bin)
    assert (run_dir / "benchmark_output" / "runs" / "harness" / "groups.json").is_file()


@pytest.mark.helm
def test_helm_run_stops_at_its_time_limit(helm_bin: Path, tmp_path: Path) -> None:
    endpoint = HelmEndpoint("x", "http://127.0.0.1:9")
    write_prod_env(tmp_path / "prod_env", [endpoint])
    conf = write_helm_conf(load_conf(shipped_conf("offline")), tmp_path / "c.conf",
                           max_eval_instances=1)  # fmt: skip
    started = time.monotonic()
    run = run_helm(tmp_path, conf, [endpoint.model], max_eval_instances=1, timeout_s=1,
                   bin_dir=helm_bin)  # fmt: skip
    assert time.monotonic() - started < 15
    assert run.timed_out and run.error == "helm-run ran past its 1 s limit and was stopped"
    assert all(not result.ok for result in run.runs)


@pytest.mark.helm
def test_helm_run_stopped_by_the_caller_or_killed_says_so(helm_bin: Path, tmp_path: Path) -> None:
    endpoint = HelmEndpoint("x", "http://127.0.0.1:9")  # nothing answers: HELM retries for long
    write_prod_env(tmp_path / "prod_env", [endpoint])
    conf = write_helm_conf(load_conf(shipped_conf("offline")), tmp_path / "c.conf",
                           max_eval_instances=1)  # fmt: skip
    started = time.monotonic()
    run = run_helm(tmp_path, conf, [endpoint.model], max_eval_instances=1, timeout_s=120,
                   bin_dir=helm_bin,
                   should_stop=lambda: time.monotonic() - started > 2)  # fmt: skip
    assert time.monotonic() - started < 20
    assert run.stopped and not run.killed and run.error == "helm-run was stopped by the harness"

    def kill_helm_run() -> None:
        # As an operator's `kill -9` would: the harness did not send it.
        marker = str(conf.resolve()).encode()
        while True:
            for proc in Path("/proc").iterdir():
                with contextlib.suppress(OSError):
                    if proc.name.isdigit() and marker in (proc / "cmdline").read_bytes():
                        os.kill(int(proc.name), signal.SIGKILL)
                        return
            time.sleep(0.2)

    killer = threading.Thread(target=kill_helm_run, daemon=True)
    killer.start()
    run = run_helm(tmp_path, conf, [endpoint.model], max_eval_instances=1, timeout_s=120,
                   bin_dir=helm_bin)  # fmt: skip
    killer.join(timeout=5)
    assert run.killed and run.error == "helm-run was killed by SIGKILL before it finished"
    assert not any(result.ok for result in run.runs)


@pytest.mark.helm
def test_helm_run_that_fails_before_any_run_reports_why(helm_bin: Path, tmp_path: Path) -> None:
    endpoint = HelmEndpoint("x", "http://127.0.0.1:9")
    write_prod_env(tmp_path / "prod_env", [endpoint])
    conf = write_helm_conf(load_conf(write_conf(tmp_path, 'entries: [{description: "nope"}]')),
                           tmp_path / "c.conf", max_eval_instances=1)  # fmt: skip
    run = run_helm(tmp_path, conf, [endpoint.model], max_eval_instances=1, timeout_s=120,
                   bin_dir=helm_bin)  # fmt: skip
    assert run.returncode != 0 and not run.timed_out and run.runs == ()
    assert run.error == "ValueError: Unknown run spec name: nope"
