"""An entry's processes on this machine, found by the folder they work in (its HELM folder:
helm-run and its children), so that whoever watches an evaluation can tell it is frozen and end
it: the service's queue for the local executor, the Ray task on its node for the fleet.

    pids = entry_processes(job.helm_dir)
    frozen(pids) -> bool    stopped by a signal (SIGSTOP, a debugger: state T or t)
    kill(pids)
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterable
from contextlib import suppress
from pathlib import Path

_PROC = Path("/proc")


def entry_processes(folder: Path) -> list[int]:
    """The processes of this machine working in `folder` or below it (their current directory)."""
    target = folder.resolve()
    found = []
    for entry in _PROC.iterdir() if _PROC.is_dir() else ():
        if not entry.name.isdigit():
            continue
        with suppress(OSError):  # gone meanwhile, or not ours to read
            cwd = Path(os.readlink(entry / "cwd"))
            if cwd == target or target in cwd.parents:
                found.append(int(entry.name))
    return found


def state(pid: int) -> str | None:
    """The process's state letter from /proc/PID/stat (None when it is gone)."""
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # "PID (COMMAND) STATE ...": the command may hold spaces and parentheses.
    return stat[stat.rindex(")") + 2 :].split(" ", 1)[0]


def frozen(pids: Iterable[int]) -> bool:
    """Whether any of `pids` is stopped by a signal or a tracer."""
    return any(state(pid) in ("T", "t") for pid in pids)


def kill(pids: Iterable[int]) -> None:
    """SIGKILL each process and its process group (helm-run leads its own); a stopped process
    dies of SIGKILL too."""
    for pid in pids:
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(os.getpgid(pid), signal.SIGKILL)
        with suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
