"""Every blob stored in a `.git` folder, deleted files and unreachable objects included.

The repository comes from an untrusted entry: git runs with no system or global configuration,
with hooks, fsmonitor and remote protocols disabled, and only plumbing that reads objects.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

_SAFE = (
    "-c", "safe.directory=*", "-c", "core.fsmonitor=false", "-c", "core.hooksPath=/dev/null",
    "-c", "protocol.allow=never",
)  # fmt: skip
_ENV = {
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_NO_LAZY_FETCH": "1",
    "GIT_OPTIONAL_LOCKS": "0",
}


class GitError(Exception):
    """The folder is not a repository git can read."""


@dataclass(frozen=True, slots=True)
class Blob:
    sha: str
    name: str  # a path the blob had in some commit, or "" for an unreachable object
    data: bytes


def _git(git_dir: Path, *args: str, stdin: bytes | None = None) -> bytes:
    env = {**_ENV, "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    try:
        done = subprocess.run(
            ["git", *_SAFE, f"--git-dir={git_dir}", *args],
            input=stdin,
            capture_output=True,
            env=env,
            check=False,
            timeout=300,
        )
    except subprocess.TimeoutExpired as exc:
        raise GitError(f"git {args[0]} timed out") from exc
    if done.returncode != 0:
        lines = done.stderr.decode("utf-8", "replace").strip().splitlines()
        raise GitError(lines[-1] if lines else f"git {args[0]} failed")
    return done.stdout


def blob_sha(data: bytes) -> str:
    """The object id git gives a file's content (to skip history blobs equal to a scanned file)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def blobs(git_dir: Path, max_bytes: int, skip: set[str]) -> Iterator[Blob]:
    """Each blob up to `max_bytes` whose id is not in `skip`, with a path it had if reachable."""
    names: dict[str, str] = {}
    # A repository without commits has nothing reachable: rev-list then fails, and that is fine.
    try:
        listing = _git(git_dir, "rev-list", "--all", "--reflog", "--objects")
    except GitError:
        listing = b""
    for line in listing.decode("utf-8", "replace").splitlines():
        sha, _, name = line.partition(" ")
        if name:
            names.setdefault(sha, name)
    check = _git(
        git_dir,
        "cat-file",
        "--batch-all-objects",
        "--batch-check=%(objectname) %(objecttype) %(objectsize)",
    )
    wanted = []
    for line in check.decode().splitlines():
        sha, kind, size = line.split()
        if kind == "blob" and int(size) <= max_bytes and sha not in skip:
            wanted.append(sha)
    if not wanted:
        return
    out = _git(git_dir, "cat-file", "--batch", stdin="\n".join(wanted).encode() + b"\n")
    position = 0
    while position < len(out):
        header_end = out.index(b"\n", position)
        sha, _, size = out[position:header_end].decode().split()
        start = header_end + 1
        end = start + int(size)
        yield Blob(sha, names.get(sha, ""), out[start:end])
        position = end + 1
