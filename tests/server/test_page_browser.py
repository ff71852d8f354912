"""The approval page in a real browser: Debian's chromium driven by Selenium through Debian's chromium-driver
(no driver download). Log in with a token, see the whole card, screenshot it, approve through the page, and the
`lg run --wait` waiting at the gate goes on and applies what was approved."""

from __future__ import annotations

import json
import os
import shutil
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lg.runs.gates import GateStore
from lg.runs.tokens import Role
from tests.server.conftest import Project, Server, wait_until

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
                                reason="needs Debian's chromium and chromium-driver (scripts/setup --dev)")

LONG = "--registry=https://registry.example.com/" + "very-long-path-segment/" * 12 + "end"
PIPELINE = f"""\
    name: deps
    steps:
      - id: bump
        run: |
          echo '{{"name": "app", "dependencies": {{"left-pad": "1.3.0"}}}}' > package.json
          echo notes > notes.txt
          echo npm-install-would-run {LONG} > /dev/null
"""


@pytest.fixture
def browser() -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,1800",
                     "--disable-gpu"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    yield driver
    driver.quit()


def test_approve_through_the_page_and_the_waiting_run_goes_on(project: Project, serve: Callable[..., Server],
                                                              browser: object, tmp_path: Path,
                                                              record_property: Callable[[str, object], None]
                                                              ) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.support.ui import WebDriverWait

    assert isinstance(browser, WebDriver)
    (project.root / "pipeline.yaml").write_text(textwrap.dedent(PIPELINE))
    runner = project.popen_on_fake("run", "--wait", "pipeline.yaml")
    try:
        wait_until(lambda: (project.state / "lg.db").exists() and bool(GateStore(project.store()).open_gates()))
        token = project.token("reviewer@example.com", Role.APPROVER)
        server = serve()
        browser.get(server.url + "/")
        browser.find_element(By.ID, "token").send_keys(token)
        browser.find_element(By.ID, "login").click()
        # a click returns before the next page has loaded: wait for it (never find elements on the old one)
        WebDriverWait(browser, 30).until(lambda driver: driver.find_elements(By.CSS_SELECTOR, "section.gate"))
        cards = browser.find_elements(By.CSS_SELECTOR, "section.gate")
        assert len(cards) == 1, browser.page_source
        card = cards[0]
        assert "level-orange" in (card.get_attribute("class") or "")
        command = card.find_element(By.CSS_SELECTOR, "pre.command")
        assert LONG in command.text.replace("\n", "")  # every character of the command is there
        # wrapped, never cut: the command box is no wider than its content area (no hidden overflow)
        assert browser.execute_script("return arguments[0].scrollWidth <= arguments[0].clientWidth", command)
        diffs = " ".join(diff.text for diff in card.find_elements(By.CSS_SELECTOR, "pre.diff"))
        assert "left-pad" in diffs and "+notes" in diffs
        assert card.find_elements(By.CSS_SELECTOR, "pre.diff .add")
        assert "relaxations" in card.text and "decisions so far" in card.text
        screenshot = tmp_path / "approval-page.png"
        browser.set_window_size(1100, max(1800, int(browser.execute_script("return document.body.scrollHeight"))))
        assert browser.save_screenshot(str(screenshot))
        record_property("screenshot", str(screenshot))
        if os.environ.get("LG_TEST_ARTIFACTS"):
            shutil.copy(screenshot, Path(os.environ["LG_TEST_ARTIFACTS"]) / screenshot.name)
        print(f"screenshot of the approval page: {screenshot}")

        approve = card.find_element(By.CSS_SELECTOR, "form.approve")
        approve.find_element(By.NAME, "comment").send_keys("checked the diff in the browser")
        approve.find_element(By.CSS_SELECTOR, "button.approve").click()
        WebDriverWait(browser, 30).until(lambda driver: "/runs/" in driver.current_url and any(
            "approved" in status.text for status in driver.find_elements(By.CSS_SELECTOR, "section.gate .status")))
        decided = browser.find_element(By.CSS_SELECTOR, "section.gate")
        assert "approved" in decided.find_element(By.CSS_SELECTOR, ".status").text
        assert "checked the diff in the browser" in decided.text
        _, err = runner.communicate(timeout=120)
        assert runner.returncode == 0, err
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait()
    assert json.loads((project.root / "package.json").read_text())["dependencies"] == {"left-pad": "1.3.0"}
    (decision,) = GateStore(project.store()).decisions(GateStore(project.store()).gates(
        project.store().runs(1)[0].id)[0])
    assert (decision.approver, decision.comment) == ("reviewer@example.com", "checked the diff in the browser")
