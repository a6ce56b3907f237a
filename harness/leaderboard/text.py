"""The leaderboard as text: Markdown (leaderboard.md), JSON (leaderboard.json), a rich table for
the terminal and a Markdown table for output that is no terminal."""

from __future__ import annotations

import json
from dataclasses import asdict

from rich.table import Table
from rich.text import Text

from harness.leaderboard.model import Leaderboard, Row
from harness.leaderboard.table import (
    EFFICIENCY_COLUMNS,
    agreement_line,
    bootstrap_line,
    cells,
    columns,
    efficiency_cells,
    generated,
    number,
    struck,
)

# 3: stages carry `interval` (score and rank intervals, ties), `bootstrap`;
# 4: rows carry `disqualified` (the organizers' reason, or null) and `reproduction` (the verdict
#    of `harness reproduce`, or null)
# 5: rows carry `facts` (the entry's fact sheet, field -> text; {} outside a competition)
SCHEMA_VERSION = 5
TERMINAL_SCENARIOS = 8  # scenario columns `harness report` prints; the files have them all


def _markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    def escape(cell: str) -> str:
        return cell.replace("|", "\\|").replace("<", "&lt;").replace("\n", " ")

    return [
        "| " + " | ".join(escape(c) for c in header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *("| " + " | ".join(escape(c) for c in row) + " |" for row in rows),
    ]


def _struck_cells(board: Leaderboard, row: Row) -> list[str]:
    """`cells`, a disqualified entry's name and numbers ~~struck through~~."""
    return [
        f"~~{text}~~" if strike and text else text
        for text, strike in zip(cells(board, row), struck(board, row), strict=True)
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
                    *_struck_cells(board, row),
                    number(row.cost.usd, 4),
                    ", ".join(f"[{label}]({path})" for label, path in row.logs.items()),
                ]
                for row in board.rows
            ],
        ),
    ]
    if board.bootstrap:
        lines += ["", bootstrap_line(board)]
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
        for stage, stage_row in row.stages.items():
            if stage_row.interval is not None:
                data["stages"][stage]["interval"]["tied"] = stage_row.interval.tied
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
            bootstrap_line(board),
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
    rows = [[_struck_cells(board, row)[index] for index in keep] for row in board.rows]
    table = _markdown_table([header[index] for index in keep], rows)
    return "\n".join(["Leaderboard", "", *table, *(["", caption] if caption else [])])


def to_rich(board: Leaderboard) -> Table:
    keep, caption = _printed(board)
    table = Table(title="Leaderboard", caption=caption)
    for index in keep:
        column = columns(board)[index]
        table.add_column(column, overflow="fold", max_width=50 if column == "Reason" else None)
    for row in board.rows:
        texts, strike = cells(board, row), struck(board, row)
        # Text, not markup: a reason quoting a log may contain rich's [brackets].
        table.add_row(
            *[
                Text(texts[index], style="strike" if strike[index] and texts[index] else "")
                for index in keep
            ],
            style=None if row.rank is not None else "dim",
        )
    return table
