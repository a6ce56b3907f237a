"""`harness eval`: score a model folder on an instance pack without building an image.

The submission's own server code (a rendered submission's main.py, engine.py, ...; by default the
template's, templates/server) runs in a local process on the model folder, and HELM scores it
through the same gateway and HELM path as `harness run` (run/scoring.py): the pack installed, run
specs that cannot fit the context refused, the stage's deadline kept. Nothing is built and
nothing leaves this machine: the server binds 127.0.0.1, HELM runs offline on the pack.

    result = evaluate_model(EvalOptions(model_dir, instances=pack, out=work))
    result.scores["parity"].value, .low, .high     # the raw metric and its 95% interval
    result.failed                                  # run specs HELM could not score, and why

OUT holds what one evaluation leaves: server.log, requests.jsonl (the gateway's log) and helm/
(HELM's run folder); all three are started afresh by every evaluation, since HELM would otherwise
skip runs it finished for another model of the same name. A server that does not come up, or
dies during the evaluation, is a ServerError (exit code 1) quoting its log; the server process
is stopped however the evaluation ends.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import ConfigError, HarnessError
from harness.infra.lock import die_with_parent
from harness.leaderboard.compare import ScenarioScore, scenario_scores
from harness.run.health import HealthSchedule, wait_healthy
from harness.run.options import RunOptions
from harness.run.scoring import prepare_helm, score_served
from harness.secrets import redact
from harness.store import GatewayStats, Metric

TEMPLATE_SERVER = Path(__file__).resolve().parents[2] / "templates" / "server"
SERVER_MODULE = "main.py"  # what uvicorn imports (`main:app`), beside its own modules
NAME = "local"  # the model's name for HELM; one model per run folder
LOG_TAIL = 3000


class ServerError(HarnessError):
    """The model's server did not come up, or died while it was evaluated (exit code 1)."""


@dataclass(frozen=True)
class EvalOptions:
    model_dir: Path
    instances: Path  # an instance pack (`harness instances build`)
    out: Path
    budget: int | None = None  # the first instances of the pack (None: all of it)
    submission: Path | None = None  # a folder holding the server's main.py (None: the template)
    # The context HELM fits prompts into; None: the model's max_position_embeddings.
    max_sequence_length: int | None = None
    track: str = "4090"
    stage: str = "open"  # its time limit is the evaluation's deadline
    start_timeout_s: float = 600.0
    server_env: dict[str, str] = field(default_factory=dict)  # DEVICE, DTYPE, LOAD_IN_4BIT, ...


@dataclass(frozen=True)
class FailedRun:
    run_spec: str
    scenario: str
    reason: str


@dataclass(frozen=True)
class EvalResult:
    model_dir: str
    pack: str
    pack_sha256: str
    budget: int | None
    seconds: float  # the whole evaluation: server start, HELM, stop
    start_s: float  # until the server was healthy
    scores: dict[str, ScenarioScore]  # scenario -> raw metric and its interval
    failed: list[FailedRun]  # run specs without a value, refused ones included
    error: str | None  # why HELM stopped early, if it did
    stats: GatewayStats
    metrics: list[Metric]  # per run spec, with per-instance values (the sweep's store)

    @property
    def ok(self) -> bool:
        return not self.failed and self.error is None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> EvalResult:
        data: dict[str, Any] = json.loads(text)
        return cls(
            **{
                **data,
                "scores": {k: ScenarioScore(**v) for k, v in data["scores"].items()},
                "failed": [FailedRun(**f) for f in data["failed"]],
                "stats": GatewayStats(**data["stats"]),
                "metrics": [Metric(**m) for m in data["metrics"]],
            }
        )


def server_dir(submission: Path | None) -> Path:
    """Where the server's code is: the submission folder, or the template's."""
    folder = TEMPLATE_SERVER if submission is None else submission
    if not (folder / SERVER_MODULE).is_file():
        raise ConfigError(f"--submission {folder} has no {SERVER_MODULE} (the server's code)")
    return folder


def context_length(model_dir: Path) -> int:
    """The model's context from its config.json (`max_position_embeddings`)."""
    config = model_dir / "config.json"
    try:
        value = json.loads(config.read_text())["max_position_embeddings"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(
            f"{config}: cannot read max_position_embeddings ({type(exc).__name__}); "
            "give --max-sequence-length"
        ) from exc
    if not isinstance(value, int) or value < 1:
        raise ConfigError(f"{config}: max_position_embeddings is {value!r}")
    return value


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tail(log: Path) -> str:
    return redact(log.read_text(errors="replace")[-LOG_TAIL:]) if log.exists() else ""


@contextmanager
def local_server(
    folder: Path, model_dir: Path, log: Path, env: dict[str, str]
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """The server in `folder` under uvicorn on 127.0.0.1, started the way its image starts it;
    yields its URL and process, and stops it at the end whatever happened."""
    port = _free_port()
    command = [
        sys.executable, "-m", "uvicorn", "main:app", "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    with log.open("w") as out:
        process = subprocess.Popen(
            command,
            cwd=folder,
            env={**os.environ, **env, "MODEL_PATH": str(model_dir.resolve())},
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
    try:
        yield f"http://127.0.0.1:{port}", process
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _died(process: subprocess.Popen[bytes], log: Path, when: str) -> ServerError:
    return ServerError(
        f"the model's server exited with code {process.returncode} {when}; "
        f"the end of {log}:\n{_tail(log)}"
    )


def evaluate_model(options: EvalOptions) -> EvalResult:
    """Serve the model locally and score it on the pack; see the module docstring."""
    started = time.monotonic()
    model_dir = options.model_dir
    if not (model_dir / "config.json").is_file():
        raise ConfigError(f"{model_dir} is not a model folder (no config.json)")
    folder = server_dir(options.submission)
    run_options = RunOptions(
        track=options.track,
        stage=options.stage,
        out=options.out,
        instances=options.instances,
        budget=options.budget,
        max_sequence_length=options.max_sequence_length or context_length(model_dir),
    )
    pack = run_options.pack()  # verified, and a budget larger than the pack's refused
    assert pack is not None  # `instances` is given
    out = options.out
    run_dir, request_log, log = out / "helm", out / "requests.jsonl", out / "server.log"
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(run_dir, ignore_errors=True)
    request_log.unlink(missing_ok=True)
    helm_conf = prepare_helm(run_options, NAME, run_dir)
    with local_server(folder, model_dir, log, options.server_env) as (url, process):
        health = wait_healthy(
            url,
            schedule=HealthSchedule(tries=1, interval_s=options.start_timeout_s, poll_s=0.2),
            alive=lambda: process.poll() is None,
        )
        start_s = time.monotonic() - started
        if process.poll() is not None:
            raise _died(process, log, "while it started")
        if not health.healthy:
            raise ServerError(f"the model's server did not come up: {health.reason}\n{_tail(log)}")
        scored = score_served(
            url,
            run_options,
            helm_conf,
            name=NAME,
            run_dir=run_dir,
            request_log=request_log,
            should_stop=lambda: process.poll() is not None,
        )
        if process.poll() is not None:
            raise _died(process, log, "during the evaluation")
    if scored.log_error is not None:
        raise scored.log_error
    metrics = scored.metrics()
    failed = [
        FailedRun(m.run_spec, m.scenario, m.reason or "no value")
        for m in metrics
        if m.value is None or m.reason
    ]
    return EvalResult(
        model_dir=str(model_dir),
        pack=str(options.instances),
        pack_sha256=pack.sha256,
        budget=options.budget,
        seconds=time.monotonic() - started,
        start_s=start_s,
        scores=scenario_scores(metrics),
        failed=failed,
        error=scored.runaway or scored.helm.error,
        stats=scored.stats,
        metrics=metrics,
    )
