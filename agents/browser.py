"""browser: open sites and search Google, YouTube, Gmail and Amazon in a real browser (Selenium 4).

``site {url}`` opens an http(s) address; ``google|youtube|gmail|amazon {query}`` opens that
site's results; ``youtube {query, play: true}`` clicks the first video and makes sure it plays.
One browser session serves every task (see :mod:`lamcontrol.agents.webdriver`).
"""

from __future__ import annotations

import logging
from urllib.parse import quote, quote_plus, urlsplit

from . import webdriver
from .capability import Arg, Capability, Outcome, Sentences, Setting, Shared, Syntax, TaskFailed, action

URL = Arg("url", "url", "a web address")
QUERY = Arg("query", "text", "something to search for")

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

    def __init__(self, settings: dict | None = None, shared: Shared | None = None) -> None:
        settings = dict(settings or {})
        if "headless" not in settings and not webdriver.has_display():
            settings["headless"] = True
            log.info("browser: no display here, so the browser runs headless (in a desktop session, start the "
                     "agent there to see it, or set [capabilities.browser] headless = false)")
        super().__init__(settings, shared)
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
        assert self.session is not None  # start() made it
        return self.session.use()

    lists = {"sites": [{"in": "(youtube|you tube)", "out": "https://www.youtube.com"},
                       {"in": "youtube music", "out": "https://music.youtube.com"},
                       {"in": "(gmail|my (email|e-mail|mail|inbox))", "out": "https://mail.google.com"},
                       {"in": "google", "out": "https://www.google.com"},
                       {"in": "amazon", "out": "https://www.amazon.com"},
                       {"in": "reddit", "out": "https://www.reddit.com"},
                       {"in": "wikipedia", "out": "https://www.wikipedia.org"},
                       {"in": "github", "out": "https://github.com"}],
             "play_verbs": ["play", "put on", "listen to", "watch", "hear", "i want to (hear|listen to|watch)",
                            "i wanna (hear|listen to|watch)", "i'd like to (hear|listen to|watch)"]}
    rules = {"search": "(search|look up|look for|find|google|search for|look|check)",
             "some": "[(some|the song|the video|me)]",
             "open": "(open|go to|visit|take me to|pull up|navigate to|show me|load|bring up|open up|check)",
             "browser": "(in|on) (the|my) (browser|web browser|computer|laptop|pc)"}

    @action(syntax=["browser site {url}"], args=[URL], idempotent=True, shows=True, sentences=[
        Sentences(("<open> [the] {sites:url} [(site|website|page)] [<browser>] [for me]", "check my {sites:url}")),
        Sentences(("<open> [the] [(site|website|page)] {url} [<browser>] [for me]",)),
    ], examples=[("open rabbit.tech", "browser site https://rabbit.tech"),
                 ("open youtube", "browser site https://www.youtube.com")])
    def site(self, args: dict) -> Outcome:
        """Open a web address."""
        url = args["url"]
        parts = urlsplit(url)
        with self._use() as driver:
            webdriver.navigate(driver, url, parts.hostname)
            return Outcome(f"Opened {parts.hostname}", page(driver))

    @action(syntax=["browser google {query}"], args=[QUERY], idempotent=True, shows=True, sentences=[
        Sentences(("(google|search [the web] for|search the (web|internet) for|look up|search google for|"
                   "search for|look for) {query} [on (google|the web)]", "find {query} on google",
                   "(open|go to) google and (search for|look up|find|search) {query}")),
        Sentences(("(search|look up|search for|google|search google|search google for)",),
                  ask="What should I search for?"),
    ], examples=[("look up the population of canada", "browser google the population of canada")])
    def google(self, args: dict) -> Outcome:
        """Search Google."""
        return self._search("google", args)

    @action(syntax=["browser gmail {query}"], args=[QUERY], idempotent=True, shows=True, sentences=[
        Sentences(("<search> [in] [my] (gmail|email|e-mail|mail|inbox) for {query}",
                   "<search> [for] {query} in my (gmail|email|mail|inbox)",
                   "(look for|find|search for) (emails|mails|mail) (about|regarding|for) {query}",
                   "search gmail for {query}")),
        Sentences(("(find|look for|search for|show me) (emails|mails) from {sender}",),
                  compose={"query": "from:{sender}"}),
    ], examples=[("search my email for invoices", "browser gmail invoices")])
    def gmail(self, args: dict) -> Outcome:
        """Search Gmail."""
        return self._search("gmail", args)

    @action(syntax=["browser amazon {query}"], args=[QUERY], idempotent=True, shows=True, sentences=[
        Sentences(("<search> [for] [(a|an|me a|me an|me)] {query} on amazon", "(search|look|shop) amazon for "
                   "[(a|an)] {query}", "amazon {query}", "(buy|shop for|order) [(a|an|some|me)] {query} "
                   "[on amazon]", "(i need to|i want to) buy [(a|an|some)] {query}",
                   "(open|go to) amazon and (search for|look for|find) [(a|an)] {query}")),
        Sentences(("(search|find something on) amazon",), ask="What should I look for on Amazon?"),
    ], examples=[("look up hiking boots on amazon", "browser amazon hiking boots")])
    def amazon(self, args: dict) -> Outcome:
        """Search Amazon."""
        return self._search("amazon", args)

    @action(syntax=[Syntax("browser youtube play {query}", {"play": True}), "browser youtube {query}"],
            args=[QUERY, Arg("play", "flag", optional=True, repeats=(True,), acts=(True,))], idempotent=True,
            shows=True, sentences=[
        Sentences(("({play_verbs}) <some> {query} [on youtube [music]]",
                   "(open|go to) youtube [music] and (play|watch) {query}", "youtube play {query}"),
                  {"play": True}),
        Sentences(("(search|look up|look for|find) [on] youtube for {query}", "youtube [search] {query}",
                   "(show me|find [me]|search for|look up) {query} on youtube",
                   "(open|go to) youtube and (search for|look for|find) {query}")),
        Sentences(("({play_verbs}) something on amazon",), ask="I can only play things from YouTube."),
    ], examples=[("play weezer", "browser youtube play weezer"),
                 ("search youtube for cat videos", "browser youtube cat videos")])
    def youtube(self, args: dict) -> Outcome:
        """Search YouTube, or play its first video."""
        if args.get("play") is True:
            return self._play(args["query"])
        return self._search("youtube", args)

    def _search(self, site: str, args: dict) -> Outcome:
        query = args["query"]
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
                href = link.get_attribute("href") or ""
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
