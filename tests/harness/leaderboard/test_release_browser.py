"""A release in a real browser: headless Chromium opens its front page from disk, follows the
track's leaderboard, where the disqualified entry is drawn struck through with its reason and
without a rank, and opens that entry's page. Screenshots land in the test's tmp folder
(screenshots/)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.harness.leaderboard.test_release import REASON, released

pytestmark = pytest.mark.browser


def test_the_release_shows_the_disqualified_entry_struck_through(
    tmp_path: Path, browser: Any, screenshot: Callable[[str], Path]
) -> None:
    release = released(tmp_path)
    browser.get((release.path / "index.html").as_uri())
    assert browser.title == "Release v1"
    track = browser.find_element("css selector", '#tracks tr[data-track="4090"]')
    assert [td.text for td in track.find_elements("tag name", "td")][:4] == [
        "4090",
        "open, closed",
        "2",  # C and B; A is disqualified, D never scored
        "1",
    ]
    screenshot("release-index")

    track.find_element("link text", "leaderboard.html").click()
    assert browser.current_url == (release.path / "4090" / "leaderboard.html").as_uri()
    row = browser.find_element("css selector", '#scores tr[data-entry="A"]')
    assert "disqualified" in row.get_attribute("class")
    cells = row.find_elements("tag name", "td")
    assert cells[0].text == ""  # no rank
    struck = row.find_elements("css selector", "td del")
    assert [d.text for d in struck][:2] == ["A", "0.210"]
    assert all(d.value_of_css_property("text-decoration-line") == "line-through" for d in struck)
    assert cells[-1].text == REASON and not cells[-1].find_elements("tag name", "del")
    assert cells[-2].text == "disqualified"
    ranks = [
        r.find_element("tag name", "td").text
        for r in browser.find_elements("css selector", "#scores tbody tr")
    ]
    assert ranks == ["1", "2", "", ""]  # C and B ranked among themselves; A and D are not
    screenshot("release-leaderboard")

    row.find_element("link text", "A").click()
    assert browser.find_element("css selector", "h1 del").text == "A"
    assert browser.find_element("css selector", "p.disqualified").text == f"Disqualified: {REASON}"
    screenshot("release-entry-A")
