"""How the coordinator turns a prompt into commands: the parser interface.

A parser takes the prompt text and a :class:`Context` and returns a
:class:`~coordinator.grammar.ParseResult`. Whatever it produces must have passed through
:func:`~coordinator.grammar.parse_chain`, the one gate to the agents.

:func:`build_parser` gives a :class:`ChainParser`: a prompt already in the rigid language is
taken as it is; empty prompts and attempts to change the rules are refused at once; the rest
goes to Groq when a key is configured, and to the offline sentence grammar when it is not or
when Groq fails, is rate-limited or answers something the grammar refuses. ``ParseResult.parser``
names who answered (``grammar``, ``groq`` or ``sentences``) and ``note`` says when the LLM was
configured but the prompt was understood without it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from lamcontrol.config import ConfigError
from lamcontrol.llm import GroqChat, GroqSettings, LLMUnavailable

from .home_routing import route_home
from .grammar import Known, ParseResult, parse_chain
from .sentences import SentenceParser, screen

if TYPE_CHECKING:
    from .groq_parser import GroqParser

log = logging.getLogger(__name__)


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


class ChainParser:
    """Rigid commands as they are; otherwise Groq (when configured), then the sentence grammar."""

    name = "chain"

    def __init__(self, llm: GroqParser | None = None) -> None:
        self.llm = llm
        self.offline = SentenceParser()

    def explain(self, result: ParseResult) -> str:
        """Which parser answered, and why that one."""
        why = {
            "grammar": "the prompt is already in the command language",
            "home": "it names something the home agent advertises",
            "groq": "Groq understood it",
            "sentences": (result.note if result.note else
                          "Groq declined it, the offline grammar said why" if self.llm else
                          "no Groq API key is configured, so the offline grammar answered"),
        }.get(result.parser, "")
        return f"answered by the {result.parser} parser" + (f": {why}" if why else "")

    def parse(self, prompt: str, context: Context) -> ParseResult:
        rigid = parse_chain(prompt, context.known)
        if rigid.commands:
            return rigid
        screened = screen(prompt)
        if screened:
            return screened
        routed = route_home(prompt, context.vocabulary)
        if routed:
            result = parse_chain(routed, context.known)
            result.parser = "home"
            return result
        note = ""
        if self.llm:
            try:
                answered = self.llm.ask(prompt, context)
            except LLMUnavailable as exc:
                note = f"understood without the LLM ({exc})"
            else:
                if not answered.commands:  # the model said x; the grammar may know what was missing
                    answered.reason = self.offline.parse(prompt, context).reason or answered.reason
                return answered
        result = self.offline.parse(prompt, context)
        result.note = note
        return result


CONFIRMATIONS = {"confirm", "confirmed", "i confirm", "yes", "yeah", "yep", "yup", "sure", "ok", "okay",
                 "yes do it", "yes please", "yes go ahead", "yes confirm", "do it", "go ahead", "go for it",
                 "proceed", "affirmative", "ok do it", "okay do it", "yes i'm sure", "i'm sure", "yes i am sure"}
CANCELLATIONS = {"cancel", "cancel that", "cancel it", "no", "nope", "nah", "no thanks", "no don't", "stop",
                 "never mind", "nevermind", "don't", "don't do it", "do not", "abort", "forget it", "no cancel"}


def _normal(text: str) -> str:
    text = text.lower().replace("\u2019", "'")
    words = "".join(c if c.isalnum() or c == "'" else " " for c in text).split()
    while words and words[-1] in ("please", "thanks", "now"):
        words.pop()
    return " ".join(words)


def is_confirmation(text: str) -> bool:
    """The person agrees to run the commands held for confirmation."""
    return _normal(text) in CONFIRMATIONS


def is_cancellation(text: str) -> bool:
    """The person calls off the commands held for confirmation."""
    return _normal(text) in CANCELLATIONS


def build_parser(config: dict) -> Parser:
    """The chain of parsers; Groq joins it when ``[groq]`` (or ``$GROQ_API_KEY``) gives a key."""
    try:
        settings = GroqSettings.from_config(config.get("groq"))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if not settings.configured:
        log.info("no Groq API key: prompts are understood by the offline grammar")
        return ChainParser()
    from .groq_parser import GroqParser

    try:
        chat = GroqChat(settings)
    except ImportError:
        log.error("a Groq API key is set but the groq module is missing: pip install 'lamcontrol[groq]'; "
                  "prompts are understood by the offline grammar")
        return ChainParser()
    log.info("understanding prompts with Groq (%s), the offline grammar as fallback", settings.model)
    return ChainParser(GroqParser(chat))
