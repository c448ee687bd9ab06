"""messaging: send a message to a contact on Telegram, Discord or Facebook Messenger.

Every action takes ``{name, message}``. The spoken name is looked up, ignoring case, in the
contacts table of the config; a name that is not there fails, it is never guessed::

    [capabilities.messaging.contacts.jason]
    telegram = 123456789                 # chat id (or "@channel") the bot writes to
    discord = "user:80351110224678912"   # DM through the bot; or "channel:<id>", or a webhook URL
    facebook = "jason.smith.42"          # the name in messenger.com/t/<name>

Telegram goes through the Bot API and Discord through a bot token or a per-contact webhook,
over HTTP with their real wire format. Messenger has no API for personal accounts, so it is
typed into messenger.com in the agent's shared browser session (see :mod:`lamcontrol.agents.webdriver`),
signed in once through the browser profile; when the agent also runs ``browser`` (listed
first), that capability's browser settings apply, else the same keys in this section. Bot tokens come from the environment
(``LAM_TELEGRAM_TOKEN``, ``LAM_DISCORD_TOKEN``) or a file (``telegram_token_file``,
``discord_token_file``) and never appear in results or logs. Only platforms that are ready
(a token and at least one contact for them) are advertised.
"""

from __future__ import annotations

import logging
import math
import re
import string
from functools import cached_property
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from lamcontrol import __version__
from lamcontrol.config import ConfigError, read_secret

from . import webdriver
from .capability import Arg, Capability, Outcome, Sentences, Setting, Shared, TaskFailed, Unavailable, action, require

if TYPE_CHECKING:
    import requests

log = logging.getLogger(__name__)

PLATFORMS = ("telegram", "discord", "facebook")
LABELS = {"telegram": "Telegram", "discord": "Discord", "facebook": "Messenger"}
TOKEN_ENV = {"telegram": "LAM_TELEGRAM_TOKEN", "discord": "LAM_DISCORD_TOKEN"}
MAX_LENGTH = {"telegram": 4096, "discord": 2000, "facebook": 20000}
DISCORD_TARGET = re.compile(r"(user|channel):(\d{5,25})")
TELEGRAM_CHAT = re.compile(r"-?\d+|@\w{4,}")
# Discord wants bots to name themselves this way.
DISCORD_AGENT = {"User-Agent": f"DiscordBot (https://pypi.org/project/lamcontrol, {__version__})"}
COMPOSER = "div[role='textbox'][contenteditable='true']"
LOGIN = "input[type='password']"
# The composer is a rich editor; typing through the editing API works for any character.
INSERT_TEXT = "arguments[0].focus(); document.execCommand('insertText', false, arguments[1]);"
SENT = "return arguments[0].textContent.trim() === '' && document.body.innerText.includes(arguments[1]);"


RECIPIENT = Arg("name", "name", "a recipient", names="contacts", one_word=True)
MESSAGE = Arg("message", "text", "a message", maximum=max(MAX_LENGTH.values()))


def said_on(platform: str) -> tuple[Sentences, ...]:
    """The sentences of one platform: ``on`` is how people name it."""
    on = {"facebook": "(facebook|messenger|facebook messenger|fb)"}.get(platform, platform)
    to = "[(saying|that|to say|to|and say|:)]"
    return (Sentences((f"send a {on} [message] to {{name}} {to} {{message}}",
                       f"(text|message|tell|dm|ping|write to|reply to|send a message to|let) {{name}} [know] "
                       f"(on|via|over) {on} {to} {{message}}",
                       f"(text|message|tell) {{name}} {{message}} on {on}",
                       f"send {{name}} a {on} message {to} {{message}}",
                       f"on {on} (tell|text|message) {{name}} {to} {{message}}",
                       f"{on} [message] [to] {{name}} {to} {{message}}")),
            Sentences((f"(text|message|send a message to|tell) {{name}} (on|via) {on}",),
                      ask="What should I say to {name}?"))


ASKS = (Sentences(("(text|message|tell|dm|ping|write to) {name} {message}",),
                  ask="Should I message {name} on telegram, discord or facebook?"),
        Sentences(("(send|write) [a] message (saying|that) {message}", "(text|message|tell|dm) (him|her|them) "
                   "[on (telegram|discord|facebook|messenger)] {message}",
                   "(send a message|text|message) (on|via) (telegram|discord|facebook|messenger)",
                   "send a (telegram|discord|facebook) [message] [(saying|that)] {message}"),
                  ask="Who should I message?"))


class RedactSecrets(logging.Filter):
    """Replaces known secrets in log records (HTTP libraries log request paths: Telegram's and
    a webhook's hold a token)."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if any(secret in message for secret in self.secrets):
            for secret in self.secrets:
                message = message.replace(secret, "<secret>")
            record.msg, record.args = message, ()
        return True


REDACT = RedactSecrets()
logging.getLogger("urllib3.connectionpool").addFilter(REDACT)


def parse_contacts(table: dict) -> dict[str, dict[str, str]]:
    """Contacts keyed by case-folded name; a ValueError says which entry is wrong and how."""
    contacts: dict[str, dict[str, str]] = {}
    for name, handles in table.items():
        where = f"[capabilities.messaging.contacts.{name}]"
        if not isinstance(handles, dict):
            raise ValueError(f"{where} must be a table of handles (telegram, discord, facebook)")
        unknown = set(handles) - set(PLATFORMS)
        if unknown:
            raise ValueError(f"{where} has unknown keys: {', '.join(sorted(unknown))}")
        parsed = {platform: str(value).strip() for platform, value in handles.items()
                  if isinstance(value, (str, int)) and not isinstance(value, bool)}
        if parsed.keys() != handles.keys():
            raise ValueError(f"{where} handles must be text (or a number for telegram)")
        if "telegram" in parsed and not TELEGRAM_CHAT.fullmatch(parsed["telegram"]):
            raise ValueError(f"{where} telegram must be a chat id number or an @name")
        if "discord" in parsed and not (DISCORD_TARGET.fullmatch(parsed["discord"]) or is_web_url(parsed["discord"])):
            raise ValueError(f"{where} discord must be user:<id>, channel:<id> or a webhook URL")
        if "facebook" in parsed and not re.fullmatch(r"[\w.\-]+", parsed["facebook"]):
            raise ValueError(f"{where} facebook must be the name or number from messenger.com/t/<name>")
        key = spoken(name)
        if key in contacts:
            raise ValueError(f"{where}: two contacts are named {key!r}")
        contacts[key] = parsed
    return contacts


def spoken(name: str) -> str:
    """A name as compared: case-folded, without surrounding spaces or punctuation."""
    return name.strip().strip(string.punctuation).casefold()


def is_web_url(value: str) -> bool:
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.hostname)


class Messaging(Capability):
    name = "messaging"
    summary = "Sends messages to your contacts on Telegram, Discord and Facebook Messenger."
    extra = "messaging"
    requirements = ("requests",)
    config_schema = {
        "contacts": Setting({}, "spoken name -> handles: [capabilities.messaging.contacts.<name>] "
                                "telegram = chat id, discord = user:<id> | channel:<id> | webhook URL, "
                                "facebook = messenger.com/t/<name>"),
        "telegram_token_file": Setting("", f"file holding the Telegram bot token (or set ${TOKEN_ENV['telegram']})"),
        "telegram_api_url": Setting("https://api.telegram.org", "Telegram Bot API base URL"),
        "discord_token_file": Setting("", f"file holding the Discord bot token (or set ${TOKEN_ENV['discord']})"),
        "discord_api_url": Setting("https://discord.com/api/v10", "Discord REST API base URL"),
        "messenger_url": Setting("https://www.messenger.com", "Messenger's base URL"),
        "timeout": Setting(10.0, "seconds to wait for Telegram or Discord to answer"),
        **webdriver.SESSION_SCHEMA,
    }

    def __init__(self, settings: dict | None = None, shared: Shared | None = None) -> None:
        super().__init__(settings, shared)
        self.contacts = parse_contacts(self.settings["contacts"])
        REDACT.secrets.update(urlsplit(contact["discord"]).path for contact in self.contacts.values()
                              if is_web_url(contact.get("discord", "")))
        self.session: webdriver.Session | None = None
        self.http: requests.Session | None = None
        self.dm_channels: dict[str, str] = {}

    @cached_property
    def tokens(self) -> dict[str, str]:
        """The bot tokens that are set; an unreadable token file counts as not set (and is logged)."""
        found = {}
        for platform, env in TOKEN_ENV.items():
            try:
                token = read_secret(file=self.settings[f"{platform}_token_file"], env=env)
            except ConfigError as exc:
                log.warning("%s: %s", LABELS[platform], exc)
                continue
            if token:
                found[platform] = token
        REDACT.secrets.update(found.values())
        return found

    @cached_property
    def unusable(self) -> dict[str, str]:
        """Platform -> why it cannot be used here; absent when it can."""
        reasons = {}
        for platform in PLATFORMS:
            reason = self._why_not(platform)
            if reason:
                reasons[platform] = reason
        return reasons

    def _why_not(self, platform: str) -> str:
        handles = [contact[platform] for contact in self.contacts.values() if platform in contact]
        if not handles:
            return f"no contact has a {platform} handle"
        if platform == "facebook":
            try:
                webdriver.check(webdriver.effective_settings(self.settings), self.name)
            except Unavailable as exc:
                return str(exc)
            return ""
        if platform in self.tokens:
            return ""
        if platform == "discord" and any(is_web_url(handle) for handle in handles):
            return ""
        return (f"no {LABELS[platform]} bot token: set ${TOKEN_ENV[platform]} or {platform}_token_file "
                f"in [capabilities.messaging]")

    def actions(self) -> list[str]:
        return sorted(platform for platform in PLATFORMS if platform not in self.unusable)

    def names(self) -> dict[str, list]:
        """The contact names as configured, so parsers know who can be messaged."""
        return {"contacts": sorted(self.settings["contacts"])}

    def check(self) -> None:
        super().check()
        if not self.contacts:
            raise Unavailable("messaging has no contacts: add a [capabilities.messaging.contacts.<name>] table "
                              "with their telegram, discord or facebook handle")
        if not self.actions():
            raise Unavailable("messaging has no platform ready: " + "; ".join(
                f"{LABELS[platform]}: {reason}" for platform, reason in self.unusable.items()))
        for platform, reason in self.unusable.items():
            log.info("not offering %s: %s", platform, reason)

    def start(self) -> None:
        if "facebook" in self.actions():
            self.session = webdriver.acquire(self.settings)

    def close(self) -> None:
        if self.http is not None:
            self.http.close()
            self.http = None
        if self.session is not None:
            webdriver.release(self.session)
            self.session = None

    # -- actions ------------------------------------------------------------------------

    @action(syntax=["telegram {name} {message}"], args=[RECIPIENT, MESSAGE], sentences=said_on("telegram") + ASKS,
            examples=[("text Jason on telegram to check the shopping list", "telegram Jason check the shopping list")])
    def telegram(self, args: dict) -> Outcome:
        """Message a contact on Telegram."""
        name, chat, message = self._prepare("telegram", args)
        url = f"{self.settings['telegram_api_url'].rstrip('/')}/bot{self.tokens['telegram']}/sendMessage"
        body = self._post("telegram", url, {"chat_id": int(chat) if chat.lstrip("-").isdigit() else chat,
                                            "text": message})
        result = body.get("result")
        if not isinstance(result, dict):
            result = {}
        return Outcome(f"Sent to {name} on Telegram", {"message_id": result.get("message_id")})

    @action(syntax=["discord {name} {message}"], args=[RECIPIENT, MESSAGE], sentences=said_on("discord"),
            examples=[("message John on discord saying the meeting moved", "discord John the meeting moved")])
    def discord(self, args: dict) -> Outcome:
        """Message a contact on Discord."""
        name, target, message = self._prepare("discord", args)
        content = {"content": message, "allowed_mentions": {"parse": []}}
        if is_web_url(target):
            sent = self._post("discord", target, content, params={"wait": "true"}, headers=DISCORD_AGENT)
        else:
            found = DISCORD_TARGET.fullmatch(target)
            assert found is not None  # a contact's discord target is checked when the settings are read
            kind, snowflake = found.groups()
            channel = self._dm_channel(snowflake) if kind == "user" else snowflake
            sent = self._post("discord", f"{self._discord_api()}/channels/{channel}/messages", content,
                              headers=self._discord_headers())
        return Outcome(f"Sent to {name} on Discord", {"message_id": sent.get("id")})

    @action(syntax=["facebook {name} {message}"], args=[RECIPIENT, MESSAGE], sentences=said_on("facebook"))
    def facebook(self, args: dict) -> Outcome:
        """Message a contact on Facebook Messenger."""
        from selenium.common.exceptions import TimeoutException
        from selenium.webdriver.common.by import By
        from selenium.webdriver.common.keys import Keys
        from selenium.webdriver.support.wait import WebDriverWait

        name, thread, message = self._prepare("facebook", args)
        message = " ".join(message.split())  # a newline would send early
        if self.session is None:
            self.session = webdriver.acquire(self.settings)
        with self.session.use() as driver:
            webdriver.navigate(driver, f"{self.settings['messenger_url'].rstrip('/')}/t/{thread}", "Messenger")
            wait = WebDriverWait(driver, self.settings["page_timeout"])
            try:
                found = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, f"{COMPOSER}, {LOGIN}"))
            except TimeoutException:
                raise TaskFailed(f"I could not find where to write to {name} on Messenger.") from None
            composer = found[0]
            if composer.get_attribute("type") == "password":
                raise TaskFailed("Messenger is not signed in: sign in once in the agent's browser profile.")
            driver.execute_script(INSERT_TEXT, composer, message)
            composer.send_keys(Keys.ENTER)
            try:
                wait.until(lambda d: d.execute_script(SENT, composer, message))
            except TimeoutException:
                raise TaskFailed(f"I typed the message to {name} on Messenger but could not see it go out.") from None
        return Outcome(f"Sent to {name} on Messenger", {})

    # -- shared steps -------------------------------------------------------------------

    def _prepare(self, platform: str, args: dict) -> tuple[str, str, str]:
        """The contact's name as configured-spoken, their handle, and the checked message."""
        name = require(args, "name").strip()
        message = require(args, "message").strip()
        if platform in self.unusable:
            raise TaskFailed(f"{LABELS[platform]} is not set up here: {self.unusable[platform]}.")
        contact = self.contacts.get(spoken(name))
        if contact is None:
            raise TaskFailed(f"I have no contact named {name}.")
        if platform not in contact:
            raise TaskFailed(f"I have no {LABELS[platform]} address for {name}.")
        if not message:
            raise TaskFailed("The task is missing its message.")
        if len(message) > MAX_LENGTH[platform]:
            raise TaskFailed(f"That message is too long for {LABELS[platform]} "
                             f"({len(message)} characters, at most {MAX_LENGTH[platform]}).")
        return name, contact[platform], message

    def _discord_api(self) -> str:
        return self.settings["discord_api_url"].rstrip("/")

    def _discord_headers(self) -> dict[str, str]:
        if "discord" not in self.tokens:
            raise TaskFailed(f"Discord needs a bot token for that contact: set ${TOKEN_ENV['discord']} "
                             "or discord_token_file.")
        return {**DISCORD_AGENT, "Authorization": f"Bot {self.tokens['discord']}"}

    def _dm_channel(self, user_id: str) -> str:
        """The bot's direct-message channel with a user (created once, then remembered)."""
        if user_id not in self.dm_channels:
            channel = self._post("discord", f"{self._discord_api()}/users/@me/channels", {"recipient_id": user_id},
                                 headers=self._discord_headers())
            if not isinstance(channel.get("id"), str):
                raise TaskFailed("Discord answered without a channel for that user.")
            self.dm_channels[user_id] = channel["id"]
        return self.dm_channels[user_id]

    def _post(self, platform: str, url: str, body: dict, **kwargs) -> dict:
        """POST JSON and return the JSON answer; every failure becomes a sentence without secrets."""
        import requests

        label, timeout = LABELS[platform], self.settings["timeout"]
        if self.http is None:
            self.http = requests.Session()
            self.http.headers["User-Agent"] = f"lamcontrol/{__version__}"
        try:
            response = self.http.post(url, json=body, timeout=timeout, **kwargs)
        except requests.Timeout:
            raise TaskFailed(f"{label} did not answer within {timeout:g} seconds.") from None
        except requests.ConnectionError:
            raise TaskFailed(f"Could not reach {label}; is the network up?") from None
        except requests.RequestException:
            raise TaskFailed(f"Could not talk to {label}.") from None
        try:
            answer = response.json()
        except ValueError:
            answer = {}
        if not isinstance(answer, dict):
            answer = {}
        if response.status_code >= 400 or answer.get("ok") is False:
            raise TaskFailed(refusal(label, response.status_code, answer, response.headers.get("Retry-After")))
        return answer


def refusal(label: str, status: int, answer: dict, retry_header: str | None) -> str:
    """The sentence for an API's refusal, from its status and error body (Telegram's or Discord's)."""
    detail = str(answer.get("description") or answer.get("message") or "").strip()[:200]
    detail = f" ({detail})" if detail else ""
    if status == 401:
        return f"{label} refused the bot token{detail}; check the token."
    if status == 403:
        return f"{label} did not let the bot send that message{detail}."
    if status == 404:
        return f"{label} does not know that chat{detail}."
    if status == 429:
        parameters = answer.get("parameters")
        if not isinstance(parameters, dict):
            parameters = {}
        retry = parameters.get("retry_after") or answer.get("retry_after") or retry_header
        try:
            wait = f" in {max(1, math.ceil(float(str(retry))))} seconds"
        except (TypeError, ValueError):
            wait = " later"
        return f"{label} is limiting how fast the bot sends; try again{wait}."
    return f"{label} refused the message{detail}."
