"""Intake: what a prompt asks for, held for confirmation when it is risky, then handed to the router."""

from __future__ import annotations

import logging
import math
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

    def __post_init__(self) -> None:
        self.held, self.transcripts = BySource(self.settings.sources), BySource(self.settings.sources)

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
        result = self._parse(prompt)
        if not result.commands:
            self.reply(prompt.id, PromptStatus.IGNORED, result.reason or "That is not something I can do.", [])
            return
        risky = [c for c in result.commands if c.risk == Risk.HIGH]
        if risky:
            window = self.settings.confirm_window
            self.held[source] = Held(prompt, result.commands, self.clock.time() + window, result.note)
            what = " and ".join(c.text for c in risky)
            self.reply(prompt.id, PromptStatus.NEEDS_CONFIRMATION,
                       f"Are you sure you want me to run {what}? Say confirm within {window:g} seconds.", [])
            return
        self._start(prompt, deadline, result.commands, result.note)

    def _parse(self, prompt: Prompt) -> ParseResult:
        context = Context(source=prompt.source, transcript=list(self.transcripts.get(prompt.source, ())),
                          known=self.registry.offers, vocabulary=self.registry.vocabulary(),
                          language=self.specs.language(self.registry))
        try:
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

    def next_due(self) -> float:
        """When (wall time) :meth:`expire` next has something to forget; math.inf when nothing is held."""
        return min((held.expires for held in self.held.values()), default=math.inf) if self.held else math.inf

    def expire(self) -> None:
        """Forget held commands nobody confirmed in time."""
        now = self.clock.time()
        for source, held in list(self.held.items()):
            if held.expires < now:
                del self.held[source]
