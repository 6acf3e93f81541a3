"""End to end: the real server (`streamlit run`, headless, free port) loaded in Debian's headless Chromium.

Checks that the Overview renders without an exception or an error alert once the script has
finished (the status widget gone), then visits every other page in the same browser session
and saves a screenshot of each under the test's tmp dir. Skips, saying why, only when
/usr/bin/chromium or /usr/bin/chromedriver is missing (``make browser`` installs them).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.dashboard.helpers import APP

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
PAGE_TITLES = ["Weights", "Activations", "Layer error", "Compare and sweep", "Sensitivity", "Calibration check", "Deploy", "Export / import",
               "Learn: how quantization works"]
START_TIMEOUT_S = 60
RENDER_TIMEOUT_S = 90
MAIN_H1 = '[data-testid="stMain"] h1'  # the sidebar has an h1 of its own

pytestmark = pytest.mark.skipif(
    not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
    reason=f"{CHROMIUM} or {CHROMEDRIVER} is missing: install them with `make browser` "
           "(apt-get install chromium chromium-driver)",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = _free_port()
    log = tmp_path_factory.mktemp("server") / "streamlit.log"
    cwd = tmp_path_factory.mktemp("cwd")  # not the repo: the app must find ptq_core from any directory
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", str(APP), "--server.headless", "true", "--server.port", str(port),
             "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"],
            cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": ""},
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.time() + START_TIMEOUT_S
            while True:
                try:
                    urllib.request.urlopen(f"{url}/_stcore/health", timeout=2)
                    break
                except OSError:
                    if proc.poll() is not None or time.time() > deadline:
                        pytest.fail(f"streamlit did not start: {log.read_text()[-2000:]}")
                    time.sleep(0.3)
            yield url
        finally:
            proc.terminate()
            proc.wait(timeout=20)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1500,1800",
                f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _wait_until_done(driver, expect_css: str) -> None:  # type: ignore[no-untyped-def]
    """Until the script is not running, the status widget is gone and ``expect_css`` is on the page."""
    from selenium.webdriver.common.by import By

    deadline = time.time() + RENDER_TIMEOUT_S
    time.sleep(0.5)
    while time.time() < deadline:
        app = driver.find_elements(By.CSS_SELECTOR, '[data-testid="stApp"]')
        state = app[0].get_attribute("data-test-script-state") if app else None
        running = driver.find_elements(By.CSS_SELECTOR, '[data-testid="stStatusWidget"]')
        if state == "notRunning" and not running and driver.find_elements(By.CSS_SELECTOR, expect_css):
            time.sleep(1.0)  # let charts finish drawing before the screenshot
            return
        time.sleep(0.25)
    pytest.fail(f"page did not finish rendering in {RENDER_TIMEOUT_S} s (script state {state!r})")


def _errors(driver) -> list[str]:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By

    found = driver.find_elements(By.CSS_SELECTOR, '[data-testid="stException"], [data-testid="stAlertContentError"]')
    return [e.text[:500] for e in found]


def test_every_page_renders_in_a_real_browser(server: str, browser, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By

    browser.get(server)
    _wait_until_done(browser, '[data-testid="stMetric"]')
    assert not _errors(browser)
    metrics = browser.find_elements(By.CSS_SELECTOR, '[data-testid="stMetric"]')
    assert len(metrics) == 5 and "%" in metrics[1].text
    assert browser.find_elements(By.CSS_SELECTOR, ".js-plotly-plot")  # the scatter was drawn by Plotly
    assert browser.save_screenshot(str(tmp_path / "overview.png"))
    for title in PAGE_TITLES:  # sidebar links keep the session (a fresh URL would start a new one)
        link = next(a for a in browser.find_elements(By.CSS_SELECTOR, '[data-testid="stSidebarNav"] a')
                    if a.text.strip().endswith(title))
        link.click()
        _wait_until_done(browser, MAIN_H1)
        assert title.split(":")[0] in browser.find_element(By.CSS_SELECTOR, MAIN_H1).text
        assert not _errors(browser), title
        name = title.split(":")[0].lower().replace(" / ", "_").replace(" ", "_")
        assert browser.save_screenshot(str(tmp_path / f"{name}.png"))
    assert len(list(tmp_path.glob("*.png"))) == 1 + len(PAGE_TITLES)
