"""One Selenium browser session per agent process, shared by every capability that drives a browser.

``browser`` and the Messenger action of ``messaging`` both call :func:`acquire` at start and
:func:`release` at close; the browser itself starts on first use, restarts when it died or its
last window was closed, and quits when the last user releases it. Access is serialised: hold
``with session.use() as driver:`` for the whole action.

The driver is always a local executable (chromedriver or geckodriver, from ``driver`` or PATH);
Selenium Manager is never asked to download one. The profile directory persists between runs
so sites stay signed in: sign in once by starting the browser yourself with that profile
(``chromium --user-data-dir=<profile_dir>``) while the agent is stopped.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from lamcontrol.config import state_dir

from .capability import Setting, TaskFailed, Unavailable

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

log = logging.getLogger(__name__)

SESSION_SCHEMA = {
    "engine": Setting("chromium", "browser to drive: chromium, chrome or firefox"),
    "headless": Setting(False, "run the browser without a window (required when there is no display)"),
    "profile_dir": Setting("", "profile kept between runs so sites stay signed in; "
                               "empty: <state dir>/browser-<engine>"),
    "binary": Setting("", "browser executable; empty: looked up on PATH and in the usual places"),
    "driver": Setting("", "chromedriver or geckodriver executable; empty: looked up on PATH and in /usr/bin"),
    "page_timeout": Setting(30.0, "seconds a page may take to load"),
}

# Where each engine's browser and driver usually live, after PATH.
ENGINES: dict[str, dict[str, Any]] = {
    "chromium": {
        "label": "Chromium",
        "binaries": ("chromium", "chromium-browser", "/Applications/Chromium.app/Contents/MacOS/Chromium"),
        "driver": "chromedriver",
        "driver_paths": ("/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver",
                         "/usr/lib/chromium-browser/chromedriver"),
        "apt": "chromium chromium-driver",
    },
    "chrome": {
        "label": "Google Chrome",
        "binaries": ("google-chrome", "google-chrome-stable", "chrome",
                     "/Applications/Google Chrome.app/Contents/MacOS/Google Chrome",
                     r"C:\Program Files\Google\Chrome\Application\chrome.exe"),
        "driver": "chromedriver",
        "driver_paths": ("/usr/bin/chromedriver",),
        "apt": "chromium-driver",
    },
    "firefox": {
        "label": "Firefox",
        "binaries": ("firefox", "firefox-esr", "/Applications/Firefox.app/Contents/MacOS/firefox",
                     r"C:\Program Files\Mozilla Firefox\firefox.exe"),
        "driver": "geckodriver",
        "driver_paths": ("/usr/bin/geckodriver", "/usr/local/bin/geckodriver"),
        "apt": "firefox-esr (and geckodriver from its release page)",
    },
}

# The machine may have no way out but the sites asked for: no background traffic, no QUIC.
CHROMIUM_ARGUMENTS = (
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--autoplay-policy=no-user-gesture-required",
)
ERROR_PAGES = ("chrome-error:", "about:neterror")


def find_executable(configured: str, names: tuple[str, ...]) -> str | None:
    """The configured executable, or the first of ``names`` found on PATH or as a path."""
    for name in (configured,) if configured else names:
        found = shutil.which(name) or (name if os.path.isabs(name) and os.access(name, os.X_OK) else None)
        if found:
            return found
    return None


def has_display() -> bool:
    """Whether a window can be shown (always on macOS and Windows; X11 or Wayland on Linux)."""
    if not sys.platform.startswith("linux"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def check(settings: dict, section: str) -> tuple[str, str]:
    """The browser and driver paths; Unavailable saying what to install or set when missing."""
    engine = ENGINES.get(settings["engine"])
    if engine is None:
        raise Unavailable(f"[capabilities.{section}] engine must be one of {', '.join(ENGINES)}")
    try:
        import selenium  # noqa: F401
    except ImportError:
        raise Unavailable(f"{section} needs Selenium: pip install 'lamcontrol[browser]'") from None
    binary = find_executable(settings["binary"], engine["binaries"])
    if binary is None:
        raise Unavailable(f"{section} found no {engine['label']}: install it (Debian: apt install "
                          f"{engine['apt']}) or set binary in [capabilities.{section}]")
    driver = find_executable(settings["driver"], (engine["driver"], *engine["driver_paths"]))
    if driver is None:
        raise Unavailable(f"{section} found no {engine['driver']}: install it (Debian: apt install "
                          f"{engine['apt']}) or set driver in [capabilities.{section}]")
    if not settings["headless"] and not has_display():
        raise Unavailable(f"{section} has no display to show the browser on: set headless = true in "
                          f"[capabilities.{section}] or run the agent in a desktop session")
    return binary, driver


def sandbox_unavailable() -> bool:
    """True as root or under CI, where Chromium's sandbox cannot start."""
    return hasattr(os, "geteuid") and os.geteuid() == 0 or bool(os.environ.get("CI"))


class Session:
    """A lazily started WebDriver with the settings of its main user."""

    def __init__(self, settings: dict) -> None:
        self.settings = settings
        self.lock = threading.RLock()
        self.driver: WebDriver | None = None

    def reconfigure(self, settings: dict) -> None:
        with self.lock:
            if settings != self.settings:
                self.quit()
                self.settings = settings

    @contextmanager
    def use(self) -> Iterator[WebDriver]:
        """The live driver, held exclusively for the duration of the block."""
        with self.lock:
            if self.driver is not None and not self._alive():
                log.info("the browser went away; starting a new one")
                self.quit()
            if self.driver is None:
                self.driver = self._launch()
            yield self.driver

    def quit(self) -> None:
        with self.lock:
            driver, self.driver = self.driver, None
        if driver is not None:
            try:
                driver.quit()
            except Exception as exc:  # the browser may already be gone; nothing left to release
                log.debug("quitting the browser: %s", exc)

    def _alive(self) -> bool:
        """Whether the browser still answers, switching to a remaining window if ours was closed."""
        from selenium.common.exceptions import NoSuchWindowException

        driver = self.driver
        if driver is None:
            return False
        try:
            try:
                driver.current_window_handle
            except NoSuchWindowException:
                handles = driver.window_handles
                if not handles:
                    return False
                driver.switch_to.window(handles[-1])
            return True
        except Exception:  # a dead browser or driver fails in many ways (WebDriver or HTTP errors)
            return False

    def _launch(self) -> WebDriver:
        from selenium.common.exceptions import WebDriverException

        try:
            binary, driver_path = check(self.settings, "browser")
        except Unavailable as exc:
            raise TaskFailed(f"The browser cannot start: {exc}.") from None
        engine = self.settings["engine"]
        profile = Path(self.settings["profile_dir"] or state_dir() / f"browser-{engine}").expanduser()
        profile.mkdir(parents=True, exist_ok=True)
        log.info("starting %s (%s) with profile %s", engine, "headless" if self.settings["headless"] else "headed",
                 profile)
        try:
            driver = (launch_firefox if engine == "firefox" else launch_chromium)(
                binary, driver_path, profile, self.settings["headless"])
        except WebDriverException as exc:
            reason = (exc.msg or str(exc)).strip().splitlines()[0][:200]
            raise TaskFailed(f"The browser would not start: {reason}") from None
        driver.set_page_load_timeout(self.settings["page_timeout"])
        return driver


def launch_chromium(binary: str, driver_path: str, profile: Path, headless: bool) -> WebDriver:
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in CHROMIUM_ARGUMENTS:
        options.add_argument(argument)
    options.add_argument(f"--user-data-dir={profile}")
    if headless:
        options.add_argument("--headless=new")
        options.add_argument("--window-size=1280,900")
    if sandbox_unavailable():
        options.add_argument("--no-sandbox")
        options.add_argument("--disable-dev-shm-usage")
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver_path))


def launch_firefox(binary: str, driver_path: str, profile: Path, headless: bool) -> WebDriver:
    from selenium import webdriver

    options = webdriver.FirefoxOptions()
    options.binary_location = binary
    options.add_argument("-profile")
    options.add_argument(str(profile))
    if headless:
        options.add_argument("-headless")
    options.set_preference("media.autoplay.default", 0)
    return webdriver.Firefox(options=options, service=webdriver.FirefoxService(executable_path=driver_path))


def navigate(driver: WebDriver, url: str, what: str) -> None:
    """Load ``url``; a TaskFailed naming ``what`` when it cannot be reached or loaded in time."""
    from selenium.common.exceptions import TimeoutException, WebDriverException

    try:
        driver.get(url)
    except TimeoutException:
        raise TaskFailed(f"{what} took too long to load.") from None
    except WebDriverException as exc:
        if "net::" in (exc.msg or ""):
            raise TaskFailed(f"Could not reach {what}.") from None
        raise TaskFailed(f"The browser could not open {what}.") from None
    if driver.current_url.startswith(ERROR_PAGES):
        raise TaskFailed(f"Could not reach {what}.")


_shared: Session | None = None
_users = 0
_has_main_user = False
_registry = threading.Lock()


def acquire(settings: dict, main_user: bool = False) -> Session:
    """The process's one session; the settings of its main user (``browser``) win over the others'."""
    global _shared, _users, _has_main_user
    session_settings = {key: settings[key] for key in SESSION_SCHEMA}
    with _registry:
        if _shared is None:
            _shared = Session(session_settings)
        elif main_user and not _has_main_user:
            _shared.reconfigure(session_settings)
        _has_main_user = _has_main_user or main_user
        _users += 1
        return _shared


def effective_settings(settings: dict) -> dict:
    """The settings the shared session runs with: its main user's once that has started, else these."""
    with _registry:
        return _shared.settings if _shared is not None and _has_main_user else settings


def release(session: Session) -> None:
    """Give back a session from :func:`acquire`; the browser quits with its last user."""
    global _shared, _users, _has_main_user
    with _registry:
        if session is not _shared:
            return
        _users -= 1
        if _users > 0:
            return
        _shared, _has_main_user = None, False
    session.quit()
