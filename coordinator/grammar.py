"""The rigid command language every parser must produce (README.md, "Commands").

``parse_chain("browser youtube weezer && computer volume 50")`` gives the commands in order,
or none and a reason. Every other parser (the LLM, the sentence templates) hands its output to
this one, so nothing reaches an agent that this grammar did not accept. The forms and argument
checks come from the capabilities' own specs (:mod:`lamcontrol.language`): this module knows no
capability by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from .language import Language

Known = Callable[[str, str], bool]


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
    photo: str = ""  # the argument that receives the prompt's photo, if the action takes one

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
    note: str = ""  # said to the person with the reply (e.g. that the LLM was not used)
    why: str = ""  # which path answered and why (``lam parse --explain``); ambiguous readings say so

    def to_dict(self) -> dict:
        data = {"commands": [c.to_dict() for c in self.commands], "parser": self.parser}
        if self.reason:
            data["reason"] = self.reason
        if self.note:
            data["note"] = self.note
        return data


def parse_command(text: str, language: Language | None = None) -> Command:
    """One rigid command of ``language`` (default: the installed capabilities), or a GrammarError."""
    from .language import installed

    return (language or installed()).parse_command(text)


def parse_chain(text: str, known: Known | None = None, vocabulary: dict | None = None,
                language: Language | None = None) -> ParseResult:
    """A whole prompt in the rigid grammar of ``language`` (default: the installed capabilities,
    with ``vocabulary``'s names and ``known``'s actions for capabilities without a spec)."""
    from .language import installed

    if language is None:
        language = installed(vocabulary)
    result = language.parse_chain(text)
    words = text.split()
    if not result.commands and known and len(words) >= 2 and words[0].lower() not in language.specs \
            and known(words[0].lower(), words[1].lower()):  # an agent's action without a spec
        return language.with_rigid({}, {words[0].lower(): [words[1].lower()]}).parse_chain(text)
    return result
