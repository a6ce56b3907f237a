"""`harness data helm-style`: training rows from raw train files in HELM's layouts (made here) are
shaped like the requests real HELM sends for the same scenarios (captured at the gateway, from
an instance pack, served by the submission server on the tiny model) up to the instance text,
and the tiny model trains on them with the template's train.py."""

from __future__ import annotations

import csv
import importlib
import json
import pickle
import random
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from harness.errors import ConfigError
from harness.helm.confs import load_conf
from harness.helm.packs import build_pack, install_pack
from harness.helm.runner import HelmEndpoint, run_helm, write_prod_env
from harness.helm.style import helm_style
from harness.run.gateway import Gateway
from tests.templates.test_train_train import write_config  # puts templates/train on sys.path

train = importlib.import_module("train")
train_config = importlib.import_module("config")

pytestmark = pytest.mark.helm

# (what a competitor passes to helm-style, the stage conf's entry): the same scenario. CNN/DM is
# scored by HELM's run spec with ROUGE alone (harness/helm/plugins/local_tasks.py).
SCENARIOS = {
    "mmlu": ("mmlu:subject=anatomy", "mmlu:subject=anatomy"),
    "gsm": ("gsm", "gsm"),
    "summarization_cnndm_rouge": ("summarization_cnndm", "summarization_cnndm_rouge"),
    "big_bench": ("big_bench:task=emoji_movie,subtask=", "big_bench:task=emoji_movie,subtask="),
    "local_task": ("local_task:path={task},num_train_instances=2",
                   "local_task:path=mytask.jsonl,num_train_instances=2"),
}  # fmt: skip
# Every instance's own text is made of words starting with "zz" and of numbers, so that what
# remains once they are masked is the frame HELM puts around instances; so are the letters
# answering in-context multiple-choice examples.
INSTANCE_TEXT = re.compile(r"(?:zz\w+|\d+)(?: (?:zz\w+|\d+))*")
ANSWER_LETTER = re.compile(r"^Answer: [A-D]$", re.MULTILINE)


def frame(prompt: str) -> str:
    return ANSWER_LETTER.sub("Answer: <x>", INSTANCE_TEXT.sub("<x>", prompt))


def write_raw_data(root: Path, seed: int = 0) -> Path:
    """Raw files where HELM's scenario code reads them (`benchmark_output/scenarios/` layout),
    with more train instances than each run spec's in-context examples."""
    rng = random.Random(seed)

    def text(n: int, vocabulary: int = 10**6) -> str:
        return " ".join(f"zz{rng.randrange(vocabulary)}" for _ in range(n))

    mmlu = root / "mmlu" / "data"
    for split, count in (("dev", 8), ("test", 3)):
        (mmlu / split).mkdir(parents=True)
        with (mmlu / split / f"anatomy_{split}.csv").open("w", newline="") as f:
            csv.writer(f).writerows(
                [text(8) + "?", *(text(2) for _ in range(4)), "ABCD"[i % 4]] for i in range(count)
            )
    (root / "gsm").mkdir()
    for split, count in (("train", 8), ("test", 3)):
        rows = [
            {"question": text(10) + "?", "answer": f"{text(5)} {i}\n#### {i}"} for i in range(count)
        ]
        (root / "gsm" / f"gsm_data_{split}").write_text("".join(json.dumps(r) + "\n" for r in rows))
    # HELM's train split keeps articles of 50 to 150 words; words of few tokens let five
    # in-context ones fit the tiny model's context, so HELM keeps them all.
    cnndm = {
        split: [
            {"article": text(50, 1000) + ".", "highlights": text(8, 1000) + "."}
            for _ in range(count)
        ]
        for split, count in (("train", 8), ("validation", 2), ("test", 3))
    }
    (root / "summarization" / "data").mkdir(parents=True)
    (root / "summarization" / "data" / "cnndm.pk").write_bytes(pickle.dumps(cnndm))
    examples = [
        {"input": text(6), "target_scores": {"zzyes": int(i % 2 == 0), "zzno": int(i % 2 == 1)}}
        for i in range(40)
    ]
    task = {"name": "emoji_movie", "description": "tiny", "keywords": ["tiny"],
            "metrics": ["multiple_choice_grade"], "examples": examples}  # fmt: skip
    (root / "big_bench" / "emoji_movie").mkdir(parents=True)
    (root / "big_bench" / "emoji_movie" / "task.json").write_text(json.dumps(task))
    rows = [{"input": text(7), "answer": text(2)} for _ in range(3)]
    rows += [{"input": text(7), "answer": text(2), "split": "train"} for _ in range(6)]
    (root / "mytask.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def sent_prompts(run_dir: Path, requests: Path) -> dict[str, list[str]]:
    """Each run's prompts as HELM sent them, keyed by run-spec function; they are checked to be
    exactly the /process requests the gateway logged."""
    logged = [json.loads(line) for line in requests.read_text().splitlines()]
    at_gateway = sorted(r["excerpt"] for r in logged if r["endpoint"] == "/process")
    sent: dict[str, list[str]] = defaultdict(list)
    for state_file in run_dir.glob("benchmark_output/runs/*/*/scenario_state.json"):
        for state in json.loads(state_file.read_text())["request_states"]:
            sent[state_file.parent.name.split(":")[0]].append(state["request"]["prompt"])
    assert sorted(p for prompts in sent.values() for p in prompts) == at_gateway
    return sent


def test_helm_style_rows_match_helm_requests_and_train_the_tiny_model(
    helm_bin: Path, tiny_model_dir: Path, tiny_server_url: str, tmp_path: Path
) -> None:
    data = write_raw_data(tmp_path / "scenarios")
    task = data / "mytask.jsonl"
    rows: dict[str, list[dict[str, str]]] = {}
    for name, (description, _) in SCENARIOS.items():
        out = tmp_path / "rows" / f"{name}.jsonl"
        result = helm_style(description.format(task=task), data_dir=data, out=out)
        rows[name] = [json.loads(line) for line in out.read_text().splitlines()]
        assert result.rows == len(rows[name]) > 0, name

    conf = data / "stage.conf"  # beside the local task it names
    entries = [
        f'{{description: "{entry}", priority: 1, scenario: "{name}"}}'
        for name, (_, entry) in SCENARIOS.items()
    ]
    conf.write_text("entries: [\n" + "\n".join(entries) + "\n]\n")
    stage = load_conf(conf)
    pack = build_pack(stage, budget=2 * len(SCENARIOS), data_dir=data, out=tmp_path / "pack")
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
            run_dir, helm_conf, [endpoint.model], max_eval_instances=1000, timeout_s=900,
            metrics=stage.metrics(), cache_instances=True,
        )  # fmt: skip
    assert run.error is None and not run.failed_runs, run.log.read_text()[-4000:]
    sent = sent_prompts(run_dir, requests)

    for name in SCENARIOS:
        helm_frames = {frame(prompt) for prompt in sent[name]}
        row_frames = {frame(row["prompt"]) for row in rows[name]}
        assert len(helm_frames) == 1, (name, helm_frames)
        assert row_frames == helm_frames, (name, row_frames, helm_frames)
    # The answers are what HELM counts as right: a letter for multiple choice, else the text.
    assert {row["completion"] for row in rows["mmlu"] + rows["big_bench"]} <= set("ABCD")
    assert all(frame(row["completion"]) == "<x> The answer is <x>." for row in rows["gsm"])

    datasets = [
        {"source": str(tmp_path / "rows" / f"{name}.jsonl"), "format": "prompt-completion"}
        for name in SCENARIOS
    ]
    config = train_config.load_config(
        write_config(tmp_path, tiny_model_dir, datasets=datasets, max_seq_len=4096)
    )
    train.train(config)
    report = json.loads((Path(config.output_dir) / "data_report.json").read_text())
    # Few-shot rows share their instructions and examples: none is a near duplicate of another.
    assert report["total"]["sampled"] == sum(len(r) for r in rows.values())
    assert report["total"].get("near_duplicate", 0) == 0
    summary = json.loads((Path(config.output_dir) / "train_summary.json").read_text())
    assert summary["global_step"] == 4, summary
    assert (Path(config.output_dir) / "adapter" / "adapter_config.json").is_file()


def test_helm_style_refuses_what_it_cannot_shape(helm_bin: Path, tmp_path: Path) -> None:
    data = write_raw_data(tmp_path / "scenarios")
    out = tmp_path / "rows.jsonl"
    with pytest.raises(
        ConfigError, match=r"no instances in split 'valid' \(the data has test, train"
    ):
        helm_style("mmlu:subject=anatomy", data_dir=data, out=out, split="valid")
    with pytest.raises(ConfigError, match="Unknown run spec name: nosuch"):
        helm_style("nosuch", data_dir=data, out=out)
    with pytest.raises(ConfigError, match="is not a file"):
        helm_style("local_task:path=missing.jsonl", data_dir=data, out=out)
    assert not out.exists()
    # The command line: rows shaped with 2 in-context examples; a usage error exits 2.
    command = [str(Path(sys.executable).parent / "harness"), "data", "helm-style", "gsm",
               "--data-dir", str(data), "--out", str(out), "--shots", "2"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "wrote 8 rows" in done.stdout
    prompts = [json.loads(line)["prompt"] for line in out.read_text().splitlines()]
    assert all(prompt.count("\nA: ") == 2 for prompt in prompts)
    done = subprocess.run([*command[:-2], "--split", "dev"], capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 2 and "--split 'dev'" in done.stderr
