"""`harness run` under chaos, the short seeded version of `make bench-chaos` (100 faults).

Ten faults on six stand-in entries, one of each kind first (kill -9 of the harness, a container
removed, a second harness on the same folder, an engine restart), then reruns until every entry
has a result. The engine restarted is a private dockerd started for this test (tests/harness/
chaos.py), so the machine's own engine and whatever else runs on it are left alone.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import _unavailable
from tests.harness.run.chaos import run_chaos

pytestmark = [pytest.mark.docker, pytest.mark.helm]


def test_harness_run_survives_seeded_chaos(tmp_path: Path, base_image: str, helm_bin: Path) -> None:
    if os.geteuid() != 0 or shutil.which("dockerd") is None:
        _unavailable("the chaos test starts a private dockerd: it needs root and dockerd")
    report = run_chaos(
        tmp_path, faults=10, seed=16, entries=6, restarts=1, base_image=base_image, cover=True
    )
    assert sum(report.faults.values()) == 10 and set(report.faults) == {
        "kill-9", "rm-container", "second-harness", "engine-restart",
    }  # fmt: skip
    assert report.problems == []
    assert report.finished == report.entries
    assert (report.lost, report.duplicates, report.orphans) == (0, 0, 0)
    assert (report.leftover_containers, report.tracebacks) == (0, 0)
    assert (report.second_harness_not_refused, report.restarts_not_exit_3) == (0, 0)
