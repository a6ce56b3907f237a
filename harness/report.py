"""The leaderboard: read the results store, score it, write it as Markdown, JSON and HTML.

    board = build_leaderboard(store)           # scoring.py's arithmetic over the stored metrics
    paths = write_leaderboard(board, results_dir)

Every number comes from the results folder: scores from the stored metrics; efficiency from the
steps' times, the gateway's request log, the image's size and the sampled GPU peak (what the
harness measured, not what servers claim); cost from those times, training hours from `harness
reproduce` (RESULTS_DIR/reproduce/*/reproduction.json) and a per-track hourly GPU price. An entry
is ranked in a stage when it has metrics there (scored, eval-timeout, or flagged but evaluated);
every other entry is listed below the ranked ones with its status and reason. Links to logs are
relative to RESULTS_DIR, so the folder can be copied or served as it is. The HTML (pages, figures)
is rendered by harness/pages.py.
"""

from __future__ import annotations

import json
import time
from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from rich.table import Table
from rich.text import Text

from harness.errors import ConfigError
from harness.gateway import GatewayStats
from harness.run import STAGE_MINUTES
from harness.scoring import RankAgreement, RunSpec, rank_agreement, score_stage, standings
from harness.secrets import redact
from harness.store import Step, StepRecord, Store
from harness.tiers import ranked_by_tier, same_run_spec

STAGE_ORDER = ("open", "closed")
OUTPUTS = ("leaderboard.md", "leaderboard.json", "leaderboard.html")
SCHEMA_VERSION = 2
# USD per GPU-hour, the 2023 organizers' figures (a 4090 and an A100 rented by the hour).
DEFAULT_PRICES: dict[str, float] = {"4090": 0.35, "A100": 1.0}
# Steps that hold the entry's GPU: its container is up from serve to the end of the evaluation.
GPU_STEPS = (Step.SERVE, Step.EVALUATE)
TERMINAL_SCENARIOS = 8  # scenario columns `harness report` prints; the files have them all


@dataclass(frozen=True)
class ScenarioResult:
    win_rate: float | None  # the entry's mean win rate over the scenario's run specs
    value: float | None  # the mean of its main metric over those run specs (None: no value)
    metric: str


@dataclass(frozen=True)
class RunSpecResult:
    scenario: str
    metric: str
    value: float | None
    lower_is_better: bool
    reason: str | None = None  # why it has no value, or was refused and scored 0


@dataclass(frozen=True)
class StepTime:
    step: str
    status: str
    duration_s: float | None
    detail: str
    log: str | None


@dataclass(frozen=True)
class Efficiency:
    """What the harness measured of one entry in one stage; None where nothing was recorded."""

    answered: int | None
    unanswered: int | None
    latency_p50_s: float | None
    latency_p99_s: float | None
    prompt_tokens: int | None
    completion_tokens: int | None
    prompt_tokens_per_s: float | None  # over the evaluation's wall time
    completion_tokens_per_s: float | None
    eval_s: float | None
    eval_limit_s: float  # the stage's limit in the competition
    build_s: float | None
    image_bytes: int | None  # the entry's image as Docker reports its size
    gpu_peak_bytes: int | None  # the GPU memory sampler's peak (None: no GPU, or not sampled)
    gpu_hours: float  # serve + evaluate: the time the entry held its GPU


@dataclass(frozen=True)
class StageRow:
    """One entry in one stage."""

    status: str | None  # None: the entry has no result in this stage (not run, or interrupted)
    reason: str
    score: float | None
    scenarios: dict[str, ScenarioResult]
    run_specs: dict[str, RunSpecResult]
    efficiency: Efficiency
    steps: list[StepTime]
    findings: list[dict[str, Any]]  # rule, severity, path, line, message (redacted)
    logs: dict[str, str]  # label -> path relative to RESULTS_DIR
    tier: str = ""  # "2/2 (600)": the coarse-to-fine tier reached and its budget (--tiers)


@dataclass(frozen=True)
class Cost:
    track: str | None
    price_per_gpu_hour: float | None
    eval_gpu_hours: float
    train_gpu_hours: float | None  # from `harness reproduce`, when it ran for this entry
    usd: float | None  # None: no price for the track (or no track known)


@dataclass(frozen=True)
class Row:
    entry: str
    rank: int | None
    final: float | None
    stages: dict[str, StageRow]
    cost: Cost

    @property
    def status(self) -> str:
        parts = [(stage, row.status or "not run") for stage, row in self.stages.items()]
        if len(parts) == 1:
            return parts[0][1]
        return "; ".join(f"{stage}: {status}" for stage, status in parts)

    @property
    def reason(self) -> str:
        reasons = [(stage, row.reason) for stage, row in self.stages.items() if row.reason]
        if len(self.stages) == 1:
            return reasons[0][1] if reasons else ""
        return "; ".join(f"{stage}: {reason}" for stage, reason in reasons)

    @property
    def unanswered(self) -> int | None:
        counts = [
            row.efficiency.unanswered
            for row in self.stages.values()
            if row.efficiency.unanswered is not None
        ]
        return sum(counts) if counts else None

    @property
    def logs(self) -> dict[str, str]:
        prefix = len(self.stages) > 1
        return {
            f"{stage} {label}" if prefix else label: path
            for stage, row in self.stages.items()
            for label, path in row.logs.items()
        }

    @property
    def scenarios(self) -> dict[str, ScenarioResult]:
        """Every stage's scenarios; named `stage/scenario` when the board has both stages."""
        prefix = len(self.stages) > 1
        return {
            f"{stage}/{name}" if prefix else name: result
            for stage, row in self.stages.items()
            for name, result in row.scenarios.items()
        }


@dataclass(frozen=True)
class Leaderboard:
    stages: list[str]
    rows: list[Row]  # ranked rows by rank, then the others by name
    scenarios: dict[str, list[str]]  # stage -> its scenarios
    agreement: RankAgreement | None  # open vs closed, when both stages have scores
    total_usd: float | None
    generated_at: float = field(default_factory=time.time)

    @property
    def columns(self) -> list[str]:
        """The scenario columns, named like `Row.scenarios`' keys."""
        prefix = len(self.stages) > 1
        return [
            f"{stage}/{name}" if prefix else name
            for stage in self.stages
            for name in self.scenarios.get(stage, [])
        ]


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


def _stage_scores(
    store: Store, stages: list[str], keep: Collection[str]
) -> tuple[
    dict[str, dict[str, float]], dict[str, dict[str, dict[str, float]]], dict[str, list[str]]
]:
    scores: dict[str, dict[str, float]] = {}
    win_rates: dict[str, dict[str, dict[str, float]]] = {}
    scenarios: dict[str, list[str]] = {}
    for stage in stages:
        metrics = {entry: ms for entry, ms in store.metrics(stage).items() if entry in keep}
        # A tiered run (--tiers): each tier's run specs count as one, later tiers rank first.
        reached = {entry: tier for entry, (tier, _) in store.tiers(stage).items() if entry in keep}
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
        scored = score_stage(values, run_specs)
        scores[stage] = scored.scores
        win_rates[stage] = scored.scenario_win_rates
        scenarios[stage] = sorted({spec.scenario for spec in run_specs.values()})
    return scores, win_rates, scenarios


def build_leaderboard(
    store: Store,
    *,
    entries: Collection[str] | None = None,
    track: str | None = None,
    prices: Mapping[str, float] = DEFAULT_PRICES,
) -> Leaderboard:
    """The leaderboard of `entries` (default: every entry in the store), ranked among themselves.

    `track` prices the GPU-hours (a reproduction's own track is used when it is None)."""
    keep = set(store.entries()) if entries is None else set(entries) & set(store.entries())
    stages = [stage for stage in STAGE_ORDER if stage in store.stages()]
    scores, win_rates, scenarios = _stage_scores(store, stages, keep)
    final = {s.entry: s for s in standings(scores.get("open"), scores.get("closed"))}
    results = {stage: store.results(stage) for stage in stages}
    all_metrics = {stage: store.metrics(stage) for stage in stages}
    tiers = {stage: store.tiers(stage) for stage in stages}
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
                    if entry in tiers[stage]
                    else ""
                ),
            )
        standing = final.get(entry)
        rows.append(
            Row(
                entry=entry,
                rank=standing.rank if standing else None,
                final=standing.final if standing else None,
                stages=stage_rows,
                cost=_cost(stage_rows, reproductions.get(entry), track, prices),
            )
        )
    rows.sort(key=lambda row: (row.rank is None, row.rank or 0, row.entry))
    agreement = (
        rank_agreement(scores["open"], scores["closed"])
        if "open" in scores and "closed" in scores
        else None
    )
    costs = [row.cost.usd for row in rows if row.cost.usd is not None]
    return Leaderboard(stages, rows, scenarios, agreement, sum(costs) if costs else None)


# -- rendering (the HTML is harness/pages.py's) ------------------------------------------------


def number(value: float | None, digits: int = 3) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def gib(value: int | None) -> str:
    return "" if value is None else f"{value / 1024**3:.1f}"


def _tiered(board: Leaderboard) -> bool:
    return any(stage.tier for row in board.rows for stage in row.stages.values())


def columns(board: Leaderboard) -> list[str]:
    stage_scores = [stage.capitalize() for stage in board.stages] if len(board.stages) > 1 else []
    tier = ["Tier"] if _tiered(board) else []
    return ["Rank", "Entry", "Score", *stage_scores, *board.columns, *tier, "Status", "Reason"]


def cells(board: Leaderboard, row: Row) -> list[str]:
    stage_scores = (
        [number(row.stages[stage].score) for stage in board.stages] if len(board.stages) > 1 else []
    )
    scenarios = row.scenarios
    win_rates = [
        number(scenarios[name].win_rate) if name in scenarios else "" for name in board.columns
    ]
    rank = "" if row.rank is None else str(row.rank)
    tier = (
        ["; ".join(filter(None, (s.tier for s in row.stages.values())))] if _tiered(board) else []
    )
    return [
        rank, row.entry, number(row.final), *stage_scores, *win_rates, *tier, row.status,
        row.reason,
    ]  # fmt: skip


EFFICIENCY_COLUMNS = [
    "Entry", "Stage", "Answered", "Unanswered", "Prompt tok/s", "Completion tok/s",
    "p50 latency (s)", "p99 latency (s)", "Eval time (s)", "Of limit", "Build time (s)",
    "Image (GiB)", "Peak GPU (GiB)", "GPU-hours", "Cost (USD)",
]  # fmt: skip


def efficiency_cells(row: Row, stage: str) -> list[str]:
    e = row.stages[stage].efficiency
    share = f"{e.eval_s / e.eval_limit_s:.1%}" if e.eval_s is not None and e.eval_limit_s else ""
    return [
        row.entry,
        stage,
        "" if e.answered is None else str(e.answered),
        "" if e.unanswered is None else str(e.unanswered),
        number(e.prompt_tokens_per_s, 1),
        number(e.completion_tokens_per_s, 1),
        number(e.latency_p50_s),
        number(e.latency_p99_s),
        number(e.eval_s, 1),
        share,
        number(e.build_s, 1),
        gib(e.image_bytes),
        gib(e.gpu_peak_bytes),
        number(e.gpu_hours, 4),
        number(row.cost.usd, 4),
    ]


def agreement_line(board: Leaderboard) -> str:
    agreement = board.agreement
    if agreement is None:
        return ""

    def show(value: float | None) -> str:
        return "undefined" if value is None else f"{value:.3f}"

    return (
        f"Open/closed rank agreement over {agreement.entries} entries: "
        f"Kendall tau-b {show(agreement.kendall_tau_b)}, Spearman rho {show(agreement.spearman)}"
    )


def generated(board: Leaderboard) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(board.generated_at))


def _markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    def escape(cell: str) -> str:
        return cell.replace("|", "\\|").replace("<", "&lt;").replace("\n", " ")

    return [
        "| " + " | ".join(escape(c) for c in header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *("| " + " | ".join(escape(c) for c in row) + " |" for row in rows),
    ]


def to_markdown(board: Leaderboard) -> str:
    lines = [
        "# Leaderboard",
        "",
        f"Stages: {', '.join(board.stages) or 'none'}. Generated {generated(board)}. "
        "Scenario columns: mean win rate.",
        "",
        *_markdown_table(
            [*columns(board), "Cost (USD)", "Logs"],
            [
                [
                    *cells(board, row),
                    number(row.cost.usd, 4),
                    ", ".join(f"[{label}]({path})" for label, path in row.logs.items()),
                ]
                for row in board.rows
            ],
        ),
    ]
    if board.total_usd is not None:
        lines += ["", f"Total cost: USD {board.total_usd:.4f} of GPU time."]
    if board.agreement:
        lines += ["", agreement_line(board)]
    efficiency = [efficiency_cells(row, stage) for row in board.rows for stage in row.stages]
    if efficiency:
        lines += ["", "## Efficiency", "", *_markdown_table(EFFICIENCY_COLUMNS, efficiency)]
    return "\n".join(lines) + "\n"


def to_json(board: Leaderboard) -> str:
    document = {"schema_version": SCHEMA_VERSION, **asdict(board), "columns": board.columns}
    for row, data in zip(board.rows, document["rows"], strict=True):
        data.update(
            status=row.status,
            reason=row.reason,
            unanswered=row.unanswered,
            scenarios={name: asdict(result) for name, result in row.scenarios.items()},
        )
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def _printed(board: Leaderboard) -> tuple[list[int], str]:
    """The columns `harness run` and `report` print (indexes into `columns(board)`) and the
    caption under them. A terminal fits a few scenario columns; a stage's dozen are left to the
    files."""
    shown = set(board.columns) if len(board.columns) <= TERMINAL_SCENARIOS else set()
    caption = " ".join(
        part
        for part in (
            "Scenario columns: mean win rate."
            if shown
            else f"{len(board.columns)} scenario columns: see leaderboard.html."
            if board.columns
            else "",
            f"Total cost: USD {board.total_usd:.4f}." if board.total_usd is not None else "",
            agreement_line(board),
        )
        if part
    )
    keep = [
        index
        for index, column in enumerate(columns(board))
        if column in shown or column not in board.columns
    ]
    return keep, caption


def to_plain_text(board: Leaderboard) -> str:
    """What `to_rich` shows, as a Markdown table: one line per entry, however long its name and
    reason, for output that is no terminal (CI logs, `| tee`, a file)."""
    keep, caption = _printed(board)
    header = columns(board)
    rows = [[cells(board, row)[index] for index in keep] for row in board.rows]
    table = _markdown_table([header[index] for index in keep], rows)
    return "\n".join(["Leaderboard", "", *table, *(["", caption] if caption else [])])


def to_rich(board: Leaderboard) -> Table:
    keep, caption = _printed(board)
    table = Table(title="Leaderboard", caption=caption)
    for index in keep:
        column = columns(board)[index]
        table.add_column(column, overflow="fold", max_width=50 if column == "Reason" else None)
    for row in board.rows:
        texts = cells(board, row)
        # Text, not markup: a reason quoting a log may contain rich's [brackets].
        table.add_row(
            *[Text(texts[index]) for index in keep],
            style=None if row.rank is not None else "dim",
        )
    return table


def write_leaderboard(board: Leaderboard, results_dir: Path) -> list[Path]:
    """Write leaderboard.md, .json, .html and an HTML page per entry (under leaderboard/) into
    RESULTS_DIR; returns the leaderboard files' paths."""
    from harness.pages import entry_pages, to_html  # pages.py renders this module's types

    outputs = dict(zip(OUTPUTS, (to_markdown(board), to_json(board), to_html(board)), strict=True))
    outputs.update(entry_pages(board))
    for name, text in outputs.items():
        path = results_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        # Written beside and renamed, so a reader never sees half a page.
        partial = path.with_suffix(path.suffix + ".partial")
        partial.write_text(text, encoding="utf-8")
        partial.replace(path)
    return [results_dir / name for name in OUTPUTS]
