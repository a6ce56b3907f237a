"""The reproduction's report pages (Markdown, JSON, HTML with SVG figures), `--top`'s combined
report, and the leaderboard's Reproduction column; the pages opened in headless Chromium.
Screenshots land in the test's tmp folder (screenshots/)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from harness.leaderboard import build_leaderboard, to_json, write_leaderboard
from harness.leaderboard.figures import FIGURE_HEIGHT_PT, FIGURE_WIDTH_PT
from harness.leaderboard.intervals import Interval
from harness.leaderboard.table import columns, struck
from harness.reproduce.curves import Point
from harness.reproduce.options import Reproduction, Verdict
from harness.reproduce.report import TopEntry, write_combined, write_reports
from harness.reproduce.verdict import compare, judge
from harness.store import Metric, Store, entry_slug
from tests.harness.leaderboard.test_report import _fill


def _metrics(values: dict[str, float]) -> list[Metric]:
    return [Metric(spec, spec.split(":")[0], "exact_match", v) for spec, v in values.items()]


def _reproduction(folder: Path, entry: str, runs: tuple[float, ...]) -> Reproduction:
    """A finished `--runs` reproduction of `entry`: gsm per run, mmlu as the original."""
    field = {entry: _metrics({"gsm": 0.30, "mmlu:subject=a": 0.5}), "other": _metrics({"gsm": 0.1})}
    comparisons = [compare(entry, field, _metrics({"gsm": v, "mmlu:subject=a": 0.5})) for v in runs]
    noise = {"gsm": Interval(0.3, 0.02, 0.26, 0.34), "mmlu": Interval(0.5, 0.05, 0.4, 0.6)}
    verdict, reason, judgements = judge(comparisons, 0.02, noise)
    curve = tuple(Point(step, 2.0 / step) for step in range(1, 9))
    curves = {"original": curve} | {
        f"run {k}": tuple(Point(p.step, p.loss * (1 + 0.02 * k)) for p in curve)
        for k in range(1, len(runs) + 1)
    }
    folder.mkdir(parents=True)
    return Reproduction(
        entry=entry, track="4090", stage="open", verdict=verdict, reason=reason,
        time_limit_s=600, tolerance=0.02, training=None, weights={}, comparison=comparisons[0],
        log_tail="", folder=folder, seeds=tuple(range(11, 11 + len(runs))), noise=noise,
        judgements=judgements, request=f"runs={len(runs)}", curves=curves,
    )  # fmt: skip


def _svgs(html: str) -> list[str]:
    """The inline SVG figures of a page, each checked to be well-formed XML at the size of the
    leaderboard's figures."""
    found = []
    start = html.find("<svg")
    while start != -1:
        end = html.index("</svg>", start) + len("</svg>")
        svg = ET.fromstring(html[start:end])
        assert (svg.get("width"), svg.get("height")) == (
            f"{FIGURE_WIDTH_PT}pt",
            f"{FIGURE_HEIGHT_PT}pt",
        )
        found.append(html[start:end])
        start = html.find("<svg", end)
    return found


def _label(svg: str, text: str) -> bool:
    """Whether matplotlib drew `text` in the figure (its SVG names each text in a comment)."""
    return f"<!-- {text} -->" in svg


def test_an_entrys_report_pages_carry_the_verdict_scores_intervals_and_loss_curves(
    tmp_path: Path,
) -> None:
    result = _reproduction(tmp_path / "reproduce" / "top", "top", (0.2, 0.21, 0.19))
    assert result.verdict is Verdict.DIFFERS

    paths = write_reports(result)

    assert [p.name for p in paths] == ["reproduction.md", "reproduction.html", "reproduction.json"]
    assert not list(result.folder.glob("*.partial"))
    data = json.loads(paths[2].read_text())
    assert data["request"] == "runs=3" and data["verdict"] == "differs"
    assert data["curves"]["run 2"][0] == {"step": 1, "loss": pytest.approx(2.08)}
    html = paths[1].read_text()
    assert '<span class="verdict verdict-differs">differs</span>' in html
    # gsm: the original with its interval, the three runs, their mean and the test's p-value.
    row = html[html.index("<td>gsm</td>") :].split("</tr>")[0]
    cells = [c.split(">", 1)[1] for c in row.split("</td>")[:-1]]
    p_value = data["judgements"]["gsm"]["p_value"]
    assert cells == [
        "gsm", "0.3000", "[0.2600, 0.3400]", "0.2000", "0.2100", "0.1900", "0.2000", "-0.1000",
        f"{p_value:.3g}", "differs",
    ]  # fmt: skip
    scores, loss = _svgs(html)
    assert all(_label(scores, text) for text in ("original", "run 3", "gsm", "stage score"))
    assert all(_label(loss, text) for text in ("Training loss", "original", "run 3", "step"))
    assert 'href="http' not in html  # nothing fetched


def test_a_report_without_scores_or_curves_says_so(tmp_path: Path) -> None:
    result = Reproduction(
        entry="slow", track="4090", stage="open", verdict=Verdict.TRAIN_TIMEOUT,
        reason="the training was stopped at the 2 s limit", time_limit_s=2, tolerance=0.05,
        training=None, weights={}, comparison=None, log_tail="epoch 1 <of 3>",
        folder=tmp_path, seeds=(None,),
    )  # fmt: skip
    html = write_reports(result)[1].read_text()
    assert "No scores: the reproduction never got to an evaluation." in html
    scores, loss = _svgs(html)
    assert "never got to an evaluation" in scores and "No loss curve" in loss
    assert "epoch 1 &lt;of 3&gt;" in html  # escaped, not markup


def _top_two(results: Path) -> list[TopEntry]:
    """The leaderboard of test_report's `_fill` (C, B, A ranked; D failed) with C and B
    reproduced: C within tolerance, B short of it."""
    _fill(results)
    entries = []
    for rank, name, runs in ((1, "C", (0.3, 0.31)), (2, "B", (0.1, 0.12))):
        folder = results / "reproduce" / entry_slug(name)
        write_reports(_reproduction(folder, name, runs))
        entries.append(TopEntry(rank, name, kept=name == "C", folder=folder))
    return entries


def test_the_combined_report_and_the_leaderboard_show_each_verdict(tmp_path: Path) -> None:
    results = tmp_path / "results"
    entries = _top_two(results)

    paths = write_combined(results / "reproduce", entries, "open")

    assert [p.name for p in paths] == ["report.md", "report.html", "report.json"]
    combined = json.loads(paths[2].read_text())
    assert [(e["rank"], e["entry"], e["kept"]) for e in combined["entries"]] == [
        (1, "C", True),
        (2, "B", False),
    ]
    assert [e["reproduction"]["verdict"] for e in combined["entries"]] == ["reproduced", "differs"]
    markdown = paths[0].read_text()
    assert "| 1 | C | reproduced | kept from an earlier run |" in markdown
    assert "## Reproduction of C" in markdown and "## Reproduction of B" in markdown
    assert len(_svgs(paths[1].read_text())) == 4

    with Store(results) as store:
        board = build_leaderboard(store)
    assert {row.entry: row.reproduction for row in board.rows} == {
        "A": None, "B": "differs", "C": "reproduced", "D": None,
    }  # fmt: skip
    rows = {row["entry"]: row for row in json.loads(to_json(board))["rows"]}
    assert rows["B"]["reproduction"] == "differs" and rows["A"]["reproduction"] is None
    write_leaderboard(board, results)
    page = (results / "leaderboard.html").read_text()
    assert f'<a href="reproduce/{entry_slug("B")}/reproduction.html">differs</a>' in page
    assert "| Reproduction | Status | Reason |" in (results / "leaderboard.md").read_text()
    # A disqualified entry's numbers are struck through; its verdict, like its status, is not.
    with Store(results) as store:
        board = build_leaderboard(store, disqualified={"B": "broke the rules"})
    row = next(r for r in board.rows if r.entry == "B")
    marks = dict(zip(columns(board), struck(board, row), strict=True))
    assert marks["Entry"] and not marks["Reproduction"] and not marks["Status"]


@pytest.mark.browser
def test_the_report_pages_in_a_browser(
    tmp_path: Path, browser: Any, screenshot: Callable[[str], Path]
) -> None:
    results = tmp_path / "results"
    entries = _top_two(results)
    write_combined(results / "reproduce", entries, "open")
    with Store(results) as store:
        write_leaderboard(build_leaderboard(store), results)

    browser.get((results / "reproduce" / "report.html").as_uri())
    assert browser.title == "Reproduction of the top 2 (open stage)"
    rows = browser.find_elements("css selector", "#summary tbody tr")
    assert [r.get_attribute("data-entry") for r in rows] == ["C", "B"]
    badges = browser.find_elements("css selector", "#summary .verdict")
    assert [b.text for b in badges] == ["reproduced", "differs"]
    # The badges are coloured by the leaderboard's stylesheet: green and red backgrounds.
    colors = [b.value_of_css_property("background-color") for b in badges]
    assert colors[0] != colors[1] and all("rgba(0, 0, 0, 0)" not in c for c in colors)
    screenshot("top-report")
    figures = browser.find_elements("css selector", "figure.figure > svg")
    assert len(figures) == 4
    for svg in figures:
        size = browser.execute_script(
            "const r = arguments[0].getBoundingClientRect(); return [r.width, r.height];", svg
        )
        assert size == [
            pytest.approx(FIGURE_WIDTH_PT * 4 / 3),
            pytest.approx(FIGURE_HEIGHT_PT * 4 / 3),
        ]
        assert browser.execute_script("return arguments[0].querySelectorAll('path').length", svg)
    browser.execute_script("arguments[0].scrollIntoView()", figures[2])
    screenshot("top-report-figures")

    # From the leaderboard, a verdict leads to the entry's own page, and back.
    browser.get((results / "leaderboard.html").as_uri())
    screenshot("leaderboard-with-verdicts")
    browser.find_element("link text", "differs").click()
    assert browser.title == "Reproduction of B"
    assert browser.find_element("css selector", "section .verdict").text == "differs"
    screenshot("entry-report")
    browser.find_element("partial link text", "Leaderboard").click()
    assert browser.current_url == (results / "leaderboard.html").as_uri()
