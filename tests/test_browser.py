"""The rating page and the report driven in real headless Chromium (Debian's chromium and
chromium-driver, which .ci/run installs) through Selenium: rate three responses with the
keyboard, reload (progress kept), download the ratings, and eval-summary counts them.

With SELFINSTRUCT_UPDATE_FIGURES=1 the same runs take the README's screenshots into
benchmarks/figures/.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver

from service.cli import main
from service.evaluate.predictions import load_sources
from service.evaluate.ratings import read_key
from service.evaluate.sheet import write_sheet
from service.generate.orchestrator import run_generate
from service.report.page import build_report
from service.simulator import SimulatedServer
from tests.conftest import ROOT, SHARED_DATA, make_config

FIGURES = ROOT / "benchmarks" / "figures"
UPDATE_FIGURES = os.environ.get("SELFINSTRUCT_UPDATE_FIGURES") == "1"
PREDICTIONS = SHARED_DATA / "predictions"
TASKS = SHARED_DATA / "user_oriented_instructions.jsonl"
WAIT_S = 20.0


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed (.ci/run installs chromium and chromium-driver)")
    return path


@pytest.fixture
def downloads(tmp_path: Path) -> Path:
    path = tmp_path / "downloads"
    path.mkdir()
    return path


@pytest.fixture
def browser(tmp_path: Path, downloads: Path) -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = _binary("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1200,900", f"--user-data-dir={tmp_path / 'profile'}",
                "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    options.add_experimental_option("prefs", {
        "download.default_directory": str(downloads), "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(_binary("chromedriver")), options=options)
    try:
        driver.execute_cdp_cmd("Page.setDownloadBehavior",
                               {"behavior": "allow", "downloadPath": str(downloads)})
        yield driver
    finally:
        driver.quit()


def wait_for(condition: object, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def text(driver: WebDriver, element_id: str) -> str:
    return str(driver.find_element(By.ID, element_id).text)


def press(driver: WebDriver, key: str) -> None:
    driver.find_element(By.TAG_NAME, "body").send_keys(key)


def test_rate_with_the_keyboard_reload_download_and_summarise(
    browser: WebDriver, tmp_path: Path, downloads: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sources = [PREDICTIONS / f"{m}_predictions.jsonl"
               for m in ("davinci", "davinci-self-instruct", "text-davinci-003")]
    sheet = write_sheet(load_sources(sources, TASKS), tmp_path / "rate.html", limit=5)
    key = read_key(sheet.key)
    browser.get(sheet.page.as_uri())
    assert text(browser, "item-id") == "r00001"
    assert text(browser, "rated") == "0 of 15 rated"
    # the page shows the response of the model the key names, as text
    first = next(r for m in load_sources(sources, TASKS) if m.model == key.items["r00001"]
                 for r in m.responses.values())
    assert text(browser, "response") != ""
    assert "Correct and satisfying" in browser.find_element(By.CSS_SELECTOR, ".scale").text

    shown = []
    for letter in ("a", "b", "c"):
        shown.append(text(browser, "item-id"))
        press(browser, letter)
    assert shown == ["r00001", "r00002", "r00003"]
    assert text(browser, "rated") == "3 of 15 rated"
    assert text(browser, "item-id") == "r00004"

    browser.refresh()
    wait_for(lambda: text(browser, "item-id") == "r00004", "the page to reload at item 4")
    assert text(browser, "rated") == "3 of 15 rated"
    press(browser, Keys.ARROW_LEFT)
    assert text(browser, "item-id") == "r00003"
    chosen = browser.find_elements(By.CSS_SELECTOR, ".scale button.chosen")
    assert [b.get_attribute("data-level") for b in chosen] == ["C"]
    press(browser, Keys.ARROW_RIGHT)
    if UPDATE_FIGURES:
        FIGURES.mkdir(parents=True, exist_ok=True)
        browser.set_window_size(1100, 1000)
        browser.save_screenshot(str(FIGURES / "rating-page.png"))

    press(browser, "s")  # the download shortcut
    target = downloads / f"ratings-{sheet.sheet_id}.json"
    wait_for(lambda: target.is_file() and not list(downloads.glob("*.crdownload")),
             "the ratings download")
    downloaded = orjson.loads(target.read_bytes())
    assert downloaded["sheet_id"] == sheet.sheet_id
    assert downloaded["ratings"] == [{"item": "r00001", "rating": "A"},
                                     {"item": "r00002", "rating": "B"},
                                     {"item": "r00003", "rating": "C"}]

    capsys.readouterr()
    assert main(["eval-summary", str(target), "--mapping", str(sheet.key), "--json",
                 "--out", str(tmp_path / "summary")]) == 0
    summary = orjson.loads(capsys.readouterr().out)
    expected = {m: {lv: 0 for lv in "ABCD"} for m in key.models}
    for rid, level in (("r00001", "A"), ("r00002", "B"), ("r00003", "C")):
        expected[key.items[rid]][level] += 1
    assert {m: {lv: c[lv] for lv in "ABCD"} for m, c in summary["models"].items()} == expected
    assert sum(c["rated"] for c in summary["models"].values()) == 3
    assert first.task_id.startswith("user_oriented_task_")


async def test_report_renders_in_the_browser(browser: WebDriver, sim: SimulatedServer,
                                             tmp_path: Path) -> None:
    out = tmp_path / "run"
    await run_generate(make_config(out, sim.base_url, target=80, classification_share=0.3),
                       install_signal_handlers=False)
    files = build_report(out, tmp_path / "report")
    browser.get(files.html.as_uri())
    images = browser.find_elements(By.TAG_NAME, "img")
    assert len(images) >= 5
    # every embedded chart decoded: a broken data URI has naturalWidth 0
    widths = [browser.execute_script("return arguments[0].naturalWidth", img) for img in images]
    assert all(isinstance(w, int) and w > 300 for w in widths), widths
    cards = browser.find_element(By.CLASS_NAME, "cards").text
    assert "finished tasks\n80" in cards
    if UPDATE_FIGURES:
        FIGURES.mkdir(parents=True, exist_ok=True)
        browser.set_window_size(1200, 1400)
        browser.save_screenshot(str(FIGURES / "report-page.png"))
