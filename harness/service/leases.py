"""What a running entry's lease watches on this machine, and its hard ceiling.

The queue renews the lease of each entry it runs every heartbeat, unless the entry's evaluation
is frozen: a process working in the entry's HELM folder (helm-run and its children) stopped by a
signal (SIGSTOP, a debugger; state T or t in /proc/PID/stat). A lease not renewed for its length
lapses: the queue kills those processes, removes the entry's containers and queues it again as an
infrastructure failure. The ceiling bounds an entry however it behaves: its build limit, the
health checks' schedule, the stage's limit and HELM's grace after it, plus CEILING_MARGIN_S.

    pids = entry_processes(job.helm_dir)
    frozen(pids) -> bool
    kill(pids)
    ceiling_s(options) -> seconds
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterable
from contextlib import suppress
from pathlib import Path

from harness.run.options import RunOptions

CEILING_MARGIN_S = 600.0
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


def _state(pid: int) -> str | None:
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # "PID (COMMAND) STATE ...": the command may hold spaces and parentheses.
    return stat[stat.rindex(")") + 2 :].split(" ", 1)[0]


def frozen(pids: Iterable[int]) -> bool:
    """Whether any of `pids` is stopped by a signal or a tracer."""
    return any(_state(pid) in ("T", "t") for pid in pids)


def kill(pids: Iterable[int]) -> None:
    """SIGKILL each process and its process group (helm-run leads its own); a stopped process
    dies of SIGKILL too."""
    for pid in pids:
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(os.getpgid(pid), signal.SIGKILL)
        with suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def ceiling_s(options: RunOptions) -> float:
    """The longest an entry may run under `options`, whatever it does."""
    health = options.health.tries * options.health.interval_s
    return (
        options.build_timeout_s
        + health
        + options.stage_limit_s
        + options.helm_grace_s
        + CEILING_MARGIN_S
    )
