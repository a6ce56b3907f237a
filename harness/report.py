"""The leaderboard: read the results store, score it, write it as Markdown, JSON and HTML.

    board = build_leaderboard(store)           # scoring.py's arithmetic over the stored metrics
    paths = write_leaderboard(board, results_dir)

An entry is ranked in a stage when it has metrics there (scored, eval-timeout, or flagged but
evaluated); every other entry is listed below the ranked ones with its status and reason. Links to
logs are relative to RESULTS_DIR, so the folder can be copied or served as it is.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import jinja2
from rich.table import Table
from rich.text import Text

from harness.gateway import GatewayStats
from harness.scoring import RankAgreement, RunSpec, rank_agreement, score_stage, standings
from harness.store import Store
from harness.tiers import ranked_by_tier, same_run_spec

STAGE_ORDER = ("open", "closed")
OUTPUTS = ("leaderboard.md", "leaderboard.json", "leaderboard.html")


@dataclass(frozen=True)
class StageRow:
    """One entry in one stage."""

    status: str | None  # None: the entry has no result in this stage (not run, or interrupted)
    reason: str
    score: float | None
    scenario_win_rates: dict[str, float]
    gateway: GatewayStats | None
    findings: int
    logs: dict[str, str]  # label -> path relative to RESULTS_DIR
    tier: str = ""  # "2/2 (600)": the coarse-to-fine tier reached and its budget (--tiers)


@dataclass(frozen=True)
class Row:
    entry: str
    rank: int | None
    final: float | None
    stages: dict[str, StageRow]

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
        counts = [row.gateway.unanswered for row in self.stages.values() if row.gateway]
        return sum(counts) if counts else None

    @property
    def logs(self) -> dict[str, str]:
        prefix = len(self.stages) > 1
        return {
            f"{stage} {label}" if prefix else label: path
            for stage, row in self.stages.items()
            for label, path in row.logs.items()
        }


@dataclass(frozen=True)
class Leaderboard:
    stages: list[str]
    rows: list[Row]  # ranked rows by rank, then the others by name
    scenarios: dict[str, list[str]]  # stage -> its scenarios
    agreement: RankAgreement | None  # open vs closed, when both stages have scores
    generated_at: float = field(default_factory=time.time)


def build_leaderboard(store: Store) -> Leaderboard:
    stages = [stage for stage in STAGE_ORDER if stage in store.stages()]
    scores: dict[str, dict[str, float]] = {}
    win_rates: dict[str, dict[str, dict[str, float]]] = {}
    scenarios: dict[str, list[str]] = {}
    for stage in stages:
        metrics = store.metrics(stage)
        reached = {entry: tier for entry, (tier, _) in store.tiers(stage).items()}
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

    final = {s.entry: s for s in standings(scores.get("open"), scores.get("closed"))}
    results = {stage: store.results(stage) for stage in stages}
    tiers = {stage: store.tiers(stage) for stage in stages}
    last_tier = {stage: max((t for t, _ in tiers[stage].values()), default=0) for stage in stages}
    rows: list[Row] = []
    for entry in store.entries():
        stage_rows = {}
        for stage in stages:
            result = results[stage].get(entry)
            gateway = store.gateway_stats(entry, stage)
            logs = {
                step.value: record.log_path
                for step, record in store.latest_steps(entry, stage).items()
                if record.log_path
            }
            if gateway and gateway[1]:
                logs["requests"] = gateway[1]
            stage_rows[stage] = StageRow(
                status=result.status.value if result else None,
                reason=result.reason if result else "",
                score=scores.get(stage, {}).get(entry),
                scenario_win_rates=win_rates.get(stage, {}).get(entry, {}),
                gateway=gateway[0] if gateway else None,
                findings=len(store.findings(entry, stage)),
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
            )
        )
    rows.sort(key=lambda row: (row.rank is None, row.rank or 0, row.entry))
    agreement = (
        rank_agreement(scores["open"], scores["closed"])
        if "open" in scores and "closed" in scores
        else None
    )
    return Leaderboard(stages, rows, scenarios, agreement)


# -- rendering ---------------------------------------------------------------------------------


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def _tiered(board: Leaderboard) -> bool:
    return any(stage.tier for row in board.rows for stage in row.stages.values())


def _columns(board: Leaderboard) -> list[str]:
    stage_scores = [stage.capitalize() for stage in board.stages] if len(board.stages) > 1 else []
    tier = ["Tier"] if _tiered(board) else []
    return ["Rank", "Entry", "Score", *stage_scores, *tier, "Status", "Reason", "Unanswered"]


def _cells(board: Leaderboard, row: Row) -> list[str]:
    stage_scores = (
        [_number(row.stages[stage].score) for stage in board.stages]
        if len(board.stages) > 1
        else []
    )
    unanswered = "" if row.unanswered is None else str(row.unanswered)
    rank = "" if row.rank is None else str(row.rank)
    tier = (
        ["; ".join(filter(None, (s.tier for s in row.stages.values())))] if _tiered(board) else []
    )
    return [
        rank, row.entry, _number(row.final), *stage_scores, *tier, row.status, row.reason,
        unanswered,
    ]  # fmt: skip


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


def to_markdown(board: Leaderboard) -> str:
    def escape(cell: str) -> str:
        return cell.replace("|", "\\|").replace("<", "&lt;").replace("\n", " ")

    columns = [*_columns(board), "Logs"]
    lines = [
        "# Leaderboard",
        "",
        f"Stages: {', '.join(board.stages) or 'none'}. Generated "
        f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(board.generated_at))}.",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
    ]
    for row in board.rows:
        links = ", ".join(f"[{label}]({path})" for label, path in row.logs.items())
        lines.append("| " + " | ".join(escape(c) for c in [*_cells(board, row), links]) + " |")
    if board.agreement:
        lines += ["", agreement_line(board)]
    return "\n".join(lines) + "\n"


def to_json(board: Leaderboard) -> str:
    document = asdict(board)
    for row, data in zip(board.rows, document["rows"], strict=True):
        data.update(status=row.status, reason=row.reason, unanswered=row.unanswered)
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


_HTML = jinja2.Environment(autoescape=True).from_string("""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Leaderboard</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2rem; }
table { border-collapse: collapse; }
th, td { border: 1px solid #ccc; padding: 0.3rem 0.6rem; text-align: left; vertical-align: top; }
th { cursor: pointer; background: #f3f3f3; user-select: none; }
th::after { content: " \\2195"; color: #999; }
tr.unranked { color: #666; }
</style>
</head>
<body>
<h1>Leaderboard</h1>
<p>Stages: {{ stages }}. Generated {{ generated }}. Click a column header to sort.</p>
<table id="leaderboard">
<thead><tr>{% for column in columns %}<th>{{ column }}</th>{% endfor %}<th>Logs</th></tr></thead>
<tbody>
{% for cells, logs, ranked in rows %}
<tr{% if not ranked %} class="unranked"{% endif %}>
{% for cell in cells %}<td>{{ cell }}</td>{% endfor %}
<td>{% for label, path in logs.items() %}<a href="{{ path }}">{{ label }}</a>
{%- if not loop.last %}, {% endif %}{% endfor %}</td>
</tr>
{% endfor %}
</tbody>
</table>
{% if agreement %}<p>{{ agreement }}</p>{% endif %}
<script>
// Numbers sort as numbers; empty cells (unranked entries) stay at the bottom either way.
document.querySelectorAll("#leaderboard th").forEach((th, column) => {
  th.addEventListener("click", () => {
    const body = th.closest("table").tBodies[0];
    const up = th.dataset.order !== "asc";
    th.dataset.order = up ? "asc" : "desc";
    const key = (row) => row.cells[column].textContent.trim();
    [...body.rows].sort((a, b) => {
      const x = key(a), y = key(b);
      if (!x || !y) return !x - !y;
      const order = isNaN(x) || isNaN(y) ? x.localeCompare(y) : x - y;
      return up ? order : -order;
    }).forEach((row) => body.appendChild(row));
  });
});
</script>
</body>
</html>
""")


def to_html(board: Leaderboard) -> str:
    return _HTML.render(
        stages=", ".join(board.stages) or "none",
        generated=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(board.generated_at)),
        columns=_columns(board),
        rows=[(_cells(board, row), row.logs, row.rank is not None) for row in board.rows],
        agreement=agreement_line(board),
    )


def to_rich(board: Leaderboard) -> Table:
    table = Table(title="Leaderboard", caption=agreement_line(board) or None)
    for column in _columns(board):
        table.add_column(column, overflow="fold", max_width=60 if column == "Reason" else None)
    for row in board.rows:
        # Text, not markup: a reason quoting a log may contain rich's [brackets].
        cells = [Text(cell) for cell in _cells(board, row)]
        table.add_row(*cells, style=None if row.rank is not None else "dim")
    return table


def write_leaderboard(board: Leaderboard, results_dir: Path) -> list[Path]:
    """Write leaderboard.md, .json and .html into RESULTS_DIR; returns their paths."""
    paths = [results_dir / name for name in OUTPUTS]
    for path, text in zip(paths, (to_markdown(board), to_json(board), to_html(board)), strict=True):
        # Written beside and renamed, so a reader never sees half a leaderboard.
        partial = path.with_suffix(path.suffix + ".partial")
        partial.write_text(text, encoding="utf-8")
        partial.replace(path)
    return paths
