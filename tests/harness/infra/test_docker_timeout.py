"""A build past its time limit leaves nothing building on the daemon (real engine, real BuildKit).

The daemon runs a build's steps itself: killing only the `docker build` client can leave them
running. The engine here runs on this machine, so the step's process is looked for in /proc.
"""

from __future__ import annotations

import os
import random
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from harness.infra.docker import build
from tests._wait import until
from tests.conftest import TEST_LABELS, _unavailable

pytestmark = pytest.mark.docker


def _running(marker: str) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if marker in cmdline:
            found.append(int(pid))
    return found


def test_a_build_past_its_limit_is_cancelled_on_the_daemon(
    tmp_path: Path, base_image: str, docker_client: Any
) -> None:
    if os.environ.get("DOCKER_HOST", "unix://").split("://")[0] not in ("unix", ""):
        _unavailable("the engine is on another machine: its processes cannot be seen from here")
    seconds = random.randint(100_000, 999_999)  # a marker no other process carries
    (tmp_path / "Dockerfile").write_text(
        f"ARG BASE_IMAGE\nFROM ${{BASE_IMAGE}}\nRUN sleep {seconds}\n"
    )
    marker = f"sleep {seconds}"
    seen: list[int] = []

    def watch() -> None:  # proves the step is visible from here while the build runs
        while not seen and not stop.is_set():
            seen.extend(_running(marker))
            time.sleep(0.2)

    stop = threading.Event()
    watcher = threading.Thread(target=watch)
    watcher.start()
    result = build(
        tmp_path,
        tag="harness-test/too-slow:latest",
        log_path=tmp_path / "build.log",
        build_args={"BASE_IMAGE": base_image},
        labels=TEST_LABELS,
        timeout=20,
    )
    stop.set()
    watcher.join()
    assert result.timed_out and not result.ok
    assert seen, "the build's step never ran: nothing was proved"
    until(lambda: _running(marker) == [], "the daemon stopped running the build's step")
