"""Intake: what a prompt asks for, held for confirmation when it is risky, then handed to the router.

Prompts wait to be understood in a queue per source, served in turn (round robin): a source that
sends a thousand prompts delays another's by at most a few of its own. Each source may send
``source_burst`` prompts at once and ``source_rate`` a second after that; more are answered
`rejected` before they are journaled, so a flood grows neither the queues nor the journal.

Understanding a prompt (making the language of what is online, matching templates, asking Groq)
takes time, so it never runs on the bus thread, whose silence the broker would take for a dead
coordinator: :meth:`Intake.serve` hands the prompts whose turn it is to one understanding thread,
a few at a time, and each result comes back to the bus thread (:meth:`Intake.understood`), where
the next prompt in turn is handed over. A prompt still waiting, or still being understood, at
its deadline is answered then.

A prompt for one agent (``metadata.agent``, as Home Assistant's buttons send) that is unknown or
offline is answered at once when its turn comes, naming the agents online; during the warm-up it
waits for that agent's presence, which may be on its way.
"""

from __future__ import annotations

import difflib
import itertools
import logging
import math
from collections import OrderedDict, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Callable

from lamcontrol.protocol import Prompt, PromptStatus, Risk

from .events import Events, PromptParsed
from .grammar import Command, ParseResult
from .language import Context, parse_chain
from .parsing import Parser, is_cancellation, is_confirmation
from .registry import Registry
from .routing import Reply, Router
from .runs import Held
from .settings import Clock, Settings
from .specs import Offer, SpecStore

log = logging.getLogger(__name__)

Defer = Callable[[Callable[[], None]], None]  # hands a call to the bus thread (Bus.defer)
TOO_SLOW = "I could not understand that in time; I did nothing."
TOO_MANY = "Too many prompts were ahead of this one to get to it before its deadline; I did nothing."
BROKEN = "Something went wrong on my side as I was about to act on that ({}); I did nothing."


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


class RateLimit:
    """A token bucket per source: ``burst`` prompts at once, then ``rate`` a second (0: no limit)."""

    def __init__(self, rate: float, burst: float, sources: int) -> None:
        self.rate, self.burst = rate, max(1.0, burst)
        self._buckets = BySource(sources)  # source -> (tokens, when counted)

    def allow(self, source: str, now: float) -> bool:
        if self.rate <= 0:
            return True
        tokens, counted = self._buckets.get(source, (self.burst, now))
        tokens = min(self.burst, tokens + max(0.0, now - counted) * self.rate)
        allowed = tokens >= 1
        self._buckets[source] = (tokens - allowed, now)
        return allowed


class FairQueue:
    """Prompts waiting to be understood: a queue per source, each source served one prompt in turn."""

    def __init__(self) -> None:
        self._queues: OrderedDict[str, deque[tuple[Prompt, float]]] = OrderedDict()
        self._count = 0
        self.soonest = math.inf  # no deadline here is earlier (one taken since may have been)

    def __len__(self) -> int:
        return self._count

    def put(self, prompt: Prompt, deadline: float) -> None:
        self._queues.setdefault(prompt.source, deque()).append((prompt, deadline))
        self._count += 1
        self.soonest = min(self.soonest, deadline)

    def take(self) -> tuple[Prompt, float] | None:
        """The oldest prompt of the source whose turn it is; that source goes to the back."""
        if not self._queues:
            return None
        source, queue = next(iter(self._queues.items()))
        taken = queue.popleft()
        self._count -= 1
        if queue:
            self._queues.move_to_end(source)
        else:
            del self._queues[source]
        return taken

    def expired(self, now: float) -> list[Prompt]:
        """Take out the prompts whose deadline has passed."""
        gone = []
        for source, queue in list(self._queues.items()):
            kept = deque(item for item in queue if item[1] > now)
            gone += [prompt for prompt, deadline in queue if deadline <= now]
            if kept:
                self._queues[source] = kept
            else:
                del self._queues[source]
        self._count -= len(gone)
        self.soonest = min((deadline for queue in self._queues.values() for _, deadline in queue), default=math.inf)
        return gone

    def clear(self) -> None:
        self._queues.clear()
        self._count = 0
        self.soonest = math.inf


@dataclass(eq=False)
class Intake:
    """Turns each new prompt into commands, or into a question, a refusal or a cancellation."""

    settings: Settings
    clock: Clock
    parser: Parser
    registry: Registry
    router: Router
    reply: Reply
    events: Events
    defer: Defer
    specs: SpecStore = field(default_factory=SpecStore)  # what the online agents understand
    fatal: tuple[type[Exception], ...] = ()  # errors the transaction must see (the journal's)
    held: BySource = field(init=False)  # commands waiting for their source to confirm
    transcripts: BySource = field(init=False)  # recent commands by source, for the parser
    asked: BySource = field(init=False)  # the prompt a question back answered, and until when, by source
    waiting: FairQueue = field(default_factory=FairQueue)  # journaled, not handed over yet
    # Prompts being understood: id -> (prompt, deadline, token); an answer whose token differs is stale.
    pending: dict[str, tuple[Prompt, float, int]] = field(default_factory=dict)
    # Prompts for an agent not heard from yet while warming up (its presence may be on its way): id -> (prompt, deadline).
    early: dict[str, tuple[Prompt, float]] = field(default_factory=dict)
    limit: RateLimit = field(init=False)

    # Prompts handed to the understanding thread at once: enough that it never waits for the bus thread to
    # hand over the next (fewer cost a fifth of the pipelined rate), few enough that a source's turn comes soon.
    AHEAD = 4

    def __post_init__(self) -> None:
        self.held, self.transcripts = BySource(self.settings.sources), BySource(self.settings.sources)
        self.asked = BySource(self.settings.sources)
        self.limit = RateLimit(self.settings.source_rate, self.settings.source_burst, self.settings.sources)
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="understanding")
        self._tokens = itertools.count()
        self._last: Future | None = None

    def refusal(self, prompt: Prompt, now: float) -> str:
        """Why the prompt is refused before it is journaled ('' when it is taken)."""
        if not self.limit.allow(prompt.source, now):
            return (f"Too many prompts from {prompt.source}: at most {self.settings.source_rate:g} a second "
                    f"after {self.settings.source_burst:g} at once. Try again in a moment.")
        if len(self.waiting) >= self.settings.max_waiting:
            return "I have too many prompts waiting to be understood. Try again in a moment."
        return ""

    def serve(self) -> None:
        """Hand the understanding thread the prompts whose turn it is, up to ``AHEAD`` there at once
        (bus thread: takes what each needs, then returns)."""
        while len(self.pending) < self.AHEAD and (taken := self.waiting.take()) is not None:
            prompt, deadline = taken
            wanted = prompt.metadata.agent
            if wanted and not self.online(wanted):  # answered at once, not understood
                if self.router.warming_up():
                    self.early[prompt.id] = taken
                else:
                    self.reply(prompt.id, PromptStatus.FAILED, self.absent(wanted), [])
                continue
            token = next(self._tokens)
            self.pending[prompt.id] = (prompt, deadline, token)
            offer = self.specs.offer(self.registry)
            context = Context(source=prompt.source, transcript=list(self.transcripts.get(prompt.source, ())),
                              known=offer.known, vocabulary=offer.names, photo=bool(prompt.metadata.image))
            asked = self.asked.pop(prompt.source, None)
            answering = asked[0] if asked and asked[1] >= self.clock.time() else ""
            self._last = self._worker.submit(self._understand, prompt, token, offer, context, answering)

    def prepare(self) -> None:
        """Make the language of what is online now, on the understanding thread: what changed is judged
        (and any refusal said) before a prompt needs it."""
        self._last = self._worker.submit(self._prepare, self.specs.offer(self.registry))

    def _prepare(self, offer: Offer) -> None:
        try:
            self.specs.build(offer)
        except Exception:
            log.exception("cannot make the language of what is online")

    def _understand(self, prompt: Prompt, token: int, offer: Offer, context: Context, answering: str = "") -> None:
        """On the understanding thread: the prompt's commands, handed back to the bus thread. Right after a
        question back ("What should I search for?") the prompt is first read as its answer ("search for"
        + "cheap flights")."""
        try:
            context.language = self.specs.build(offer)
            result = self.parser.parse(f"{answering} {prompt.prompt}", context) if answering else None
            if result is None or not result.commands:
                result = self.parser.parse(prompt.prompt, context)
            failed = False
        except Exception:
            log.exception("parser %s failed; falling back to the command grammar", self.parser.name)
            result, failed = parse_chain(prompt.prompt, offer.known, offer.names), True
        self.defer(lambda: self.understood(prompt.id, token, result, failed))

    def understood(self, prompt_id: str, token: int, result: ParseResult, failed: bool = False) -> None:
        """What a prompt asks for, back on the bus thread, acted on; answered `failed` if acting on it
        fails for any reason but the journal's (a bug must not leave it unanswered until a restart)."""
        entry = self.pending.get(prompt_id)
        if entry is None or entry[2] != token:
            return  # answered at its deadline meanwhile, or handed over again since
        del self.pending[prompt_id]
        prompt, deadline, _ = entry
        try:
            self._act(prompt, deadline, result, failed)
        except self.fatal:
            raise  # the transaction fails: the prompt is read back from the journal and understood again
        except Exception as exc:  # a bug: this prompt is answered all the same, and the next one taken up
            log.exception("could not act on prompt %s", prompt.id)
            if prompt.id not in self.router.runs:  # (an open run answers, by its deadline at the latest)
                self.reply(prompt.id, PromptStatus.FAILED, BROKEN.format(exc.__class__.__name__), [])

    def _act(self, prompt: Prompt, deadline: float, result: ParseResult, failed: bool) -> None:
        """Confirm or cancel what its source holds, ask for a confirmation, refuse, or start it."""
        source = prompt.source
        held = self.held.pop(source, None)
        if held and held.expires >= self.clock.time():
            if is_confirmation(prompt.prompt):
                self._start(prompt, deadline, [replace(c, confirmed=True) for c in held.commands], held.note)
                return
            if is_cancellation(prompt.prompt):
                self.reply(prompt.id, PromptStatus.IGNORED, "Cancelled.", [])
                return
        self.events.emit(PromptParsed(prompt, result, failed))
        window = self.settings.confirm_window
        if result.asks:  # a question back: the next prompt from this source may answer it
            self.asked[source] = (prompt.prompt, self.clock.time() + window)
        if not result.commands:
            self.reply(prompt.id, PromptStatus.IGNORED, result.reason or "That is not something I can do.", [])
            return
        risky = [c for c in result.commands if c.risk == Risk.HIGH]
        if risky or result.question:  # a power command, or a likely reading: asked about first
            self.held[source] = Held(prompt, result.commands, self.clock.time() + window, result.note)
            what = " and ".join(c.text for c in risky)
            self.reply(prompt.id, PromptStatus.NEEDS_CONFIRMATION,
                       f"{result.question} Say yes within {window:g} seconds." if result.question else
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
        """The prompts held during the warm-up wait their turn again once their agent is online, or all
        once the warm-up is over (those for an agent still absent are then answered so)."""
        if not self.early:
            return
        settled = not self.router.warming_up()
        for prompt_id, (prompt, deadline) in list(self.early.items()):
            if settled or self.online(prompt.metadata.agent or ""):
                del self.early[prompt_id]
                self.waiting.put(prompt, deadline)

    def _start(self, prompt: Prompt, deadline: float, commands: list[Command], note: str) -> None:
        transcript = self.transcripts.pop(prompt.source, None) or deque(maxlen=self.settings.transcript)
        transcript.extend(c.text for c in commands)
        self.transcripts[prompt.source] = transcript
        self.router.start(prompt, deadline, commands, note)

    def next_due(self) -> float:
        """When (wall time) :meth:`expire` next may have work: a held confirmation's expiry, or the
        deadline of a prompt not understood yet; math.inf when there is none. It may come early (a
        prompt taken from the queue since), never late."""
        return min(self.waiting.soonest, *(held.expires for held in self.held.values()),
                   *(deadline for _, deadline in self.early.values()),
                   *(deadline for _, deadline, _ in self.pending.values()), math.inf)

    def expire(self, now: float) -> None:
        """Forget held commands nobody confirmed in time; answer the prompts whose deadline passed
        before they were understood."""
        for source, held in list(self.held.items()):
            if held.expires < now:
                del self.held[source]
        for prompt in self.waiting.expired(now):
            self.reply(prompt.id, PromptStatus.FAILED, TOO_MANY, [])
        for prompt_id, (prompt, deadline) in list(self.early.items()):
            if deadline <= now:
                del self.early[prompt_id]
                self.reply(prompt_id, PromptStatus.FAILED, self.absent(prompt.metadata.agent or ""), [])
        for prompt_id, (prompt, deadline, _) in list(self.pending.items()):
            if deadline <= now:
                del self.pending[prompt_id]
                log.warning("prompt %s was not understood by its deadline", prompt_id)
                self.reply(prompt_id, PromptStatus.FAILED, TOO_SLOW, [])

    def clear(self) -> None:
        """Forget the prompts waiting and those handed over (their answers will be dropped)."""
        self.waiting.clear()
        self.pending.clear()
        self.early.clear()

    def settled(self, timeout: float = 30.0) -> bool:
        """True once every prompt handed over has been understood (its answer handed to the bus thread)."""
        last = self._last
        if last is None:
            return True
        try:
            last.result(timeout)
        except Exception:
            return last.done()
        return True

    def close(self) -> None:
        self._worker.shutdown(wait=False, cancel_futures=True)
