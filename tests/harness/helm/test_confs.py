"""Run-spec confs (helm/confs.py): the shipped confs, HELM's conf syntax and the harness's keys,
budgets split over scenarios, and the conf written for HELM."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from harness.errors import ConfigError
from harness.helm.confs import load_conf, shipped_conf, split_budget, write_helm_conf
from harness.helm.tasks import import_task
from tests.harness.helm.raw_tasks import write_closed_sources


def write_conf(folder: Path, body: str) -> Path:
    path = folder / "specs.conf"
    path.write_text(textwrap.dedent(body))
    return path


@pytest.mark.parametrize("name", ["open", "closed", "offline"])
def test_shipped_confs_load_with_a_metric_for_every_fixed_scenario(
    name: str, tmp_path: Path
) -> None:
    path = shipped_conf(name)
    if name == "closed":
        # Its task files are the organizers' to convert and put beside it.
        with pytest.raises(ConfigError, match=r"local task file .*samsum.jsonl does not exist"):
            load_conf(path)
        for kind, source in write_closed_sources(tmp_path / "sources").items():
            import_task(kind, source, tmp_path / f"{kind}.jsonl")
        path = tmp_path / "closed.conf"
        path.write_text(shipped_conf(name).read_text())
    conf = load_conf(path)
    assert conf.entries
    metrics = conf.metrics()
    # Only BIG-bench scenarios pick their metric per task (FALLBACK_METRICS).
    assert set(conf.scenarios) - set(metrics) <= {"big_bench", "big_bench_closed"}
    for entry in conf.entries:
        assert "model=" not in entry.description
        if entry.run_spec == "local_task":
            assert Path(entry.description.split("path=")[1].split(",")[0]).is_file()


def test_shipped_conf_names_are_checked() -> None:
    with pytest.raises(ConfigError, match="shipped: open, closed, offline"):
        shipped_conf("secret")


def test_load_conf_reads_helm_conf_syntax_and_the_harness_keys(tmp_path: Path) -> None:
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "qa.jsonl").write_text('{"input": "1+1?", "answer": "2"}\n')
    conf = load_conf(
        write_conf(
            tmp_path,
            """\
            # the competition's style: brace-less root, newlines between entries
            entries = [
              {description: "mmlu:model=neurips/local,subject=anatomy,max_eval_instances=4",
               priority: 2}
              {"description": "gsm", "priority": 1, scenario: maths,
               metric = "exact_match_indicator"},
              // a local task, its path relative to this file
              {description: "local_task:path=tasks/qa.jsonl,name=qa"}
            ]
            """,
        )
    )
    mmlu, gsm, local = conf.entries
    assert (mmlu.description, mmlu.scenario, mmlu.priority) == ("mmlu:subject=anatomy", "mmlu", 2)
    assert (gsm.description, gsm.scenario, gsm.metric) == ("gsm", "maths", "exact_match_indicator")
    assert local.description == f"local_task:path={tmp_path / 'tasks' / 'qa.jsonl'},name=qa"
    assert conf.metrics() == {
        "mmlu": "exact_match",
        "maths": "exact_match_indicator",
        "local_task": "quasi_exact_match",
    }


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('entries: [ {description: "mmlu} ]', "cannot read"),
        ('entries: [ {description: "mmlu"} ', "ends in the middle"),
        ("entries: []", "non-empty `entries"),
        ("other: 1", "non-empty `entries"),
        ("entries: [ {priority: 1} ]", "needs a `description`"),
        ('entries: [ {description: "local_task:path=missing.jsonl"} ]', "does not exist"),
        ('entries: [ {description: "gsm", scenario: "a b"} ]', "scenario names"),
        ('entries: [ {description: "mmlu:subject"} ]', "expected key=value"),
        ('entries: [ {description: "custom_mcqa:path=/x.jsonl"} ]', "use local_task"),
        (
            'entries: [ {description: "gsm", scenario: s}, {description: "mmlu", scenario: s} ]',
            "mixes the metrics",
        ),
    ],
)
def test_load_conf_rejects_bad_confs_with_a_reason(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_conf(write_conf(tmp_path, body))


def test_load_conf_on_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_conf(tmp_path / "nope.conf")


def three_scenarios(tmp_path: Path) -> Path:
    return write_conf(
        tmp_path,
        """\
        entries: [
          {description: "mmlu:subject=a"}
          {description: "mmlu:subject=b"}
          {description: "mmlu:subject=c"}
          {description: "gsm"}
          {description: "synthetic_reasoning:mode=induction"}
          {description: "synthetic_reasoning:mode=pattern_match"}
        ]
        """,
    )


def test_split_budget_shares_by_scenario_then_by_entry(tmp_path: Path) -> None:
    conf = load_conf(three_scenarios(tmp_path))
    # 20 over 3 scenarios: 7, 7, 6; then mmlu's 7 over 3 subjects: 3, 2, 2; 6 over 2 modes: 3, 3.
    assert split_budget(conf, 20) == [3, 2, 2, 7, 3, 3]
    assert split_budget(conf, 2) == [1, 1, 1, 1, 1, 1]  # every entry runs at least one instance
    with pytest.raises(ConfigError, match="at least 1"):
        split_budget(conf, 0)


def test_write_helm_conf_caps_every_entry_and_tags_its_scenario(tmp_path: Path) -> None:
    conf = load_conf(three_scenarios(tmp_path))
    written = write_helm_conf(conf, tmp_path / "out" / "helm.conf", max_eval_instances=3, budget=20)
    entries = json.loads(written.read_text())["entries"]
    assert [e["description"] for e in entries] == [
        "mmlu:subject=a,max_eval_instances=3",
        "mmlu:subject=b,max_eval_instances=2",
        "mmlu:subject=c,max_eval_instances=2",
        "gsm:max_eval_instances=3",
        "synthetic_reasoning:mode=induction,max_eval_instances=3",
        "synthetic_reasoning:mode=pattern_match,max_eval_instances=3",
    ]
    assert [e["groups"] for e in entries][2:4] == [["mmlu"], ["gsm"]]
    unbudgeted = write_helm_conf(conf, tmp_path / "plain.conf", max_eval_instances=5)
    assert all(
        e["description"].endswith("=5") for e in json.loads(unbudgeted.read_text())["entries"]
    )
    with pytest.raises(ConfigError, match="at least 1"):
        write_helm_conf(conf, tmp_path / "x.conf", max_eval_instances=0)
