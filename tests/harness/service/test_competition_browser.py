"""A team's journey across a competition's phases in a real headless Chromium, against a real
`harness serve --competition` with `--jobs 0` (results are recorded in its database as the queue
would: the pages, not the evaluation, are under test here). Screenshots go to the test's folder."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from harness.service.db import ServiceDB
from tests.harness.service.conftest import Serve, stand_in_zip
from tests.harness.service.test_browser import sign_in
from tests.harness.service.test_competition_api import competition_file, harness, score

pytestmark = [pytest.mark.browser]


def text(browser: Any, element_id: str) -> str:
    return str(browser.find_element(By.ID, element_id).text)


def test_a_team_across_the_phases_in_a_real_browser(
    serve: Serve, tmp_path: Path, browser: Any, screenshot: Callable[[str], Path]
) -> None:
    data = tmp_path / "data"
    served = serve("--jobs", "0", "--competition", str(competition_file(tmp_path)), data=data)
    alice = served.add_team("alice")
    entry = tmp_path / "alice.zip"
    entry.write_bytes(stand_in_zip(tmp_path, "alice"))

    # The open phase: where it stands, and the fact sheet asked with the upload.
    sign_in(browser, served, alice)
    banner = text(browser, "phase")
    assert "test-cup: phase open, ends" in banner and "next: final" in banner
    assert text(browser, "quota-4090") == "2 of 2 left today"
    assert text(browser, "failures-4090") == "1 of 1 failures left this week"
    browser.find_element(By.ID, "file").send_keys(str(entry))
    browser.find_element(By.ID, "fact-base_model").send_keys("llama-2-7b")
    browser.find_element(By.ID, "fact-lora_r").send_keys("sixteen")
    screenshot("1-open-phase")
    browser.find_element(By.ID, "upload").click()
    WebDriverWait(browser, 30).until(lambda b: b.find_elements(By.ID, "error"))
    assert "'lora_r' takes an int" in text(browser, "error")
    browser.find_element(By.ID, "file").send_keys(str(entry))
    browser.find_element(By.ID, "fact-base_model").send_keys("llama-2-7b")
    browser.find_element(By.ID, "fact-lora_r").send_keys("16")
    browser.find_element(By.ID, "upload").click()
    WebDriverWait(browser, 30).until(lambda b: "/submissions/sub-" in b.current_url)
    sub_id = browser.current_url.rsplit("/", 1)[1]
    assert "lora_r 16" in text(browser, "fact-sheet")

    # Scored: it may be selected for the final, with the button on the list.
    score(served, sub_id)
    browser.get(f"{served.url}/submissions")
    assert text(browser, "quota-4090") == "1 of 2 left today"
    browser.find_element(By.ID, f"select-{sub_id}").click()
    WebDriverWait(browser, 30).until(lambda b: b.find_elements(By.ID, f"unselect-{sub_id}"))
    browser.get(f"{served.url}/submissions")
    assert "selected" in text(browser, "submissions")
    screenshot("2-selected")

    # The final phase: no uploads; the final run is listed, its scores hidden until the reveal.
    assert harness("competition", "advance", "--data", str(data)).returncode == 0
    browser.get(f"{served.url}/submissions")
    assert "phase final" in text(browser, "phase") and "uploads closed" in text(browser, "phase")
    assert "takes no uploads" in text(browser, "closed")
    assert not browser.find_elements(By.ID, "upload")
    assert f"final run of {sub_id}" in text(browser, "submissions")
    with ServiceDB(data) as db:
        final_run = next(s for s in db.submissions() if s.final_of == sub_id)
    browser.get(f"{served.url}/submissions/{final_run.id}")
    assert "organizers only until the results are revealed" in text(browser, "hidden")
    assert not browser.find_elements(By.ID, "cancel")  # the organizers' run
    screenshot("3-final-phase")
    browser.get(f"{served.url}/leaderboard/4090")
    assert "Phase open" in text(browser, "board-note")

    # The reveal: every score is shown, the leaderboard is the final one.
    score(served, final_run.id)
    revealed = harness("competition", "reveal", "--data", str(data))
    assert revealed.returncode == 0, revealed.stderr
    browser.get(f"{served.url}/leaderboard/4090")
    assert "final results revealed" in text(browser, "phase")
    assert "Final results" in text(browser, "board-note")
    screenshot("4-revealed")
    browser.get(f"{served.url}/submissions/{final_run.id}")
    assert not browser.find_elements(By.ID, "hidden")
