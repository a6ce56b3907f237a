"""A disqualified entry stays on the leaderboard, struck through with the organizers' reason, in
every output; it has no rank and the others are scored without it. The store is real (the
worked example of test_report.py: C 1st, B 2nd, A 3rd, D failed to build)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from harness.leaderboard import build_leaderboard, write_leaderboard
from harness.leaderboard.html import entry_pages, to_html
from harness.leaderboard.text import to_json, to_markdown, to_plain_text, to_rich
from harness.store import Store
from tests.harness.leaderboard.test_report import _fill

REASON = "trained on the closed-stage test set <b>(admitted)</b>"


def test_a_disqualified_entry_is_struck_through_everywhere_and_ranked_out(tmp_path: Path) -> None:
    _fill(tmp_path)
    with Store(tmp_path) as store:
        board = build_leaderboard(store, disqualified={"C": REASON, "nobody": "not an entry"})

    rows = {row.entry: row for row in board.rows}
    assert [(row.entry, row.rank) for row in board.rows] == [
        ("B", 1),
        ("A", 2),
        ("C", None),  # after the ranked ones, before the entry that never scored
        ("D", None),
    ]
    assert rows["C"].disqualified == REASON and rows["A"].disqualified is None
    # The others compete without C: closed-stage win rates B 1, A 0 (with C: 0.5 and 0);
    # open: A wins gsm8k and lm, B wins MMLU 0.75 to 0.25, so B's open score is 0.
    assert rows["B"].final == pytest.approx(2 / 3)
    assert rows["A"].final == pytest.approx(0.25 ** (1 / 3) / 3)
    # C keeps its own numbers, as it stood in the whole field.
    assert rows["C"].final == pytest.approx((0.0625 ** (1 / 3) + 2) / 3)
    assert rows["C"].stages["closed"].score == 1.0

    markdown = to_markdown(board)
    c_line = next(line for line in markdown.splitlines() if "~~C~~" in line)
    assert c_line.startswith("|  | ~~C~~ | ~~0.799~~ |")  # no rank; name and numbers struck
    assert "| disqualified | trained on the closed-stage test set &lt;b>(admitted)&lt;/b> |" in (
        c_line
    )
    assert "~~" not in next(line for line in markdown.splitlines() if "| B |" in line)
    plain = to_plain_text(board)
    assert "~~C~~" in plain and "| disqualified |" in plain

    html = to_html(board)
    assert '<tr data-entry="C" class="unranked disqualified">' in html
    assert '<del><a href="leaderboard/' in html and ">C</a></del>" in html
    assert "<td>trained on the closed-stage test set &lt;b&gt;(admitted)&lt;/b&gt;</td>" in html
    assert "<b>(admitted)" not in html  # the reason is text, never markup
    page = next(text for path, text in entry_pages(board).items() if "/c-" in path)
    assert "<h1><del>C</del></h1>" in page
    assert "Disqualified: trained on the closed-stage test set &lt;b&gt;" in page

    document = json.loads(to_json(board))
    by_entry = {row["entry"]: row for row in document["rows"]}
    assert by_entry["C"]["disqualified"] == REASON and by_entry["C"]["rank"] is None
    assert by_entry["B"]["disqualified"] is None
    assert document["schema_version"] == 5

    console = Console(width=400, record=True, color_system="standard", force_terminal=True)
    console.print(to_rich(board))
    terminal = console.export_text(styles=True)
    struck_lines = [line for line in terminal.splitlines() if ";9m" in line]  # SGR 9: crossed out
    assert len(struck_lines) == 1 and "disqualified" in struck_lines[0]
    assert "\x1b[2;9mC " in struck_lines[0] and "\x1b[2;9m0.799" in struck_lines[0]
    # The open/closed rank agreement is the competing field's: B and A.
    assert board.agreement is not None and board.agreement.entries == 2

    written = write_leaderboard(board, tmp_path / "out")
    assert "~~C~~" in written[0].read_text()


def test_without_disqualifications_the_board_is_as_before(tmp_path: Path) -> None:
    _fill(tmp_path)
    with Store(tmp_path) as store:
        plain, empty = build_leaderboard(store), build_leaderboard(store, disqualified={})
    assert [(r.entry, r.rank, r.final) for r in plain.rows] == [
        (r.entry, r.rank, r.final) for r in empty.rows
    ]
    assert "~~" not in to_markdown(plain) and "<del>" not in to_html(plain)
