"""Run specs that cannot fit the entry's context are refused before HELM runs them.

HELM fits every prompt into the context it was told (`--max-sequence-length`) less the run
spec's output tokens (`max_tokens`): it drops in-context examples, then cuts the prompt from the
right, asking the entry's /tokenize after every cut. When the output tokens and the shortest
prompt the run spec can make do not fit, no cut ever succeeds and HELM loops: the demo's
256-token model on the open stage sent 288,634 /tokenize requests in 16 minutes because GSM8K
asks for 400 output tokens. So before HELM runs, HELM builds each run spec
(`runner.run_spec_limits`, started in the background while the entry is being served), and
`refuse_unfit` counts each run's shortest prompt with the entry's own tokenizer and takes every
conf entry that cannot fit out of the conf: its runs score 0, each with the reason.

    limits = limits_in_background(run_dir, conf, endpoint)
    ...  # the entry is served, the gateway started
    fit = refuse_unfit(conf, limits, max_sequence_length=256,
                       count_tokens=entry_tokenizer(gateway.url))
    fit.refused[0].error  # "gsm: max_tokens 400 does not fit a 256-token context"
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx

from harness.errors import ConfigError, InfrastructureError
from harness.helm.confs import parse_hocon, write_helm_entries
from harness.helm.results import RunResult, main_metric
from harness.helm.runner import HelmEndpoint, RunSpecLimit, run_spec_limits

FITTING_CONF = "run_specs.fitting.conf"
_INSTANCES = re.compile(r"(?<=[:,])max_eval_instances=(\d+)")
# No tokenizer makes more tokens of a text than this bound (two per UTF-8 byte: SentencePiece's
# byte fallback after a word-start piece, and a few special tokens): a run whose output tokens
# and bound fit needs no /tokenize request to be let through.
_TOKENS_PER_BYTE, _SPECIAL_TOKENS = 2, 8


@dataclass(frozen=True)
class Fit:
    """What `refuse_unfit` made of a conf: the runs it refused and the conf left for HELM."""

    conf: Path  # the HELM conf to run
    refused: tuple[RunResult, ...]  # value 0.0, `error` saying why
    largest: int  # the most eval instances one kept entry asks for (0: none left)
    unchecked: str | None = None  # why nothing could be checked (HELM's helper failed)

    def summary(self, shown: int = 3) -> str:
        """The refused runs for an entry's reason: how many, and the first reasons."""
        if not self.refused:
            return ""
        reasons = [str(run.error) for run in self.refused[:shown]]
        more = len(self.refused) - shown
        listed = "; ".join(reasons) + (f"; and {more} more" if more > 0 else "")
        return f"{len(self.refused)} refused and scored 0 ({listed})"

    @property
    def detail(self) -> str:
        """What the evaluate step's detail says of the check."""
        if self.unchecked:
            return f"run specs not checked against the context: {self.unchecked}"
        return f"{len(self.refused)} run spec(s) refused (too long)" if self.refused else ""


def entry_tokenizer(base_url: str, timeout_s: float = 30.0) -> Callable[[str], int | None]:
    """Counts a text's tokens with the entry's /tokenize, as HELM counts them; None when the
    entry does not answer (HELM will meet that failure itself)."""

    def count(text: str) -> int | None:
        try:
            # trust_env=False: the entry is local, and a proxy from the environment must not see it.
            answer = httpx.post(
                f"{base_url.rstrip('/')}/tokenize",
                json={"text": text},
                timeout=timeout_s,
                trust_env=False,
            )
            answer.raise_for_status()
            return len(answer.json()["tokens"])
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            return None

    return count


def limits_in_background(
    run_dir: Path, conf: Path, endpoint: HelmEndpoint, *, offline: bool = True
) -> Callable[[], list[RunSpecLimit]]:
    """Start `helm.run_spec_limits` in a thread; the returned call waits for its result (and
    raises what it raised). HELM takes seconds to build a stage's run specs: an entry being
    served meanwhile does not wait for them."""
    future: Future[list[RunSpecLimit]] = Future()

    def read() -> None:
        try:
            future.set_result(run_spec_limits(run_dir, conf, endpoint, offline=offline))
        except BaseException as exc:  # handed to whoever waits for the result
            future.set_exception(exc)

    threading.Thread(target=read, name=f"run-spec-limits-{endpoint.model}", daemon=True).start()
    return future.result


def cannot_fit(limit: RunSpecLimit, context: int, prompt_tokens: int | None) -> str | None:
    """Why `limit`'s run cannot fit a `context`-token window, or None when it can.

    A prompt takes at least one token: a run spec whose output fills the context leaves HELM
    nothing to ask. `prompt_tokens` is the shortest prompt's count (None: not known).
    """
    if limit.max_tokens >= context:
        return (
            f"{limit.label}: max_tokens {limit.max_tokens} does not fit a {context}-token context"
        )
    prompt = max(1, prompt_tokens or 0)
    if limit.max_tokens + prompt > context:
        return (
            f"{limit.label}: max_tokens {limit.max_tokens} and a prompt of at least {prompt} "
            f"tokens do not fit a {context}-token context"
        )
    return None


def refuse_unfit(
    conf: Path,
    limits: Callable[[], Sequence[RunSpecLimit]],
    *,
    max_sequence_length: int,
    count_tokens: Callable[[str], int | None],
    metrics: Mapping[str, str] | None = None,
) -> Fit:
    """The HELM conf `conf` without the entries whose runs cannot fit `max_sequence_length`;
    see the module docstring. `limits` gives the conf's runs (e.g. `limits_in_background`, or
    `lambda: runner.run_spec_limits(...)`). What is left is written beside `conf` as
    FITTING_CONF; `conf` itself stays whole (`harness reproduce` replays it, refusals included).

    An entry is refused whole when one of its runs cannot fit (HELM runs entries, not runs).
    `metrics` is `RunSpecConf.metrics()`: a refused run is scored 0 on its main metric. When
    HELM's helper fails, nothing is refused (`Fit.unchecked` says why): helm-run meets the same
    problem and reports it, and the gateway's /tokenize bound stays the safety net.
    """
    try:
        entries = parse_hocon(conf.read_text())["entries"]
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"{conf} is not a HELM conf the harness wrote: {exc}") from exc
    try:
        runs = limits()
    except InfrastructureError as exc:
        return Fit(conf, (), _largest(entries), unchecked=str(exc))
    counted: dict[str, int | None] = {}
    reasons: dict[str, str] = {}
    for limit in runs:
        bound = _TOKENS_PER_BYTE * len(limit.prompt.encode()) + _SPECIAL_TOKENS
        if limit.description in reasons or limit.max_tokens + bound <= max_sequence_length:
            continue
        if limit.max_tokens < max_sequence_length and limit.prompt not in counted:
            counted[limit.prompt] = count_tokens(limit.prompt)
        reason = cannot_fit(limit, max_sequence_length, counted.get(limit.prompt))
        if reason:
            reasons[limit.description] = reason
    refused = tuple(
        replace(
            limit.run,
            metric=main_metric(limit.run, metrics),
            value=0.0,
            error=reasons[limit.description],
        )
        for limit in runs
        if limit.description in reasons
    )
    kept = [entry for entry in entries if entry["description"] not in reasons]
    if len(kept) < len(entries):
        conf = write_helm_entries(conf.with_name(FITTING_CONF), kept)
    return Fit(conf, refused, _largest(kept))


def _largest(entries: Sequence[dict[str, Any]]) -> int:
    """The most eval instances one of a HELM conf's entries asks for."""
    counts = [int(found[1]) for e in entries if (found := _INSTANCES.search(e["description"]))]
    return max(counts, default=0)
