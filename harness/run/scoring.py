"""Scoring one served model with HELM through the gateway: what `harness run`'s pipeline does once
an entry's container is healthy, and what `harness eval` does with a server in a local process.
One path, so a local score and an organizer's score cannot differ in how they were taken.

    helm_conf = prepare_helm(options, "my-entry", run_dir)    # before the model is served
    ...                                                       # the model answers at `url`
    scored = score_served(url, options, helm_conf, name="my-entry", run_dir=run_dir,
                          request_log=logs / "requests.jsonl", should_stop=lambda: not alive())
    scored.metrics()                                          # the store's Metric per run spec

The conf is written (and the pack installed) first, and its runs' limits read in the background
(harness/helm/fit.py) while the model loads. Then the gateway starts in front of the model, run
specs that cannot fit the context are refused (scored 0 with the reason), and helm-run scores
the rest through the gateway, under the stage's deadline.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from harness.helm.fit import Fit, entry_tokenizer, limits_in_background, refuse_unfit
from harness.helm.results import SUITE
from harness.helm.runner import (
    HelmEndpoint,
    HelmRun,
    RunSpecLimit,
    run_helm,
    write_prod_env,
)
from harness.run.gateway import Gateway, tokenize_allowance
from harness.run.options import RunOptions
from harness.secrets import redact
from harness.store import GatewayStats, Metric


class HelmConf(NamedTuple):
    """The HELM conf a model is scored on, written before it is served."""

    path: Path
    metrics: dict[str, str]  # RunSpecConf.metrics()
    limits: Callable[[], list[RunSpecLimit]]  # its runs' limits, read in the background


@dataclass(frozen=True)
class Scored:
    """What scoring through the gateway gave: HELM's runs, the refused ones, the gateway's
    counts, and why the gateway stopped HELM (`runaway`) or could not log (`log_error`)."""

    helm: HelmRun
    fit: Fit
    stats: GatewayStats
    runaway: str | None
    log_error: OSError | None

    def metrics(self) -> list[Metric]:
        """Every run's main metric for the store, the refused runs' 0 included."""
        return [
            Metric(
                r.run_spec,
                r.scenario,
                r.metric or "",
                r.value,
                reason=r.error and redact(r.error),
                instances=r.per_instance,
            )
            for r in (*self.helm.runs, *self.fit.refused)
        ]


def endpoint(options: RunOptions, name: str, url: str) -> HelmEndpoint:
    """The model as HELM sees it, at `url`."""
    return HelmEndpoint(
        name,
        url,
        max_sequence_length=options.max_sequence_length,
        # Nested samples (a pack's, a later tier's) ask again what was answered before.
        cache_requests=options.instances is not None or options.tier is not None,
    )


def prepare_helm(options: RunOptions, name: str, run_dir: Path) -> HelmConf:
    """Write the HELM conf into `run_dir` and start reading its runs' limits, which takes HELM
    seconds: meanwhile the model is served."""
    conf, conf_spec = options.write_helm_conf(run_dir)
    # Nothing calls this endpoint: the gateway's URL is known once the model is served.
    placeholder = endpoint(options, name, "http://127.0.0.1")
    limits = limits_in_background(run_dir, conf, placeholder, offline=options.helm_offline)
    return HelmConf(conf, conf_spec.metrics(), limits)


def score_served(
    url: str,
    options: RunOptions,
    helm_conf: HelmConf,
    *,
    name: str,
    run_dir: Path,
    request_log: Path,
    should_stop: Callable[[], bool] = lambda: False,
) -> Scored:
    """Score the model answering at `url` with HELM through a gateway; see the module docstring.
    `should_stop` is polled while HELM runs (the model's process or container is gone, say)."""
    with Gateway(
        url,
        deadline=time.monotonic() + options.stage_limit_s,
        request_log=request_log,
        process_timeout_s=options.process_timeout_s,
        tokenizer_timeout_s=options.tokenizer_timeout_s,
    ) as gateway:
        served = endpoint(options, name, gateway.url)
        write_prod_env(run_dir / "prod_env", [served])
        # Run specs that cannot fit the context are refused: HELM would loop on them.
        fit = refuse_unfit(
            helm_conf.path,
            helm_conf.limits,
            max_sequence_length=options.max_sequence_length,
            count_tokens=entry_tokenizer(gateway.url, options.tokenizer_timeout_s),
            metrics=helm_conf.metrics,
        )
        gateway.tokenize_allowance = tokenize_allowance(fit.largest)
        helm = run_helm(
            run_dir,
            fit.conf,
            [served.model],
            max_eval_instances=options.max_eval_instances,
            timeout_s=options.stage_limit_s + options.helm_grace_s,
            metrics=helm_conf.metrics,
            offline=options.helm_offline,
            # Nobody answers HELM any more: its retries would take minutes each.
            should_stop=lambda: should_stop() or gateway.runaway is not None,
            suite=SUITE if options.tier is None else f"{SUITE}-tier{options.tier}",
            cache_instances=options.instances is not None,
        )
        stats = gateway.stats()
    return Scored(helm, fit, stats, gateway.runaway, gateway.log_error)
