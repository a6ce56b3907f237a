"""Run specs that cannot fit the context: refused before HELM runs them, the rest scored.

The real crfm-helm 0.5.16 (.venv-helm) builds the run specs and scores, through the real gateway,
against the team's inference server (templates/server) on the tiny random 256-token model.
"""

from __future__ import annotations

import json
import textwrap
import time
from pathlib import Path

import pytest

from harness.errors import InfrastructureError
from harness.helm.confs import load_conf, parse_hocon, write_helm_conf, write_helm_entries
from harness.helm.fit import FITTING_CONF, cannot_fit, entry_tokenizer, refuse_unfit
from harness.helm.results import RunResult
from harness.helm.runner import (
    HelmEndpoint,
    RunSpecLimit,
    run_helm,
    run_spec_limits,
    write_prod_env,
)
from harness.run.gateway import Gateway, tokenize_allowance
from harness.submission.tiny_model import CONTEXT_LENGTH
from tests.harness.helm.raw_tasks import write_open_data

INSTANCES = 3


def load_conf_entries(conf: Path) -> list[dict[str, object]]:
    entries: list[dict[str, object]] = parse_hocon(conf.read_text())["entries"]
    return entries


def _limit(max_tokens: int, name: str = "gsm", prompt: str = "Q: \nA: ") -> RunSpecLimit:
    description = f"{name}:max_eval_instances=3"
    run = RunResult(run=f"{description},model=m", run_spec=description, scenario=name, model="m")
    return RunSpecLimit(description, name, run, max_tokens, prompt)


def test_cannot_fit_counts_the_output_and_the_shortest_prompt() -> None:
    assert cannot_fit(_limit(400), 256, None) == (
        "gsm: max_tokens 400 does not fit a 256-token context"
    )
    assert cannot_fit(_limit(256), 256, 0) == "gsm: max_tokens 256 does not fit a 256-token context"
    assert cannot_fit(_limit(250), 256, 7) == (
        "gsm: max_tokens 250 and a prompt of at least 7 tokens do not fit a 256-token context"
    )
    # A prompt takes one token at least, whatever a tokenizer that failed said.
    assert cannot_fit(_limit(255), 256, None) is None
    assert cannot_fit(_limit(249), 256, 7) is None


def test_refuse_unfit_rewrites_the_conf_and_asks_the_tokenizer_only_when_needed(
    tmp_path: Path,
) -> None:
    limits = [_limit(400), _limit(5, "mmlu", "x" * 100), _limit(200, "long", "y" * 100)]
    conf = write_helm_entries(
        tmp_path / "run_specs.conf",
        [{"description": f"{n}:max_eval_instances=3", "priority": 1, "groups": [n]}
         for n in ("gsm", "mmlu", "long")],
    )  # fmt: skip
    asked: list[str] = []

    def count(text: str) -> int:
        asked.append(text)
        return len(text)  # one token per character

    fit = refuse_unfit(conf, lambda: limits, max_sequence_length=256, count_tokens=count)

    # gsm needs no count (400 alone is too long), mmlu none either (5 tokens and at most 208 for
    # its 100-byte prompt fit): only `long` is asked, and refused.
    assert asked == ["y" * 100]
    assert [(r.run_spec, r.value, r.error) for r in fit.refused] == [
        ("gsm:max_eval_instances=3", 0.0, "gsm: max_tokens 400 does not fit a 256-token context"),
        (
            "long:max_eval_instances=3",
            0.0,
            "long: max_tokens 200 and a prompt of at least 100 tokens do not fit a 256-token "
            "context",
        ),
    ]
    # The conf is kept whole (reproduce replays it); HELM runs what fits.
    assert fit.conf == tmp_path / FITTING_CONF
    assert [e["description"] for e in load_conf_entries(fit.conf)] == ["mmlu:max_eval_instances=3"]
    assert len(load_conf_entries(conf)) == 3
    assert fit.largest == 3 and fit.summary().startswith("2 refused and scored 0 (gsm: ")


def test_a_failing_helper_refuses_nothing_and_says_why(tmp_path: Path) -> None:
    entry = {"description": "gsm:max_eval_instances=7", "priority": 1, "groups": ["gsm"]}
    conf = write_helm_entries(tmp_path / "run_specs.conf", [entry])
    before = conf.read_text()

    def broken() -> list[RunSpecLimit]:
        raise InfrastructureError("reading the run specs' limits from HELM failed: boom")

    fit = refuse_unfit(conf, broken, max_sequence_length=256, count_tokens=lambda text: 1)
    assert (fit.conf, fit.refused, fit.largest) == (conf, (), 7)
    assert fit.detail == (
        "run specs not checked against the context: reading the run specs' limits from HELM "
        "failed: boom"
    )
    assert conf.read_text() == before


@pytest.mark.helm
def test_a_run_spec_that_cannot_fit_is_refused_and_the_rest_scored(
    helm_bin: Path, tiny_server_url: str, tmp_path: Path
) -> None:
    (tmp_path / "qa.jsonl").write_text(
        "".join(
            json.dumps({"input": f"What is {i} plus {i}?", "answer": str(2 * i)}) + "\n"
            for i in range(INSTANCES)
        )
    )
    conf_file = tmp_path / "specs.conf"
    conf_file.write_text(
        textwrap.dedent("""\
        entries: [
          {description: "gsm:"}
          {description: "local_task:path=qa.jsonl", scenario: "qa"}
        ]
        """)
    )
    conf = load_conf(conf_file)
    run_dir = tmp_path / "run"
    write_open_data(run_dir / "benchmark_output" / "scenarios", conf)
    request_log = tmp_path / "requests.jsonl"
    with Gateway(
        tiny_server_url, deadline=time.monotonic() + 600, request_log=request_log
    ) as gateway:
        endpoint = HelmEndpoint("tiny", gateway.url, max_sequence_length=CONTEXT_LENGTH)
        write_prod_env(run_dir / "prod_env", [endpoint])
        helm_conf = write_helm_conf(conf, run_dir / "run_specs.conf", max_eval_instances=INSTANCES)
        fit = refuse_unfit(
            helm_conf,
            lambda: run_spec_limits(run_dir, helm_conf, endpoint, bin_dir=helm_bin),
            max_sequence_length=CONTEXT_LENGTH,
            count_tokens=entry_tokenizer(gateway.url),
            metrics=conf.metrics(),
        )
        gateway.tokenize_allowance = tokenize_allowance(fit.largest)
        run = run_helm(
            run_dir, fit.conf, [endpoint.model], max_eval_instances=INSTANCES, timeout_s=300,
            metrics=conf.metrics(), bin_dir=helm_bin,
            should_stop=lambda: gateway.runaway is not None,
        )  # fmt: skip

    # GSM8K asks for 400 output tokens: refused with the reason, scored 0 on its main metric.
    assert fit.unchecked is None and fit.largest == INSTANCES
    [gsm] = fit.refused
    assert gsm.error == "gsm: max_tokens 400 does not fit a 256-token context"
    assert (gsm.scenario, gsm.metric, gsm.value) == ("gsm", "final_number_exact_match", 0.0)
    assert gsm.run_spec == f"gsm:max_eval_instances={INSTANCES}" and gsm.model == endpoint.model
    assert "gsm" not in fit.conf.read_text()
    # The run spec that fits is scored as usual.
    assert run.error is None and gateway.runaway is None, run.log.read_text()[-3000:]
    [qa] = run.runs
    assert qa.ok and qa.scenario == "qa" and qa.instances == INSTANCES
    assert qa.run_spec == f"local_task:name=qa,max_eval_instances={INSTANCES}"
    lines = [json.loads(line) for line in request_log.read_text().splitlines()]
    tokenize = sum(line["endpoint"] == "/tokenize" for line in lines)
    answered = sum(line["endpoint"] == "/process" and line["answered"] for line in lines)
    assert answered == INSTANCES
    assert tokenize < 20 * INSTANCES, f"{tokenize} /tokenize requests for {INSTANCES} instances"
