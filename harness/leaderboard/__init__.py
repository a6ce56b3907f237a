"""The leaderboard: built from a results store, rendered as text (Markdown, JSON, a terminal
table), HTML pages and SVG figures; one rendering for `harness report`, `harness run`, the service
and releases. The modules form a chain, each importing only those before it:

    scoring   the competition's arithmetic: win rates, stage scores, standings, rank agreement
    intervals a bootstrap over the evaluated instances: score and rank intervals, ties
    model     the Leaderboard, Row and StageRow dataclasses
    build     build_leaderboard(store): the model from a results store
    table     cells and columns as strings, shared by the renderers
    text      to_markdown, to_json, to_rich, to_plain_text (no terminal: one line per entry)
    figures   SVG figures
    html      to_html, entry_pages
    release   write_release, verify_release: a frozen release of boards (over write_leaderboard)

    board = build_leaderboard(store)
    paths = write_leaderboard(board, results_dir)
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from harness.leaderboard.build import build_leaderboard, parse_prices
from harness.leaderboard.html import entry_pages, to_html
from harness.leaderboard.model import Leaderboard
from harness.leaderboard.text import to_json, to_markdown, to_plain_text, to_rich

__all__ = [
    "OUTPUTS",
    "Leaderboard",
    "build_leaderboard",
    "parse_prices",
    "to_json",
    "to_markdown",
    "to_plain_text",
    "to_rich",
    "write_files",
    "write_leaderboard",
]

OUTPUTS = ("leaderboard.md", "leaderboard.json", "leaderboard.html")


def write_leaderboard(board: Leaderboard, results_dir: Path) -> list[Path]:
    """Write leaderboard.md, .json, .html and an HTML page per entry (under leaderboard/) into
    RESULTS_DIR; returns the leaderboard files' paths."""
    outputs = dict(zip(OUTPUTS, (to_markdown(board), to_json(board), to_html(board)), strict=True))
    outputs.update(entry_pages(board))
    write_files(results_dir, outputs)
    return [results_dir / name for name in OUTPUTS]


def write_files(folder: Path, outputs: Mapping[str, str]) -> list[Path]:
    """Each text to its path relative to `folder`, in order, each written beside and renamed:
    a reader never sees half a page (nor a crash leaves one)."""
    paths = []
    for name, text in outputs.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(path.suffix + ".partial")
        partial.write_text(text, encoding="utf-8")
        partial.replace(path)
        paths.append(path)
    return paths
