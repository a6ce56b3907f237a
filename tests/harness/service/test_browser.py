"""The web pages in a real headless Chromium against a real `harness serve`, Docker and HELM:
sign in, upload a stand-in entry, watch it go queued -> running -> scored, publish it, find it on
the public leaderboard; another team cannot open its page. Screenshots go to the test's folder."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from tests.harness.service.conftest import Serve, Served, stand_in_zip
from tests.harness.service.test_service_docker import evaluating

pytestmark = [pytest.mark.docker, pytest.mark.helm]


def sign_in(browser: Any, served: Served, token: str) -> None:
    browser.get(f"{served.url}/signin")
    browser.find_element(By.ID, "token").send_keys(token)
    browser.find_element(By.ID, "signin").click()
    WebDriverWait(browser, 30).until(lambda b: "/signin" not in b.current_url)


def status_text(browser: Any) -> str:
    try:
        return str(browser.find_element(By.ID, "status").text)
    except WebDriverException:
        return ""  # the page is reloading itself


def test_sign_in_submit_watch_publish_and_rank_in_a_real_browser(
    serve: Serve,
    tmp_path: Path,
    base_image: str,
    browser: Any,
    screenshot: Callable[[str], Path],
    helm_bin: Path,
) -> None:
    served = serve(*evaluating([], base_image, tmp_path))
    alice, bob = served.add_team("alice"), served.add_team("bob")
    # Bob's slow entry runs first, so alice's is seen waiting in the queue.
    served.submit(bob, stand_in_zip(tmp_path, "slow", "slow"))
    entry = tmp_path / "alice.zip"
    entry.write_bytes(stand_in_zip(tmp_path, "alice"))

    sign_in(browser, served, alice)
    assert browser.current_url.endswith("/submissions")
    browser.find_element(By.ID, "file").send_keys(str(entry))
    Select(browser.find_element(By.ID, "track")).select_by_visible_text("4090")
    browser.find_element(By.ID, "upload").click()
    WebDriverWait(browser, 60).until(lambda b: "/submissions/sub-" in b.current_url)
    page = browser.current_url

    seen: list[str] = []
    deadline = time.monotonic() + 300
    while not seen or seen[-1] != "scored":
        assert time.monotonic() < deadline, seen
        word = status_text(browser).split(" ")[0]
        if word and (not seen or seen[-1] != word):
            seen.append(word)
        time.sleep(0.3)
    assert seen == ["queued", "running", "scored"]
    browser.get(page)  # a finished page no longer refreshes itself
    assert browser.find_element(By.ID, "score").text == "1.000"
    screenshot("submission")

    browser.find_element(By.ID, "publish").click()
    WebDriverWait(browser, 30).until(lambda b: "published" in b.page_source)
    browser.get(f"{served.url}/leaderboard/4090")
    assert "alice" in browser.find_element(By.ID, "scores").text
    screenshot("leaderboard")

    browser.delete_all_cookies()
    sign_in(browser, served, bob)
    browser.get(page)
    assert "no such submission" in browser.page_source
    assert alice not in browser.page_source
    assert (tmp_path / "screenshots" / "submission.png").stat().st_size > 0
