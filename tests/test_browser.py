"""The browser capability driving a real headless Chromium against local stand-ins for the sites."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

pytest.importorskip("selenium")

from selenium.common.exceptions import WebDriverException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.wait import WebDriverWait  # noqa: E402

from lamcontrol.agents import webdriver  # noqa: E402
from lamcontrol.agents.browser import Browser  # noqa: E402
from lamcontrol.agents.capability import TaskFailed, Unavailable  # noqa: E402
from helpers import running  # noqa: E402
from standins import StandIn, site_routes  # noqa: E402

QUERY = "weezer & friends"


@pytest.fixture(scope="module")
def sites():
    with StandIn(site_routes()) as server:
        yield server


@pytest.fixture(scope="module", autouse=True)
def no_selenium_manager():
    """Selenium Manager must never be needed: point it at nothing so any use of it fails."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SE_MANAGER_PATH", "/nonexistent/selenium-manager")
        yield


@pytest.fixture(scope="module")
def settings(sites, tmp_path_factory):
    return {"headless": True, "profile_dir": str(tmp_path_factory.mktemp("profile")), "page_timeout": 15.0,
            **{f"{site}_url": sites.url for site in ("google", "youtube", "gmail", "amazon")}}


@pytest.fixture(scope="module")
def browser(settings):
    yield from running(Browser(settings))


def shown(browser: Browser, css: str = "body") -> str:
    with browser.session.use() as driver:
        return driver.find_element(By.CSS_SELECTOR, css).text


def current_url(browser: Browser) -> str:
    with browser.session.use() as driver:
        return driver.current_url


def test_site_opens_the_address(browser, sites):
    outcome = browser.run("site", {"url": f"{sites.url}/site.html"})
    assert outcome.message == "Opened 127.0.0.1"
    assert current_url(browser) == f"{sites.url}/site.html"
    assert outcome.data["title"] == "Local test site"
    assert "Welcome to the local test site" in shown(browser)


@pytest.mark.parametrize("address", ["file:///etc/passwd", "javascript:alert(1)", "chrome://settings",
                                     "example.com", "http://"])
def test_site_refuses_what_is_not_a_web_address(browser, sites, address):
    browser.run("site", {"url": f"{sites.url}/site.html"})
    with pytest.raises(TaskFailed, match="http:// or https://"):
        browser.run("site", {"url": address})
    assert current_url(browser) == f"{sites.url}/site.html"


def test_unreachable_site_fails_with_a_sentence(browser):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(TaskFailed, match="^Could not reach 127.0.0.1.$"):
        browser.run("site", {"url": f"http://127.0.0.1:{port}/"})


@pytest.mark.parametrize("site, label, path, query_key", [
    ("google", "Google", "/search", "q"),
    ("youtube", "YouTube", "/results", "search_query"),
    ("amazon", "Amazon", "/s", "k"),
])
def test_search_shows_the_sites_results(browser, sites, site, label, path, query_key):
    outcome = browser.run(site, {"query": QUERY})
    assert outcome.message == f"Opened {label} results for {QUERY}"
    url = urlsplit(current_url(browser))
    assert url.path == path
    assert url.query == f"{query_key}=weezer+%26+friends"
    assert shown(browser, "#query") == QUERY


def test_gmail_search_goes_in_the_fragment(browser, sites):
    outcome = browser.run("gmail", {"query": "from:jason invoice"})
    assert outcome.message == "Opened Gmail results for from:jason invoice"
    assert current_url(browser) == f"{sites.url}/mail/u/0/#search/from%3Ajason%20invoice"
    assert shown(browser, "#query") == "from:jason invoice"


def test_youtube_play_starts_the_first_video(browser, sites):
    outcome = browser.run("youtube", {"query": "weezer", "play": True})
    assert outcome.message == "Playing weezer - First Video on YouTube"
    assert current_url(browser) == f"{sites.url}/watch?v=first"
    with browser.session.use() as driver:
        WebDriverWait(driver, 10).until(lambda d: d.execute_script(
            "const v = document.querySelector('video'); return !v.paused && v.currentTime > 0"))
        assert driver.find_element(By.TAG_NAME, "body").get_attribute("data-played") == "yes"
        assert driver.title == "Video first - YouTube"


def test_youtube_play_without_results_fails(settings, sites):
    empty = Browser({**settings, "youtube_url": f"{sites.url}/nothing", "page_timeout": 2.0})
    empty.start()
    try:
        with pytest.raises(TaskFailed, match="^I found no video for weezer on YouTube.$"):
            empty.run("youtube", {"query": "weezer", "play": True})
    finally:
        empty.close()


@pytest.mark.parametrize("args", [{}, {"query": ""}, {"query": 7}])
def test_search_without_a_query_fails(browser, args):
    with pytest.raises(TaskFailed, match="needs something to search for"):
        browser.run("google", args)


def test_session_is_shared_and_restarted_after_the_window_closed(browser, sites):
    browser.run("site", {"url": f"{sites.url}/site.html"})
    first = browser.session.driver
    with browser.session.use() as driver:
        driver.close()  # the person closed the last window
    browser.run("google", {"query": "again"})
    assert browser.session.driver is not first
    assert shown(browser, "#query") == "again"


def test_session_is_restarted_after_the_browser_died(browser, sites, settings):
    browser.run("site", {"url": f"{sites.url}/site.html"})
    first = browser.session.driver
    os.kill(main_browser_pid(settings["profile_dir"]), signal.SIGKILL)
    wait_until_gone(first)
    outcome = browser.run("amazon", {"query": "strings"})
    assert outcome.message == "Opened Amazon results for strings"
    assert browser.session.driver is not first
    assert shown(browser, "#query") == "strings"


def wait_until_gone(driver, timeout: float = 10.0) -> None:
    """Until the driver has noticed its browser is gone (it died before the next task came)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            driver.window_handles
        except WebDriverException:
            return
        time.sleep(0.05)
    raise AssertionError("the driver still talks to a killed browser")


def main_browser_pid(profile_dir: str) -> int:
    """The main Chromium process (not a renderer or other child) started with this profile."""
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"--user-data-dir={profile_dir}".encode() in argv and not any(a.startswith(b"--type=") for a in argv):
            return int(proc.name)
    raise AssertionError("no browser process found")


def test_check_names_a_missing_driver(settings):
    with pytest.raises(Unavailable, match="found no chromedriver.*chromium-driver"):
        Browser({**settings, "driver": "/nonexistent/chromedriver"}).check()


def test_check_wants_a_display_unless_headless(settings, monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    with pytest.raises(Unavailable, match="headless = true"):
        Browser({**settings, "headless": False}).check()


def test_unknown_engine_and_bad_settings_are_refused(settings):
    with pytest.raises(Unavailable, match="engine must be one of"):
        Browser({**settings, "engine": "lynx"}).check()
    with pytest.raises(ValueError, match="headless must be bool"):
        Browser({**settings, "headless": "yes"})


def test_other_users_share_the_main_users_session(browser, settings, sites):
    browser.run("site", {"url": f"{sites.url}/site.html"})
    other = webdriver.acquire(Browser.validate_settings({**settings, "headless": False, "page_timeout": 1.0}))
    try:
        assert other is browser.session
        assert other.settings["headless"] is True
    finally:
        webdriver.release(other)
    assert current_url(browser) == f"{sites.url}/site.html"  # still running for its main user


def test_agent_on_a_desktop_opens_a_real_window(lam, xvfb, tmp_path):
    """End to end: prompt -> coordinator -> agent process -> a headed Chromium on the X display."""
    with StandIn(site_routes()) as google:
        lam.coordinator()
        lam.agent("desktop", "browser", env={"DISPLAY": xvfb}, extra_config=f"""
[capabilities.browser]
profile_dir = "{tmp_path / 'profile'}"
google_url = "{google.url}"
""")
        reply = lam.send("browser google weezer", timeout=60)
    assert (reply.status, reply.response) == ("succeeded", "Opened Google results for weezer")
    [search] = [request for request in google.requests if request.path.startswith("/search")]
    assert search.path == "/search?q=weezer"
    assert "Headless" not in search.headers["User-Agent"]  # a real window, since there is a display


def test_headless_is_what_the_sites_see(browser, sites):
    browser.run("google", {"query": "who is asking"})
    search = [request for request in sites.requests if request.path == "/search?q=who+is+asking"][-1]
    assert "HeadlessChrome" in search.headers["User-Agent"]
