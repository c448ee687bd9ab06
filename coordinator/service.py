"""The coordinator: prompts in, tasks out, one reply per prompt.

Life of a prompt (README.md, "How it works"): journal it; parse it into commands
(:mod:`.intake`); hold high-risk ones until the same source confirms; send each command, in
order, to the least-loaded online agent that offers it (:mod:`.routing`); answer once,
before the deadline. This module is the small core that ties them to the bus, the journal
and the clock, and tells extensions (:mod:`.events`) what happened.

All state changes happen under one lock, in one journal transaction per burst of messages,
on the bus thread (the ticker hands its work there too). When a transaction cannot
commit, nothing it published goes out, nothing is acknowledged, and the state is read back
from the journal.
"""

from __future__ import annotations

import logging
import re
import threading
from contextlib import contextmanager
from typing import Callable, Iterator

from lamcontrol import __version__
from lamcontrol.bus import BrokerSettings, Bus
from lamcontrol.protocol import (AgentSpec, CoordinatorPresence, LegacyResult, Presence, PresenceState, Prompt, PromptStatus,
                                 ProtocolError, Reply, Result, TaskSummary, check_id, decode)

from .events import AgentForgotten, Events, PresenceChanged, PromptReceived, Replied, SpecsChanged
from .intake import Intake
from .journal import Journal
from .parsing import Parser
from .registry import Registry
from .routing import Router
from .settings import Clock, Settings
from .specs import SpecStore

log = logging.getLogger(__name__)

FROZEN = 2.0  # seconds a tick may come late before we count ourselves as having been away
PROMPT_ID = re.compile(rb'"id"\s*:\s*"([^"\\]{1,128})"')  # a prompt's id, read from what does not parse


class Coordinator:
    """The routing brain. ``start()`` connects; ``stop()`` goes offline cleanly.

    ``events`` is where extensions listen; ``bus`` may be replaced (``bus_factory``) by anything
    with the same surface, as the in-process routing tests do.
    """

    def __init__(self, broker: BrokerSettings, parser: Parser, journal: Journal, settings: Settings = Settings(),
                 clock: Clock = Clock(), bus_factory: Callable[..., Bus] = Bus, epoch: int = 0,
                 may_connect: Callable[[], bool] = lambda: True) -> None:
        self.settings = settings
        self.clock = clock
        self.journal = journal
        self.epoch = epoch  # the lease it leads under, on a cluster (0: a lone coordinator)
        self.started = clock.time()  # agents announce themselves again to a coordinator that starts
        self.events = Events()
        self.registry = Registry(clock)
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self.bus = bus_factory(broker, component="coordinator", client_id=f"{broker.prefix}-coordinator",
                               will=self.presence(PresenceState.OFFLINE), persistent=True, ack_when_handled=True,
                               transaction=self.transaction, fatal=journal.failures, may_connect=may_connect)
        self.router = self._router()
        self.specs = SpecStore()  # what the online agents understand
        self.intake = Intake(settings, clock, parser, self.registry, self.router.start, self.reply, self.events,
                             self.specs)
        self.bus.on(self.bus.topics.prompts, self.on_prompt)
        self.bus.subscribe(Result, self.router.result)
        if settings.legacy_results:
            self.bus.subscribe(LegacyResult, self.router.result)
        self.bus.subscribe(Presence, self.on_presence, cleared=self.on_cleared)
        self.bus.subscribe(AgentSpec, self.on_spec, cleared=self.on_spec_cleared)
        self.bus.on_connect(self.reconnected)

    def _router(self) -> Router:
        return Router(self.settings, self.clock, self.journal, self.registry, self.bus.publish, self.reply, self.events,
                      epoch=self.epoch)

    # -- life cycle ---------------------------------------------------------------------

    def presence(self, state: PresenceState = PresenceState.ONLINE) -> CoordinatorPresence:
        load = len(self.router.runs) if state == PresenceState.ONLINE else 0
        return CoordinatorPresence(state=state, load=load, version=__version__,
                                   heartbeat=self.settings.heartbeat, max_concurrent=0, started=self.started)

    def announce(self) -> None:
        self.bus.publish(self.presence(), retain=True)

    def reconnected(self) -> None:
        self.router.reconnected(session_lost=not self.bus.session_present)
        self.announce()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """The state lock, then one journal transaction: always taken in this order. When the journal
        cannot commit, what the memory holds is thrown away and read back from the journal."""
        with self._lock:
            try:
                with self.journal.batch():
                    yield
            except self.journal.failures:
                if not self.journal.in_batch:
                    self._reload()
                raise

    def _reload(self) -> None:
        log.error("the journal could not commit: reading the state back from it")
        self.router = self._router()
        self.intake.start = self.router.start
        for info in self.registry.agents.values():
            info.inflight = 0
        try:
            self.resume()
        except self.journal.failures:
            log.exception("the journal cannot be read either")

    def start(self, timeout: float | None = None) -> None:
        with self.transaction():
            self.resume()
            self.resend_replies()
        self.bus.start(timeout)
        threading.Thread(target=self._tick_loop, name="coordinator-tick", daemon=True).start()

    def stop(self, announce: bool = True) -> None:
        """Stop; ``announce=False`` leaves without a word (one that lost the lead to another)."""
        self._stopping.set()
        self.bus.stop(final=self.presence(PresenceState.OFFLINE) if announce else None)
        with self._lock:
            self.journal.close()

    def _tick_loop(self) -> None:
        """Every ``tick``, hand :meth:`tick` to the bus thread (one at a time, after the messages
        already received: an `accepted` in hand is heard before its window is judged); and here,
        off the bus thread, the heartbeat, pruning and the journal's checkpoint."""
        last_beat = last_prune = last_tick = self.clock.monotonic()
        idle = threading.Event()
        idle.set()

        def tick() -> None:
            try:
                self.tick()
            finally:
                idle.set()

        while not self._stopping.wait(self.settings.tick):
            try:
                now = self.clock.monotonic()
                if now - last_tick > FROZEN:  # this process was frozen: nobody could be heard meanwhile
                    log.warning("coordinator was stopped for %.1f s; accept windows start again", now - last_tick)
                    self.bus.defer(lambda: self.router.reconnected())
                last_tick = now
                if idle.is_set():
                    idle.clear()
                    self.bus.defer(tick)
                if now - last_beat >= self.settings.heartbeat and self.bus.connected.is_set() and self.bus.may_connect():
                    last_beat = now
                    self.announce()
                if now - last_prune >= self.settings.prune_every:
                    last_prune = now
                    with self._lock:
                        log.info("journal: forgot %d old prompt(s)", self.journal.prune())
                self.journal.checkpoint()
            except Exception:
                log.exception("coordinator tick failed")

    def resume(self) -> None:
        """Take up every prompt the journal shows unanswered (after a crash or restart)."""
        for prompt, deadline, tasks in self.journal.open_prompts():
            log.info("resuming prompt %s (%d task(s) recorded)", prompt.id, len(tasks))
            self.events.emit(PromptReceived(prompt))
            if tasks:
                self.router.resume(prompt, deadline, tasks)
            else:
                self.intake.handle(prompt, deadline)

    def resend_replies(self) -> None:
        """Publish again the replies journaled but never acknowledged by the broker (the coordinator
        was killed in between): an asker may see such a reply twice, never not at all."""
        for prompt_id, payload in self.journal.unsent_replies():
            log.info("sending again the reply to prompt %s", prompt_id)
            self._publish_reply(prompt_id, payload)

    def tick(self) -> None:
        """Stale agents, accept windows, deadlines, expired confirmations, waiting tasks."""
        with self.transaction():
            if not self.bus.connected.is_set():
                self.router.suspend()
            for agent_id in self.registry.stale():
                self.events.emit(PresenceChanged(self.registry.agents[agent_id].presence))
                self.router.agent_gone(agent_id)
            self.router.tick()
            self.intake.expire()

    # -- prompts ------------------------------------------------------------------------

    def on_prompt(self, topic: str, payload: bytes) -> None:
        """A prompt, journaled before anything is done with it; a bad one is refused and, with an id, answered."""
        try:
            prompt = Prompt.from_payload(payload)
        except ProtocolError as exc:
            self._reject_unreadable(topic, payload, exc)
            return
        deadline = self.deadline(prompt)
        with self.transaction():
            if not self.journal.add_prompt(prompt, deadline):
                log.info("ignoring redelivered prompt %s", prompt.id)
                return
            self.events.emit(PromptReceived(prompt))
            if deadline <= self.clock.time():
                self.reply(prompt.id, PromptStatus.FAILED, "The prompt reached me after its deadline; I did nothing.",
                           [])
            else:
                self.intake.handle(prompt, deadline)

    def deadline(self, prompt: Prompt) -> float:
        """When the prompt must be answered: its timeout counted from when it was sent (``ts``, by the
        sender's clock), never from later than now (a clock ahead gains nothing) nor earlier than
        ``max_prompt_timeout`` ago (a clock far behind loses at most that)."""
        now = self.clock.time()
        timeout = min(prompt.metadata.timeout or self.settings.prompt_timeout, self.settings.max_prompt_timeout)
        return min(max(prompt.ts, now - self.settings.max_prompt_timeout), now) + timeout

    def _reject_unreadable(self, topic: str, payload: bytes, error: Exception) -> None:
        self.bus.refuse(topic, error, payload)
        try:
            data = decode(payload)
            prompt_id = check_id(data["id"], "id") if isinstance(data, dict) and isinstance(data.get("id"), str) else None
        except (ProtocolError, KeyError):
            found = PROMPT_ID.search(payload)  # too deep, or a lone surrogate: the id may still be readable
            prompt_id = found.group(1).decode("utf-8", "replace") if found else None
            try:
                prompt_id = prompt_id and check_id(prompt_id, "id")
            except ProtocolError:
                prompt_id = None
        if prompt_id:
            self.bus.publish(Reply(prompt_id=prompt_id, status=PromptStatus.REJECTED,
                                   response=f"I could not read that: {error}"))

    def reply(self, prompt_id: str, status: PromptStatus, response: str, tasks: list[TaskSummary]) -> None:
        """Answer a prompt: journaled, published, then told to the extensions."""
        reply = Reply(prompt_id=prompt_id, status=status, response=response, tasks=tasks)
        payload = reply.to_json()
        self.journal.set_reply(prompt_id, payload)
        self._publish_reply(prompt_id, payload)
        log.info("prompt %s %s: %s", prompt_id, status, response)
        self.events.emit(Replied(reply, payload))

    def _publish_reply(self, prompt_id: str, payload: bytes) -> None:
        """Out once the journal has it; marked sent there once the broker has it."""
        def sent() -> None:
            with self.transaction():
                self.journal.reply_sent(prompt_id)
        self.bus.publish_raw(self.bus.topics.reply(prompt_id), payload, on_sent=sent)

    # -- presence -----------------------------------------------------------------------

    def on_presence(self, presence: Presence) -> None:
        self.events.emit(PresenceChanged(presence))
        with self.transaction():
            if self.registry.update(presence):
                self.router.agent_gone(presence.agent)
            if presence.online:
                self.router.agent_back(presence)
            self.router.retry_waiting()

    def on_cleared(self, ids: dict[str, str]) -> None:
        """An agent's retained presence was emptied (``lam agents forget``)."""
        with self._lock:
            self.registry.forget(ids["agent"])
        self.events.emit(AgentForgotten(ids["agent"]))

    def on_spec(self, message: AgentSpec) -> None:
        with self.transaction():
            self.specs.on_spec(message)
            self.events.emit(SpecsChanged(message.agent, self.specs.advertised(message.agent)))

    def on_spec_cleared(self, ids: dict[str, str]) -> None:
        with self.transaction():
            self.specs.on_cleared(ids)
            self.events.emit(SpecsChanged(ids["agent"], {}))
