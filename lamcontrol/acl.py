"""Topic rules per MQTT user, in Mosquitto's ``acl_file`` format: read by the embedded broker, which
enforces them, and by the coordinator, which takes from an agent only the capabilities whose tasks
its login may read.

``lam mosquitto-config`` and ``lam join`` write the file (``user NAME`` then ``topic read|write|
readwrite FILTER`` lines; ``pattern`` lines, with ``%u`` for the user and ``%c`` for the client id,
apply to every user). Both readers re-read it when it changes, so a user ``lam join`` adds counts
at once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable


@dataclass(frozen=True)
class Rule:
    access: str  # read, write or readwrite
    topic: str
    pattern: bool = False  # %u and %c stand for the user and the client id


@dataclass(frozen=True)
class Acl:
    """Rules per user, and pattern rules for everyone."""

    users: dict[str, list[Rule]]
    patterns: list[Rule]

    def knows(self, user: str) -> bool:
        return user in self.users

    def allows(self, user: str, topic: str, access: str, client_id: str = "") -> bool:
        """The user may ``access`` ("read" or "write") ``topic`` (a topic or a subscription filter)."""
        for rule in [*self.users.get(user, ()), *self.patterns]:
            allowed = rule.topic
            if rule.pattern:
                allowed = allowed.replace("%u", user).replace("%c", client_id or user)
            if access in rule.access and covers(allowed, topic):
                return True
        return False


def covers(allowed: str, requested: str) -> bool:
    """The filter ``allowed`` covers the topic (or narrower filter) ``requested``, level by level:
    ``+`` stands for one level, ``#`` for the rest."""
    wanted, granted = requested.split("/"), allowed.split("/")
    for index, level in enumerate(granted):
        if level == "#":
            return True
        if index >= len(wanted) or wanted[index] == "#" or level not in ("+", wanted[index]):
            return False
    return len(wanted) == len(granted)


def parse_acl(text: str) -> Acl:
    users: dict[str, list[Rule]] = {}
    patterns: list[Rule] = []
    current: list[Rule] | None = None
    for line in text.splitlines():
        words = line.split(None, 2)
        if not words or words[0].startswith("#"):
            continue
        if words[0] == "user" and len(words) > 1:
            current = users.setdefault(line.split(None, 1)[1].strip(), [])
        elif words[0] in ("topic", "pattern") and len(words) > 1:
            access, topic = (words[1], words[2]) if len(words) == 3 else ("readwrite", words[1])
            rule = Rule(access, topic.strip(), words[0] == "pattern")
            (patterns if rule.pattern else current if current is not None else []).append(rule)
    return Acl(users, patterns)


class Reloading:
    """A file's parsed content, read again whenever its modification time changes (an unreadable or
    missing file reads as empty)."""

    def __init__(self, path: str | Path, parse: Callable[[str], Any]) -> None:
        self.path, self.parse = Path(path), parse
        self.stamp: int | None = None
        self.error = ""  # why the file could not be read, '' when it could
        self.value = parse("")

    def get(self) -> Any:
        try:
            stamp = os.stat(self.path).st_mtime_ns
        except OSError:
            stamp = None
        if stamp != self.stamp:
            self.stamp = stamp
            try:
                self.value, self.error = self.parse(self.path.read_text() if stamp is not None else ""), ""
            except OSError as exc:
                self.value, self.error = self.parse(""), exc.strerror or str(exc)
        return self.value
