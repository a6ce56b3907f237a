"""Scoring with HELM: crfm-helm 0.5.16 in `.venv-helm`, driven as an outside tool.

One HELM run lives in one folder, the working directory of `helm-run`:

    RUN_DIR/prod_env/model_deployments.yaml   one deployment per entry (`write_prod_env`)
    RUN_DIR/prod_env/model_metadata.yaml
    RUN_DIR/prod_env/tokenizer_configs.yaml
    RUN_DIR/run_specs.conf                    the conf with per-run-spec budgets (`write_helm_conf`)
    RUN_DIR/run_specs.fitting.conf            the same without the run specs refused because
                                              they cannot fit the context (helm/fit.py)
    RUN_DIR/helm-run.log                      everything HELM printed, every attempt
    RUN_DIR/run_spec_limits/limits.json       each run's output tokens and shortest prompt
                                              (`run_spec_limits`), with its own prod_env/
    RUN_DIR/benchmark_output/runs/SUITE/RUN/stats.json     read by `read_metrics` (results.py)
    RUN_DIR/benchmark_output/runs/SUITE/RUN/per_instance_stats.json   its per-instance values

The run-spec confs it runs are harness/helm/confs.py's. Each written entry carries its scenario as a
HELM group; HELM appends `groups=SCENARIO` to the run's name, which is how a run (finished or
failed) is traced back to its scenario.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from harness.errors import ConfigError, InfrastructureError
from harness.helm.results import SUITE, RunResult, describe_run, last_exception, read_metrics
from harness.infra.lock import die_with_parent

PLUGIN = Path(__file__).resolve().parent / "plugins" / "local_tasks.py"
LIMITS_HELPER = PLUGIN.with_name("run_spec_limits.py")
_CHECKOUT = Path(__file__).resolve().parents[2]  # where `make setup` puts .venv-helm
MODEL_ORG = "harness"

# The HTTP client and tokenizer read this in preference to base_url: every entry would be scored
# against one server.
_URL_OVERRIDE = "HELM_HTTP_MODEL_BASE_URL"
# Offline scoring downloads nothing: scenarios needing data fail at once instead of waiting.
_OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
_PUNKT_TAB_FILES = (
    "collocations.tab",
    "sent_starters.txt",
    "abbrev_types.txt",
    "ortho_context.tab",
)
_SAFE_NAME = re.compile(r"[^a-z0-9_-]+")


def helm_bin_dir() -> Path:
    """Where helm-run lives: $HARNESS_HELM_BIN, else the checkout's `.venv-helm/bin`."""
    return Path(os.environ.get("HARNESS_HELM_BIN", _CHECKOUT / ".venv-helm" / "bin"))


def run_helper(
    python: Path,
    script: Path,
    staging: Path,
    request: dict[str, Any],
    *,
    output: str,
    what: str,
    timeout_s: float,
) -> Path:
    """Run one of plugins/'s scripts in HELM's environment on `request` (written to
    staging/request.json) and return the file it writes, staging/`output`; InfrastructureError
    with the end of its log (staging/<script>.log) when it fails, runs past `timeout_s` or
    writes nothing."""
    (staging / "request.json").write_text(json.dumps(request))
    log = staging / f"{script.stem}.log"
    result = staging / output
    try:
        with log.open("w") as log_file:
            done = subprocess.run(
                [str(python), str(script), "request.json", result.name],
                cwd=staging, stdout=log_file, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, timeout=timeout_s, check=False,
            )  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        raise InfrastructureError(f"{what} ran past {timeout_s:g} s") from exc
    if done.returncode != 0 or not result.is_file():
        tail = log.read_text(errors="replace")[-2000:]
        raise InfrastructureError(f"HELM failed while {what}:\n{tail}")
    return result


def check_helm(bin_dir: Path | None = None) -> Path:
    """The folder holding helm-run and helm-summarize; InfrastructureError says how to fix it."""
    bin_dir = bin_dir or helm_bin_dir()
    for tool in ("helm-run", "helm-summarize"):
        if not os.access(bin_dir / tool, os.X_OK):
            raise InfrastructureError(
                f"HELM is not installed: {bin_dir / tool} is missing. Run `make setup` (it creates "
                ".venv-helm from lockfiles/helm*.txt) or point HARNESS_HELM_BIN at a crfm-helm "
                "0.5.16 environment's bin folder."
            )
    return bin_dir


def helm_version(bin_dir: Path | None = None) -> str | None:
    """The crfm-helm version installed beside helm-run (None: no HELM environment there)."""
    python = (bin_dir or helm_bin_dir()) / "python"
    try:
        done = subprocess.run(
            [str(python), "-c", "import importlib.metadata as m; print(m.version('crfm-helm'))"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    return done.stdout.strip() or None


# --- prod_env: one model deployment per entry ------------------------------------------------


def model_name(entry: str) -> str:
    """The HELM model name of an entry: `harness/<entry>`, made safe and kept unique.

    HELM puts the name into run folder names (with `/` as `_`), so only [a-z0-9_-] survive; a
    name that had to change gets a short hash of the original so two entries never collide.
    """
    safe = _SAFE_NAME.sub("-", entry.lower()).strip("-")[:48]
    if safe != entry:
        safe = f"{safe}-{hashlib.sha256(entry.encode()).hexdigest()[:8]}".lstrip("-")
    return f"{MODEL_ORG}/{safe}"


@dataclass(frozen=True)
class HelmEndpoint:
    """An entry as HELM sees it: a server speaking HELM's HTTP protocol at `base_url`.

    `max_sequence_length` is the context HELM fits prompts into (it truncates through the
    server's /tokenize and /decode); the tokens are what the tokenizer config names as
    end-of-text and prefix tokens (Llama and Mistral use `</s>` and `<s>`). `cache_requests`
    keeps every answer in HELM's request cache (`prod_env/cache/`), so a later run in the same
    folder, a larger nested sample say, asks the model only what it has not answered yet; the
    cache belongs to one image of the entry and must go when the image changes.
    """

    entry: str
    base_url: str
    max_sequence_length: int = 4096
    end_of_text_token: str = "</s>"
    prefix_token: str = "<s>"
    request_timeout_s: int = 3000
    cache_requests: bool = False

    @property
    def model(self) -> str:
        return model_name(self.entry)


def write_prod_env(folder: Path, endpoints: Sequence[HelmEndpoint]) -> Path:
    """Write HELM's three registry files for `endpoints` into `folder`; returns `folder`."""
    models = [endpoint.model for endpoint in endpoints]
    if len(set(models)) != len(models):
        raise ConfigError(f"two entries map to the same HELM model name: {sorted(models)}")
    deployments, metadata, tokenizers = [], [], []
    for endpoint in endpoints:
        url = endpoint.base_url.rstrip("/")
        deployments.append(
            {
                "name": endpoint.model,
                "model_name": endpoint.model,
                "tokenizer_name": endpoint.model,
                "max_sequence_length": endpoint.max_sequence_length,
                "client_spec": {
                    "class_name": "helm.clients.http_model_client.HTTPModelClient",
                    "args": {
                        "base_url": url,
                        "timeout": endpoint.request_timeout_s,
                        "do_cache": endpoint.cache_requests,
                    },
                },
            }
        )
        metadata.append(
            {
                "name": endpoint.model,
                "display_name": endpoint.entry,
                "description": f"Competition entry {endpoint.entry}",
                "creator_organization_name": MODEL_ORG,
                "access": "open",
                "release_date": None,
                # Without these tags HELM's `model=text` expanders would leave the entry out.
                "tags": ["TEXT_MODEL_TAG", "FULL_FUNCTIONALITY_TEXT_MODEL_TAG"],
            }
        )
        tokenizers.append(
            {
                "name": endpoint.model,
                "tokenizer_spec": {
                    "class_name": "helm.tokenizers.http_model_tokenizer.HTTPModelTokenizer",
                    "args": {"base_url": url},
                },
                "end_of_text_token": endpoint.end_of_text_token,
                "prefix_token": endpoint.prefix_token,
            }
        )
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "model_deployments.yaml": {"model_deployments": deployments},
        "model_metadata.yaml": {"models": metadata},
        "tokenizer_configs.yaml": {"tokenizer_configs": tokenizers},
    }
    for name, content in files.items():
        (folder / name).write_text(yaml.safe_dump(content, sort_keys=False))
    return folder


@dataclass(frozen=True)
class HelmRun:
    """What one `helm-run` did: its exit status, whether the wall clock stopped it (or the caller,
    `stopped`), its runs."""

    returncode: int
    timed_out: bool
    log: Path
    output_dir: Path
    runs: tuple[RunResult, ...] = field(default=())
    error: str | None = None
    stopped: bool = False

    @property
    def killed(self) -> bool:
        """Killed by a signal nobody in the harness sent: what it wrote is not to be trusted."""
        return self.returncode < 0 and not self.timed_out and not self.stopped

    @property
    def failed_runs(self) -> tuple[RunResult, ...]:
        return tuple(run for run in self.runs if not run.ok)


def run_helm(
    run_dir: Path,
    conf: Path,
    models: Iterable[str],
    *,
    max_eval_instances: int,
    timeout_s: float,
    metrics: Mapping[str, str] | None = None,
    offline: bool = True,
    cache_instances: bool = False,
    suite: str = SUITE,
    num_threads: int = 1,
    bin_dir: Path | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> HelmRun:
    """Run helm-run in `run_dir` (which holds `prod_env/`) on `conf` for `models`.

    `timeout_s` is a hard stop for a HELM that hangs (the gateway enforces the stage deadline);
    `offline` forbids Hugging Face downloads, so a scenario needing data fails at once instead
    of waiting on the network (the open and closed confs need `offline=False` and internet,
    unless `cache_instances`: an instance pack installed in `run_dir` by
    `harness.helm.packs.install_pack` stands in for every scenario's data). `metrics` is
    `RunSpecConf.metrics()`. Finished runs are skipped, so calling this again after a crash
    resumes; the log keeps every attempt. A run that HELM could not finish is a
    RunResult with its error; a helm-run that failed before running anything (a bad conf, say)
    is a HelmRun with `error` set and no runs. `should_stop` is polled every second: when it
    says so (the served container is gone, say), HELM is stopped and the HelmRun is `stopped`.
    """
    helm = check_helm(bin_dir) / "helm-run"
    models = list(models)
    if not models:
        raise ConfigError("run_helm needs at least one model")
    command = [
        str(helm),
        "--conf-paths", str(conf.resolve()),
        "--suite", suite,
        "--local-path", "prod_env",
        "--output-path", "benchmark_output",
        "--models-to-run", *models,
        "--max-eval-instances", str(max_eval_instances),
        "--num-threads", str(num_threads),
        "--plugins", str(PLUGIN),
        "--skip-completed-runs",
        *(["--cache-instances"] if cache_instances else []),
    ]  # fmt: skip
    log = run_dir / "helm-run.log"
    returncode, ended = _run_tool(command, run_dir, log, timeout_s, offline, should_stop)
    timed_out, stopped = ended == "timed-out", ended == "stopped"
    output_dir = run_dir / "benchmark_output"
    text = log.read_text(errors="replace")
    runs = read_metrics(output_dir, suite, metrics, log_text=text, timed_out=timed_out)
    error = None
    if timed_out:
        error = f"helm-run ran past its {timeout_s:g} s limit and was stopped"
    elif stopped:
        error = "helm-run was stopped by the harness"
    elif returncode < 0:
        error = f"helm-run was killed by {signal.Signals(-returncode).name} before it finished"
    elif returncode != 0 and not runs:
        error = last_exception(text.splitlines()) or f"helm-run exited with {returncode}"
    return HelmRun(returncode, timed_out, log, output_dir, tuple(runs), error, stopped)


@dataclass(frozen=True)
class RunSpecLimit:
    """What one run of a conf asks of the model's context, as HELM builds its run spec.

    `run` describes the run as `read_metrics` would (no value yet), `label` names its run spec
    as people know it (`gsm`, without the model, groups and instance count the harness sets),
    `prompt` is the text every prompt of the run holds at least (instructions and prefixes, no
    instance, no in-context example).
    """

    description: str  # the entry of the HELM conf it comes from, as helm-run reads it
    label: str
    run: RunResult
    max_tokens: int
    prompt: str


def run_spec_limits(
    run_dir: Path,
    conf: Path,
    endpoint: HelmEndpoint,
    *,
    timeout_s: float = 600,
    offline: bool = True,
    bin_dir: Path | None = None,
) -> list[RunSpecLimit]:
    """Every run `helm-run` would make of `conf` for `endpoint` in `run_dir`, with its output
    tokens and shortest prompt.

    HELM's own run-spec functions build them (plugins/run_spec_limits.py, in the HELM
    environment), so no number is copied here. Nothing calls the endpoint: this may run before
    the entry is served. An entry HELM cannot build is left out: helm-run reports its error when
    it gets there. InfrastructureError when the helper itself fails.
    """
    python = check_helm(bin_dir) / "python"
    folder = run_dir / "run_spec_limits"
    # Its own registry files: the entry's prod_env/ is written once the gateway is up.
    write_prod_env(folder / "prod_env", [endpoint])
    result = folder / "limits.json"
    result.unlink(missing_ok=True)
    command = [
        str(python), str(LIMITS_HELPER), str(conf.resolve()), endpoint.model,
        str(folder / "prod_env"), str(result), str(PLUGIN),
    ]  # fmt: skip
    log = folder / "helper.log"
    returncode, ended = _run_tool(command, run_dir, log, timeout_s, offline)
    if returncode != 0 or ended != "exited" or not result.is_file():
        tail = log.read_text(errors="replace")[-2000:]
        raise InfrastructureError(f"reading the run specs' limits from HELM failed:\n{tail}")
    limits = []
    for entry in json.loads(result.read_text())["entries"]:
        for run in entry.get("run_specs", []):
            limits.append(
                RunSpecLimit(
                    description=entry["description"],
                    label=run["label"],
                    run=describe_run(run["name"]),
                    max_tokens=int(run["max_tokens"]),
                    prompt=run["prompt"],
                )
            )
    return limits


def summarize_helm(
    run_dir: Path, *, timeout_s: float, suite: str = SUITE, bin_dir: Path | None = None
) -> bool:
    """Write HELM's own summary (for `helm-server`) of a finished run; False when it failed."""
    helm = check_helm(bin_dir) / "helm-summarize"
    command = [str(helm), "--suite", suite, "--output-path", "benchmark_output"]
    log = run_dir / "helm-summarize.log"
    returncode, ended = _run_tool(command, run_dir, log, timeout_s, offline=True)
    return returncode == 0 and ended == "exited"


def _run_tool(
    command: list[str],
    cwd: Path,
    log: Path,
    timeout_s: float,
    offline: bool,
    should_stop: Callable[[], bool] = lambda: False,
) -> tuple[int, str]:
    """Run a HELM tool to its end; returns its exit status and "exited", "timed-out" or
    "stopped" (by `should_stop`)."""
    env = {key: value for key, value in os.environ.items() if key != _URL_OVERRIDE}
    if offline:
        env.update(_OFFLINE_ENV)
        env["NLTK_DATA"] = os.pathsep.join(
            filter(None, [str(_nltk_stub(cwd)), os.environ.get("NLTK_DATA")])
        )
    with log.open("a") as out:
        try:
            # A session of its own, so a timeout stops HELM's worker processes too; and it dies
            # with the harness, however the harness dies.
            process = subprocess.Popen(
                command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=die_with_parent,
            )  # fmt: skip
        except OSError as exc:
            raise InfrastructureError(f"cannot start {command[0]}: {exc.strerror}") from exc
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                with suppress(subprocess.TimeoutExpired):
                    left = deadline - time.monotonic()
                    return process.wait(timeout=max(0.0, min(1.0, left))), "exited"
                if time.monotonic() >= deadline or should_stop():
                    ended = "timed-out" if time.monotonic() >= deadline else "stopped"
                    _stop(process)
                    return process.returncode, ended
        except BaseException:
            _stop(process)
            raise


def _nltk_stub(cwd: Path) -> Path:
    """An NLTK data folder holding an empty `punkt_tab`.

    Every helm-run calls `nltk.download("punkt_tab")` unless NLTK finds it, and offline that
    download waits on the network. Only BLEU and the bias metrics tokenize sentences with it,
    and no main metric here is one of them: an empty model is found and never used.
    """
    folder = cwd / "nltk_data"
    english = folder / "tokenizers" / "punkt_tab" / "english"
    english.mkdir(parents=True, exist_ok=True)
    for name in _PUNKT_TAB_FILES:
        (english / name).touch()
    return folder


def _stop(process: subprocess.Popen[bytes]) -> None:
    for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, None)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(timeout=grace)
            break
        except subprocess.TimeoutExpired:
            continue
