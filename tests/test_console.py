"""The web console in a real browser (Debian's chromium, headless, driven by Selenium through
chromium-driver), served by the outlet's HTTP API over a chDB store holding known recent flows:
every home widget fills from the live API, the visualize page draws what the API answers (the
table's figures are the API's), the filter editor completes from the store and marks an
invalid filter at its position. Screenshots go to $WAXFLOW_ARTIFACTS (default: the test's
temporary directory)."""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from pathlib import Path

import pytest

from connectors import clickhouse, http
from connectors.http.server import CONSOLE_DIR
from flows import schema
from flows.settings import API, Settings
from tests.conftest import free_port
from tests.test_api import get

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs Debian's chromium and chromium-driver "
                                                                     "(scripts/apt-packages.txt)")
EXPORTERS = ("edge1.par", "edge2.ams", "edge3.fra")
AS_NAMES = {2906: "Netflix", 15169: "Google", 13335: "Cloudflare", 16509: "Amazon"}


def _recent_flows(now: int):
    """600 flows of three exporters and four source AS over the last 50 minutes (a pyarrow Table)."""
    import pyarrow as pa

    rows = []
    for i in range(600):  # one flow a few seconds apart over the last 50 minutes
        asn = list(AS_NAMES)[i % 4]
        rows.append({"TimeReceived": now - 5 * i - 3, "ExporterName": EXPORTERS[i % 3],
                     "ExporterAddress": bytes(10) + b"\xff\xff" + bytes([192, 0, 2, 1 + i % 3]),
                     "SrcAS": asn, "DstAS": 64500, "SrcCountry": b"US" if asn != 13335 else b"FR",
                     "InIfName": f"et-0/0/{i % 2}", "OutIfName": "ae0", "InIfIndex": 1 + i % 2, "OutIfIndex": 9,
                     "Proto": 6 if i % 5 else 17, "DstPort": 443 if i % 5 else 53,
                     "Bytes": 1500 * (1 + i % 7), "Packets": 1 + i % 7, "SamplingRate": 1000})
    columns = {name: [r[name] for r in rows] for name in rows[0]}
    return pa.Table.from_batches([schema.make_batch(columns, len(rows))])


@pytest.fixture(scope="module")
def console(tmp_path_factory, chdb_dir):
    if not (CONSOLE_DIR / "index.html").exists():
        pytest.fail("the console is not built: scripts/bootstrap.sh builds it (cd console && npm ci && npm run build)")
    settings = Settings(clickhouse={"dsn": f"chdb:{chdb_dir}", "database": f"console_{uuid.uuid4().hex[:8]}"},
                        kafka={"brokers": [f"127.0.0.1:{free_port()}"]},
                        api=API(listen=f"127.0.0.1:{free_port()}"))
    clickhouse.migrate(settings.clickhouse)
    client = clickhouse.connect(settings.clickhouse)
    client.insert_arrow(f"{settings.clickhouse.database}.flows", _recent_flows(int(time.time())))
    assert http.serve_outlet(settings)
    yield settings
    client.command(f"DROP DATABASE IF EXISTS `{settings.clickhouse.database}`")


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,800"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=options)
    driver.set_script_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    path = Path(os.environ.get("WAXFLOW_ARTIFACTS") or tmp_path_factory.mktemp("console-artifacts"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def _wait(driver, condition, timeout: float = 30.0, what: str = "the page"):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(condition, f"waiting for {what}")


def _base(settings) -> str:
    return http.api_base(settings)


def test_home_fills_every_widget_from_the_live_api(console, browser, artifacts) -> None:
    from selenium.webdriver.common.by import By

    browser.get(_base(console) + "/#/home")
    widgets = [w.get_attribute("id") for w in browser.find_elements(By.CSS_SELECTOR, "section.widget")]
    assert widgets == ["rate-now", "rate-hour", "top-exporters", "top-as", "top-countries", "top-ports",
                       "last-flow", "exporters"]
    _wait(browser, lambda d: all(w.get_attribute("data-filled") == "true"
                                 for w in d.find_elements(By.CSS_SELECTOR, "section.widget")), what="every widget")
    status, body = get(console, "/api/v0/flows", {"from": "-1h", "dimensions": "ExporterName", "limit": 5, "points": 1},
                       token=None)
    assert status == 200
    shown = [row.find_elements(By.TAG_NAME, "td")[0].text
             for row in browser.find_elements(By.CSS_SELECTOR, "#top-exporters tbody tr")]
    assert shown == [s["dimensions"][0] for s in body["series"]] and set(shown) == set(EXPORTERS)
    assert float(browser.find_element(By.CSS_SELECTOR, "#rate-now .big").get_attribute("data-value")) > 0
    assert "ExporterName" in browser.find_element(By.ID, "last-flow").text
    assert len(browser.find_elements(By.CSS_SELECTOR, "#exporters details")) == 3
    browser.save_screenshot(str(artifacts / "console-home.png"))


def test_visualize_draws_what_the_api_answers(console, browser, artifacts) -> None:
    from selenium.webdriver.common.by import By

    browser.get(_base(console) + "/#/visualize?from=-1h&dims=SrcAS,ExporterName&limit=5&graph=stacked")
    graph = _wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, ".graph[aria-busy='false'][data-series]"),
                  what="the graph")
    status, body = get(console, "/api/v0/flows", {"from": "-1h", "dimensions": "SrcAS,ExporterName", "limit": 5,
                                                  "points": 120}, token=None)
    assert status == 200 and int(graph.get_attribute("data-series")) == len(body["series"])
    averages = [float(cell.get_attribute("data-raw")) for cell in browser.find_elements(By.CSS_SELECTOR, "table.figures td[data-raw]")]
    assert averages == pytest.approx([s["average"] for s in body["series"]], rel=0.02)  # (a few seconds apart)
    browser.save_screenshot(str(artifacts / "console-visualize.png"))
    browser.get(_base(console) + "/#/visualize?from=-1h&dims=SrcAS,ExporterName&limit=5&graph=sankey&bidirectional=1")
    browser.refresh()
    graph = _wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, ".graph[aria-busy='false'][data-links]"), what="the sankey")
    assert int(graph.get_attribute("data-links")) > 0
    assert browser.find_elements(By.CSS_SELECTOR, ".graph canvas")
    browser.save_screenshot(str(artifacts / "console-sankey.png"))


def test_filter_editor_completes_from_the_store_and_marks_errors(console, browser, artifacts) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    browser.get(_base(console) + "/#/visualize?from=-1h&dims=ExporterName&graph=lines")
    browser.refresh()
    editor = _wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, "[data-testid='filter-input']"), what="the editor")
    editor.click()
    editor.send_keys("ExporterName = 'edge2")
    option = _wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, ".cm-tooltip-autocomplete li"), what="a completion")
    assert "edge2.ams" in option.text
    editor.send_keys(Keys.ENTER)  # accepts the completion
    _wait(browser, lambda d: "'edge2.ams'" in editor.text, what="the accepted value")
    editor.send_keys(Keys.ENTER)  # applies the filter
    _wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, ".graph[aria-busy='false']").get_attribute("data-series") == "1",
          what="the filtered graph")
    assert "edge2.ams" in browser.find_element(By.CSS_SELECTOR, "table.figures").text
    assert "ExporterName+%3D+%27edge2.ams%27" in browser.current_url or "edge2.ams" in browser.current_url
    editor.send_keys(" AND SrcAS ==")
    status = _wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, ".filter-status").text or None, what="the error")
    assert "column" in status and "'='" in status
    browser.save_screenshot(str(artifacts / "console-filter-error.png"))


def test_console_files_are_served_without_a_token_but_not_others(console) -> None:
    import urllib.error
    import urllib.request

    with urllib.request.urlopen(_base(console) + "/", timeout=10) as answer:
        assert answer.status == 200 and b"/console/app.js" in answer.read()
    for name in ("../server.py", "%2e%2e%2fserver.py", "nope.js"):
        try:
            urllib.request.urlopen(_base(console) + "/console/" + name, timeout=10)
            raise AssertionError(name)
        except urllib.error.HTTPError as err:
            assert err.code == 404, name
            assert json.loads(err.read())["reason"] == "not_found"


def test_markup_in_the_url_is_not_run(console, browser) -> None:
    """Anyone can send a console link: dimensions in it that are no column are dropped, and
    nothing of the URL reaches the page as markup."""
    from selenium.webdriver.common.by import By

    hostile = "SrcAS,%3Cimg%20src%3Dx%20onerror%3Dwindow.__xss%3D777%3E"
    browser.get(_base(console) + f"/#/visualize?from=-1h&dims={hostile}&graph=lines")
    browser.refresh()
    _wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, ".graph[aria-busy='false'][data-series]"), what="the graph")
    assert browser.execute_script("return window.__xss") is None
    assert [b.text for b in browser.find_elements(By.CSS_SELECTOR, ".chosen button")] == ["1. SrcAS ×"]
    assert not browser.find_elements(By.CSS_SELECTOR, "img[src='x'], img[onerror]")  # (CodeMirror has img buffers of its own)
