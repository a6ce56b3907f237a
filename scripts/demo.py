"""`make demo`: the organizer's main job end to end, on CPU, with tiny models and no hub.

    .venv/bin/python scripts/demo.py [--work build/demo]

1. Render two submissions for track 4090. QLoRA-train one (4-bit, on the CPU, ~20 s) on a local
   task's questions, "Is 4 even?" -> "yes", worded the way HELM will ask them, and merge it; give
   the other the untrained tiny model.
2. Add a third, broken entry: an unpinned `pip install` and a (fake) leaked Hugging Face token.
3. `harness run` the folder: static checks, real Docker builds on the local base image, each
   container served behind the gateway and scored by real HELM on the demo's run specs
   (harness/helm/runspecs/demo.conf: that task and a few offline HELM scenarios).
4. Print the leaderboard (also written as leaderboard.md/.json/.html, with a page per entry and
   the figures, in the results folder) and the reviewer's next command: `harness reproduce`.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from harness.helm.confs import RUNSPECS_DIR
from harness.store import Store
from harness.submission.render import render_submission, smoke_config, use_weights
from harness.submission.tiny_model import write_tiny_model

REPO = Path(__file__).resolve().parent.parent
BASE_IMAGE = "harness-base:bookworm"
RUN_SPECS = RUNSPECS_DIR / "demo.conf"
TASK = RUNSPECS_DIR / "tasks" / "parity.jsonl"
# HELM's generation prompt for a local task (harness/helm/plugins/local_tasks.py: its instructions,
# input and output nouns, no in-context examples); the trained entry learns to complete it.
HELM_PROMPT = "Answer the following questions briefly.\n\nQuestion: {}\nAnswer:"
# Enough optimizer steps for the tiny model to answer all ten questions (~20 s on two cores). With
# the lm_head adapter (below), 0.006 made the loss spike and stall at "yes or no, not which" for
# one seed in two; at 0.003 every seed tried (3, 6, 7) reached a per-token loss of ~0.002. The demo
# fixes one of them, so its result (and its test) is the same on every run; a competitor's config
# leaves `seed: null` (drawn from the OS and logged).
TRAINING = {
    "max_steps": 120,
    "learning_rate": 0.003,
    "micro_batch_size": 10,
    "save_steps": 1000,
    "seed": 7,
}
LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
FAKE_TOKEN = "hf_" + "DemoOnlyNotARealTokenAbCdEfGh1234"  # shaped like one, valid nowhere


def step(message: str) -> None:
    print(f"\n==> {message}", flush=True)


def write_task_dataset(path: Path) -> None:
    """The task's questions and answers as prompt-completion pairs, in HELM's own wording."""
    rows = [json.loads(line) for line in TASK.read_text().splitlines() if line.strip()]
    path.parent.mkdir(parents=True, exist_ok=True)
    pairs = [
        {"prompt": HELM_PROMPT.format(row["input"]), "completion": " " + row["answer"]}
        for row in rows
    ]
    path.write_text("".join(json.dumps(pair) + "\n" for pair in pairs))


def configure_task_training(submission: Path, base_model: Path) -> None:
    """Point a rendered submission's config.yaml at the task's questions and `base_model`, with
    the settings that make the tiny model learn them (`harness sweep`'s test varies these)."""
    write_task_dataset(submission / "data" / "train.jsonl")
    config_path = submission / "config.yaml"
    smoke_config(config_path, base_model=str(base_model), dataset="data/train.jsonl")
    config = yaml.safe_load(config_path.read_text())
    config.update(TRAINING, neftune_noise_alpha=None, prompt_template="{prompt}")
    config["datasets"] = [{"source": "data/train.jsonl", "format": "prompt-completion"}]
    # The tiny model's logits cannot leave about +-1.3 (a final RMSNorm, then an lm_head of std
    # 0.02 that adapters on the decoder layers never touch): its loss cannot fall below ~4.8 and
    # "yes" wins by a hair, or not at all. An adapter on lm_head lets it answer with confidence.
    config["lora"].update(r=32, alpha=64, target_modules=[*LINEARS, "lm_head"])
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))


def train_entry(entries: Path, base_model: Path) -> None:
    """A submission trained the way a competitor does it: train.py, then merge.py, then model/."""
    submission = render_submission("4090", "qlora-trained", entries / "qlora-trained").path
    configure_task_training(submission, base_model)
    for script in ("train.py", "merge.py"):
        subprocess.run(
            [sys.executable, script, "--config", "config.yaml"], cwd=submission, check=True
        )
    # What a competitor does after training: the merged model becomes the served one.
    use_weights(submission, submission / "out" / "merged")
    shutil.rmtree(submission / "out")


def broken_entry(entries: Path) -> None:
    entry = entries / "broken"
    entry.mkdir()
    (entry / "Dockerfile").write_text(
        "FROM python:3.11\n"
        "RUN pip install torch transformers fastapi uvicorn\n"
        f'ENV HUGGINGFACE_TOKEN="{FAKE_TOKEN}"\n'
        "COPY main.py /app/main.py\n"
        'CMD ["uvicorn", "main:app", "--app-dir", "/app", "--port", "80"]\n'
    )
    (entry / "main.py").write_text("from fastapi import FastAPI\n\napp = FastAPI()\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=REPO / "build" / "demo")
    parser.add_argument("--max-eval-instances", type=int, default=5)
    args = parser.parse_args()
    work: Path = args.work
    shutil.rmtree(work, ignore_errors=True)
    entries = work / "entries"
    entries.mkdir(parents=True)

    step("a tiny random Llama and a locally trained tokenizer (no download)")
    base_model = write_tiny_model(work / "tiny-base")
    step("entry 1: QLoRA-train the tiny model for a few steps on the CPU, then merge")
    train_entry(entries, base_model)
    step("entry 2: a submission serving the untrained tiny model")
    render_submission("4090", "untrained", entries / "untrained", model_dir=base_model)
    step("entry 3: a broken entry (unpinned install, leaked token)")
    broken_entry(entries)

    step("harness run: check, build, serve and score every entry with HELM (demo run specs)")
    command = [
        str(Path(sys.executable).parent / "harness"),
        "run", str(entries),
        "--track", "4090", "--stage", "open", "--out", str(work / "results"),
        "--run-specs", str(RUN_SPECS), "--max-eval-instances", str(args.max_eval_instances),
        "--base-image", BASE_IMAGE, "--deadline-minutes", "20",
        "--health-tries", "60", "--health-interval", "5", "--max-sequence-length", "256",
    ]  # fmt: skip
    code = subprocess.run(command).returncode
    # The broken entry makes `harness run` exit 1; the demo fails if anything else went wrong.
    with Store(work / "results") as store:
        statuses = {name: r.status.value for name, r in store.results("open").items()}
        parity = {
            entry: metric.value
            for entry, metrics in store.metrics("open").items()
            for metric in metrics
            if metric.scenario == "parity"
        }
    expected = {"broken": "flagged", "qlora-trained": "scored", "untrained": "scored"}
    if code != 1 or statuses != expected:
        sys.exit(f"demo failed: harness run exited {code} with statuses {statuses}")
    print(
        "parity (is a digit even?), quasi-exact match: "
        + ", ".join(f"{entry} {value or 0:.2f}" for entry, value in sorted(parity.items()))
        + ": the trained entry learned the task's answers, the untrained one did not."
    )
    step(f"done: open {work / 'results' / 'leaderboard.html'} for the leaderboard")
    reproduce = [
        str(Path(sys.executable).parent / "harness"), "reproduce", str(entries / "qlora-trained"),
        "--track", "4090",
        "--results", str(work / "results"), "--time-limit", "10m", "--base-image", BASE_IMAGE,
        "--mount", f"{base_model}:{base_model}",
    ]  # fmt: skip
    print(
        "A reviewer's next step: re-run the trained entry's training in its own image (the tiny "
        "base model mounted where its config.yaml points), rebuild, re-score and compare:\n"
        f"    {shlex.join(reproduce)}"
    )


if __name__ == "__main__":
    main()
