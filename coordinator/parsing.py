"""How the coordinator turns a prompt into commands: the parser interface.

A parser takes the prompt text and a :class:`Context` and returns a
:class:`~coordinator.grammar.ParseResult`. Whatever it produces must have passed through
:func:`~coordinator.grammar.parse_chain`, the one gate to the agents.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from .grammar import Known, ParseResult, parse_chain


@dataclass
class Context:
    """What a parser may know besides the prompt."""

    source: str = ""
    transcript: list[str] = field(default_factory=list)  # this source's recent commands, oldest first
    known: Known | None = None  # (capability, action) offered by an online agent
    vocabulary: dict[str, list[str]] = field(default_factory=dict)  # names agents advertise, by capability


class Parser(Protocol):
    name: str

    def parse(self, prompt: str, context: Context) -> ParseResult: ...


class GrammarParser:
    """Only the rigid command language."""

    name = "grammar"

    def parse(self, prompt: str, context: Context) -> ParseResult:
        return parse_chain(prompt, context.known)


CONFIRMATIONS = ("confirm", "confirmed", "yes", "yes do it", "do it", "go ahead")
CANCELLATIONS = ("cancel", "no", "stop", "never mind", "nevermind", "don't")


def _normal(text: str) -> str:
    return " ".join("".join(c for c in text.lower() if c.isalnum() or c.isspace() or c == "'").split())


def is_confirmation(text: str) -> bool:
    """The person agrees to run the commands held for confirmation."""
    return _normal(text) in CONFIRMATIONS


def is_cancellation(text: str) -> bool:
    """The person calls off the commands held for confirmation."""
    return _normal(text) in CANCELLATIONS


def build_parser(config: dict) -> Parser:
    """The parser the configuration asks for."""
    return GrammarParser()
