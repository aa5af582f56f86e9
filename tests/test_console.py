"""The web console in a real browser (Debian's chromium, headless, driven by Selenium through
chromium-driver) against `waxflow up --demo` started by the test, as a user runs it: every home
widget fills from the live API; visualize takes dimensions, sankey, bidirectional and previous
period from its controls; its table's figures equal a SQL query over the store for the same
window and filter; the filter editor completes from the store and marks an invalid filter at its
position; a saved filter round-trips through the store and a link; the pages fit a phone's
width. Screenshots go to $WAXFLOW_ARTIFACTS (default: the test's temporary directory)."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
import yaml

from connectors.http.server import CONSOLE_DIR
from tests.test_up import Up, _config, shut_down

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs Debian's chromium and chromium-driver "
                                                                     "(scripts/apt-packages.txt)")
EXPORTERS = ("edge1.par", "edge2.ams", "edge3.fra")  # the demo's routers (flows/demo.py)


class Demo:
    """The running stack: its API's base URL and read-only SQL."""

    def __init__(self, stack: Up) -> None:
        self.stack = stack
        config = yaml.safe_load((stack.workdir / "cfg.yaml").read_text())
        self.base = "http://" + config["api"]["listen"]

    def call(self, path: str, params: dict | None = None, method: str = "GET", body: dict | None = None):
        import urllib.error
        import urllib.parse
        import urllib.request

        url = self.base + path + ("?" + urllib.parse.urlencode(params) if params else "")
        request = urllib.request.Request(url, method=method, data=None if body is None else json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    def sql(self, text: str) -> list[list]:
        status, body = self.call("/api/v0/query", {"sql": text})
        assert status == 200, body
        return body["rows"]


@pytest.fixture(scope="module")
def console(tmp_path_factory):
    if not (CONSOLE_DIR / "index.html").exists():
        pytest.fail("the console is not built: scripts/bootstrap.sh builds it (cd console && npm ci && npm run build)")
    workdir = tmp_path_factory.mktemp("console-demo")
    _config(workdir)
    stack = Up(workdir)
    try:
        stack.wait_ready()
        demo = Demo(stack)
        deadline = time.monotonic() + 120
        while True:  # until every demo router's flows are in the store
            status, body = demo.call("/api/v0/widgets/top/ExporterName", {"from": "-5m"})
            if status == 200 and {t["value"] for t in body["top"]} == set(EXPORTERS):
                break
            assert time.monotonic() < deadline, (status, body, stack.text())
            time.sleep(1)
        yield demo
    finally:
        shut_down(stack)


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


def _drawn(driver, what: str = "the graph"):
    """The graph once its data is drawn (the console marks it when its charts have rendered)."""
    from selenium.webdriver.common.by import By

    return _wait(driver, lambda d: d.find_element(By.CSS_SELECTOR, ".graph[aria-busy='false'][data-drawn]"), what=what)


def _base(demo: Demo) -> str:
    return demo.base


def test_home_fills_every_widget_from_the_live_api(console, browser, artifacts) -> None:
    from selenium.webdriver.common.by import By

    browser.get(_base(console) + "/#/home")
    widgets = [w.get_attribute("id") for w in browser.find_elements(By.CSS_SELECTOR, "section.widget")]
    assert widgets == ["rate-now", "rate-hour", "top-exporters", "top-as", "top-countries", "top-protocols",
                       "top-ports", "last-flow", "exporters"]
    _wait(browser, lambda d: all(w.get_attribute("data-filled") == "true"
                                 for w in d.find_elements(By.CSS_SELECTOR, "section.widget")), what="every widget")
    shown = [row.find_elements(By.TAG_NAME, "td")[0].text
             for row in browser.find_elements(By.CSS_SELECTOR, "#top-exporters tbody tr")]
    assert set(shown) == set(EXPORTERS)
    for widget in ("top-as", "top-countries", "top-protocols", "top-ports"):
        assert browser.find_elements(By.CSS_SELECTOR, f"#{widget} tbody tr td.num"), widget
    assert "Netflix" in browser.find_element(By.ID, "top-as").text  # AS numbers shown with their names
    status, rate = console.call("/api/v0/widgets/flow-rate")
    assert status == 200 and rate["bps"] > 0
    shown_bps = float(browser.find_element(By.CSS_SELECTOR, "#rate-now .big").get_attribute("data-value"))
    assert shown_bps == pytest.approx(rate["bps"], rel=0.5)  # (live traffic, read a moment apart)
    assert "ExporterName" in browser.find_element(By.ID, "last-flow").text
    assert len(browser.find_elements(By.CSS_SELECTOR, "#exporters details")) == 3
    browser.save_screenshot(str(artifacts / "console-home.png"))


def _window(console: Demo, seconds: int = 30) -> tuple[int, int]:
    """`seconds` of demo traffic that ended 10 s ago (every flow of it stored, none to come),
    from the second after the first flows (the stack's first second is only partly there)."""
    first = int(console.sql("SELECT toUInt32(min(TimeReceived)) FROM flows")[0][0])
    while int(time.time()) - 10 - (first + 2) < seconds:
        time.sleep(1)
    end = int(time.time()) - 10
    return end - seconds, end


def test_visualize_table_equals_sql_over_the_store(console, browser, artifacts) -> None:
    from selenium.webdriver.common.by import By

    start, end = _window(console)
    browser.get(_base(console) + f"/#/visualize?from={start}&to={end}&dims=SrcAS&limit=5&graph=stacked"
                                 "&filter=Proto+%3D+6")
    browser.refresh()
    _drawn(browser)
    rows = {row.get_attribute("data-key"): {cell.get_attribute("data-figure"): float(cell.get_attribute("data-raw"))
                                            for cell in row.find_elements(By.CSS_SELECTOR, "td[data-figure]")}
            for row in browser.find_elements(By.CSS_SELECTOR, "table.figures tbody tr")}
    sums = dict(console.sql(f"SELECT toString(SrcAS), sum(Bytes * SamplingRate * 8) FROM flows "
                            f"WHERE TimeReceived >= toDateTime({start}) AND TimeReceived < toDateTime({end}) "
                            "AND Proto = 6 GROUP BY SrcAS"))
    top = sorted(sums, key=lambda k: float(sums[k]), reverse=True)[:5]
    assert len(top) == 5, sums  # (the demo has more source AS than that: an Other row too)
    assert set(rows) == set(top) | ({"Other"} if len(sums) > 5 else set())
    for asn in top:
        assert rows[asn]["total"] == pytest.approx(float(sums[asn]), rel=1e-9), asn
        assert rows[asn]["average"] == pytest.approx(float(sums[asn]) / (end - start), rel=1e-9), asn
        assert rows[asn]["average"] <= rows[asn]["p95"] * 1.000001 or rows[asn]["p95"] <= rows[asn]["max"]
    if "Other" in rows:
        assert rows["Other"]["total"] == pytest.approx(sum(float(v) for k, v in sums.items() if k not in top))
    browser.save_screenshot(str(artifacts / "console-visualize.png"))


def test_visualize_controls_sankey_bidirectional_and_previous_period(console, browser, artifacts) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    browser.get(_base(console) + "/#/visualize?from=-15m&dims=SrcAS&graph=stacked")
    browser.refresh()
    _wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, ".graph[aria-busy='false'][data-series]"), what="the graph")
    form = browser.find_element(By.CSS_SELECTOR, "form.controls")
    Select(form.find_element(By.NAME, "dims")).select_by_value("ExporterName")
    assert [b.text for b in form.find_elements(By.CSS_SELECTOR, ".chosen button")] == ["1. SrcAS ×", "2. ExporterName ×"]
    Select(form.find_element(By.NAME, "graph")).select_by_value("sankey")
    form.find_element(By.NAME, "bidirectional").click()
    Select(form.find_element(By.NAME, "previous")).select_by_value("day")
    form.find_element(By.CSS_SELECTOR, "button[type='submit']").click()
    graph = _wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, ".graph[aria-busy='false'][data-links][data-drawn]"),
                  what="the sankey")
    assert int(graph.get_attribute("data-links")) > 0 and browser.find_elements(By.CSS_SELECTOR, ".graph canvas")
    for part in ("graph=sankey", "bidirectional=1", "previous=day", "dims=SrcAS%2CExporterName"):
        assert part in browser.current_url, part
    reverse_rows = [r for r in browser.find_elements(By.CSS_SELECTOR, "table.figures tbody tr") if "↩" in r.text]
    assert reverse_rows  # the other direction's groups, marked, under the graph
    browser.save_screenshot(str(artifacts / "console-sankey.png"))
    Select(form.find_element(By.NAME, "graph")).select_by_value("grid")
    form.find_element(By.CSS_SELECTOR, "button[type='submit']").click()
    _wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".graph .multiple")) ==
          int(d.find_element(By.CSS_SELECTOR, ".graph").get_attribute("data-series") or -1), what="the small multiples")


def test_a_saved_filter_round_trips_through_the_store_and_a_link(console, browser, artifacts) -> None:
    from selenium.webdriver.common.by import By

    browser.get(_base(console) + "/#/visualize?from=-15m&dims=Proto&graph=lines&filter=Proto+%3D+17")
    browser.refresh()
    _wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, ".graph[aria-busy='false'][data-series]"), what="the graph")
    browser.find_element(By.NAME, "save").click()
    prompt = _wait(browser, lambda d: d.switch_to.alert, what="the name prompt")
    prompt.send_keys("udp only")
    prompt.accept()
    _wait(browser, lambda d: "saved as udp only" in d.find_element(By.CSS_SELECTOR, ".saved-status").text, what="saved")
    status, saved = console.call("/api/v0/filters/udp%20only")
    assert status == 200 and saved["filter"] == "Proto = 17"
    _wait(browser, lambda d: "saved=udp+only" in d.current_url, what="the shareable link")
    browser.get(_base(console) + "/#/visualize?from=-15m&dims=Proto&saved=udp+only")  # a link someone sent
    browser.refresh()
    editor = _wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, "[data-testid='filter-input']"), what="the editor")
    _wait(browser, lambda d: editor.text == "Proto = 17", what="the saved filter in the editor")
    _wait(browser, lambda d: d.find_element(By.NAME, "saved").get_attribute("value") == "udp only", what="the picker")
    browser.find_element(By.NAME, "forget").click()
    _wait(browser, lambda d: "deleted udp only" in d.find_element(By.CSS_SELECTOR, ".saved-status").text, what="deleted")
    assert console.call("/api/v0/filters/udp%20only")[0] == 404


def test_pages_fit_a_phone(console, browser, artifacts) -> None:
    from selenium.webdriver.common.by import By

    browser.set_window_size(390, 844)
    try:
        for page in ("home", "visualize?from=-15m&dims=SrcAS"):
            browser.get(_base(console) + f"/#/{page}")
            browser.refresh()
            _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "[aria-busy='false']"), what=page)
            width = browser.execute_script("return [document.documentElement.scrollWidth, window.innerWidth]")
            assert width[0] <= width[1], (page, width)
            browser.save_screenshot(str(artifacts / f"console-phone-{page.split('?')[0]}.png"))
    finally:
        browser.set_window_size(1280, 800)


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
