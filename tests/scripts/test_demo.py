"""`make demo` end to end, smaller: two real submissions (one QLoRA-trained) and a broken entry."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = [pytest.mark.docker, pytest.mark.helm]


def test_demo_trains_builds_serves_scores_and_ranks(
    tmp_path: Path, base_image: str, helm_bin: Path
) -> None:
    work = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "demo.py"), "--work", str(work),
         "--max-eval-instances", "2"],
        capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    board = json.loads((work / "results" / "leaderboard.json").read_text())
    statuses = {row["entry"]: row["status"] for row in board["rows"]}
    assert statuses == {"qlora-trained": "scored", "untrained": "scored", "broken": "flagged"}
    assert (work / "results" / "leaderboard.html").is_file()
    stored = "".join(
        p.read_text(errors="replace") for p in (work / "results").rglob("*") if p.is_file()
    )
    assert "DemoOnlyNotARealToken" not in stored  # the broken entry's fake token, redacted
