"""HELM-shaped training data: prompt/completion rows from a scenario's train split, built by HELM's
own scenario and adapter code (`plugins/helm_style.py`, run in the HELM environment), so that
training prompts have the instructions, in-context examples and `Question:`/`Answer:` framing
the evaluation will send.

    harness data helm-style mmlu:subject=anatomy --data-dir RAW --out rows.jsonl [--shots K]

Each row is `{"prompt", "completion", "scenario"}`: the training template reads it as format
`prompt-completion`. With `--split test --shots 0` it writes a scenario's evaluation instances
alone, which the template's `curation.decontaminate` accepts as a raw test split (with shots,
the prompts would also hold train-split examples, and training rows sharing them would go).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from harness.errors import ConfigError
from harness.helm.runner import PLUGIN, check_helm, run_helper

SHAPER = Path(__file__).resolve().parent / "plugins" / "helm_style.py"
SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class StyleResult:
    run_spec: str  # HELM's run-spec name (model argument left out)
    method: str  # HELM's adaptation method: generation or multiple_choice_joint
    rows: int
    split: str
    shots: int  # in-context examples in the longest prompt
    train_instances: int  # the train split they were drawn from
    out: Path


def helm_style(
    description: str,
    *,
    data_dir: Path,
    out: Path,
    split: str = "train",
    shots: int | None = None,
    seed: int = 0,
    bin_dir: Path | None = None,
    timeout_s: float = 3600,
) -> StyleResult:
    """Write `out` (JSONL) from the `split` instances of the run entry `description`, whose raw
    files lie under `data_dir` in HELM's `benchmark_output/scenarios/` layout.

    `shots` replaces the run spec's number of in-context examples. A local task's `path=` is
    resolved against the current folder. Nothing is written when HELM fails.
    """
    if split not in SPLITS:
        raise ConfigError(f"--split {split!r}: choose one of {', '.join(SPLITS)}")
    if shots is not None and shots < 0:
        raise ConfigError(f"--shots {shots}: must be 0 or more")
    if not data_dir.is_dir():
        raise ConfigError(f"--data-dir {data_dir} is not a folder")
    python = check_helm(bin_dir) / "python"
    with tempfile.TemporaryDirectory(prefix="harness-helm-style-") as tmp:
        staging = Path(tmp)
        request = {
            "data_dir": str(data_dir.resolve()),
            "plugins": [str(PLUGIN)],
            "description": _absolute_task_path(description),
            "split": split,
            "shots": shots,
            "seed": seed,
        }
        rows = run_helper(
            python, SHAPER, staging, request,
            output="rows.jsonl", what=f"shaping {description}", timeout_s=timeout_s,
        )  # fmt: skip
        *lines, last = rows.read_text(encoding="utf-8").splitlines()
        summary = json.loads(last)["summary"]
        if "error" in summary:
            raise ConfigError(f"{description}: {summary['error']}")
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = out.with_name(out.name + ".partial")
        partial.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        partial.replace(out)
    return StyleResult(
        run_spec=summary["run_spec"],
        method=summary["method"],
        rows=summary["rows"],
        split=split,
        shots=summary["shots"],
        train_instances=summary["train_instances"],
        out=out,
    )


def _absolute_task_path(description: str) -> str:
    """A local task's `path=` made absolute: HELM runs in a staging folder."""
    name, _, args = description.partition(":")
    if name != "local_task":
        return description
    parts = [part.split("=", 1) for part in args.split(",") if part]
    if any(len(part) != 2 for part in parts):
        raise ConfigError(f"{description}: arguments must be key=value")
    resolved = {key: value for key, value in parts}
    if "path" not in resolved:
        raise ConfigError(f"{description}: a local task needs path=FILE")
    task = Path(resolved["path"]).expanduser().resolve()
    if not task.is_file():
        raise ConfigError(f"{description}: {task} is not a file")
    resolved["path"] = str(task)
    return "local_task:" + ",".join(f"{key}={value}" for key, value in resolved.items())
