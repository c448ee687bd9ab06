"""How the coordinator turns a prompt into commands: the parser interface.

A parser takes the prompt text and a :class:`~lamcontrol.coordinator.language.Context` and returns a
:class:`~lamcontrol.coordinator.grammar.ParseResult`. Whatever it produces must have passed through
:func:`~lamcontrol.coordinator.language.parse_chain`, the one gate to the agents.

:func:`build_parser` gives a :class:`ChainParser`: a prompt already in the rigid language is
taken as it is; empty prompts and attempts to change the rules are refused at once; the rest
is read by the capabilities' sentence templates (:mod:`lamcontrol.coordinator.language`); when they match
the whole prompt unambiguously, that is the answer (the fast path: no LLM call). The rest goes to
Groq when a key is configured, and back to the templates' best reading when it is not or when
Groq fails, is rate-limited or answers something the grammar refuses. ``ParseResult.parser``
names who answered (``grammar``, ``sentences`` or ``groq``), ``why`` says why that path, and
``note`` what the person is told besides (that the LLM was not used).
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from lamcontrol.config import ConfigError
from lamcontrol.llm import GroqChat, GroqSettings, LLMUnavailable

from .grammar import ParseResult
from .groq_parser import GroqParser
from .language import AMBIGUOUS, Context, screen

log = logging.getLogger(__name__)


class Parser(Protocol):
    name: str

    def parse(self, prompt: str, context: Context) -> ParseResult: ...


class ChainParser:
    """Rigid commands and unambiguous template matches at once; otherwise Groq (when configured)."""

    name = "chain"

    def __init__(self, llm: GroqParser | None = None) -> None:
        self.llm = llm

    def explain(self, result: ParseResult) -> str:
        """Which path answered, and why that one; how sure the learned reader was, and what came next."""
        why = result.why or {"grammar": "the prompt is already in the command language"}.get(result.parser, "")
        sure = f"; the learned reader was {result.confidence:.0%} sure" if result.runner_up else ""
        runner_up = f", runner-up: {result.runner_up}" if result.runner_up else ""
        asked = f"; not sure enough, so: {result.question}" if result.question else ""
        return f"answered by the {result.parser} parser" + (f": {why}" if why else "") + sure + runner_up + asked

    def parse(self, prompt: str, context: Context) -> ParseResult:
        language = context.understood
        result = self._read(prompt, context, language)
        photo = context.photo and not any(c.photo for c in result.runs)  # a photo is asked about
        if photo or not result.commands and not result.asks and result.reason != screen(prompt):
            # No command and no question back: a question or chatter goes to the action that answers them.
            answered = language.open_question(prompt, photo)
            if answered:
                answered.note = result.note
                return answered
        return result

    def _read(self, prompt: str, context: Context, language) -> ParseResult:
        rigid = language.parse_chain(prompt)
        if rigid.specific:  # plainly in the command language ("computer volume 50", "google home good night")
            return rigid
        matched = language.understand(prompt)
        sure = matched.commands and matched.why != AMBIGUOUS and not matched.question
        if sure and not matched.learned:  # templates spelled it out: the fast path, no LLM call
            return matched
        if rigid.commands:  # in the command language ("telegram Jason see you soon")
            return rigid
        if sure:  # the learned reader is sure
            return matched
        if not matched.commands and matched.reason == screen(prompt):  # empty, too long, or a jailbreak
            matched.why = "no parser may see this prompt"
            return matched
        if not self.llm:
            matched.why = (f"{matched.why}; no Groq key to ask" if matched.commands else
                           "the templates did not match the whole prompt, and no Groq key is configured")
            return matched
        try:
            answered = self.llm.ask(prompt, context)
        except LLMUnavailable as exc:
            matched.note = f"understood without the LLM ({exc})"
            matched.why = f"Groq was asked but failed: {exc}"
            return matched
        if not answered.commands:  # the model said x; the templates may know what was missing
            answered.reason = matched.reason or answered.reason
            answered.asks = matched.asks
        answered.why = (f"{AMBIGUOUS}, so Groq was asked" if matched.commands else
                        "the templates did not match the whole prompt, so Groq was asked")
        return answered


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


def build_parser(config: dict[str, Any]) -> ChainParser:
    """The chain of parsers; Groq joins it when ``[groq]`` (or ``$GROQ_API_KEY``) gives a key."""
    try:
        settings = GroqSettings.from_config(config.get("groq"))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if not settings.configured:
        log.info("no Groq API key: prompts are understood by the offline grammar")
        return ChainParser()
    try:
        chat = GroqChat(settings)
    except ImportError:
        log.error("a Groq API key is set but the groq module is missing: pip install 'lamcontrol[groq]'; "
                  "prompts are understood by the offline grammar")
        return ChainParser()
    log.info("understanding prompts with Groq (%s), the offline grammar as fallback", settings.model)
    return ChainParser(GroqParser(chat))
