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
    # The trained entry was fine-tuned on the parity task's questions: it answers them, the
    # untrained model does not, and the leaderboard ranks it first there and overall.
    rows = {row["entry"]: row for row in board["rows"]}
    trained, untrained = rows["qlora-trained"]["scenarios"], rows["untrained"]["scenarios"]
    assert trained["parity"]["value"] == 1.0  # not 0.5: it tells even from odd, not only yes/no
    assert (untrained["parity"]["value"] or 0) < 1.0
    assert trained["parity"]["win_rate"] == 1.0
    assert board["rows"][0]["entry"] == "qlora-trained"
    html = (work / "results" / "leaderboard.html").read_text()
    assert html.count("<svg") == 4
    assert len(list((work / "results" / "leaderboard").glob("*.html"))) == 3
    # The reviewer's next command, with the mount the training image needs for the base model.
    base = work / "tiny-base"
    assert f"reproduce {work / 'entries' / 'qlora-trained'} --track 4090" in result.stdout
    assert f"--mount {base}:{base}" in result.stdout
    stored = "".join(
        p.read_text(errors="replace") for p in (work / "results").rglob("*") if p.is_file()
    )
    assert "DemoOnlyNotARealToken" not in stored  # the broken entry's fake token, redacted
