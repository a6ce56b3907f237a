"""Waiting for an entry's server to come up, the way the competition's organizers did.

They posted `{"prompt": "The capital of France is "}` to /process, 10 tries 120 s apart. A server
that answers GET /health is asked that instead (it says when the model has loaded); one that does
not know /health (404/405) gets the organizers' request.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx

PROBE = {"prompt": "The capital of France is "}


@dataclass(frozen=True)
class HealthSchedule:
    tries: int = 10
    interval_s: float = 120.0
    # Polled this often between tries, so a quick server does not wait a whole interval.
    poll_s: float = 2.0


@dataclass(frozen=True)
class Health:
    healthy: bool
    seconds: float
    reason: str


def _probe(client: httpx.Client, url: str) -> tuple[bool, str]:
    try:
        response = client.get(f"{url}/health")
        if response.status_code in (404, 405):
            response = client.post(f"{url}/process", json=PROBE)
    except httpx.HTTPError as exc:
        return False, f"{type(exc).__name__}: {exc}"
    if response.status_code == 200:
        return True, "healthy"
    return False, f"HTTP {response.status_code}: {response.text[:200]}"


def wait_healthy(
    url: str,
    *,
    schedule: HealthSchedule = HealthSchedule(),
    alive: Callable[[], bool] = lambda: True,
    request_timeout_s: float = 60.0,
) -> Health:
    """Poll `url` until it answers, its process dies (`alive()` is False) or the tries run out."""
    started = time.monotonic()
    deadline = started + schedule.tries * schedule.interval_s
    reason = "never polled"
    with httpx.Client(timeout=request_timeout_s) as client:
        while True:
            if not alive():
                return Health(False, time.monotonic() - started, f"the server exited ({reason})")
            ok, reason = _probe(client, url)
            if ok:
                return Health(True, time.monotonic() - started, reason)
            if time.monotonic() + schedule.poll_s > deadline:
                return Health(
                    False,
                    time.monotonic() - started,
                    f"not healthy after {schedule.tries} tries {schedule.interval_s:g} s apart "
                    f"(last: {reason})",
                )
            time.sleep(schedule.poll_s)
