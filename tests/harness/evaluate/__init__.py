"""Tests of harness/evaluate: `harness eval` and `harness sweep`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from harness.helm.confs import RUNSPECS_DIR, load_conf
from harness.helm.packs import Pack, build_pack
from tests.conftest import REPO

TASKS = RUNSPECS_DIR / "tasks"


def harness(*args: str, timeout: float = 1200) -> subprocess.CompletedProcess[str]:
    """The real command line; wide, so that rich does not fold its messages."""
    return subprocess.run(
        [str(Path(sys.executable).parent / "harness"), *args],
        capture_output=True, text=True, timeout=timeout, cwd=REPO,
        env={**os.environ, "COLUMNS": "400"},
    )  # fmt: skip


def task_pack(folder: Path, *tasks: str) -> Pack:
    """An instance pack of the demo's local tasks (ten instances each), sampled by HELM."""
    conf = folder / "tasks.conf"
    entries = "".join(
        f'  {{description: "local_task:path={TASKS / task}.jsonl", priority: 1, '
        f'scenario: "{task}"}}\n'
        for task in tasks
    )
    conf.write_text(f"entries: [\n{entries}]\n")
    (folder / "data").mkdir()
    return build_pack(
        load_conf(conf), budget=10 * len(tasks), data_dir=folder / "data", out=folder / "pack"
    )
