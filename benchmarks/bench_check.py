"""`harness check` on a competition's worth of entries, beside detect-secrets' own CLI.

    make bench-check        (or: .venv/bin/python benchmarks/bench_check.py [--entries 225])

Generates N entries (225: the NeurIPS 2023 LLM Efficiency Challenge's count) of realistic size in
a temporary folder: each has hundreds of files and a few MB of text (Python sources sampled from
this machine's site-packages, a hash-pinned lockfile, configs, a notebook with base64 image
output, a Dockerfile); every 5th is a git repository with a deleted file in its history, every
7th leaks a token, every 10th is a .zip. Then it times, in the same run:

- `check_entries` over the whole folder (default workers: one process per CPU), and with 1 worker;
- `detect-secrets scan --all-files` (its own CLI, default plugins) on the first
  `--baseline-entries` entries' unpacked files (it is too slow for the whole folder), so both are
  compared per MB and per entry.

The target: the whole folder in under a minute on a 2-core machine.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from harness.checks import check_entries  # noqa: E402
from tests.harness.checks.conftest import GOOD_DOCKERFILE, commit_then_delete  # noqa: E402
from tests.harness.checks.fakes import fake  # noqa: E402

SITE = Path(sys.prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}"
SOURCES_PER_ENTRY = 300


def _corpus() -> list[tuple[str, str]]:
    """Source files of installed packages, 1-40 KB each: real code, comments and docstrings."""
    files = []
    for path in sorted((SITE / "site-packages").glob("*/**/*.py")):
        if 1_000 <= path.stat().st_size <= 40_000:
            files.append((path.name, path.read_text(errors="replace")))
        if len(files) >= 6_000:
            break
    return files


def _lockfile(rng: random.Random) -> str:
    lines = []
    for i in range(150):
        lines.append(f"package-{i}==1.{rng.randrange(30)}.{rng.randrange(10)} \\")
        lines += [f"    --hash=sha256:{rng.randbytes(32).hex()} \\" for _ in range(2)]
        lines.append(f"    --hash=sha256:{rng.randbytes(32).hex()}")
    return "\n".join(lines) + "\n"


def _notebook(rng: random.Random) -> str:
    image = base64.b64encode(rng.randbytes(150_000)).decode()
    cells = [
        {"cell_type": "code", "source": ["import torch\n", "print(torch.__version__)\n"]},
        {"cell_type": "code", "outputs": [{"data": {"image/png": image}}], "source": ["plot()"]},
    ]
    return json.dumps({"cells": cells, "nbformat": 4})


def _write_entry(root: Path, index: int, corpus: list[tuple[str, str]]) -> int:
    """Write entry `index`; returns its size in bytes."""
    rng = random.Random(index)
    files: dict[str, str] = {
        "Dockerfile": GOOD_DOCKERFILE,
        "requirements.txt": _lockfile(rng),
        "configs/train.yaml": "lr: 0.0002\nlora_r: 16\nepochs: 1\n" * 20,
        "notebooks/explore.ipynb": _notebook(rng),
        "fetch_weights.py": "token = None\n",
        "model/config.json": "{}\n",
        "server/main.py": "app = None\n",
    }
    for n, (name, text) in enumerate(rng.sample(corpus, SOURCES_PER_ENTRY)):
        files[f"src/pkg{n % 12}/{n}_{name}"] = text
    if index % 7 == 0:
        files[".env"] = f"HF_TOKEN={fake('Hugging Face token', seed=index)}\n"
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    if index % 5 == 0:
        token = fake("Weights & Biases API key", seed=index)
        commit_then_delete(root, "wandb.env", f"WANDB_API_KEY={token}\n")
    return sum(len(text.encode()) for text in files.values())


def generate(out: Path, count: int) -> tuple[int, list[Path]]:
    corpus = _corpus()
    total = 0
    unpacked: list[Path] = []
    for index in range(count):
        name = f"team-{index:03d}"
        root = out / name
        total += _write_entry(root, index, corpus)
        if index % 10 == 9:
            archive = out / f"{name}.zip"
            with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
                for path in sorted(root.rglob("*")):
                    zf.write(path, path.relative_to(root).as_posix())
            shutil.move(root, out.parent / "unzipped" / name)
            unpacked.append(out.parent / "unzipped" / name)
        else:
            unpacked.append(root)
    return total, unpacked


def _time_check(entries: Path, workers: int | None) -> tuple[float, int]:
    start = time.perf_counter()
    reports = check_entries(entries, workers=workers)
    return time.perf_counter() - start, sum(r.status == "flagged" for r in reports)


def _time_detect_secrets(folders: list[Path], scratch: Path) -> float:
    """detect-secrets' CLI over copies of the same files (without .git: it reads the work tree)."""
    target = scratch / "baseline"
    for folder in folders:
        shutil.copytree(folder, target / folder.name, ignore=shutil.ignore_patterns(".git"))
    cli = Path(sys.executable).parent / "detect-secrets"
    start = time.perf_counter()
    subprocess.run(
        [str(cli), "scan", "--all-files", "."],
        cwd=target,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=225)
    parser.add_argument("--baseline-entries", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-check-") as scratch_name:
        scratch = Path(scratch_name)
        entries = scratch / "entries"
        entries.mkdir()
        (scratch / "unzipped").mkdir()
        start = time.perf_counter()
        total, unpacked = generate(entries, args.entries)
        mb = total / 1e6
        print(
            f"generated {args.entries} entries, {mb:.0f} MB of text, "
            f"{SOURCES_PER_ENTRY + 6} files each, in {time.perf_counter() - start:.0f} s "
            f"on {os.cpu_count()} CPUs"
        )
        rows = []
        for label, workers in (
            ("harness check (1 process per CPU)", None),
            ("harness check (1 process)", 1),
        ):
            seconds, flagged = _time_check(entries, workers)
            rows.append((label, args.entries, mb, seconds, f"{flagged} flagged"))
        sample = unpacked[: args.baseline_entries]
        sample_mb = sum(
            p.stat().st_size for folder in sample for p in folder.rglob("*")
            if p.is_file() and ".git" not in p.parts
        ) / 1e6  # fmt: skip
        seconds = _time_detect_secrets(sample, scratch)
        rows.append(("detect-secrets scan --all-files", len(sample), sample_mb, seconds, ""))
        print(f"{'':36} {'entries':>7} {'MB':>7} {'s':>7} {'entries/s':>10} {'MB/s':>7}")
        for label, count, size, secs, note in rows:
            print(
                f"{label:36} {count:7d} {size:7.0f} {secs:7.1f} {count / secs:10.2f} "
                f"{size / secs:7.1f}  {note}"
            )
        whole = rows[0][3]
        verdict = "met" if whole < 60 else "MISSED"
        print(f"target: whole folder under 60 s -> {whole:.1f} s ({verdict})")


if __name__ == "__main__":
    main()
