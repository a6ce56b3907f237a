"""Training throughput and peak memory of templates/train/train.py on the tiny model, on CPU.

    make bench-train        (or: .venv/bin/python benchmarks/bench_train.py [--steps 30])

Three runs of the real script, each in its own process so each peak is its own: the shipped
setting (4-bit NF4 QLoRA with gradient checkpointing and NEFTune) and two baselines in the same
run: the same without gradient checkpointing, and LoRA on the full-precision base. On CPU the
"peak memory" is the process's peak resident set (the whole Python process, so mostly the
libraries); on a GPU train.py reports torch's peak allocation instead.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from harness.submission.tiny_model import write_tiny_model

TRAIN_DIR = Path(__file__).resolve().parent.parent / "templates" / "train"
VARIANTS: dict[str, dict[str, Any]] = {
    "QLoRA nf4 + checkpointing (shipped)": {},
    "QLoRA nf4, no checkpointing": {"gradient_checkpointing": False},
    "LoRA on float32 base": {"quantization": {"mode": "none", "compute_dtype": "float32"}},
}


def write_data(path: Path, count: int = 400) -> None:
    rows = [
        {
            "instruction": f"question {i} : what is {i} plus {i % 13} ?",
            "output": f"it is {i + i % 13} .",
        }
        for i in range(count)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def run(work: Path, name: str, changes: dict[str, Any], steps: int, model: Path) -> dict[str, Any]:
    out = work / name.split()[0].lower() / str(len(changes))
    config = {
        "track": "4090",
        "base_model": str(model),
        "datasets": [{"source": str(work / "data.jsonl"), "format": "alpaca"}],
        "quantization": {"mode": "nf4", "compute_dtype": "float32"},
        "lora": {"r": 16, "target_modules": "all-linear"},
        "max_steps": steps,
        "micro_batch_size": 8,
        "max_seq_len": 128,
        "save_steps": 10_000,
        "logging_steps": steps,
        "output_dir": str(out),
        **changes,
    }
    out.mkdir(parents=True)
    path = out / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [sys.executable, "train.py", "--config", str(path)],
        cwd=TRAIN_DIR,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if result.returncode != 0:
        sys.exit(f"{name}: train.py failed:\n{result.stderr[-3000:]}")
    summary: dict[str, Any] = json.loads((out / "train_summary.json").read_text())
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = write_tiny_model(work / "model")
        write_data(work / "data.jsonl")
        print(f"tiny Llama (hidden 64, 2 layers), {args.steps} steps x 8 sequences, CPU")
        print(f"{'run':<38} {'tokens/s':>10} {'peak RSS GiB':>13} {'tokens':>8}")
        for name, changes in VARIANTS.items():
            summary = run(work, name, changes, args.steps, model)
            print(
                f"{name:<38} {summary['tokens_per_s']:>10.0f} "
                f"{summary['peak_memory_gib']:>13.3f} {summary['tokens_seen']:>8}"
            )


if __name__ == "__main__":
    main()
