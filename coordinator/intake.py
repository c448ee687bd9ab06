"""Intake: what a prompt asks for, held for confirmation when it is risky, then handed to the router."""

from __future__ import annotations

import logging
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Callable

from lamcontrol.protocol import Prompt, PromptStatus, Risk

from .events import Events, PromptParsed
from .grammar import Command, ParseResult
from .language import Context, parse_chain
from .parsing import Parser, is_cancellation, is_confirmation
from .registry import Registry
from .routing import Reply
from .runs import Held
from .settings import Clock, Settings
from .specs import SpecStore

log = logging.getLogger(__name__)

Start = Callable[[Prompt, float, list[Command], str], None]


class BySource(OrderedDict):
    """What is kept per source, for the ``limit`` sources heard from most recently."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def __setitem__(self, source: str, value: object) -> None:
        super().__setitem__(source, value)
        self.move_to_end(source)
        while len(self) > self.limit:
            self.popitem(last=False)


@dataclass(eq=False)
class Intake:
    """Turns each new prompt into commands, or into a question, a refusal or a cancellation."""

    settings: Settings
    clock: Clock
    parser: Parser
    registry: Registry
    start: Start
    reply: Reply
    events: Events
    specs: SpecStore = field(default_factory=SpecStore)  # what the online agents understand
    held: BySource = field(init=False)  # commands waiting for their source to confirm
    transcripts: BySource = field(init=False)  # recent commands by source, for the parser
    asked: BySource = field(init=False)  # the prompt a question back answered, and until when, by source

    def __post_init__(self) -> None:
        self.held, self.transcripts = BySource(self.settings.sources), BySource(self.settings.sources)
        self.asked = BySource(self.settings.sources)

    def handle(self, prompt: Prompt, deadline: float) -> None:
        source = prompt.source
        held = self.held.pop(source, None)
        if held and held.expires >= self.clock.time():
            if is_confirmation(prompt.prompt):
                self._start(prompt, deadline, held.commands, held.note)
                return
            if is_cancellation(prompt.prompt):
                self.reply(prompt.id, PromptStatus.IGNORED, "Cancelled.", [])
                return
        asked = self.asked.pop(source, None)
        result = self._parse(prompt, asked if asked and asked[1] >= self.clock.time() else None)
        window = self.settings.confirm_window
        if result.asks:  # a question back: the next prompt from this source may answer it
            self.asked[source] = (prompt.prompt, self.clock.time() + window)
        if not result.commands:
            self.reply(prompt.id, PromptStatus.IGNORED, result.reason or "That is not something I can do.", [])
            return
        risky = [c for c in result.commands if c.risk == Risk.HIGH]
        if risky or result.question:
            self.held[source] = Held(prompt, result.commands, self.clock.time() + window, result.note)
            what = " and ".join(c.text for c in risky)
            self.reply(prompt.id, PromptStatus.NEEDS_CONFIRMATION,
                       f"{result.question} Say yes within {window:g} seconds." if result.question else
                       f"Are you sure you want me to run {what}? Say confirm within {window:g} seconds.", [])
            return
        self._start(prompt, deadline, result.commands, result.note)

    def _parse(self, prompt: Prompt, asked: tuple[str, float] | None = None) -> ParseResult:
        """The prompt's reading; right after a question back ("What should I search for?"), the prompt
        read as the answer to it ("search for" + "cheap flights") when that makes commands."""
        context = Context(source=prompt.source, transcript=list(self.transcripts.get(prompt.source, ())),
                          known=self.registry.offers, vocabulary=self.registry.vocabulary(),
                          language=self.specs.language(self.registry), photo=bool(prompt.metadata.image))
        try:
            if asked:
                answered = self.parser.parse(f"{asked[0]} {prompt.prompt}", context)
                if answered.commands:
                    self.events.emit(PromptParsed(prompt, answered, False))
                    return answered
            result, failed = self.parser.parse(prompt.prompt, context), False
        except Exception:
            log.exception("parser %s failed; falling back to the command grammar", self.parser.name)
            result, failed = parse_chain(prompt.prompt, self.registry.offers), True
        self.events.emit(PromptParsed(prompt, result, failed))
        return result

    def _start(self, prompt: Prompt, deadline: float, commands: list[Command], note: str) -> None:
        transcript = self.transcripts.pop(prompt.source, None) or deque(maxlen=self.settings.transcript)
        transcript.extend(c.text for c in commands)
        self.transcripts[prompt.source] = transcript
        self.start(prompt, deadline, commands, note)

    def expire(self) -> None:
        """Forget held commands nobody confirmed in time."""
        now = self.clock.time()
        for source, held in list(self.held.items()):
            if held.expires < now:
                del self.held[source]
