"""The gateway: a reverse proxy between HELM and one entry's container.

HELM's HTTP client trusts the entry completely: it reports whatever `request_time` the server
claims, puts no timeout on /tokenize and /decode (a hung server hangs the whole run), and fails the
run when a /process request keeps failing. The gateway sits in between, on 127.0.0.1:

    HELM ──> gateway (127.0.0.1:free port) ──> entry (its container's published port)

- the stage deadline: once it passes, /process answers at once with an empty completion (the
  instance scores 0 and counts as unanswered), so the stage ends on time whatever the entry does;
  a request in flight at the deadline is cut off the same way;
- timeouts: /process gets a long one (a timed-out request is answered empty, not failed, so one
  slow prompt does not fail the whole HELM run); /tokenize, /decode and /health get short ones
  and answer 504 when they expire;
- an entry's error status, or an entry that cannot be reached, is passed on as an error: HELM
  retries, and fails the run if it persists (that is the entry's failure, not a 0 score);
- runaway tokenization: HELM fits a prompt into the context by cutting it and asking /tokenize
  after every cut, forever when the prompt can never fit. Once /tokenize requests outnumber
  `tokenize_allowance` plus TOKENIZE_PER_ANSWER per answered /process, the gateway answers them
  429 at once without asking the entry and sets `runaway`, the reason the caller stops HELM with;
- each request's real latency is measured, and a JSONL request log is written with secrets
  redacted (`harness.secrets.redact`); an answered /process line also counts its tokens:
  `completion_tokens` (the tokens the entry returned, less an echoed prompt) and `prompt_tokens`
  (the entry's own count from HELM's /tokenize call on that same prompt, null when there was none),
  which the leaderboard turns into tokens per second.

    with Gateway("http://127.0.0.1:8080", deadline=time.monotonic() + 300 * 60,
                 request_log=results / "entry" / "requests.jsonl") as gateway:
        run_helm(base_url=gateway.url)
    stats = gateway.stats()
"""

from __future__ import annotations

import asyncio
import json
import math
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import IO, Any, Self

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from harness.errors import InfrastructureError
from harness.secrets import redact
from harness.store import GatewayStats

EMPTY_COMPLETION: dict[str, Any] = {"text": "", "tokens": [], "logprob": 0.0, "request_time": 0.0}
TOKENIZED_PROMPTS = 256  # /tokenize answers remembered to count the tokens of the next /process
# HELM asks /tokenize a few times per prompt (once more per in-context example it drops, and to
# cut a prompt that is too long); a cached /process answer (a rerun, a later tier) never reaches
# the gateway, so the bound is generous: far above what HELM needs, far below a runaway's rate.
TOKENIZE_PER_ANSWER = 50
# A run's first answers come after HELM prepared all of its prompts: the allowance covers that.
MIN_TOKENIZE_INSTANCES = 20
PROXIED = {"/process": "POST", "/tokenize": "POST", "/decode": "POST", "/health": "GET"}


class Outcome(StrEnum):
    ANSWERED = "answered"  # the entry answered (any status below 400)
    AFTER_DEADLINE = "after-deadline"  # /process after the deadline: answered empty at once
    TIMED_OUT = "timed-out"  # no answer in time: /process answered empty, others 504
    ERROR = "error"  # the entry answered an error status or could not be reached
    REFUSED = "refused"  # /tokenize past the runaway bound: answered 429, the entry not asked


def tokenize_allowance(instances: int) -> int:
    """/tokenize requests allowed before any /process answer, for runs of at most `instances`
    instances each (the `Gateway` argument)."""
    return TOKENIZE_PER_ANSWER * max(instances, MIN_TOKENIZE_INSTANCES)


def percentile(sorted_values: list[float], p: float) -> float | None:
    """Nearest-rank percentile of an ascending list (None when empty)."""
    if not sorted_values:
        return None
    return sorted_values[max(0, math.ceil(p / 100 * len(sorted_values)) - 1)]


def _quiet_when_cancelled(app: ASGIApp) -> ASGIApp:
    """Requests still in flight when the server stops (past its grace period) are cancelled: an
    expected end (their client is gone), not an error for uvicorn to print a traceback of."""

    async def quiet(scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await app(scope, receive, send)
        except asyncio.CancelledError:
            if scope["type"] != "http":
                raise

    return quiet


class ThreadedServer:
    """Serves an ASGI app on 127.0.0.1 (a free port) from a background thread with its own loop."""

    def __init__(self, app: ASGIApp, *, graceful_shutdown_s: int = 5) -> None:
        self._config = uvicorn.Config(
            _quiet_when_cancelled(app),
            log_level="warning",
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=graceful_shutdown_s,
        )
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def url(self) -> str:
        if not self.port:
            raise RuntimeError("the server is not started")
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 10.0) -> None:
        if self._thread is not None:
            raise RuntimeError("the server is already started")
        # Binding here, not in uvicorn, hands out the port with no race against other servers.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        server = self._server = uvicorn.Server(self._config)
        self._thread = threading.Thread(
            target=lambda: asyncio.run(server.serve(sockets=[sock])),
            name=f"server-{self.port}",
            daemon=True,
        )
        self._thread.start()
        started = time.monotonic()
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() - started > timeout_s:
                sock.close()
                raise InfrastructureError(f"could not start a server on 127.0.0.1:{self.port}")
            time.sleep(0.01)

    def stop(self) -> None:
        if self._server is None or self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join()
        self._server = self._thread = None


@dataclass
class _Record:
    endpoint: str
    status: int
    latency_s: float
    outcome: Outcome


class Gateway:
    """The reverse proxy for one entry and one stage; see the module docstring."""

    def __init__(
        self,
        upstream_url: str,
        *,
        deadline: float,
        request_log: Path,
        process_timeout_s: float = 600.0,
        tokenizer_timeout_s: float = 30.0,
        excerpt_chars: int = 80,
        tokenize_allowance: int | None = None,
    ) -> None:
        """`deadline` is a `time.monotonic()` value: the end of the stage's time limit.
        `tokenize_allowance`: /tokenize requests allowed before any /process is answered (None:
        no bound); the caller may set it later, once it knows how many instances a run has."""
        self.upstream_url = upstream_url.rstrip("/")
        self.deadline = deadline
        self.request_log = request_log
        self.process_timeout_s = process_timeout_s
        self.tokenizer_timeout_s = tokenizer_timeout_s
        self.excerpt_chars = excerpt_chars
        self.tokenize_allowance = tokenize_allowance
        # Why the gateway stopped forwarding /tokenize (None: it did not); see the docstring.
        self.runaway: str | None = None
        self._tokenized = 0
        self._answered = 0
        self._records: list[_Record] = []
        self._lock = threading.Lock()
        self._log: IO[str] | None = None
        # The request log's first failed write (a full disk): the requests are still served, the
        # log stops there, and the caller reports it.
        self.log_error: OSError | None = None
        self._client: httpx.AsyncClient | None = None
        # HELM tokenizes each prompt (to fit the context window) just before it asks for a
        # completion; the entry's answer then gives the prompt's length in its own tokens.
        self._token_counts: dict[str, int] = {}
        handlers: dict[str, Callable[[Request], Awaitable[Response]]] = {
            "/process": self._process,
            "/tokenize": self._tokenize,
            "/decode": self._forward_with_tokenizer_timeout,
            "/health": self._forward_with_tokenizer_timeout,
        }
        app = Starlette(
            routes=[Route(path, handlers[path], methods=[m]) for path, m in PROXIED.items()],
            lifespan=self._lifespan,
        )
        self._server = ThreadedServer(app)

    @property
    def url(self) -> str:
        """The base URL HELM should use instead of the entry's."""
        return self._server.url

    def start(self) -> Self:
        self.request_log.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.request_log.open("a", encoding="utf-8", buffering=1)
        try:
            self._server.start()
        except BaseException:
            self._log.close()
            raise
        return self

    def stop(self) -> None:
        self._server.stop()
        if self._log is not None:
            try:
                self._log.close()
            except OSError as exc:  # what was left to flush could not be written
                self._log_failed(exc)
            self._log = None

    def _log_failed(self, exc: OSError) -> None:
        if self.log_error is None:
            self.log_error = OSError(exc.errno, exc.strerror, str(self.request_log))

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stats(self) -> GatewayStats:
        with self._lock:
            records = list(self._records)
        process = [r for r in records if r.endpoint == "/process"]
        latencies = sorted(r.latency_s for r in process if r.outcome is Outcome.ANSWERED)
        return GatewayStats(
            requests=len(records),
            answered=len(latencies),
            unanswered=sum(
                r.outcome in (Outcome.AFTER_DEADLINE, Outcome.TIMED_OUT) for r in process
            ),
            errors=sum(
                r.outcome in (Outcome.ERROR, Outcome.REFUSED)
                or (r.outcome is Outcome.TIMED_OUT and r.endpoint != "/process")
                for r in records
            ),
            latency_p50_s=percentile(latencies, 50),
            latency_p90_s=percentile(latencies, 90),
            latency_p99_s=percentile(latencies, 99),
            latency_max_s=latencies[-1] if latencies else None,
        )

    # -- inside the server's event loop -------------------------------------------------------

    @asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        # trust_env=False: the entry is local, and a proxy from the environment must not see it.
        async with httpx.AsyncClient(trust_env=False) as client:
            self._client = client
            yield
        self._client = None

    async def _process(self, request: Request) -> Response:
        body = await request.body()
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            self._record(request, body, 200, 0.0, Outcome.AFTER_DEADLINE)
            return JSONResponse(EMPTY_COMPLETION)
        # A request in flight when the deadline passes is cut off then, not after its own timeout.
        return await self._forward(request, body, min(self.process_timeout_s, remaining))

    async def _tokenize(self, request: Request) -> Response:
        body = await request.body()
        with self._lock:
            self._tokenized += 1
            allowed = self.tokenize_allowance
            if allowed is not None and self.runaway is None:
                allowed += TOKENIZE_PER_ANSWER * self._answered
                if self._tokenized > allowed:
                    self.runaway = (
                        f"runaway tokenization: {self._tokenized - 1} /tokenize requests for "
                        f"{self._answered} answered /process (HELM cuts prompts that cannot fit "
                        "the context over and over); the evaluation was stopped"
                    )
            refused = self.runaway is not None
        if refused:
            self._record(request, body, 429, 0.0, Outcome.REFUSED)
            return JSONResponse({"detail": self.runaway}, 429)
        return await self._forward(request, body, self.tokenizer_timeout_s)

    async def _forward_with_tokenizer_timeout(self, request: Request) -> Response:
        return await self._forward(request, await request.body(), self.tokenizer_timeout_s)

    async def _forward(self, request: Request, body: bytes, timeout_s: float) -> Response:
        assert self._client is not None
        started = time.monotonic()
        headers = {"content-type": request.headers.get("content-type", "application/json")}
        try:
            upstream = await self._client.request(
                request.method,
                self.upstream_url + request.url.path,
                content=body,
                headers=headers,
                timeout=timeout_s,
            )
        except httpx.TimeoutException:
            latency = time.monotonic() - started
            if request.url.path == "/process":
                self._record(request, body, 200, latency, Outcome.TIMED_OUT)
                return JSONResponse(EMPTY_COMPLETION)
            self._record(request, body, 504, latency, Outcome.TIMED_OUT)
            return JSONResponse({"detail": f"the entry did not answer in {timeout_s:g} s"}, 504)
        except httpx.HTTPError as exc:
            self._record(request, body, 502, time.monotonic() - started, Outcome.ERROR)
            return JSONResponse({"detail": f"the entry is unreachable: {type(exc).__name__}"}, 502)
        latency = time.monotonic() - started
        outcome = Outcome.ANSWERED if upstream.status_code < 400 else Outcome.ERROR
        tokens = self._count_tokens(request.url.path, body, upstream.content)
        self._record(request, body, upstream.status_code, latency, outcome, tokens)
        return Response(
            upstream.content,
            status_code=upstream.status_code,
            media_type=upstream.headers.get("content-type"),
        )

    def _record(
        self,
        request: Request,
        body: bytes,
        status: int,
        latency_s: float,
        outcome: Outcome,
        tokens: dict[str, int | None] | None = None,
    ) -> None:
        record = _Record(request.url.path, status, latency_s, outcome)
        with self._lock:
            self._records.append(record)
            self._answered += record.endpoint == "/process" and outcome is Outcome.ANSWERED
        line = {
            "time": time.time(),
            "endpoint": record.endpoint,
            "status": status,
            "latency_s": round(latency_s, 6),
            "outcome": outcome.value,
            "answered": outcome is Outcome.ANSWERED,
            "excerpt": self._excerpt(body),
            **(tokens or {}),
        }
        if self._log is not None and self.log_error is None:
            try:
                self._log.write(json.dumps(line, ensure_ascii=False) + "\n")
            except OSError as exc:
                self._log_failed(exc)

    def _count_tokens(
        self, endpoint: str, body: bytes, answer: bytes
    ) -> dict[str, int | None] | None:
        """Token counts of an answered /process (remembering /tokenize's on the way); a body
        that is not the protocol's JSON counts as nothing rather than failing the request."""
        if endpoint not in ("/process", "/tokenize"):
            return None
        try:
            request, response = json.loads(body), json.loads(answer)
            if endpoint == "/tokenize":
                if len(self._token_counts) >= TOKENIZED_PROMPTS:
                    self._token_counts.pop(next(iter(self._token_counts)))
                self._token_counts[str(request["text"])] = len(response["tokens"])
                return None
            prompt = self._token_counts.get(str(request["prompt"]))
            sequences = response.get("completions") or [response]
            returned = sum(len(sequence["tokens"]) for sequence in sequences)
        except (ValueError, KeyError, TypeError, AttributeError):
            return None
        if request.get("echo_prompt"):
            if prompt is None:  # the echoed prompt cannot be told apart from the completion
                return {"prompt_tokens": None, "completion_tokens": None}
            returned -= prompt * len(sequences)
        return {"prompt_tokens": prompt, "completion_tokens": max(returned, 0)}

    def _excerpt(self, body: bytes) -> str:
        """The start of the prompt or text, redacted whole first so no secret is cut in half."""
        try:
            payload = json.loads(body)
        except ValueError:
            payload = None
        text = ""
        if isinstance(payload, dict):
            value = payload.get("prompt", payload.get("text", ""))
            text = value if isinstance(value, str) else ""
        elif body:
            text = body.decode("utf-8", "replace")
        return redact(text)[: self.excerpt_chars]
