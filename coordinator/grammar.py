"""What understanding produces: rigid commands (docs/capabilities.md, "Commands") and parse results.

The gate that makes them, :func:`lamcontrol.coordinator.language.parse_chain`, builds its forms and argument
checks from the capabilities' own specs: nothing here knows a capability by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from lamcontrol.protocol import Risk

Known = Callable[[str, str], bool]


class GrammarError(ValueError):
    """A command that does not fit the grammar; the message is a sentence for a person."""


@dataclass
class Command:
    """One rigid command, ready to become a task."""

    capability: str
    action: str
    args: dict[str, Any]
    text: str
    risk: Risk = Risk.LOW
    idempotent: bool = False
    photo: str = ""  # the argument that receives the prompt's photo, if the action takes one
    shows: bool = False  # it only shows or tells something (ActionSpec.shows)
    confirmed: bool = False  # its source confirmed it (a high-risk command runs only then)

    def to_dict(self) -> dict[str, Any]:
        data = {"command": self.text, "capability": self.capability, "action": self.action, "args": self.args}
        if self.risk != Risk.LOW:
            data["risk"] = self.risk
        return data


@dataclass
class ParseResult:
    """What a parser made of a prompt: commands, or none and why."""

    commands: list[Command] = field(default_factory=list)
    parser: str = "grammar"
    reason: str = ""
    note: str = ""  # said to the person with the reply (e.g. that the LLM was not used)
    why: str = ""  # which path answered and why (``lam parse --explain``); ambiguous readings say so
    question: str = ""  # the commands are likely but not sure: ask this first ("Did you mean ...?")
    confidence: float = 1.0  # the learned reader's share for the least sure clause (1: templates spelled it out)
    runner_up: str = ""  # the learned reader's next best reading, and its share
    learned: bool = False  # the learned reader read a clause no template spelled out
    asks: bool = False  # the reason is a question back from a template ("What should I search for?")
    specific: bool = False  # rigid commands whose forms begin with two fixed words or more
    answerable: bool = False  # no command, but a question or chatter the action for open questions takes

    @property
    def runs(self) -> list[Command]:
        """The commands that run as they are (none while a question waits for its answer)."""
        return [] if self.question else self.commands

    @property
    def answer(self) -> str:
        """What the person hears when nothing runs yet: the question back, else why not."""
        return self.question or self.reason

    def to_dict(self) -> dict:
        data = {"commands": [c.to_dict() for c in self.runs], "parser": self.parser}
        if self.question:
            data["asked"] = [c.to_dict() for c in self.commands]
        if self.reason:
            data["reason"] = self.reason
        if self.note:
            data["note"] = self.note
        if self.question:
            data["question"] = self.question
        return data
