"""merge.py on the tiny model: the QLoRA-aware merge, its logit check, the merged model served."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import config as train_config  # templates/train is on sys.path from here on
import merge
import pytest
import train

from tests._wait import until
from tests.templates.test_train_train import TRAIN_DIR, trained_run, write_config

SERVER_DIR = TRAIN_DIR.parent / "server"
PROMPT = "question 3 : what is 3 plus 3 ?\n"


@pytest.fixture(scope="module")
def trained(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path
) -> train_config.TrainConfig:
    # More, faster steps than the training tests: the served answer should be more than EOS.
    return trained_run(tmp_path_factory.mktemp("merge"), tiny_model_dir, max_steps=12)


@pytest.fixture(scope="module")
def merged(trained: train_config.TrainConfig) -> Path:
    merge.merge(trained)
    return Path(trained.merge.output_dir)


def test_merged_logits_match_the_adapter_on_the_4bit_base(
    trained: train_config.TrainConfig,
) -> None:
    assert merge.merge(trained) <= 1e-4


def test_merged_folder_is_a_plain_hugging_face_model(merged: Path) -> None:
    names = {p.name for p in merged.iterdir()}
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json"} <= names
    model_config = json.loads((merged / "config.json").read_text())
    assert "quantization_config" not in model_config  # it loads without bitsandbytes
    assert not any(name.startswith("adapter") for name in names)
    # The server reads the template training used from here (the default: the prompt alone).
    template = json.loads((merged / "prompt_template.json").read_text())
    assert template == {"prompt_template": "{prompt}"}


def test_cli_prints_the_largest_difference_and_fails_loudly_over_tolerance(
    trained: train_config.TrainConfig, tmp_path: Path
) -> None:
    strict = trained.model_dump()
    strict["merge"] = {**strict["merge"], "tolerance": 1e-12, "output_dir": str(tmp_path / "m")}
    path = tmp_path / "strict.yaml"
    path.write_text(json.dumps(strict))  # JSON is YAML
    result = subprocess.run(
        [sys.executable, "merge.py", "--config", str(path)],
        cwd=TRAIN_DIR,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1
    assert "largest logit difference" in result.stdout
    assert "MERGE CHECK FAILED" in result.stderr and "over the tolerance 1e-12" in result.stderr


def test_merge_without_a_trained_adapter_is_a_config_error(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    result = subprocess.run(
        [sys.executable, "merge.py", "--config", str(write_config(tmp_path, tiny_model_dir))],
        cwd=TRAIN_DIR,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "no trained adapter" in result.stderr and "run train.py first" in result.stderr


@pytest.fixture
def server_main(merged: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    monkeypatch.setenv("MODEL_PATH", str(merged))
    monkeypatch.setenv("DEVICE", "cpu")
    monkeypatch.setenv("DTYPE", "float32")
    monkeypatch.syspath_prepend(str(SERVER_DIR))
    for name in ("main", "api"):
        sys.modules.pop(name, None)
    yield importlib.import_module("main")
    for name in ("main", "api"):
        sys.modules.pop(name, None)


def test_served_merged_model_answers_like_the_adapter_model(
    trained: train_config.TrainConfig, server_main: object
) -> None:
    from fastapi.testclient import TestClient
    from peft import PeftModel

    new_tokens = 8
    with TestClient(server_main.app) as client:  # type: ignore[attr-defined]
        health = until(
            lambda: (answer := client.get("/health")).status_code != 503 and answer,
            "the server loaded the merged model",
            timeout_s=120,
        )
        assert health.status_code == 200, health.text
        body = {
            "prompt": PROMPT,
            "temperature": 0,
            "max_new_tokens": new_tokens,
            "min_new_tokens": new_tokens,
        }
        served = client.post("/process", json=body).json()

    adapter = Path(trained.output_dir) / "adapter"
    model = PeftModel.from_pretrained(train.load_base(trained, "cpu"), adapter).eval()
    tokenizer = train.load_tokenizer(trained)
    ids = tokenizer(PROMPT, return_tensors="pt")
    out = model.generate(
        **ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False
    )
    expected = tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    assert len(served["tokens"]) == new_tokens
    assert served["text"] == expected
