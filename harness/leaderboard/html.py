"""The leaderboard as HTML: one page, a page per entry, the figures inline; no server, nothing
fetched (the templates are in templates/ beside this module, the figures come from figures.py).

    to_html(board)                                  leaderboard.html, a standalone page
    to_html(board, standalone=False,                the same body, for embedding in another page
            entry_link=lambda e: f"/entries/{e}")
    entry_pages(board)                              {"leaderboard/<slug>.html": page, ...}
    to_comparison_html(comparison, board)           a sweep's comparison above the board
    to_entry_html(row, back=URL, log_link=...)      one entry's page, links where you say
    render_page(template, **context)                another report in the same style (a
                                                    reproduction's: reproduction.html.j2)

`entry_link(entry)`, `reproduction_link(entry)` (a reproduction's verdict) and `log_link(path)`
say where links point (None: no link). By default they
point into RESULTS_DIR, relative, so the folder can be opened from disk or served as it is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jinja2
from markupsafe import Markup

from harness.leaderboard.compare import (
    Comparison,
    comparison_cells,
    comparison_columns,
    comparison_note,
)
from harness.leaderboard.figures import figures
from harness.leaderboard.intervals import ScoreInterval
from harness.leaderboard.model import Leaderboard, Row
from harness.leaderboard.table import (
    EFFICIENCY_COLUMNS,
    REPRODUCTION_COLUMN,
    agreement_line,
    bootstrap_line,
    cells,
    columns,
    efficiency_cells,
    generated,
    number,
    struck,
)
from harness.store import entry_slug

ENTRY_PAGES = "leaderboard"  # the entry pages' folder in RESULTS_DIR, next to leaderboard.html
_TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("harness.leaderboard", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)
Link = Callable[[str], str | None]


def render_page(template: str, **context: Any) -> str:
    """A page of templates/ filled with `context`: reports other than the leaderboard (the
    reproduction's, harness/reproduce/report.py) drawn in its style."""
    return _TEMPLATES.get_template(template).render(**context)


def entry_page(entry: str) -> str:
    """An entry page's path relative to RESULTS_DIR."""
    return f"{ENTRY_PAGES}/{entry_slug(entry)}.html"


def _cell(
    text: str, *, title: str = "", href: str | None = None, struck: bool = False
) -> dict[str, Any]:
    numeric = text != "" and text.replace(".", "", 1).lstrip("-").isdigit()
    return {"text": text, "title": title, "href": href, "numeric": numeric, "struck": struck}


def reproduction_page(entry: str) -> str:
    """An entry's reproduction page (`harness reproduce`) relative to RESULTS_DIR."""
    return f"reproduce/{entry_slug(entry)}/reproduction.html"


def _score_cells(
    board: Leaderboard, row: Row, entry_link: Link, reproduction_link: Link
) -> list[dict[str, Any]]:
    texts = cells(board, row)
    links = {1: entry_link(row.entry)}
    if row.reproduction and REPRODUCTION_COLUMN in columns(board):
        links[columns(board).index(REPRODUCTION_COLUMN)] = reproduction_link(row.entry)
    found = row.scenarios
    titles = [""] * len(texts)
    first_scenario = columns(board).index(board.columns[0]) if board.columns else 0
    for offset, name in enumerate(board.columns):
        result = found.get(name)
        if result is not None:
            value = "no value" if result.value is None else f"{result.value:.4f}"
            titles[first_scenario + offset] = f"{result.metric}: {value}"
    return [
        _cell(text, title=title, href=links.get(index), struck=strike and text != "")
        for index, (text, title, strike) in enumerate(
            zip(texts, titles, struck(board, row), strict=True)
        )
    ]


def to_html(
    board: Leaderboard,
    *,
    standalone: bool = True,
    entry_link: Link = entry_page,
    reproduction_link: Link | None = None,
) -> str:
    """The leaderboard as a standalone page, or (standalone=False) its body to embed; each entry
    name links to `entry_link(entry)` (its page, which links its logs), a reproduction's verdict
    to `reproduction_link(entry)` (default: its page in RESULTS_DIR on a standalone page, none
    in an embedded body, whose host serves no RESULTS_DIR)."""
    if reproduction_link is None:
        reproduction_link = reproduction_page if standalone else lambda entry: None
    prices = ", ".join(
        f"track {track} USD {price:g}"
        for track, price in sorted(
            {row.cost.track: row.cost.price_per_gpu_hour for row in board.rows}.items(),
            key=lambda item: str(item[0]),
        )
        if track is not None and price is not None
    )
    body = _TEMPLATES.get_template("board.html.j2").render(
        stages=", ".join(board.stages) or "none",
        generated=generated(board),
        columns=columns(board),
        rows=[
            {
                "entry": row.entry,
                "ranked": row.rank is not None,
                "disqualified": row.disqualified is not None,
                "cells": _score_cells(board, row, entry_link, reproduction_link),
            }
            for row in board.rows
        ],
        agreement=agreement_line(board),
        bootstrap=bootstrap_line(board),
        prices=prices or "the track's price (no track given: `harness report --track`)",
        total_usd=number(board.total_usd, 4),
        efficiency_columns=EFFICIENCY_COLUMNS,
        efficiency_rows=[
            {"entry": row.entry, "cells": [_cell(text) for text in efficiency_cells(row, stage)]}
            for row in board.rows
            for stage in row.stages
        ],
        figures={name: Markup(svg) for name, svg in figures(board).items()},
    )
    if not standalone:
        return body
    return _TEMPLATES.get_template("leaderboard.html.j2").render(body=Markup(body))


def to_comparison_html(comparison: Comparison, board: Leaderboard) -> str:
    """A standalone page: the comparison's table (compare.py), then the board's body."""
    body = _TEMPLATES.get_template("comparison.html.j2").render(
        columns=comparison_columns(comparison),
        rows=[
            {"entry": e.entry, "cells": [_cell(t) for t in comparison_cells(comparison, e)]}
            for e in comparison.entries
        ],
        note=comparison_note(comparison),
        board=Markup(to_html(board, standalone=False)),
    )
    return _TEMPLATES.get_template("leaderboard.html.j2").render(body=Markup(body))


def _interval_text(interval: ScoreInterval | None) -> str:
    if interval is None:
        return ""
    ranks = (
        f"rank {interval.rank_low}"
        if interval.rank_low == interval.rank_high
        else f"ranks {interval.rank_low} to {interval.rank_high}"
    )
    tied = f"; tied with {', '.join(interval.tied_with)}" if interval.tied else ""
    return f"score {number(interval.low)} to {number(interval.high)}, {ranks}{tied}"


def to_entry_html(row: Row, *, back: str, log_link: Link) -> str:
    """One entry's page: per stage its steps with times, metrics per run spec, findings, logs."""
    cost = row.cost
    cost_text = (
        f"USD {cost.usd:.4f} ({cost.eval_gpu_hours:.4f} GPU-hours of evaluation"
        + (f", {cost.train_gpu_hours:.4f} of training" if cost.train_gpu_hours is not None else "")
        + f" at USD {cost.price_per_gpu_hour:g}/h, track {cost.track})"
        if cost.usd is not None and cost.price_per_gpu_hour is not None
        else f"unknown (no price for track {cost.track})"
        if cost.track
        else "unknown (no track given: `harness report --track`)"
    )
    stages = [
        {
            "name": stage,
            "status": stage_row.status or "not run",
            "reason": stage_row.reason,
            "steps": [
                {
                    "step": s.step,
                    "status": s.status,
                    "time": number(s.duration_s, 1),
                    "detail": s.detail,
                    "href": log_link(s.log) if s.log else None,
                }
                for s in stage_row.steps
            ],
            "run_specs": [
                {
                    "name": name,
                    "scenario": r.scenario,
                    "metric": r.metric,
                    "value": "no value" if r.value is None else f"{r.value:.4f}",
                    "reason": r.reason or "",
                }
                for name, r in sorted(stage_row.run_specs.items())
            ],
            "findings": [
                {
                    **f,
                    "where": f"{f['path'] or ''}{':' + str(f['line']) if f['line'] else ''}",
                }
                for f in stage_row.findings
            ],
            "interval": _interval_text(stage_row.interval),
            "requests_href": log_link(stage_row.logs["requests"])
            if "requests" in stage_row.logs
            else None,
        }
        for stage, stage_row in row.stages.items()
    ]
    return _TEMPLATES.get_template("entry.html.j2").render(
        entry=row.entry,
        back=back,
        rank=row.rank,
        final=number(row.final),
        disqualified=row.disqualified,
        cost=cost_text,
        stages=stages,
    )


def entry_pages(board: Leaderboard) -> dict[str, str]:
    """Every entry's page by its path relative to RESULTS_DIR (links one folder up)."""
    return {
        entry_page(row.entry): to_entry_html(
            row, back="../leaderboard.html", log_link=lambda path: f"../{path}"
        )
        for row in board.rows
    }
