"""Intake: what a prompt asks for, held for confirmation when it is risky, then handed to the router."""

from __future__ import annotations

import difflib
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
    warming_up: Callable[[], bool] = lambda: False  # too soon after start to know every agent
    early: list[tuple[Prompt, float]] = field(default_factory=list)  # for an agent not heard from while warming up
    held: BySource = field(init=False)  # commands waiting for their source to confirm
    transcripts: BySource = field(init=False)  # recent commands by source, for the parser

    def __post_init__(self) -> None:
        self.held, self.transcripts = BySource(self.settings.sources), BySource(self.settings.sources)

    def handle(self, prompt: Prompt, deadline: float) -> None:
        wanted = prompt.metadata.agent
        if wanted and not self.online(wanted):
            if self.warming_up():  # its presence may be on its way: see again when it comes or the warm-up ends
                self.early.append((prompt, deadline))
            else:
                self.reply(prompt.id, PromptStatus.FAILED, self.absent(wanted), [])
            return
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

    def online(self, agent_id: str) -> bool:
        known = self.registry.agents.get(agent_id)
        return known is not None and known.online

    def absent(self, wanted: str) -> str:
        """The answer to a prompt for an agent (``metadata.agent``) that is unknown or offline, naming those online."""
        online = sorted(a for a, info in self.registry.agents.items() if info.online)
        listed = f"Online: {', '.join(online)}." if online else "No agent is online."
        if wanted in self.registry.agents:
            return f"{wanted} is offline. {listed}"
        close = difflib.get_close_matches(wanted, list(self.registry.agents), n=1)
        return f"There is no agent {wanted}{f'; did you mean {close[0]}?' if close else '.'} {listed}"

    def release_early(self) -> None:
        """Handle the prompts held during the warm-up whose agent is now online, or all once it is over."""
        if not self.early:
            return
        settled = not self.warming_up()
        ready = [(p, d) for p, d in self.early if settled or self.online(p.metadata.agent or "")]
        self.early = [held for held in self.early if held not in ready]
        for prompt, deadline in ready:
            self.handle(prompt, deadline)

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

    def expire(self) -> None:
        """Forget held commands nobody confirmed in time."""
        now = self.clock.time()
        for source, held in list(self.held.items()):
            if held.expires < now:
                del self.held[source]
