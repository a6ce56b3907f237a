"""One way for a test to wait: poll a condition until it holds, and fail saying what never happened.

    until(server_is_up, "the server answered /health", timeout_s=60,
          check=lambda: None if process.poll() is None else f"it exited: {log.read_text()}")

`until` returns the condition's first truthy value, so a test can wait for a thing and use it.
`check`, when given, runs before every poll and returns why waiting is pointless (the process
under test died), or None: the test then fails at once instead of at the deadline.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal, TypeVar

T = TypeVar("T")


def until(
    condition: Callable[[], T | Literal[False] | None],
    what: str,
    *,
    timeout_s: float = 30,
    interval_s: float = 0.1,
    check: Callable[[], str | None] | None = None,
) -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        if check is not None and (problem := check()) is not None:
            raise AssertionError(f"waiting until {what}: {problem}")
        if value := condition():
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout_s:g} s waiting until {what}"
        time.sleep(interval_s)
