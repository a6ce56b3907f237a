"""The leaderboard's figures, drawn from a `Leaderboard` as self-contained SVG (matplotlib's SVG
backend, text kept as text; nothing loaded from elsewhere), to be embedded inline in the HTML.

    figures(board) -> {"scenarios": "<svg ...>", "stages": ..., "time": ..., "status": ...}

    loss_curves(curves), scores_with_intervals(rows)    a reproduction's (reproduce/report.py)

Each figure is FIGURE_WIDTH_PT x FIGURE_HEIGHT_PT whatever the data; with nothing to draw (one
stage only, no scored entry) it says so in the figure instead of plotting an empty frame.
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import NamedTuple

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from harness.leaderboard.model import Leaderboard, Row
from harness.leaderboard.scoring import ranks

FIGURE_WIDTH_PT = 432  # 6 x 4 inches at SVG's 72 points per inch: 576 x 384 CSS pixels
FIGURE_HEIGHT_PT = 288
# The 2023 organizers' order: what happened to an entry, from best to worst.
STATUS_ORDER = (
    "scored", "flagged", "eval-timeout", "eval-failed", "oom", "crashed", "unhealthy",
    "build-timeout", "build-failed", "no-dockerfile", "not run",
)  # fmt: skip


def _figure() -> tuple[Figure, Axes]:
    figure = Figure(figsize=(FIGURE_WIDTH_PT / 72, FIGURE_HEIGHT_PT / 72), layout="constrained")
    return figure, figure.add_subplot()


def _svg(figure: Figure) -> str:
    buffer = io.StringIO()
    # No date in the metadata: the same results draw the same bytes.
    figure.savefig(buffer, format="svg", metadata={"Date": None})
    text = buffer.getvalue()
    # Inline SVG: the XML declaration and DOCTYPE belong to a standalone file only.
    return text[text.index("<svg") :]


def _competing(board: Leaderboard) -> list[Row]:
    """The rows the score figures draw: a disqualified entry is out of the field."""
    return [row for row in board.rows if row.disqualified is None]


def _empty(axes: Axes, message: str) -> None:
    axes.set_axis_off()
    axes.text(0.5, 0.5, message, ha="center", va="center", wrap=True, color="#555")


def scenario_distribution(board: Leaderboard) -> str:
    """Each scenario's win rates over the entries: one dot per entry."""
    figure, axes = _figure()
    names = board.columns
    points = [
        (index, result.win_rate)
        for index, name in enumerate(names)
        for row in _competing(board)
        if (result := row.scenarios.get(name)) is not None and result.win_rate is not None
    ]
    if not points:
        _empty(axes, "No scored entry yet: no win rates to show.")
    else:
        # A small fixed horizontal spread so equal win rates stay visible as separate dots.
        spread = [(i + ((k % 5) - 2) * 0.06, rate) for k, (i, rate) in enumerate(points)]
        axes.scatter([x for x, _ in spread], [y for _, y in spread], s=18, alpha=0.7)
        axes.set_xticks(range(len(names)), names)
        axes.tick_params(axis="x", labelrotation=30, labelsize=8)
        axes.set_ylim(-0.05, 1.05)
        axes.set_ylabel("mean win rate")
    axes.set_title("Win rates per scenario", fontsize=10)
    return _svg(figure)


def stage_agreement(board: Leaderboard) -> str:
    """Open vs closed rank of each entry scored in both: the paper's overfitting figure."""
    figure, axes = _figure()
    scores = {
        stage: {
            row.entry: s for row in _competing(board) if (s := row.stages[stage].score) is not None
        }
        for stage in ("open", "closed")
        if stage in board.stages
    }
    common = set(scores.get("open", {})) & set(scores.get("closed", {}))
    if len(common) < 2 or board.agreement is None:
        _empty(axes, "Needs both stages scored for at least two entries.")
    else:
        open_ranks = ranks({e: scores["open"][e] for e in common})
        closed_ranks = ranks({e: scores["closed"][e] for e in common})
        entries = sorted(common)
        axes.scatter([open_ranks[e] for e in entries], [closed_ranks[e] for e in entries], s=20)
        for entry in entries:
            axes.annotate(entry, (open_ranks[entry], closed_ranks[entry]), fontsize=7,
                          xytext=(4, 4), textcoords="offset points")  # fmt: skip
        for axis in (axes.xaxis, axes.yaxis):
            axis.set_major_locator(MaxNLocator(integer=True))
        top = len(entries) + 0.5
        axes.plot([0.5, top], [0.5, top], color="#999", linewidth=0.8)  # equal ranks
        axes.set_xlim(0.5, top)
        axes.set_ylim(top, 0.5)  # rank 1 at the top
        axes.invert_xaxis()
        axes.set_xlabel("open-stage rank")
        axes.set_ylabel("closed-stage rank")
        tau, rho = board.agreement.kendall_tau_b, board.agreement.spearman
        axes.text(
            0.02, 0.02,
            f"Kendall tau-b {'n/a' if tau is None else f'{tau:.2f}'}, "
            f"Spearman {'n/a' if rho is None else f'{rho:.2f}'}",
            transform=axes.transAxes, fontsize=8,
        )  # fmt: skip
    axes.set_title("Open vs closed stage ranks", fontsize=10)
    return _svg(figure)


def score_against_time(board: Leaderboard) -> str:
    """Each stage score (with its 95% interval where known) against the evaluation's wall time:
    is a higher score a slower one?"""
    figure, axes = _figure()
    drawn = False
    for k, stage in enumerate(board.stages):
        color = f"C{k}"
        rows = [
            (eval_s / 60, score, row.entry, row.stages[stage].interval)
            for row in _competing(board)
            if (score := row.stages[stage].score) is not None
            and (eval_s := row.stages[stage].efficiency.eval_s)
        ]
        points = [(x, y, entry) for x, y, entry, _ in rows]
        if points:
            axes.scatter(
                [x for x, _, _ in points], [y for _, y, _ in points], s=20, label=stage, color=color
            )
            bars = [(x, y, i) for x, y, _, i in rows if i is not None]
            if bars:  # the score's 95% interval (intervals.py), in the stage's colour
                axes.errorbar(
                    [x for x, _, _ in bars],
                    [y for _, y, _ in bars],
                    yerr=[
                        [max(y - i.low, 0.0) for _, y, i in bars],
                        [max(i.high - y, 0.0) for _, y, i in bars],
                    ],
                    fmt="none",
                    ecolor=color,
                    elinewidth=0.8,
                    capsize=2,
                )
            for x, y, entry in points:
                axes.annotate(entry, (x, y), fontsize=7, xytext=(4, 4), textcoords="offset points")
            drawn = True
    if not drawn:
        _empty(axes, "No scored entry with a timed evaluation yet.")
    else:
        axes.set_xlabel("evaluation wall time (minutes)")
        axes.set_ylabel("stage score")
        axes.set_ylim(-0.05, 1.05)
        axes.legend(fontsize=8)
    axes.set_title("Score against evaluation time", fontsize=10)
    return _svg(figure)


def status_breakdown(board: Leaderboard) -> str:
    """How many entries ended in each status, per stage."""
    figure, axes = _figure()
    counts = {
        stage: Counter(row.stages[stage].status or "not run" for row in board.rows)
        for stage in board.stages
    }
    seen = [s for s in STATUS_ORDER if any(s in c for c in counts.values())]
    if not seen:
        _empty(axes, "No entry in the results yet.")
    else:
        width = 0.8 / len(counts)
        for k, (stage, counter) in enumerate(counts.items()):
            xs = [i + (k - (len(counts) - 1) / 2) * width for i in range(len(seen))]
            axes.bar(xs, [counter.get(s, 0) for s in seen], width=width, label=stage)
        axes.set_xticks(range(len(seen)), seen)
        axes.tick_params(axis="x", labelrotation=30, labelsize=8)
        axes.set_ylabel("entries")
        axes.yaxis.set_major_locator(MaxNLocator(integer=True))
        axes.legend(fontsize=8)
    axes.set_title("What happened to the entries", fontsize=10)
    return _svg(figure)


FIGURES = {
    "scenarios": scenario_distribution,
    "stages": stage_agreement,
    "time": score_against_time,
    "status": status_breakdown,
}


def figures(board: Leaderboard) -> dict[str, str]:
    """Every figure's SVG, by name."""
    return {name: draw(board) for name, draw in FIGURES.items()}


# -- a reproduction's figures (the report of `harness reproduce`): plain data in, the same look --


def loss_curves(curves: Mapping[str, Sequence[tuple[int, float]]]) -> str:
    """Training loss per step: the first curve (the original's) dashed in black over every other
    (each reproduced run) in its own colour."""
    figure, axes = _figure()
    drawn = {label: points for label, points in curves.items() if points}
    if not drawn:
        _empty(axes, "No loss curve: no training logged its steps (metrics.jsonl).")
    else:
        for k, (label, points) in enumerate(drawn.items()):
            # The original on top, dashed: a run that matches it exactly still shows both.
            style = (
                {"color": "black", "linestyle": "--", "zorder": 3}
                if k == 0
                else {"color": f"C{k - 1}", "zorder": 2}
            )
            steps = [step for step, _ in points]
            losses = [loss for _, loss in points]
            axes.plot(steps, losses, label=label, linewidth=1.2, **style)  # type: ignore[arg-type]
        axes.set_xlabel("step")
        axes.set_ylabel("training loss")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.legend(fontsize=8)
    axes.set_title("Training loss", fontsize=10)
    return _svg(figure)


class ScoreRow(NamedTuple):
    """One scenario of a reproduction: the original's score, its 95% interval (None: not
    measured) and each reproduced run's score."""

    name: str
    original: float
    low: float | None
    high: float | None
    runs: Sequence[float]


def scores_with_intervals(rows: Sequence[ScoreRow]) -> str:
    """Per scenario the original's score with its interval (black) and each run (dots)."""
    figure, axes = _figure()
    if not rows:
        _empty(axes, "No scores: the reproduction never got to an evaluation.")
    else:
        xs = range(len(rows))
        bars = [(x, r) for x, r in zip(xs, rows, strict=True) if r.low is not None]
        axes.errorbar(
            [x for x, _ in bars],
            [r.original for _, r in bars],
            yerr=[
                [max(r.original - (r.low or 0.0), 0.0) for _, r in bars],
                [max((r.high or 0.0) - r.original, 0.0) for _, r in bars],
            ],
            fmt="none", ecolor="black", elinewidth=0.8, capsize=3,
        )  # fmt: skip
        axes.scatter(xs, [r.original for r in rows], s=30, color="black", label="original")
        runs = max(len(r.runs) for r in rows)
        for k in range(runs):
            # Runs side by side to the right of the original, so equal scores stay visible.
            found = [(x + 0.08 * (k + 1), r.runs[k]) for x, r in zip(xs, rows, strict=True)
                     if k < len(r.runs)]  # fmt: skip
            axes.scatter([x for x, _ in found], [y for _, y in found], s=18, color=f"C{k}",
                         label="reproduced" if runs == 1 else f"run {k + 1}")  # fmt: skip
        axes.set_xticks(list(xs), [r.name for r in rows])
        axes.tick_params(axis="x", labelrotation=30, labelsize=8)
        axes.set_ylabel("score")
        axes.legend(fontsize=8)
    axes.set_title("Scores: the original (95% interval) and each run", fontsize=10)
    return _svg(figure)
