"""Rendered submissions built and run in the real Docker engine, on the local base image.

The images install PyPI's CUDA build of torch from the hash-pinned locks and run here on the CPU.
The training image trains a tiny model for a few QLoRA steps and merges it; the inference image
serves it and is driven through crfm-helm's own HTTP client and tokenizer.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness.infra.docker import RunningContainer, build, start_container
from harness.run.health import HealthSchedule, wait_healthy
from harness.submission.render import render_submission, smoke_config
from harness.submission.tiny_model import write_tiny_dataset
from tests.conftest import TEST_LABEL
from tests.templates.test_server_helm import run_helm_clients

pytestmark = pytest.mark.docker

LABELS = dict([TEST_LABEL.split("=")])
QUICK = HealthSchedule(tries=1, interval_s=180, poll_s=1)


def _build(
    context: Path, tag: str, base_image: str, *, dockerfile: str = "Dockerfile", weights: str = ""
) -> str:
    result = build(
        context,
        tag=tag,
        log_path=context.parent / f"{tag.replace('/', '_')}.log",
        dockerfile=context / dockerfile,
        build_args={"BASE_IMAGE": base_image, **({"WEIGHTS": weights} if weights else {})},
        labels=LABELS,
        timeout=1800,
    )
    assert result.ok, result.log_path.read_text()[-4000:]
    return result.image


def _serve(docker_client: Any, image: str) -> RunningContainer:
    served = start_container(docker_client, image, labels=LABELS)
    health = wait_healthy(served.url, schedule=QUICK, alive=served.alive)
    assert health.healthy, f"{health.reason}\n{served.logs()}"
    return served


def test_inference_image_serves_the_model_to_helms_client(
    tmp_path: Path, tiny_model_dir: Path, base_image: str, docker_client: Any, helm_bin: Path
) -> None:
    submission = render_submission("4090", "tiny", tmp_path / "tiny", model_dir=tiny_model_dir)
    image = _build(submission.path, "harness-test/tiny-serve:latest", base_image)
    served = _serve(docker_client, image)
    try:
        health = httpx.post(f"{served.url}/process", json={"prompt": "The capital of France is "})
        assert health.status_code == 200 and "text" in health.json()
        prompt = "Question: what is two plus three? Answer:"
        direct = httpx.post(
            f"{served.url}/process",
            json={"prompt": prompt, "temperature": 0, "max_new_tokens": 5, "min_new_tokens": 5},
        ).json()
        helm = run_helm_clients(helm_bin, served.url, prompt, direct["tokens"][2]["text"])
        assert helm["tokenizer_ok"] and helm["decoded"] == prompt
        assert helm["echo"]["text"] == prompt
        assert served.state()["Health"]["Status"] in ("starting", "healthy")
        config = served.container.attrs["Config"]
        assert config["User"] == "app"
    finally:
        served.remove()


def _readme_commands(readme: str, section: str) -> list[str]:
    """The shell commands of a README section's code block, continuation lines joined."""
    block = readme.split(section, 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    return block.replace("\\\n", " ").splitlines()


def test_training_image_trains_and_merges_and_the_result_serves(
    tmp_path: Path, tiny_model_dir: Path, base_image: str, docker_client: Any
) -> None:
    """The README's training commands, run as written in a folder with no out/ yet, except: no
    `--gpus all` (no GPU here), and the base model mounted from this machine (no hub)."""
    submission = render_submission("4090", "tiny-train", tmp_path / "tiny-train").path
    write_tiny_dataset(submission / "data" / "train.jsonl")
    smoke_config(submission / "config.yaml", base_model="/base", dataset="data/train.jsonl")
    image = _build(
        submission, "harness-test/tiny-train:latest", base_image, dockerfile="Dockerfile.train"
    )
    # The image's user reads the base model.
    base = Path(shutil.copytree(tiny_model_dir, tmp_path / "base"))
    for path in [base, *base.iterdir()]:
        path.chmod(0o755)
    build, *commands = _readme_commands(
        (submission / "README.md").read_text(), "## 1. Train and merge"
    )
    assert build == "docker build -f Dockerfile.train -t tiny-train-train ."
    run = commands[-1]
    assert run.startswith("docker run --rm --gpus all ") and run.endswith(" tiny-train-train"), run
    commands[-1] = run.replace("--gpus all ", f"--label {TEST_LABEL} -v {base}:/base:ro ").replace(
        " tiny-train-train", " harness-test/tiny-train:latest"
    )
    assert not (submission / "out").exists()
    for command in commands:
        done = subprocess.run(
            ["bash", "-c", command], cwd=submission, capture_output=True, text=True, timeout=900
        )
        assert done.returncode == 0, f"{command}\n{done.stderr[-3000:]}"
    logs = done.stdout + done.stderr
    out = submission / "out"
    assert (submission / "hf-cache").is_dir()
    assert out.stat().st_uid == os.getuid()
    merged = out / "merged"
    assert (merged / "config.json").is_file() and list(merged.glob("*.safetensors")), logs[-3000:]

    assert (merged / "config.json").stat().st_uid == os.getuid()  # the outputs are yours
    shutil.copytree(merged, submission / "model", dirs_exist_ok=True)
    image = _build(submission, "harness-test/tiny-trained:latest", base_image, weights="local")
    served = _serve(docker_client, image)
    try:
        prompt = "### Instruction:\nWhat is 2 plus 3?\n\n### Response:\n"
        answer = httpx.post(
            f"{served.url}/process",
            json={"prompt": prompt, "temperature": 0, "max_new_tokens": 4, "min_new_tokens": 4},
        ).json()
    finally:
        served.remove()
    assert answer["text"] == _greedy_on_host(merged, prompt, 4)


def _greedy_on_host(model_dir: Path, prompt: str, tokens: int) -> str:
    """The merged model's greedy continuation, computed here with plain transformers."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    with torch.inference_mode():
        # transformers annotates from_pretrained's model as a class its generate() does not accept.
        out = model.generate(  # type: ignore[misc]
            ids, do_sample=False, max_new_tokens=tokens, min_new_tokens=tokens, pad_token_id=0
        )
    return str(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True))
