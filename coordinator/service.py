"""The coordinator: prompts in, tasks out, one reply per prompt.

Life of a prompt (README.md, "How it works"): journal it; parse it into commands
(:mod:`.intake`); hold high-risk ones until the same source confirms; send each command, in
order, to the least-loaded online agent that offers it (:mod:`.routing`); answer once,
before the deadline. This module is the small core that ties them to the bus, the journal
and the clock, and tells extensions (:mod:`.events`) what happened.

All state changes happen under one lock, from the bus dispatcher thread and a ticker.
"""

from __future__ import annotations

import logging
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


class Coordinator:
    """The routing brain. ``start()`` connects; ``stop()`` goes offline cleanly.

    ``events`` is where extensions listen; ``bus`` may be replaced (``bus_factory``) by anything
    with the same surface, as the in-process routing tests do.
    """

    def __init__(self, broker: BrokerSettings, parser: Parser, journal: Journal, settings: Settings = Settings(),
                 clock: Clock = Clock(), bus_factory: Callable[..., Bus] = Bus) -> None:
        self.settings = settings
        self.clock = clock
        self.journal = journal
        self.events = Events()
        self.registry = Registry(clock)
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self.bus = bus_factory(broker, component="coordinator", client_id=f"{broker.prefix}-coordinator",
                               will=self.presence(PresenceState.OFFLINE), persistent=True, ack_when_handled=True,
                               transaction=self.transaction)
        self.router = Router(settings, clock, journal, self.registry, self.bus.publish, self.reply, self.events)
        self.specs = SpecStore()  # what the online agents understand
        self.intake = Intake(settings, clock, parser, self.registry, self.router.start, self.reply, self.events,
                             self.specs)
        self.bus.on(self.bus.topics.prompts, self.on_prompt)
        self.bus.subscribe(Result, self.router.result)
        if settings.legacy_results:
            self.bus.subscribe(LegacyResult, self.router.result)
        self.bus.subscribe(Presence, self.on_presence, cleared=self.on_cleared)
        self.bus.subscribe(AgentSpec, self.on_spec, cleared=self.on_spec_cleared)
        self.bus.on_connect(self.announce)

    # -- life cycle ---------------------------------------------------------------------

    def presence(self, state: PresenceState = PresenceState.ONLINE) -> CoordinatorPresence:
        load = len(self.router.runs) if state == PresenceState.ONLINE else 0
        return CoordinatorPresence(state=state, load=load, version=__version__,
                                   heartbeat=self.settings.heartbeat, max_concurrent=0)

    def announce(self) -> None:
        self.bus.publish(self.presence(), retain=True)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """The state lock, then one journal transaction: always taken in this order."""
        with self._lock, self.journal.batch():
            yield

    def start(self, timeout: float | None = None) -> None:
        with self.transaction():
            self.resume()
        self.bus.start(timeout)
        threading.Thread(target=self._tick_loop, name="coordinator-tick", daemon=True).start()

    def stop(self) -> None:
        self._stopping.set()
        self.bus.stop(final=self.presence(PresenceState.OFFLINE))
        with self._lock:
            self.journal.close()

    def _tick_loop(self) -> None:
        last_beat = last_prune = self.clock.monotonic()
        while not self._stopping.wait(self.settings.tick):
            try:
                self.tick()
                now = self.clock.monotonic()
                if now - last_beat >= self.settings.heartbeat and self.bus.connected.is_set():
                    last_beat = now
                    self.announce()
                if now - last_prune >= self.settings.prune_every:
                    last_prune = now
                    with self._lock:
                        log.info("journal: forgot %d old prompt(s)", self.journal.prune())
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

    def tick(self) -> None:
        """Stale agents, accept windows, deadlines, expired confirmations, waiting tasks."""
        with self.transaction():
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
        timeout = min(prompt.metadata.timeout or self.settings.prompt_timeout, self.settings.max_prompt_timeout)
        deadline = self.clock.time() + timeout
        with self.transaction():
            if not self.journal.add_prompt(prompt, deadline):
                log.info("ignoring redelivered prompt %s", prompt.id)
                return
            self.events.emit(PromptReceived(prompt))
            self.intake.handle(prompt, deadline)

    def _reject_unreadable(self, topic: str, payload: bytes, error: Exception) -> None:
        self.bus.refuse(topic, error, payload)
        try:
            data = decode(payload)
            prompt_id = check_id(data["id"], "id") if isinstance(data, dict) and isinstance(data.get("id"), str) else None
        except (ProtocolError, KeyError):
            prompt_id = None
        if prompt_id:
            self.bus.publish(Reply(prompt_id=prompt_id, status=PromptStatus.REJECTED,
                                   response=f"I could not read that: {error}"))

    def reply(self, prompt_id: str, status: PromptStatus, response: str, tasks: list[TaskSummary]) -> None:
        """Answer a prompt: journaled, published, then told to the extensions."""
        reply = Reply(prompt_id=prompt_id, status=status, response=response, tasks=tasks)
        payload = reply.to_json()
        self.journal.set_reply(prompt_id, payload)
        self.bus.publish_raw(reply.topic(self.bus.topics), payload)
        log.info("prompt %s %s: %s", prompt_id, status, response)
        self.events.emit(Replied(reply))

    # -- presence -----------------------------------------------------------------------

    def on_presence(self, presence: Presence) -> None:
        self.events.emit(PresenceChanged(presence))
        with self.transaction():
            if self.registry.update(presence):
                self.router.agent_gone(presence.agent)
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
