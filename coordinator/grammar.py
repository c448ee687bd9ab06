"""The rigid command language every parser must produce (README.md, "Commands").

``parse_chain("browser youtube weezer && computer volume 50")`` gives the commands in order,
or none and a reason. Every other parser (the LLM, the offline sentence grammar) hands its
output to this one, so nothing reaches an agent that this grammar did not accept.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable
from urllib.parse import urlsplit

Known = Callable[[str, str], bool]

SEARCH_SITES = ("google", "youtube", "gmail", "amazon")
VOLUME_WORDS = ("up", "down", "mute", "unmute")
MEDIA_KEYS = ("play", "pause", "next", "back")
POWER_MODES = ("lock", "sleep", "restart", "shutdown")
HIGH_RISK_POWER = ("sleep", "restart", "shutdown")
MESSENGERS = ("telegram", "discord", "facebook")
HOME_ACTIONS = ("scene", "script", "run")
APP_NAME = re.compile(r"^[\w][\w .+-]{0,63}$")
NAME = re.compile(r"^[\w][\w.@+-]{0,63}$")
MAX_TEXT = 2000


class GrammarError(ValueError):
    """A command that does not fit the grammar; the message is a sentence for a person."""


@dataclass
class Command:
    """One rigid command, ready to become a task."""

    capability: str
    action: str
    args: dict
    text: str
    risk: str = "low"
    idempotent: bool = False

    def to_dict(self) -> dict:
        data = {"command": self.text, "capability": self.capability, "action": self.action, "args": self.args}
        if self.risk != "low":
            data["risk"] = self.risk
        return data


@dataclass
class ParseResult:
    """What a parser made of a prompt: commands, or none and why."""

    commands: list[Command] = field(default_factory=list)
    parser: str = "grammar"
    reason: str = ""
    note: str = ""

    def to_dict(self) -> dict:
        data = {"commands": [c.to_dict() for c in self.commands], "parser": self.parser}
        if self.reason:
            data["reason"] = self.reason
        if self.note:
            data["note"] = self.note
        return data


def _text(words: list[str], what: str) -> str:
    text = " ".join(words).strip()
    if not text:
        raise GrammarError(f"The command needs {what}.")
    if len(text) > MAX_TEXT:
        raise GrammarError(f"The {what} is too long.")
    return text


def _url(words: list[str]) -> str:
    url = _text(words, "a web address")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or " " in url:
        raise GrammarError("A site must be a full http:// or https:// address.")
    return url


def _browser(action: str, rest: list[str]) -> tuple[dict, bool]:
    if action == "site":
        return {"url": _url(rest)}, True
    if action in SEARCH_SITES:
        if action == "youtube" and rest[:1] and rest[0].lower() == "play":
            return {"query": _text(rest[1:], "something to play"), "play": True}, False
        return {"query": _text(rest, "something to search for")}, True
    raise GrammarError(f"The browser cannot {action}.")


def _computer(action: str, rest: list[str]) -> tuple[dict, bool]:
    value = " ".join(rest).strip().lower()
    if action == "volume":
        if value.isdigit() and 0 <= int(value) <= 100:
            return {"level": int(value)}, True
        if value in VOLUME_WORDS:
            return {"level": value}, value in ("mute", "unmute")
        raise GrammarError("Volume must be a number from 0 to 100, up, down, mute or unmute.")
    if action == "media":
        if value in MEDIA_KEYS:
            return {"key": value}, False
        raise GrammarError("Media control is play, pause, next or back.")
    if action == "power":
        if value in POWER_MODES:
            return {"mode": value}, False
        raise GrammarError("Power is lock, sleep, restart or shutdown.")
    if action == "run":
        app = " ".join(rest).strip()
        if not APP_NAME.match(app):
            raise GrammarError("An application name may only hold letters, digits, spaces and - _ . +")
        return {"app": app}, False
    raise GrammarError(f"The computer cannot {action}.")


def _echo(words: list[str]) -> tuple[str, dict]:
    first = words[0].lower() if words else ""
    if first == "sleep" and len(words) > 1:
        try:
            seconds = float(words[1])
        except ValueError:
            raise GrammarError("echo sleep needs a number of seconds.") from None
        return "sleep", {"seconds": seconds, "text": " ".join(words[2:])}
    if first == "fail":
        return "fail", {"text": " ".join(words[1:])}
    return "say", {"text": _text(words, "some text")}


def _home(words: list[str]) -> tuple[str, dict]:
    """``home scene|script|run <name>``, else ``home <sentence>`` for Home Assistant's Assist."""
    first = words[0].lower() if words else ""
    if first in HOME_ACTIONS:
        return first, {"name": _text(words[1:], f"a {'script or scene' if first == 'run' else first} name")}
    return "say", {"text": _text(words, "something to tell the home")}


def parse_command(text: str, known: Known | None = None) -> Command:
    """One command in the rigid grammar, or a GrammarError saying what is wrong."""
    words = text.split()
    if not words:
        raise GrammarError("The command is empty.")
    verb, rest = words[0].lower(), words[1:]
    canonical = " ".join(words)
    if verb == "browser" and rest:
        args, idempotent = _browser(rest[0].lower(), rest[1:])
        return Command("browser", rest[0].lower(), args, canonical, idempotent=idempotent)
    if verb == "computer" and rest:
        action = rest[0].lower()
        args, idempotent = _computer(action, rest[1:])
        risk = "high" if action == "power" and args["mode"] in HIGH_RISK_POWER else "low"
        return Command("computer", action, args, canonical, risk=risk, idempotent=idempotent)
    if verb in MESSENGERS:
        if len(rest) < 2 or not NAME.match(rest[0]):
            raise GrammarError(f"A {verb} message needs a recipient and a message.")
        message = _text(rest[1:], "a message")
        return Command("messaging", verb, {"name": rest[0], "message": message}, canonical)
    if verb in ("openinterpreter", "ai"):
        return Command("ai", "ask", {"prompt": _text(rest, "a question or task")}, canonical)
    if verb == "echo":
        action, args = _echo(rest)
        return Command("echo", action, args, canonical, idempotent=action == "say")
    if verb == "home":
        action, args = _home(rest)
        return Command("home", action, args, canonical, idempotent=action == "scene")
    if verb == "google" and rest[:1] and rest[0].lower() == "home":  # the original Google Home automations
        return Command("home", "run", {"name": _text(rest[1:], "an automation name")}, canonical)
    if known and len(rest) >= 1 and known(verb, rest[0].lower()):
        return Command(verb, rest[0].lower(), {"text": " ".join(rest[1:])}, canonical)
    raise GrammarError(f"I don't know the command {verb!r}.")


def parse_chain(text: str, known: Known | None = None) -> ParseResult:
    """A whole prompt in the rigid grammar: ``x``, one command, or ``&&`` chains."""
    stripped = text.strip().strip("`").strip()
    if not stripped:
        return ParseResult(reason="The prompt is empty.")
    if stripped.lower() == "x":
        return ParseResult(reason="That is not something I can do.")
    try:
        commands = [parse_command(part, known) for part in stripped.split("&&")]
    except GrammarError as exc:
        return ParseResult(reason=str(exc))
    return ParseResult(commands=commands)
