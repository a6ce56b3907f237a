"""One harness per results folder, and no process left behind by one that was killed outright.

Real processes throughout: a holder is a separate Python process killed with SIGKILL, as an
operator's `kill -9` or the OOM killer would.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from harness.errors import InfrastructureError
from harness.infra.lock import CHILD_MARKER, hold_results_lock
from tests._wait import until
from tests.conftest import REPO

# Takes the lock, starts `sleep` children (one that dies with it, one that escapes: a grandchild
# would), prints their pids and waits to be killed.
HOLDER = textwrap.dedent(
    """
    import subprocess, sys, time
    from pathlib import Path
    from harness.infra.lock import die_with_parent, hold_results_lock

    with hold_results_lock(Path(sys.argv[1]), "harness run entries/ --out results/"):
        bound = subprocess.Popen(["sleep", "300"], preexec_fn=die_with_parent)
        escaped = subprocess.Popen(["sleep", "300"], start_new_session=True)
        print(bound.pid, escaped.pid, flush=True)
        time.sleep(300)
    """
)


# Another harness process trying the folder: prints the exit code and message it was refused with.
CONTENDER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from harness.errors import InfrastructureError
    from harness.infra.lock import hold_results_lock

    try:
        with hold_results_lock(Path(sys.argv[1]), "harness serve results/"):
            print("held")
    except InfrastructureError as exc:
        print(exc.exit_code, exc)
    """
)


def _second_process_is_refused(folder: Path) -> str:
    result = subprocess.run(
        [sys.executable, "-c", CONTENDER, str(folder)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=True,
    )
    code, _, message = result.stdout.partition(" ")
    assert code == "3", result.stdout + result.stderr
    return message


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie, dead but not yet reaped by its parent, is not alive)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False


def wait_dead(pid: int) -> bool:
    return until(lambda: not alive(pid), f"process {pid} ended", timeout_s=10)


def test_a_second_holder_is_refused_with_the_first_ones_name(tmp_path: Path) -> None:
    with hold_results_lock(tmp_path, "harness run entries/ --out results/") as holder:
        assert holder.pid == os.getpid()
        assert os.environ[CHILD_MARKER] == str(tmp_path.resolve())
        message = _second_process_is_refused(tmp_path)
        assert f"pid {os.getpid()}" in message
        assert "`harness run entries/ --out results/`" in message
    assert CHILD_MARKER not in os.environ
    with hold_results_lock(tmp_path, "harness reproduce"):  # free again once released
        pass


def test_a_killed_holder_leaves_no_stuck_lock_and_no_process(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert holder.stdout is not None
        bound, escaped = (int(pid) for pid in holder.stdout.readline().split())
        with (
            pytest.raises(InfrastructureError, match=f"pid {holder.pid}"),
            hold_results_lock(tmp_path, "harness run"),
        ):
            pass
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
        assert wait_dead(bound), "the child started with die_with_parent outlived the harness"
        assert alive(escaped)  # reparented: only the next harness on the folder can find it
        with hold_results_lock(tmp_path, "harness run"):
            assert wait_dead(escaped), "the next harness did not kill the leftover"
    finally:
        holder.kill()
        holder.wait()


def test_the_lock_file_is_not_a_pid_file(tmp_path: Path) -> None:
    # A lock file left behind with a live-looking holder's name does not block anyone.
    (tmp_path / ".harness.lock").write_text(
        '{"pid": 1, "command": "harness run", "started_at": 0}\n'
    )
    with hold_results_lock(tmp_path, "harness run") as holder:
        assert holder.command == "harness run"


def test_a_nested_hold_in_the_same_process_is_the_same_hold(tmp_path: Path) -> None:
    # `harness run --tiers` holds the folder across tiers while each tier's run takes it again.
    with hold_results_lock(tmp_path, "harness run --tiers 10,20") as outer:
        with hold_results_lock(tmp_path, "harness run") as inner:
            assert inner == outer
        _second_process_is_refused(tmp_path)  # still held after the inner block
