"""`make demo`: the organizer's main job end to end, on CPU, with tiny models and no hub.

    .venv/bin/python scripts/demo.py [--work build/demo]

1. Render two submissions for track 4090. Train one for a few QLoRA steps (4-bit, on the CPU) on a
   tiny local dataset and merge it; give the other the untrained tiny model.
2. Add a third, broken entry: an unpinned `pip install` and a (fake) leaked Hugging Face token.
3. `harness run` the folder: static checks, real Docker builds on the local base image, each
   container served behind the gateway and scored by real HELM on the offline run specs.
4. Print the leaderboard (also written as leaderboard.md/.json/.html in the results folder).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from harness.store import Store
from harness.submission import render_submission, smoke_config, use_weights
from harness.tiny_model import write_tiny_dataset, write_tiny_model

REPO = Path(__file__).resolve().parent.parent
BASE_IMAGE = "harness-base:bookworm"
FAKE_TOKEN = "hf_" + "DemoOnlyNotARealTokenAbCdEfGh1234"  # shaped like one, valid nowhere


def step(message: str) -> None:
    print(f"\n==> {message}", flush=True)


def train_entry(entries: Path, base_model: Path) -> None:
    """A submission trained the way a competitor does it: train.py, then merge.py, then model/."""
    submission = render_submission("4090", "qlora-trained", entries / "qlora-trained").path
    write_tiny_dataset(submission / "data" / "train.jsonl")
    smoke_config(submission / "config.yaml", base_model=str(base_model), dataset="data/train.jsonl")
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

    step("harness run: check, build, serve and score every entry with HELM (offline run specs)")
    command = [
        str(Path(sys.executable).parent / "harness"),
        "run", str(entries),
        "--track", "4090", "--stage", "open", "--out", str(work / "results"),
        "--run-specs", "offline", "--max-eval-instances", str(args.max_eval_instances),
        "--base-image", BASE_IMAGE, "--deadline-minutes", "20",
        "--health-tries", "60", "--health-interval", "5", "--max-sequence-length", "256",
    ]  # fmt: skip
    code = subprocess.run(command).returncode
    # The broken entry makes `harness run` exit 1; the demo fails if anything else went wrong.
    with Store(work / "results") as store:
        statuses = {name: r.status.value for name, r in store.results("open").items()}
    expected = {"broken": "flagged", "qlora-trained": "scored", "untrained": "scored"}
    if code != 1 or statuses != expected:
        sys.exit(f"demo failed: harness run exited {code} with statuses {statuses}")
    step(f"done: open {work / 'results' / 'leaderboard.html'} for the sortable leaderboard")


if __name__ == "__main__":
    main()
