"""`GET /metrics`: the service in Prometheus' text format, through the standard client library.

    harness_queue_length{track}                      submissions waiting
    harness_running{track}                           submissions being evaluated
    harness_finished{track,status}                   finished submissions by their result
    harness_step_duration_seconds{step}              build and evaluation times (a histogram)
    harness_http_request_duration_seconds{method,route,code}   API and page latency

Counts and durations are read from the service database and the results store at each scrape
(they survive restarts and are never out of step with the pages); the latency histogram is this
process's. Who may scrape: a client on the loopback interface that did not come through a proxy
(no X-Forwarded-For), or anyone sending `Authorization: Bearer <--metrics-token>`.
"""

from __future__ import annotations

import hmac
import ipaddress
import time
from collections.abc import Awaitable, Callable, Iterator

from fastapi import FastAPI, HTTPException, Request, Response
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from harness.service.core import Service
from harness.service.db import State
from harness.store import Step

# Seconds: a stand-in build takes seconds, a real one up to the 2 h limit; an evaluation up to the
# closed stage's 10 h.
STEP_BUCKETS = (1, 10, 30, 60, 300, 600, 1800, 3600, 7200, 4 * 3600, 10 * 3600, float("inf"))
TIMED_STEPS = (Step.BUILD, Step.EVALUATE)


class _ServiceCollector(Collector):
    def __init__(self, service: Service) -> None:
        self.service = service

    def collect(self) -> Iterator[Metric]:
        queued = GaugeMetricFamily("harness_queue_length", "Submissions waiting.", labels=["track"])
        running = GaugeMetricFamily(
            "harness_running", "Submissions being evaluated.", labels=["track"]
        )
        finished = GaugeMetricFamily(
            "harness_finished", "Finished submissions by result.", labels=["track", "status"]
        )
        counts: dict[tuple[State, str, str], int] = {}
        for sub in self.service.db.submissions():
            key = (sub.state, sub.track, sub.status or "")
            counts[key] = counts.get(key, 0) + 1
        for (state, track, status), count in sorted(counts.items()):
            if state is State.QUEUED:
                queued.add_metric([track], count)
            elif state is State.RUNNING:
                running.add_metric([track], count)
            elif state is State.FINISHED:
                finished.add_metric([track, status], count)
        yield from (queued, running, finished)

        durations = HistogramMetricFamily(
            "harness_step_duration_seconds",
            "How long the steps that ended took (the results store's record).",
            labels=["step"],
        )
        for step in TIMED_STEPS:
            values = self.service.store.step_durations(step)
            buckets = [
                (_bound(bound), sum(1 for value in values if value <= bound))
                for bound in STEP_BUCKETS
            ]
            durations.add_metric([step.value], buckets, sum_value=sum(values))
        yield durations


def _bound(bound: float) -> str:
    """A bucket's bound as the client library writes its own (`30.0`, `+Inf`)."""
    return "+Inf" if bound == float("inf") else repr(float(bound))


def _local(request: Request) -> bool:
    if request.client is None or "x-forwarded-for" in request.headers:
        return False
    try:
        return ipaddress.ip_address(request.client.host).is_loopback
    except ValueError:
        return False


def register(app: FastAPI, service: Service, token: str | None) -> None:
    """Add /metrics and the latency middleware to `app`, with a registry of its own."""
    registry = CollectorRegistry()
    registry.register(_ServiceCollector(service))
    latency = Histogram(
        "harness_http_request_duration_seconds",
        "Time to answer a request, by route.",
        ["method", "route", "code"],
        registry=registry,
    )

    @app.middleware("http")
    async def timed(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        # The route's template, not the path: one series per route, not per submission id.
        route = getattr(request.scope.get("route"), "path", "unmatched")
        latency.labels(request.method, route, str(response.status_code)).observe(
            time.perf_counter() - started
        )
        return response

    @app.get("/metrics", include_in_schema=False)
    def metrics(request: Request) -> Response:
        given = request.headers.get("authorization", "")
        allowed = _local(request) or (
            token is not None and hmac.compare_digest(given.encode(), f"Bearer {token}".encode())
        )
        if not allowed:
            raise HTTPException(403, "metrics: from the loopback interface or with the token")
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
