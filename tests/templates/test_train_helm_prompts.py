"""Training rows have the shape of what HELM sends: for every run spec of the open stage, the
prompts real crfm-helm sent (captured at the gateway, from an instance pack, to the submission
server on the tiny model) are turned into training rows with train.py's own tokenization, which
must end their prompt exactly where the served request ends and continue with the reference.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness.helm.confs import load_conf, shipped_conf
from harness.helm.packs import build_pack, install_pack
from harness.helm.runner import HelmEndpoint, run_helm, write_prod_env
from harness.run.gateway import Gateway
from tests.harness.helm.raw_tasks import write_open_data

TRAIN_DIR = Path(__file__).resolve().parents[2] / "templates" / "train"
sys.path.insert(0, str(TRAIN_DIR))

import config as train_config  # noqa: E402
import train  # noqa: E402

pytestmark = pytest.mark.helm


def _correct_output(state: dict[str, Any]) -> str:
    """The answer HELM counts as right: the letter of the correct choice for multiple-choice
    adapters (their `output_mapping`), else the correct reference's text."""
    correct: str = next(
        r["output"]["text"] for r in state["instance"]["references"] if "correct" in r["tags"]
    )
    mapping = state.get("output_mapping") or {}
    letters = [letter for letter, text in mapping.items() if text == correct]
    return letters[0] if letters else correct


def _sent_prompts(run_dir: Path, requests: Path) -> list[tuple[str, str, str]]:
    """(run, prompt, correct answer) for each /process request HELM made, as the gateway saw it."""
    at_gateway = [
        json.loads(line)["excerpt"]
        for line in requests.read_text().splitlines()
        if json.loads(line)["endpoint"] == "/process"
    ]
    sent = []
    for state_file in sorted(run_dir.glob("benchmark_output/runs/*/*/scenario_state.json")):
        for state in json.loads(state_file.read_text())["request_states"]:
            prompt = state["request"]["prompt"]
            sent.append((state_file.parent.name, prompt, _correct_output(state)))
    assert sorted(p for _, p, _ in sent) == sorted(at_gateway)
    return sent


def test_training_rows_end_where_helm_requests_end_for_every_open_run_spec(
    tiny_model_dir: Path, tiny_server_url: str, tmp_path: Path
) -> None:
    conf = load_conf(shipped_conf("open"))
    data = write_open_data(tmp_path / "scenarios", conf)
    pack = build_pack(conf, budget=len(conf.entries), data_dir=data, out=tmp_path / "pack")
    run_dir = tmp_path / "run"
    helm_conf = install_pack(pack, run_dir)
    requests = run_dir / "requests.jsonl"
    # The excerpt limit is lifted so the request log holds each prompt whole.
    with Gateway(
        tiny_server_url, deadline=float("inf"), request_log=requests, excerpt_chars=10**7
    ) as gateway:
        endpoint = HelmEndpoint("tiny", gateway.url, max_sequence_length=4096)
        write_prod_env(run_dir / "prod_env", [endpoint])
        run = run_helm(
            run_dir,
            helm_conf,
            [endpoint.model],
            max_eval_instances=1000,
            timeout_s=900,
            metrics=pack.run_spec_conf().metrics(),
            cache_instances=True,
        )
    assert run.error is None and not run.failed_runs, run.log.read_text()[-4000:]
    sent = _sent_prompts(run_dir, requests)
    assert len({name for name, _, _ in sent}) == len(conf.entries)

    config = train_config.TrainConfig(
        track="4090",
        base_model=str(tiny_model_dir),
        datasets=[{"source": "unused.jsonl", "format": "prompt-completion"}],
    )
    tokenizer = train.load_tokenizer(config)
    bare, full = tokenizer.encode("a", add_special_tokens=False), tokenizer.encode("a")
    start = full[: full.index(bare[0])]
    with httpx.Client(base_url=tiny_server_url) as server:
        for name, prompt, answer in sent:
            row = train.tokenize(train.data.Example(prompt, answer, name), config, tokenizer)
            cut = row["labels"].count(-100)
            # The server reads the tokenizer's start tokens, then the prompt's own tokens.
            served = server.post("/tokenize", json={"text": prompt}).json()["tokens"]
            assert row["input_ids"][:cut] == start + served, name
            completion = tokenizer.decode(row["input_ids"][cut:-1])
            assert row["input_ids"][-1] == tokenizer.eos_token_id
            # HELM strips the output prefix's trailing space ("Answer:"); its in-context
            # examples show the answer after it ("Answer: B"): so does the completion.
            expected = answer if prompt[-1].isspace() else " " + answer
            assert completion == expected, (name, prompt[-40:], completion)
            prefix = prompt.rsplit("\n", 1)[-1]
            shown = prompt.split(prefix)[1:-1] if prefix.strip() else []
            # In-context answers follow the prefix after a space; CNN/DailyMail's after a newline,
            # which ROUGE (its only metric) reads the same as the completion's space.
            assert all(part[:1] in (" ", "\n") for part in shown), (name, prefix)
            if "cnndm" not in name:
                assert all(part.startswith(" ") for part in shown), (name, prefix)
