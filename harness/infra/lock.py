"""One harness per results folder, and nothing left running by one that died.

`hold_results_lock(folder, command)` takes an OS file lock (`flock`) on RESULTS_DIR/.harness.lock
for as long as the block runs. The kernel releases it when the holder dies, however it dies (a
pid file alone would stay behind after `kill -9`), so a lock can never be stuck. The file says
who holds it (pid, command, start time), so a second harness refuses with a message naming it.

Children the harness starts (helm-run, docker CLI builds) must not outlive it:
- `die_with_parent` (a `preexec_fn`) asks the kernel to SIGKILL the child when the harness
  thread that started it ends, `kill -9` included (PR_SET_PDEATHSIG);
- while the lock is held, every child inherits `HARNESS_RESULTS=<folder>` in its environment, so
  the next harness on the folder finds whatever escaped (a grandchild, a child started in the
  instant before the parent died) in /proc and kills it before it starts.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import shlex
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from harness.errors import InfrastructureError

LOCK_FILENAME = ".harness.lock"
CHILD_MARKER = "HARNESS_RESULTS"
_PR_SET_PDEATHSIG = 1
# Loaded here, not in the forked child: dlopen after fork in a threaded process can deadlock.
_LIBC = ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True)
class Holder:
    """Who holds a results folder's lock."""

    pid: int
    command: str
    started_at: float

    def describe(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started_at))
        return f"`{self.command}` (pid {self.pid}, since {since})"


# Folders this process holds (resolved path -> holder): a nested hold (`harness run --tiers` runs
# one `harness run` a tier under one lock) is the same hold, never a moment without it.
_HELD: dict[str, Holder] = {}


def _read_holder(path: Path) -> Holder | None:
    try:
        raw = json.loads(path.read_text())
        return Holder(int(raw["pid"]), str(raw["command"]), float(raw["started_at"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None  # the holder is between taking the lock and writing its name


@contextmanager
def hold_results_lock(folder: Path, command: str) -> Iterator[Holder]:
    """Hold RESULTS_DIR's lock for the block, or raise InfrastructureError (exit code 3) naming
    the process that holds it. Leftover processes of a dead harness on `folder` are killed first.
    """
    folder.mkdir(parents=True, exist_ok=True)
    if (held := _HELD.get(_marker(folder))) is not None:
        yield held
        return
    path = folder / LOCK_FILENAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                raise InfrastructureError(f"cannot lock {path}: {exc.strerror}") from exc
            holder = _read_holder(path)
            who = holder.describe() if holder else "another harness process"
            raise InfrastructureError(
                f"{folder} is in use by {who}; one harness at a time per results folder: "
                "wait for it, stop it, or choose another folder"
            ) from None
        kill_leftovers(folder)
        holder = Holder(os.getpid(), command, time.time())
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder.__dict__).encode() + b"\n", 0)
        previous = os.environ.get(CHILD_MARKER)
        os.environ[CHILD_MARKER] = _marker(folder)
        _HELD[_marker(folder)] = holder
        try:
            yield holder
        finally:
            del _HELD[_marker(folder)]
            if previous is None:
                os.environ.pop(CHILD_MARKER, None)
            else:
                os.environ[CHILD_MARKER] = previous
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the lock


def command_line() -> str:
    """This process's command line, as a holder's name."""
    return shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else str(os.getpid())


def _marker(folder: Path) -> str:
    return str(folder.resolve())


def kill_leftovers(folder: Path) -> list[int]:
    """SIGKILL every process (but this one) started by a harness on `folder`; returns their pids.

    Only call it while holding the folder's lock: then no live harness owns those processes.
    """
    wanted = f"{CHILD_MARKER}={_marker(folder)}".encode()
    killed = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:  # gone, or another user's
            continue
        if wanted in environ:
            try:
                os.kill(int(proc.name), signal.SIGKILL)
                killed.append(int(proc.name))
            except ProcessLookupError:
                pass
    return killed


def die_with_parent() -> None:
    """A `preexec_fn`: the child gets SIGKILL when the thread that started it ends."""
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
