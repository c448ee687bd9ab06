"""browser: open sites and search Google, YouTube, Gmail and Amazon in a real browser (Selenium 4).

``site {url}`` opens an http(s) address; ``google|youtube|gmail|amazon {query}`` opens that
site's results; ``youtube {query, play: true}`` clicks the first video and makes sure it plays.
One browser session serves every task (see :mod:`agents.webdriver`).
"""

from __future__ import annotations

import logging
from urllib.parse import quote, quote_plus, urlsplit

from . import webdriver
from .capability import Capability, Outcome, Setting, TaskFailed, action, require

# Site name -> (how a person calls it, base URL setting, path of a search for a quoted query).
SEARCHES = {
    "google": ("Google", "google_url", "/search?q={}"),
    "youtube": ("YouTube", "youtube_url", "/results?search_query={}"),
    "gmail": ("Gmail", "gmail_url", "/mail/u/0/#search/{}"),
    "amazon": ("Amazon", "amazon_url", "/s?k={}"),
}
FIRST_VIDEO = "a#video-title[href*='/watch']"
# True once the page's video plays; nudges a paused one (autoplay may wait for a gesture).
log = logging.getLogger(__name__)
PLAY_VIDEO = """
const video = document.querySelector('video');
if (!video) return false;
if (video.paused) { video.play().catch(() => {}); return false; }
return true;
"""


class Browser(Capability):
    name = "browser"
    summary = "Opens web sites and searches Google, YouTube, Gmail and Amazon; plays YouTube videos."
    extra = "browser"
    requirements = ("selenium",)
    config_schema = {
        **webdriver.SESSION_SCHEMA,
        "google_url": Setting("https://www.google.com", "Google's base URL"),
        "youtube_url": Setting("https://www.youtube.com", "YouTube's base URL"),
        "gmail_url": Setting("https://mail.google.com", "Gmail's base URL"),
        "amazon_url": Setting("https://www.amazon.com", "Amazon's base URL (say https://www.amazon.de)"),
    }

    def __init__(self, settings: dict | None = None) -> None:
        settings = dict(settings or {})
        if "headless" not in settings and not webdriver.has_display():
            settings["headless"] = True
            log.info("browser: no display here, so the browser runs headless (in a desktop session, start the "
                     "agent there to see it, or set [capabilities.browser] headless = false)")
        super().__init__(settings)
        self.session: webdriver.Session | None = None

    def check(self) -> None:
        super().check()
        webdriver.check(self.settings, self.name)

    def start(self) -> None:
        self.session = webdriver.acquire(self.settings, main_user=True)

    def close(self) -> None:
        if self.session is not None:
            webdriver.release(self.session)
            self.session = None

    def _use(self):
        if self.session is None:
            self.start()
        return self.session.use()

    @action()
    def site(self, args: dict) -> Outcome:
        url = require(args, "url").strip()
        parts = urlsplit(url)
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            raise TaskFailed("I can only open web addresses that start with http:// or https://.")
        with self._use() as driver:
            webdriver.navigate(driver, url, parts.hostname)
            return Outcome(f"Opened {parts.hostname}", page(driver))

    @action()
    def google(self, args: dict) -> Outcome:
        return self._search("google", args)

    @action()
    def gmail(self, args: dict) -> Outcome:
        return self._search("gmail", args)

    @action()
    def amazon(self, args: dict) -> Outcome:
        return self._search("amazon", args)

    @action()
    def youtube(self, args: dict) -> Outcome:
        if args.get("play") is True:
            return self._play(require(args, "query"))
        return self._search("youtube", args)

    def _search(self, site: str, args: dict) -> Outcome:
        query = require(args, "query").strip()
        label = SEARCHES[site][0]
        with self._use() as driver:
            webdriver.navigate(driver, self._search_url(site, query), label)
            return Outcome(f"Opened {label} results for {query}", page(driver))

    def _search_url(self, site: str, query: str) -> str:
        _, base_key, path = SEARCHES[site]
        # Gmail reads its search from the fragment, where '+' is not a space.
        quoted = quote(query, safe="") if site == "gmail" else quote_plus(query)
        return self.settings[base_key].rstrip("/") + path.format(quoted)

    def _play(self, query: str) -> Outcome:
        from selenium.common.exceptions import TimeoutException, WebDriverException
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions
        from selenium.webdriver.support.wait import WebDriverWait

        query = query.strip()
        with self._use() as driver:
            webdriver.navigate(driver, self._search_url("youtube", query), "YouTube")
            wait = WebDriverWait(driver, self.settings["page_timeout"], poll_frequency=0.05)
            try:
                link = wait.until(expected_conditions.element_to_be_clickable((By.CSS_SELECTOR, FIRST_VIDEO)))
                title = (link.get_attribute("title") or link.text).strip() or query
                href = link.get_attribute("href")
            except TimeoutException:
                raise TaskFailed(f"I found no video for {query} on YouTube.") from None
            try:
                link.click()
            except WebDriverException:  # covered by a banner or re-rendered: follow the link instead
                webdriver.navigate(driver, href, "YouTube")
            try:
                wait.until(expected_conditions.url_contains("/watch"))
                wait.until(lambda d: d.execute_script(PLAY_VIDEO))
            except TimeoutException:
                raise TaskFailed(f"I opened {title} on YouTube but it would not start playing.") from None
            return Outcome(f"Playing {title} on YouTube", {**page(driver), "video": title})


def page(driver) -> dict:
    """What the browser shows now, for the result's data."""
    return {"url": driver.current_url, "title": driver.title}
