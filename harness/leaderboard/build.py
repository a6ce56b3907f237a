"""The leaderboard: read the results store, score it, write it as Markdown, JSON and HTML.

    board = build_leaderboard(store)           # scoring.py's arithmetic over the stored metrics
    paths = write_leaderboard(board, results_dir)

Every number comes from the results folder: scores from the stored metrics; efficiency from the
steps' times, the gateway's request log, the image's size and the sampled GPU peak (what the
harness measured, not what servers claim); cost from those times, training hours from `harness
reproduce` (RESULTS_DIR/reproduce/*/reproduction.json, which also gives each reproduced entry's
verdict) and a per-track hourly GPU price; each
stage score's and rank's 95% intervals from a bootstrap over the stored per-instance values
(intervals.py). An entry
is ranked in a stage when it has metrics there (scored, eval-timeout, or flagged but evaluated);
every other entry is listed below the ranked ones with its status and reason. An entry the
organizers disqualified (`disqualified=`) is listed after the ranked ones, struck through with
their reason, and left out of the field the others are scored and ranked in. Links to logs are
relative to RESULTS_DIR, so the folder can be copied or served as it is. Rendered by text.py
(Markdown, JSON, the terminal) and html.py (pages, figures).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from harness.competition import STAGE_MINUTES, STAGE_NAMES, TRACKS
from harness.errors import ConfigError
from harness.leaderboard.intervals import StageIntervals, stage_intervals
from harness.leaderboard.model import (
    Cost,
    Efficiency,
    Leaderboard,
    Row,
    RunSpecResult,
    ScenarioResult,
    StageRow,
    StepTime,
)
from harness.leaderboard.scoring import (
    RunSpec,
    rank_agreement,
    ranked_by_tier,
    same_run_spec,
    score_stage,
    standings,
)
from harness.secrets import redact
from harness.store import GatewayStats, Step, StepRecord, Store

# USD per GPU-hour (`--price TRACK=USD` overrides).
DEFAULT_PRICES: dict[str, float] = {name: track.price_per_hour for name, track in TRACKS.items()}
# Steps that hold the entry's GPU: its container is up from serve to the end of the evaluation.
GPU_STEPS = (Step.SERVE, Step.EVALUATE)


def parse_prices(values: Collection[str]) -> dict[str, float]:
    """`--price 4090=0.35` options over the defaults."""
    prices = dict(DEFAULT_PRICES)
    for value in values:
        track, sep, number = value.partition("=")
        try:
            price = float(number)
        except ValueError:
            price = -1.0
        if not sep or not track or not price >= 0:
            raise ConfigError(
                f"--price takes TRACK=USD_PER_GPU_HOUR, e.g. 4090=0.35; got {value!r}"
            )
        prices[track] = price
    return prices


def _token_counts(path: Path) -> tuple[int | None, int | None]:
    """Prompt and completion tokens of answered /process requests in a gateway request log."""
    prompt = completion = None
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None, None
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:  # a line cut short by a crash: the rest still counts
            continue
        if not isinstance(record, dict) or record.get("endpoint") != "/process":
            continue
        if isinstance(record.get("prompt_tokens"), int):
            prompt = (prompt or 0) + record["prompt_tokens"]
        if isinstance(record.get("completion_tokens"), int):
            completion = (completion or 0) + record["completion_tokens"]
    return prompt, completion


def _efficiency(
    results_dir: Path,
    stage: str,
    steps: Mapping[Step, StepRecord],
    gateway: tuple[GatewayStats, str | None] | None,
    resources: tuple[int | None, int | None],
) -> Efficiency:
    stats: GatewayStats | None = gateway[0] if gateway else None
    prompt, completion = (
        _token_counts(results_dir / gateway[1]) if gateway and gateway[1] else (None, None)
    )
    evaluate = steps.get(Step.EVALUATE)
    eval_s = evaluate.duration_s if evaluate else None
    build = steps.get(Step.BUILD)

    def per_second(tokens: int | None) -> float | None:
        return tokens / eval_s if tokens is not None and eval_s else None

    return Efficiency(
        answered=stats.answered if stats else None,
        unanswered=stats.unanswered if stats else None,
        latency_p50_s=stats.latency_p50_s if stats else None,
        latency_p99_s=stats.latency_p99_s if stats else None,
        prompt_tokens=prompt,
        completion_tokens=completion,
        prompt_tokens_per_s=per_second(prompt),
        completion_tokens_per_s=per_second(completion),
        eval_s=eval_s,
        eval_limit_s=STAGE_MINUTES.get(stage, 0) * 60.0,
        build_s=build.duration_s if build else None,
        image_bytes=resources[0],
        gpu_peak_bytes=resources[1],
        gpu_hours=sum(steps[s].duration_s or 0.0 for s in GPU_STEPS if s in steps) / 3600,
    )


def _reproductions(results_dir: Path) -> dict[str, dict[str, Any]]:
    """entry -> its reproduction.json (training time and track), for entries reproduced here."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(results_dir.glob("reproduce/*/reproduction.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # a reproduction still running, or cut short: no training time to count
        if isinstance(data, dict) and isinstance(data.get("entry"), str):
            found[data["entry"]] = data
    return found


def _cost(
    stage_rows: Mapping[str, StageRow],
    reproduction: Mapping[str, Any] | None,
    track: str | None,
    prices: Mapping[str, float],
) -> Cost:
    training = (reproduction or {}).get("training") or {}
    wall = training.get("wall_time_s")
    train_hours = wall / 3600 if isinstance(wall, int | float) else None
    track = track or (reproduction or {}).get("track")
    price = prices.get(track) if track else None
    eval_hours = sum(row.efficiency.gpu_hours for row in stage_rows.values())
    usd = (eval_hours + (train_hours or 0.0)) * price if price is not None else None
    return Cost(track, price, eval_hours, train_hours, usd)


@dataclass
class _Scored:
    scores: dict[str, dict[str, float]] = field(default_factory=dict)  # stage -> entry -> score
    win_rates: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    scenarios: dict[str, list[str]] = field(default_factory=dict)
    intervals: dict[str, StageIntervals] = field(default_factory=dict)


def _stage_scores(
    store: Store, stages: list[str], keep: Collection[str], *, intervals: bool
) -> _Scored:
    scored = _Scored()
    for stage in stages:
        metrics = {entry: ms for entry, ms in store.metrics(stage).items() if entry in keep}
        # A tiered run (--tiers): each tier's run specs count as one, later tiers rank first.
        reached = _levels(store, stage, keep)
        if reached:
            metrics = {
                entry: [replace(m, run_spec=same_run_spec(m.run_spec)) for m in ms]
                for entry, ms in metrics.items()
            }
        run_specs = {
            m.run_spec: RunSpec(m.scenario, m.lower_is_better)
            for entry_metrics in metrics.values()
            for m in entry_metrics
        }
        if not run_specs:
            continue
        values = {entry: {m.run_spec: m.value for m in ms} for entry, ms in metrics.items()}
        if reached:
            lower = {name: spec.lower_is_better for name, spec in run_specs.items()}
            values = ranked_by_tier(values, reached, lower)
        stage_scores = score_stage(values, run_specs)
        scored.scores[stage] = stage_scores.scores
        scored.win_rates[stage] = stage_scores.scenario_win_rates
        scored.scenarios[stage] = sorted({spec.scenario for spec in run_specs.values()})
        if not intervals:
            continue
        instances = {entry: {m.run_spec: m.instances for m in ms} for entry, ms in metrics.items()}
        drawn = stage_intervals(values, instances, run_specs)
        if drawn is not None:
            scored.intervals[stage] = drawn
    return scored


def _levels(store: Store, stage: str, keep: Collection[str]) -> dict[str, int]:
    """The tier each entry reached; an adaptive run's entries found in the top k rank above
    every round (run/adaptive.py)."""
    reached = {entry: tier for entry, (tier, _) in store.tiers(stage).items() if entry in keep}
    above = max(reached.values(), default=0) + 1
    for entry, decision in store.decisions(stage).items():
        if entry in reached and decision.verdict == "in":
            reached[entry] = above
    return reached


def build_leaderboard(
    store: Store,
    *,
    entries: Collection[str] | None = None,
    track: str | None = None,
    prices: Mapping[str, float] = DEFAULT_PRICES,
    intervals: bool = True,
    disqualified: Mapping[str, str] | None = None,
) -> Leaderboard:
    """The leaderboard of `entries` (default: every entry in the store), ranked among themselves.

    `track` prices the GPU-hours (a reproduction's own track is used when it is None);
    `intervals=False` skips the bootstrap (seconds for a large field) when only ranks matter;
    `disqualified` (entry -> the organizers' reason) keeps those entries on the board, unranked
    and out of the field the others are scored in."""
    keep = set(store.entries()) if entries is None else set(entries) & set(store.entries())
    out = {entry: reason for entry, reason in (disqualified or {}).items() if entry in keep}
    stages = [stage for stage in STAGE_NAMES if stage in store.stages()]
    # Scored without the disqualified: win rates count against the field that competes.
    scored = _stage_scores(store, stages, keep - out.keys(), intervals=intervals)
    final = {s.entry: s for s in standings(scored.scores.get("open"), scored.scores.get("closed"))}
    agreement = (
        rank_agreement(scored.scores["open"], scored.scores["closed"])
        if "open" in scored.scores and "closed" in scored.scores
        else None
    )
    if out:
        # Their own numbers: against the whole field, as they stood when disqualified.
        whole = _stage_scores(store, stages, keep, intervals=False)
        for stage, stage_scores in whole.scores.items():
            for entry in out.keys() & stage_scores.keys():
                scored.scores.setdefault(stage, {})[entry] = stage_scores[entry]
                scored.win_rates.setdefault(stage, {})[entry] = whole.win_rates[stage][entry]
        scored.scenarios = whole.scenarios
        whole_final = standings(whole.scores.get("open"), whole.scores.get("closed"))
        final |= {s.entry: s for s in whole_final if s.entry in out}
    scores, win_rates, scenarios = scored.scores, scored.win_rates, scored.scenarios
    results = {stage: store.results(stage) for stage in stages}
    all_metrics = {stage: store.metrics(stage) for stage in stages}
    tiers = {stage: store.tiers(stage) for stage in stages}
    decisions = {stage: store.decisions(stage) for stage in stages}
    last_tier = {stage: max((t for t, _ in tiers[stage].values()), default=0) for stage in stages}
    reproductions = _reproductions(store.results_dir)
    rows: list[Row] = []
    for entry in sorted(keep):
        stage_rows = {}
        for stage in stages:
            result = results[stage].get(entry)
            gateway = store.gateway_stats(entry, stage)
            steps = store.latest_steps(entry, stage)
            logs = {
                step.value: record.log_path for step, record in steps.items() if record.log_path
            }
            if gateway and gateway[1]:
                logs["requests"] = gateway[1]
            metrics = all_metrics[stage].get(entry, [])
            entry_win_rates = win_rates.get(stage, {}).get(entry, {})
            by_scenario: dict[str, list[float]] = {}
            for m in metrics:
                values = by_scenario.setdefault(m.scenario, [])
                if m.value is not None:
                    values.append(m.value)
            stage_rows[stage] = StageRow(
                status=result.status.value if result else None,
                reason=result.reason if result else "",
                score=scores.get(stage, {}).get(entry),
                scenarios={
                    name: ScenarioResult(
                        entry_win_rates.get(name),
                        sum(values) / len(values) if values else None,
                        next(m.metric for m in metrics if m.scenario == name),
                    )
                    for name, values in sorted(by_scenario.items())
                },
                run_specs={
                    m.run_spec: RunSpecResult(
                        m.scenario, m.metric, m.value, m.lower_is_better, m.reason
                    )
                    for m in metrics
                },
                efficiency=_efficiency(
                    store.results_dir, stage, steps, gateway, store.resources(entry, stage)
                ),
                steps=[
                    StepTime(s.step.value, s.status.value, s.duration_s, s.detail, s.log_path)
                    for s in steps.values()
                ],
                findings=[
                    {**asdict(f), "message": redact(f.message)}
                    for f in store.findings(entry, stage)
                ],
                logs=logs,
                tier=(
                    f"{tiers[stage][entry][0]}/{last_tier[stage]} ({tiers[stage][entry][1]})"
                    + (f" {d.verdict}" if (d := decisions[stage].get(entry)) else "")
                    if entry in tiers[stage]
                    else ""
                ),
                interval=(
                    scored.intervals[stage].entries.get(entry)
                    if stage in scored.intervals
                    else None
                ),
            )
        standing = final.get(entry)
        rows.append(
            Row(
                entry=entry,
                rank=standing.rank if standing and entry not in out else None,
                final=standing.final if standing else None,
                stages=stage_rows,
                cost=_cost(stage_rows, reproductions.get(entry), track, prices),
                disqualified=out.get(entry),
                reproduction=(reproductions.get(entry) or {}).get("verdict"),
            )
        )
    # Ranked by rank, then the disqualified by their score, then the others by name.
    rows.sort(
        key=lambda row: (
            row.rank is None,
            row.disqualified is None,
            row.rank or 0,
            -(row.final or 0.0),
            row.entry,
        )
    )
    costs = [row.cost.usd for row in rows if row.cost.usd is not None]
    return Leaderboard(
        stages,
        rows,
        scenarios,
        agreement,
        sum(costs) if costs else None,
        bootstrap={stage: intervals.bootstrap for stage, intervals in scored.intervals.items()},
    )
