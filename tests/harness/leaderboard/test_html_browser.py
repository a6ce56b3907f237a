"""The leaderboard in a real browser: headless Chromium opens it from the file, sorts, filters,
follows an entry's link, and draws every figure at its size. Screenshots land in the test's
tmp folder (screenshots/)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.leaderboard.figures import FIGURE_HEIGHT_PT, FIGURE_WIDTH_PT, FIGURES
from tests.harness.leaderboard.test_report import _fill

pytestmark = pytest.mark.browser


def _entries(browser: Any, table: str = "scores") -> list[str]:
    rows = browser.find_elements("css selector", f"#{table} tbody tr")
    return [row.get_attribute("data-entry") for row in rows if row.is_displayed()]


def _column(browser: Any, name: str) -> tuple[Any, list[str]]:
    headers = browser.find_elements("css selector", "#scores thead th")
    index = [header.text.strip() for header in headers].index(name)
    cells = browser.find_elements("css selector", f"#scores tbody tr td:nth-child({index + 1})")
    return headers[index], [cell.text.strip() for cell in cells]


def test_the_leaderboard_sorts_filters_links_and_draws_its_figures(
    tmp_path: Path, browser: Any, screenshot: Callable[[str], Path]
) -> None:
    results = tmp_path / "results"
    _fill(results)
    result = CliRunner().invoke(app, ["report", str(results)])
    assert result.exit_code == 0, result.output

    browser.get((results / "leaderboard.html").as_uri())
    assert browser.title == "Leaderboard"
    assert _entries(browser) == ["C", "B", "A", "D"]  # by final rank, the failed entry last
    screenshot("leaderboard")

    # Open-stage MMLU win rates: C 0.125, A 0.5, B 0.875; D has none and stays at the bottom.
    header, before = _column(browser, "open/mmlu")
    assert before == ["0.125", "0.875", "0.500", ""]
    header.click()
    assert _entries(browser) == ["C", "A", "B", "D"]
    header.click()
    assert _entries(browser) == ["B", "A", "C", "D"]
    screenshot("sorted-by-open-mmlu")

    search = browser.find_element("css selector", "input.board-filter")
    search.send_keys("build-failed")
    assert _entries(browser) == ["D"]
    assert _entries(browser, "efficiency") == ["D", "D"]  # one row per stage
    search.clear()
    search.send_keys(" ")  # an input event with nothing to look for shows every row again
    assert len(_entries(browser)) == 4

    figures = browser.find_elements("css selector", "figure.figure > svg")
    assert len(figures) == len(FIGURES)
    for svg in figures:
        size = browser.execute_script(
            "const r = arguments[0].getBoundingClientRect(); return [r.width, r.height];", svg
        )
        # SVG points are 4/3 CSS pixels.
        assert size == [
            pytest.approx(FIGURE_WIDTH_PT * 4 / 3),
            pytest.approx(FIGURE_HEIGHT_PT * 4 / 3),
        ]
        drawn = browser.execute_script("return arguments[0].querySelectorAll('path').length", svg)
        assert drawn > 0 and svg.text.strip()  # shapes and labels, not an empty frame
    browser.execute_script("arguments[0].scrollIntoView()", figures[0])
    screenshot("figures")

    browser.find_element("link text", "A").click()
    assert browser.current_url.startswith((results / "leaderboard").as_uri())
    assert browser.find_element("tag name", "h1").text == "A"
    steps = browser.find_elements("css selector", "table.steps tbody tr")
    assert [row.find_element("tag name", "td").text for row in steps] == ["build", "build"]
    screenshot("entry-A")
    browser.find_element("partial link text", "Leaderboard").click()
    assert browser.current_url == (results / "leaderboard.html").as_uri()
