"""A leaderboard's cells as strings: the columns, rows and lines that the text and HTML renderers
share, so that the files, the terminal and the pages never disagree on a number."""

from __future__ import annotations

import time

from harness.leaderboard.model import Leaderboard, Row


def number(value: float | None, digits: int = 3) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def gib(value: int | None) -> str:
    return "" if value is None else f"{value / 1024**3:.1f}"


def _tiered(board: Leaderboard) -> bool:
    return any(stage.tier for row in board.rows for stage in row.stages.values())


def _interval_columns(board: Leaderboard) -> list[str]:
    """Two columns per stage with intervals: the score's and the rank's."""
    if len(board.stages) == 1:
        return ["Score 95%", "Rank 95%"] if board.bootstrap else []
    return [
        f"{stage.capitalize()} {what} 95%"
        for stage in board.stages
        if stage in board.bootstrap
        for what in ("score", "rank")
    ]


def _interval_cells(board: Leaderboard, row: Row) -> list[str]:
    texts = []
    for stage in board.stages:
        if stage not in board.bootstrap:
            continue
        interval = row.stages[stage].interval if stage in row.stages else None
        if interval is None:
            texts += ["", ""]
            continue
        ranks = (
            str(interval.rank_low)
            if interval.rank_low == interval.rank_high
            else f"{interval.rank_low}-{interval.rank_high}"
        )
        texts += [
            f"[{number(interval.low)}, {number(interval.high)}]",
            f"{ranks} tied" if interval.tied else ranks,
        ]
    return texts


def bootstrap_line(board: Leaderboard) -> str:
    """How the intervals were drawn, in a sentence under the table."""
    if not board.bootstrap:
        return ""
    parts = [
        f"{stage}: {b.instances} instances, {b.resamples} resamples, seed {b.seed}"
        for stage, b in board.bootstrap.items()
    ]
    confidence = next(iter(board.bootstrap.values())).confidence
    return (
        f"{confidence:.0%} intervals: a percentile bootstrap over the evaluated instances, the "
        f"same draw for every entry ({'; '.join(parts)}). Tied: the interval of the score "
        "difference with another entry contains 0."
    )


def _reproduced(board: Leaderboard) -> bool:
    return any(row.reproduction for row in board.rows)


REPRODUCTION_COLUMN = "Reproduction"  # the verdict of `harness reproduce`, where it ran


def fact_columns(board: Leaderboard) -> list[str]:
    """The fact sheets' fields that any row carries, in the order the rows carry them (the
    competition file's: the service fills every sheet in that order)."""
    return list(dict.fromkeys(name for row in board.rows for name in row.facts))


def columns(board: Leaderboard) -> list[str]:
    stage_scores = [stage.capitalize() for stage in board.stages] if len(board.stages) > 1 else []
    tier = ["Tier"] if _tiered(board) else []
    reproduction = [REPRODUCTION_COLUMN] if _reproduced(board) else []
    return [
        "Rank", "Entry", "Score", *stage_scores, *_interval_columns(board), *board.columns, *tier,
        *fact_columns(board), *reproduction, "Status", "Reason",
    ]  # fmt: skip


# A disqualified row's status; its Reason cell holds the organizers' reason.
DISQUALIFIED = "disqualified"
_NOT_STRUCK = 2  # the last columns, Status and Reason: they say why the rest is struck through


def struck(board: Leaderboard, row: Row) -> list[bool]:
    """Which of `cells(board, row)` the renderers strike through: a disqualified entry's name
    and numbers."""
    count = len(columns(board))
    # A reproduction's verdict, before them, is no number of the entry's either; nor are the
    # facts the team declared.
    kept = _NOT_STRUCK + (1 if _reproduced(board) else 0) + len(fact_columns(board))
    return [row.disqualified is not None and index < count - kept for index in range(count)]


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
    reproduction = [row.reproduction or ""] if _reproduced(board) else []
    facts = [row.facts.get(name, "") for name in fact_columns(board)]
    status, reason = (
        (row.status, row.reason) if row.disqualified is None else (DISQUALIFIED, row.disqualified)
    )
    return [
        rank, row.entry, number(row.final), *stage_scores, *_interval_cells(board, row),
        *win_rates, *tier, *facts, *reproduction, status, reason,
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
