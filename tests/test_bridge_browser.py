"""The R1 page (at the device's 240x282) and the admin dashboard, in headless Chromium.

The R1's injected hooks (secure storage, speech in, speech out) are stood in for by a
script loaded before the page, speaking the same calls the device offers.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import requests
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

from bridgekit import PASSWORD, bridge, broker, start_bridge, system  # noqa: F401


# What the R1 injects into a creation: async Base64 secure storage, the speech-to-text
# handler (its transcript comes back through window.onPluginMessage) and the message handler.
R1_DEVICE = """
window.__spoken = [];
window.__secure = {};
window.__nextTranscript = "";
window.creationStorage = {secure: {
  setItem: function (k, v) { atob(v); window.__secure[k] = v; return Promise.resolve(); },
  getItem: function (k) { return Promise.resolve(k in window.__secure ? window.__secure[k] : null); },
  removeItem: function (k) { delete window.__secure[k]; return Promise.resolve(); }
}};
window.CreationVoiceHandler = {postMessage: function (what) {
  if (what === "stop") {
    setTimeout(function () { window.onPluginMessage({type: "sttEnded", transcript: window.__nextTranscript}); }, 50);
  }
}};
window.PluginMessageHandler = {postMessage: function (text) { window.__spoken.push(JSON.parse(text)); }};
"""


def chromium(width: int, height: int, scale: float = 1.0) -> webdriver.Chrome:
    if not shutil.which("chromedriver"):
        pytest.fail("chromedriver is missing: apt-get install -y chromium chromium-driver")
    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
                 f"--window-size={width},{height}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=shutil.which("chromedriver")))
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": width, "height": height, "deviceScaleFactor": scale, "mobile": scale > 1})
    return driver


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory) -> Path:
    """Where the pictures go ($LAM_SCREENSHOTS to keep them); it must exist, or the browser drops them."""
    folder = Path(os.environ.get("LAM_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def r1():
    driver = chromium(240, 282, 2)
    driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": R1_DEVICE})
    yield driver
    driver.quit()


@pytest.fixture
def desktop():
    driver = chromium(1280, 900)
    yield driver
    driver.quit()


def fire(driver, event: str) -> None:
    driver.execute_script(f"window.dispatchEvent(new CustomEvent('{event}'))")


def last_reply(driver) -> str:
    replies = driver.find_elements(By.CSS_SELECTOR, "#log .reply")
    return replies[-1].text if replies else ""


def test_r1_page_pairs_talks_and_speaks(r1, bridge, screenshots):
    r1.get(f"{bridge.url}/r1#token={bridge.token}")
    wait = WebDriverWait(r1, 20)
    wait.until(EC.visibility_of_element_located((By.ID, "talk")))
    assert r1.execute_script("return window.location.hash") == ""  # the token left the address bar
    stored = r1.execute_script("return window.__secure.lam_token")
    assert base64.b64decode(stored).decode() == bridge.token
    assert r1.execute_script("return document.cookie") == ""
    assert r1.execute_script("return [window.innerWidth, window.innerHeight]") == [240, 282]
    talk = r1.find_element(By.ID, "talk").rect
    assert talk["height"] >= 48 and talk["width"] >= 200  # a big target
    assert r1.execute_script("return document.documentElement.scrollWidth") <= 240  # nothing off screen

    typed = r1.find_element(By.ID, "typed")
    typed.send_keys("echo hello from the r1", Keys.ENTER)
    wait.until(lambda d: last_reply(d) == "hello from the r1")
    assert r1.execute_script("return window.__spoken") == [
        {"message": "hello from the r1", "useLLM": False, "wantsR1Response": True}]
    assert float(r1.find_element(By.CSS_SELECTOR, "#log .reply:last-child").value_of_css_property("font-size")[:-2]) >= 20

    # push to talk: the side button held down, the device's transcript comes back
    r1.execute_script("window.__nextTranscript = 'echo spoken words'")
    fire(r1, "longPressStart")
    assert r1.find_element(By.ID, "talk").text == "Listening…"
    fire(r1, "longPressEnd")
    wait.until(lambda d: last_reply(d) == "spoken words")

    # a side click sends what was typed; the scroll wheel moves through the conversation
    typed.send_keys("echo clicked")
    fire(r1, "sideClick")
    wait.until(lambda d: last_reply(d) == "clicked")
    for text in ("one", "two", "three"):
        typed.send_keys(f"echo {text}", Keys.ENTER)
        wait.until(lambda d, t=text: last_reply(d) == t)
    bottom = r1.execute_script("return document.getElementById('log').scrollTop")
    assert bottom > 0
    r1.save_screenshot(str(screenshots / "bridge-r1.png"))
    fire(r1, "scrollUp")
    wait.until(lambda d: d.execute_script("return document.getElementById('log').scrollTop") < bottom)

    # a failed command is shown (and spoken) too
    typed.send_keys("echo fail no such thing", Keys.ENTER)
    wait.until(lambda d: "no such thing" in last_reply(d))
    assert "failed" in r1.find_elements(By.CSS_SELECTOR, "#log .reply")[-1].get_attribute("class")


def setup_status(driver) -> str:
    return driver.find_element(By.ID, "setup-status").text


def test_r1_page_checks_a_token_on_save_and_says_why_it_is_refused(r1, bridge):
    r1.get(f"{bridge.url}/r1")
    wait = WebDriverWait(r1, 20)
    field = wait.until(EC.visibility_of_element_located((By.ID, "token")))
    assert field.rect["height"] <= 48  # one line, not stretched over the screen
    field.send_keys("not-a-token")
    r1.find_element(By.ID, "save-token").click()
    wait.until(lambda d: "refused this token" in setup_status(d))
    assert "Invalid token" in setup_status(r1) and r1.find_element(By.ID, "token").is_displayed()
    assert r1.execute_script("return window.__secure.lam_token") is None  # nothing saved
    extra = bridge.bridge.tokens.create("soon revoked")
    field.clear()
    field.send_keys(extra)
    fire(r1, "sideClick")  # the side button saves too
    wait.until(EC.visibility_of_element_located((By.ID, "typed"))).send_keys("echo welcome", Keys.ENTER)
    wait.until(lambda d: last_reply(d) == "welcome")

    # A token revoked later: the next send goes back to the form and says why, where it can be seen.
    bridge.bridge.tokens.revoke("soon revoked")
    r1.find_element(By.ID, "typed").send_keys("echo hi", Keys.ENTER)
    wait.until(EC.visibility_of_element_located((By.ID, "token")))
    assert "refused the saved token" in setup_status(r1)
    assert r1.execute_script("return window.__secure.lam_token") is None


def test_quick_scroll_wheel_ticks_all_count(r1, bridge):
    r1.get(f"{bridge.url}/r1#token={bridge.token}")
    WebDriverWait(r1, 20).until(EC.visibility_of_element_located((By.ID, "talk")))
    r1.execute_script("""var log = document.getElementById('log');
      for (var i = 0; i < 40; i++) { var p = document.createElement('p'); p.textContent = 'line ' + i; log.appendChild(p); }
      log.scrollTop = 0;
      for (var j = 0; j < 5; j++) { window.dispatchEvent(new CustomEvent('scrollDown')); }""")
    assert r1.execute_script("return document.getElementById('log').scrollTop") == 240


def r1_states(driver, bridge, folder: Path) -> list[str]:
    """Bring the R1 page through each of its states, a picture of each in ``folder``; their names."""
    wait = WebDriverWait(driver, 30)
    taken = []

    def picture(name: str) -> None:
        path = folder / f"r1-{name}.png"
        driver.save_screenshot(str(path))
        with path.open("rb") as png:
            header = png.read(24)
        assert header[:8] == b"\x89PNG\r\n\x1a\n"
        assert (int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")) == (480, 564)  # 240x282 @2x
        taken.append(name)

    driver.get(f"{bridge.url}/r1")
    wait.until(EC.visibility_of_element_located((By.ID, "token")))
    picture("setup")
    driver.find_element(By.ID, "token").send_keys("a-wrong-token")
    driver.find_element(By.ID, "save-token").click()
    wait.until(lambda d: "refused" in setup_status(d))
    picture("setup-refused")
    driver.find_element(By.ID, "token").clear()
    driver.find_element(By.ID, "token").send_keys(bridge.token)
    driver.find_element(By.ID, "save-token").click()
    wait.until(EC.visibility_of_element_located((By.ID, "talk")))
    picture("ready")
    fire(driver, "longPressStart")
    wait.until(lambda d: d.find_element(By.ID, "talk").text == "Listening…")
    picture("listening")
    driver.execute_script("window.__nextTranscript = 'echo sleep 3'")
    fire(driver, "longPressEnd")
    wait.until(lambda d: d.find_element(By.ID, "status").text == "Working…")
    picture("working")
    wait.until(lambda d: last_reply(d) != "Hold the side button and speak.")
    driver.find_element(By.ID, "typed").send_keys("echo The kitchen lights are on.", Keys.ENTER)
    wait.until(lambda d: last_reply(d) == "The kitchen lights are on.")
    picture("reply")
    driver.find_element(By.ID, "typed").send_keys("echo fail The printer is not answering.", Keys.ENTER)
    wait.until(lambda d: "printer" in last_reply(d))
    picture("failed")
    return taken


def test_every_r1_page_state_at_240x282(r1, bridge, screenshots):
    """The pictures in docs/ come from here: LAM_SCREENSHOTS=docs refreshes them."""
    assert r1_states(r1, bridge, screenshots) == ["setup", "setup-refused", "ready", "listening", "working", "reply",
                                                   "failed"]
    plain = chromium(240, 282, 2)  # a browser without the R1's microphone: typing instead
    try:
        plain.get(f"{bridge.url}/r1#token={bridge.token}")
        WebDriverWait(plain, 20).until(EC.visibility_of_element_located((By.ID, "talk")))
        fire(plain, "longPressStart")
        WebDriverWait(plain, 20).until(lambda d: "type instead" in d.find_element(By.ID, "status").text)
        plain.save_screenshot(str(screenshots / "r1-no-microphone.png"))
    finally:
        plain.quit()


def test_r1_page_without_speech_falls_back_to_typing(bridge):
    driver = chromium(240, 282)
    try:
        driver.get(f"{bridge.url}/r1#token={bridge.token}")  # a plain browser: no device hooks
        wait = WebDriverWait(driver, 20)
        wait.until(EC.visibility_of_element_located((By.ID, "talk")))
        fire(driver, "longPressStart")
        wait.until(lambda d: "type instead" in d.find_element(By.ID, "status").text)
        assert driver.switch_to.active_element.get_attribute("id") == "typed"
        driver.switch_to.active_element.send_keys("echo typed instead", Keys.ENTER)
        wait.until(lambda d: last_reply(d) == "typed instead")
    finally:
        driver.quit()


RED, GREEN = "rgba(255, 107, 91, 1)", "rgba(91, 210, 122, 1)"  # admin.css --bad and --ok


def overlapping(a: dict, b: dict) -> bool:
    return not (a["x"] + a["width"] <= b["x"] or b["x"] + b["width"] <= a["x"] or
                a["y"] + a["height"] <= b["y"] or b["y"] + b["height"] <= a["y"])


def login(driver, bridge) -> None:
    driver.get(f"{bridge.url}/")
    wait = WebDriverWait(driver, 20)
    wait.until(EC.visibility_of_element_located((By.NAME, "password"))).send_keys(PASSWORD, Keys.ENTER)
    wait.until(EC.visibility_of_element_located((By.ID, "prompt-form")))


def stream_texts(driver) -> list[str]:
    return [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#stream li")]


def test_dashboard_shows_agents_live_and_sends_prompts(desktop, bridge, system, screenshots):
    login(desktop, bridge)
    wait = WebDriverWait(desktop, 30)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, '#agents tr[data-agent="a1"] td.state.online'))
    wait.until(lambda d: d.find_element(By.ID, "stream-state").text == "live")
    assert desktop.find_element(By.ID, "health").text == "healthy"

    system.agent("dash-agent")  # appears without a reload
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, '#agents tr[data-agent="dash-agent"] td.state.online'))
    assert any("dash-agent online" in t for t in stream_texts(desktop))

    prompt = desktop.find_element(By.ID, "prompt")
    prompt.send_keys("echo seen on the dashboard", Keys.ENTER)
    wait.until(lambda d: d.find_element(By.ID, "reply").text == "seen on the dashboard")
    assert "ok" in desktop.find_element(By.ID, "reply").get_attribute("class")
    wait.until(lambda d: any("succeeded: seen on the dashboard" in t for t in stream_texts(d)))
    kinds = {e.get_attribute("class").split()[-1].removeprefix("kind-")
             for e in desktop.find_elements(By.CSS_SELECTOR, "#stream li")}
    assert {"prompt", "task", "result", "reply", "agent"} <= kinds

    # A failed reply is red, in the answer and in the stream; a good one green.
    prompt.send_keys("echo fail the printer is out of paper", Keys.ENTER)
    wait.until(lambda d: "out of paper" in d.find_element(By.ID, "reply").text)
    assert desktop.find_element(By.ID, "reply").value_of_css_property("color") == RED
    failed_line = wait.until(lambda d: [e for e in d.find_elements(By.CSS_SELECTOR, "#stream li.kind-reply")
                                        if "failed: " in e.text and "out of paper" in e.text])[0]
    assert failed_line.find_element(By.CSS_SELECTOR, ".kind").value_of_css_property("color") == RED
    good_line = [e for e in desktop.find_elements(By.CSS_SELECTOR, "#stream li.kind-reply")
                 if "succeeded: seen on the dashboard" in e.text][0]
    assert good_line.find_element(By.CSS_SELECTOR, ".kind").value_of_css_property("color") == GREEN

    system.processes[-1].stop()  # the agent says goodbye: the table follows
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, '#agents tr[data-agent="dash-agent"] td.state.offline'))
    desktop.save_screenshot(str(screenshots / "bridge-dashboard.png"))


def test_install_page_shows_the_creation_qr_code(desktop, bridge, screenshots):
    login(desktop, bridge)
    desktop.get(f"{bridge.url}/r1/install")
    wait = WebDriverWait(desktop, 20)
    pair = wait.until(EC.element_to_be_clickable((By.ID, "pair")))
    assert not desktop.execute_script("return document.getElementById('qr').closest('section').contains(arguments[0])", pair)
    assert not overlapping(pair.rect, desktop.find_element(By.ID, "qr").rect)
    desktop.save_screenshot(str(screenshots / "bridge-install.png"))
    pair.click()
    wait.until(EC.visibility_of_element_located((By.CSS_SELECTOR, "#qr svg")))
    creation = json.loads(desktop.find_element(By.ID, "creation").text)
    assert creation["url"].startswith(f"{bridge.url}/r1#token=") and creation["themeColor"] == "#FE5000"
    size = desktop.find_element(By.CSS_SELECTOR, "#qr svg").size
    assert size["width"] >= 200 and size["height"] >= 200
    picture = screenshots / "install-qr.png"
    desktop.find_element(By.CSS_SELECTOR, "#qr").screenshot(str(picture))
    if not shutil.which("zbarimg"):
        pytest.fail("zbarimg is missing: apt-get install -y zbar-tools")
    scanned = subprocess.run(["zbarimg", "--raw", "-q", str(picture)], capture_output=True, text=True, timeout=30)
    assert json.loads(scanned.stdout) == creation  # what the R1's scanner reads
    token = creation["url"].split("#token=")[1]
    assert requests.get(f"{bridge.url}/api/workers", headers={"Authorization": f"Bearer {token}"}, timeout=10).ok


def test_pair_page_makes_new_codes_with_a_real_button(desktop, start_bridge, screenshots):
    voice = start_bridge(voice=True)
    login(desktop, voice)
    desktop.get(f"{voice.url}/r1/pair")
    wait = WebDriverWait(desktop, 20)
    wait.until(EC.visibility_of_element_located((By.CSS_SELECTOR, "#qr svg")))
    desktop.save_screenshot(str(screenshots / "r1-pair.png"))
    button = desktop.find_element(By.ID, "new-code")
    assert button.text == "Make a new code" and button.value_of_css_property("cursor") == "pointer"
    assert button.value_of_css_property("border-top-style") == "solid"  # drawn as a button, not as text
    assert button.rect["height"] >= 30 and button.rect["width"] >= 100
    old_code = voice.service.gateway.store.pairing_token()
    button.click()
    wait.until(lambda d: voice.service.gateway.store.pairing_token() != old_code)
