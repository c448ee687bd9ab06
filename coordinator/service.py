"""The coordinator: prompts in, tasks out, one reply per prompt.

Life of a prompt (docs/guarantees.md, "How a prompt travels"): journal it; parse it into commands
(:mod:`.intake`); hold high-risk ones until the same source confirms; send each command, in
order, to the least-loaded online agent that offers it (:mod:`.routing`); answer once,
before the deadline. This module is the small core that ties them to the bus, the journal
and the clock, and tells extensions (:mod:`.events`) what happened.

All state changes happen under one lock, in one journal transaction per burst of messages,
on the bus thread (the ticker hands its work there too, and so does the thread that understands
prompts, :mod:`.intake`). What an agent says counts only as far as its login allows
(:mod:`.trust`). When a transaction cannot commit, nothing it published goes out, nothing is
acknowledged, and the state is read back from the journal. When that is because the disk is
full or read-only, the burst is handled again at once with the journal holding its writes in
memory: what is under way carries on, each new prompt is answered `failed` at once, naming the
disk, and every few seconds the journal tries to write again, until it can.

Prompts are journaled as they arrive, then wait in a queue per source; after each transaction
the prompts whose turn it is go to the understanding thread (:mod:`.intake`), a few at a
time: a flood of prompts neither holds up the results behind it on the bus nor another
source's prompts. Each message carries the time the bus received it; deadlines and accept
windows are judged by that time, not by when a busy coordinator got round to it.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import re
import socket
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator

from lamcontrol import __version__
from lamcontrol.bus import BrokerSettings, Bus, RetryBurst
from lamcontrol.clock import Clock
from lamcontrol.protocol import (AgentSpec, CoordinatorPresence, LegacyResult, Presence, PresenceState, Prompt, PromptStatus,
                                 ProtocolError, Reply, Result, TaskSummary, check_id, decode)

from .events import AgentForgotten, Events, Extension, ExtensionFactory, PresenceChanged, PromptReceived, Replied, SpecsChanged
from .intake import BySource, Intake
from .journal import Journal, StreamJournal, cannot_write
from .parsing import Parser
from .registry import Registry
from .routing import Router
from .settings import Settings
from .specs import SpecStore
from .trust import Refusals, Trust, vetted

log = logging.getLogger(__name__)

FROZEN = 2.0  # seconds the ticker may wake late before we count ourselves as having been away
JOURNAL_RETRY = 2.0  # seconds between tries to write a journal that could not
HOST, STARTED = socket.gethostname(), time.time()  # who this process is, in its presence
PROMPT_ID = re.compile(rb'"id"\s*:\s*"([^"\\]{1,128})"')  # a prompt's id, read from what does not parse


class Coordinator:
    """The routing brain. ``start()`` connects; ``stop()`` goes offline cleanly.

    ``events`` is where extensions listen; ``bus`` may be replaced (``bus_factory``) by anything
    with the same surface, as the in-process routing tests do.
    """

    def __init__(self, broker: BrokerSettings, parser: Parser, journal: Journal | StreamJournal, settings: Settings = Settings(),
                 clock: Clock = Clock(), bus_factory: Callable[..., Bus] = Bus, trust: Trust | None = None,
                 approved_specs: Iterable[str] = (), epoch: int = 0,
                 may_connect: Callable[[], bool] = lambda: True) -> None:
        self.settings = settings
        self.clock = clock
        self.journal = journal
        self.epoch = epoch  # the lease it leads under, on a cluster (0: a lone coordinator)
        self.events = Events()
        self.extensions: list[Extension] = []  # see extend()
        self.registry = Registry(clock)
        self.trust = trust or Trust(broker.topics)  # what agents may offer
        self._lock = threading.RLock()
        self._depth = 0  # transactions open, one inside another
        self._stopping = threading.Event()
        self._connected_since = float("inf")  # wall time of the latest connection to the broker
        self._skewed: BySource[bool] = BySource(settings.sources)  # sources whose clock was found off, logged once each
        self._refused: BySource[bool] = BySource(settings.sources)  # sources being refused now, logged once each
        self._timers_moved = threading.Event()  # wakes the ticker: an earlier timer, or stopping
        self._known = (-math.inf, -math.inf)  # the soonest timers the ticker knows of (see _timers)
        self.bus = bus_factory(broker, component="coordinator", client_id=f"{broker.prefix}-coordinator",
                               will=self.presence(PresenceState.OFFLINE), persistent=True, ack_when_handled=True,
                               transaction=self.transaction, fatal=journal.failures, clock=clock.time,
                               may_connect=may_connect)
        self.refusals = Refusals(self.bus.refuse)
        # One router for the coordinator's life: a failed commit resets it, never replaces it.
        self.router = Router(settings, clock, journal, self.registry, self.bus.publish, self.reply, self.events,
                             epoch=epoch)
        self.specs = SpecStore(self._refuse_spec, approved_specs)  # what the online agents understand
        self.intake = Intake(settings, clock, parser, self.registry, self.router, self.reply, self.events,
                             self.bus.defer, self.specs, self.bus.fatal)
        self.bus.on(self.bus.topics.prompts, self.on_prompt)
        self.bus.subscribe(Result, self.router.result)
        if settings.legacy_results:
            self.bus.subscribe(LegacyResult, self.router.result)
        self.bus.subscribe(Presence, self.on_presence, cleared=self.on_cleared)
        self.bus.subscribe(AgentSpec, self.on_spec, cleared=self.on_spec_cleared)
        self.bus.on_connect(self.reconnected)

    # -- life cycle ---------------------------------------------------------------------

    def presence(self, state: PresenceState = PresenceState.ONLINE) -> CoordinatorPresence:
        load = len(self.router.runs) if state == PresenceState.ONLINE else 0
        return CoordinatorPresence(state=state, load=load, version=__version__, heartbeat=self.settings.heartbeat,
                                   max_concurrent=0, host=HOST, pid=os.getpid(), started=STARTED)

    def announce(self) -> None:
        self.bus.publish(self.presence(), retain=True)

    def reconnected(self) -> None:
        self._connected_since = self.bus.received
        self.router.broker_reached()
        self.router.reconnected(session_lost=not self.bus.session_present)
        self.announce()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """The state lock, then one journal transaction: always taken in this order. Once the
        outermost one commits, the prompts whose turn it is go to the understanding thread. When the
        journal cannot commit, what the memory holds is thrown away and read back from the journal;
        when that is because it cannot write, the journal holds its writes from then on and
        :class:`RetryBurst` asks the bus to handle the same messages again."""
        with self._lock:
            self._depth += 1
            try:
                with self.journal.batch():
                    yield
                if self._depth == 1:
                    self.intake.serve()
            except self.journal.failures as exc:
                if self._depth == 1:
                    reason = cannot_write(exc)
                    if reason and isinstance(self.journal, Journal) and not self.journal.unwritable:  # a file's
                        self.journal.hold(reason)
                        self._timers_moved.set()  # the ticker tries it again every JOURNAL_RETRY
                        log.error("the journal %s cannot be written (%s): every new prompt is answered `failed` "
                                  "until it can; trying again every %g s", self.journal.where(), exc, JOURNAL_RETRY)
                    self._reload()
                    if reason:
                        raise RetryBurst() from exc
                raise
            finally:
                if self._depth == 1 and not self.journal.in_batch:
                    self._reschedule()
                self._depth -= 1

    def _reload(self) -> None:
        log.error("the journal could not commit: reading the state back from it")
        self.router.reset()
        self.intake.clear()  # the open prompts wait again below; answers to those handed over are dropped
        for info in self.registry.agents.values():
            info.inflight = 0
        try:
            self.resume()
        except self.journal.failures:
            log.exception("the journal cannot be read either")

    def extend(self, factory: ExtensionFactory) -> Extension:
        """Make an extension on this coordinator's bus, events and clock; it is stopped when the coordinator stops."""
        extension = factory(self.bus, self.events, self.clock)
        self.extensions.append(extension)
        return extension

    def start(self, timeout: float | None = None) -> None:
        try:
            with self.transaction():
                self.resume()
                self.resend_replies()
        except RetryBurst:
            with self.transaction():  # the journal holds its writes now
                self.resend_replies()
        self.bus.start(timeout)
        threading.Thread(target=self._tick_loop, name="coordinator-tick", daemon=True).start()

    def stop(self, announce: bool = True) -> None:
        """Stop; ``announce=False`` leaves without a word (one that lost the lead to another)."""
        self._stopping.set()
        self._timers_moved.set()
        for extension in self.extensions:
            extension.stop()
        self.intake.close()
        self.bus.stop(final=self.presence(PresenceState.OFFLINE) if announce else None)
        with self._lock:
            if isinstance(self.journal, Journal) and self.journal.unwritable and not self.journal.retry():
                log.error("the journal %s still cannot be written: what it held is lost; prompts under way are "
                          "taken up again from what it last wrote", self.journal.where())
            self.journal.close()

    def _tick_loop(self) -> None:
        """Hand :meth:`tick` to the bus thread when a timer falls due, at most every ``tick`` (one at a
        time, after the messages already received: an `accepted` in hand is heard before its window
        is judged); and here, off the bus thread, the heartbeat, pruning and the journal's checkpoint.
        In between it sleeps, until the next of them or until a handler sets an earlier timer."""
        now = self.clock.monotonic()
        next_beat, next_prune, last_tick = now + self.settings.heartbeat, now + self.settings.prune_every, -math.inf
        next_retry = now  # of a journal that cannot write
        idle = threading.Event()
        idle.set()

        def tick() -> None:
            try:
                self.tick(self.bus.received)  # as of when it was handed over: what came before is heard
            finally:
                idle.set()
                self._timers_moved.set()  # the ticker reads the timers again

        while not self._stopping.is_set():
            try:
                self._timers_moved.clear()
                # Handlers set timers under the lock: none can slip between reading and sleeping. While a
                # handler holds it long (the bus thread held up), the timers known go on: a tick falls due
                # on time, judged as of then, and waits its turn behind the messages read before it.
                if self._lock.acquire(timeout=self.settings.tick):
                    try:
                        self._known = self._timers()
                    finally:
                        self._lock.release()
                now = self.clock.monotonic()
                wall, due = self._known
                due = min(wall - self.clock.time() + now, due)  # both on the monotonic clock
                retry = next_retry if self.journal.unwritable else math.inf
                planned = max(now, min(next_beat, next_prune, retry, max(due, last_tick + self.settings.tick)))
                self._timers_moved.wait(planned - now)
                now = self.clock.monotonic()
                if now - planned > FROZEN:  # this process was frozen: nobody could be heard meanwhile
                    log.warning("coordinator was stopped for %.1f s; accept windows start again", now - planned)
                    self.bus.defer(lambda: self.router.reconnected())
                if now >= due and idle.is_set():
                    idle.clear()
                    last_tick = now
                    self.bus.defer(tick)
                if now >= next_beat:
                    next_beat = now + self.settings.heartbeat
                    if self.bus.connected.is_set() and self.bus.may_connect():
                        self.announce()
                if self.journal.unwritable and now >= next_retry:
                    next_retry = now + JOURNAL_RETRY
                    self.bus.defer(self._retry_journal)
                if now >= next_prune or self.journal.added > self.journal.max_prompts // 10:
                    next_prune = now + self.settings.prune_every
                    with self._lock:
                        log.info("journal: forgot %d old prompt(s)", self.journal.prune())
                self.journal.checkpoint()
            except Exception:
                log.exception("coordinator tick failed")

    def _retry_journal(self) -> None:
        if isinstance(self.journal, Journal) and self.journal.unwritable and self.journal.retry():
            log.warning("the journal %s can be written again: taking prompts again", self.journal.where())

    def _timers(self) -> tuple[float, float]:
        """When :meth:`tick` next has work, on each clock: wall time for accept windows, grace periods,
        deadlines, held confirmations and prompts not understood yet, monotonic for agents' heartbeats
        and the end of the warm-up while prompts wait for it (math.inf: nothing waits). Kept apart, so
        that comparing two readings needs no conversion that could jitter."""
        monotonic = self.registry.next_due()
        if self.intake.early:
            monotonic = min(monotonic, self.router.warmup_over())
        return min(self.router.next_due(), self.intake.next_due()), monotonic

    def _reschedule(self) -> None:
        """After a transaction: wake the ticker if a timer now falls due before it knew."""
        wall, monotonic = self._timers()
        if wall < self._known[0] or monotonic < self._known[1]:
            self._known = (-math.inf, -math.inf)
            self._timers_moved.set()

    def resume(self) -> None:
        """Take up every prompt the journal shows unanswered (after a crash or restart)."""
        for prompt, deadline, tasks in self.journal.open_prompts():
            log.info("resuming prompt %s (%d task(s) recorded)", prompt.id, len(tasks))
            self.events.emit(PromptReceived(prompt))
            if tasks:
                self.router.resume(prompt, deadline, tasks)
            else:
                self.intake.waiting.put(prompt, deadline)

    def resend_replies(self) -> None:
        """Publish again the replies journaled but never acknowledged by the broker (the coordinator
        was killed in between): an asker may see such a reply twice, never not at all."""
        for prompt_id, payload in self.journal.unsent_replies():
            log.info("sending again the reply to prompt %s", prompt_id)
            self._publish_reply(prompt_id, payload)

    def tick(self, now: float | None = None) -> None:
        """Stale agents, accept windows, deadlines, expired confirmations, waiting tasks, as of ``now``
        (default: the clock's time)."""
        now = self.clock.time() if now is None else now
        with self.transaction():
            if not self.bus.connected.is_set():
                self.router.suspend()
            for agent_id in self.registry.stale():
                self.events.emit(PresenceChanged(self.registry.agents[agent_id].presence))
                self.router.agent_gone(agent_id)
            self.router.tick(now)
            self.intake.expire(now)
            self.intake.release_early()

    # -- prompts ------------------------------------------------------------------------

    def on_prompt(self, topic: str, payload: bytes) -> None:
        """A prompt, journaled before anything is done with it, then waiting its source's turn to be
        understood; a bad one is refused and, with an id, answered. One over its source's rate, or
        while the journal cannot write, is answered at once and not journaled."""
        try:
            prompt = Prompt.from_payload(payload)
        except ProtocolError as exc:
            self._reject_unreadable(topic, payload, exc)
            return
        received = self.bus.received
        deadline = self.deadline(prompt, received)
        with self.transaction():
            if self.journal.unwritable:
                if not self.journal.known(prompt.id):  # logged once, when the journal stopped writing
                    self._answer_unjournaled(prompt, PromptStatus.FAILED, self._cannot_journal(), quiet=True)
                return
            refusal = self.intake.refusal(prompt, received)
            if refusal and not self.journal.known(prompt.id):  # (a redelivery of one taken is ignored below)
                if prompt.source not in self._refused:  # a flood is logged once, not per prompt
                    self._refused[prompt.source] = True
                    log.warning("refusing prompts from %r: %s", prompt.source, refusal)
                self._answer_unjournaled(prompt, PromptStatus.REJECTED, refusal, quiet=True)
                return
            self._refused.pop(prompt.source, None)
            if not self.journal.add_prompt(prompt, deadline):
                log.info("ignoring redelivered prompt %s", prompt.id)
                return
            self.events.emit(PromptReceived(prompt))
            if deadline <= received:
                self.reply(prompt.id, PromptStatus.FAILED, "The prompt reached me after its deadline; I did nothing.",
                           [])
            else:
                self.intake.waiting.put(prompt, deadline)

    def _cannot_journal(self) -> str:
        return (f"I cannot write my journal {self.journal.where()}: {self.journal.unwritable}, so I did nothing. "
                f"Free some space there or make it writable; I carry on by myself once I can write again.")

    def _answer_unjournaled(self, prompt: Prompt, status: PromptStatus, response: str, quiet: bool = False) -> None:
        """Answer a prompt that is not journaled (refused before): published once its transaction commits."""
        reply = Reply(prompt_id=prompt.id, status=status, response=response)
        payload = reply.to_json()
        self.bus.publish_raw(self.bus.topics.reply(prompt.id), payload)
        if not quiet:
            log.info("prompt %s %s: %s", prompt.id, status, response)
        self.events.emit(Replied(reply, payload))

    def deadline(self, prompt: Prompt, received: float | None = None) -> float:
        """When the prompt must be answered: its timeout counted from when it was sent (``ts``, by the
        sender's clock), never from later than it arrived (a clock ahead gains nothing) nor earlier
        than ``max_prompt_timeout`` before (a clock far behind loses at most that). A source whose
        clock is found off by more than ``clock_skew`` is timed from when its prompt arrived."""
        received = self.clock.time() if received is None else received
        timeout = min(prompt.metadata.timeout or self.settings.prompt_timeout, self.settings.max_prompt_timeout)
        sent = received if self._clock_off(prompt, received) else prompt.ts
        return min(max(sent, received - self.settings.max_prompt_timeout), received) + timeout

    def _clock_off(self, prompt: Prompt, received: float) -> bool:
        """The source's clock is off: its prompt says it was sent after it arrived, or long before it
        arrived at a time we were connected and would have heard it at once (a prompt sent while we
        were away waits in the broker: that is no clock's fault)."""
        lag = received - prompt.ts
        ahead = lag < -self.settings.clock_skew
        behind = lag > self.settings.clock_skew and prompt.ts > self._connected_since
        if (ahead or behind) and prompt.source not in self._skewed:
            self._skewed[prompt.source] = True
            log.warning("the clock of source %r is about %.0f s %s ours: its prompts are timed from when they "
                        "arrive (keep clocks in step with NTP)", prompt.source, abs(lag), "ahead of" if ahead else
                        "behind")
        return ahead or behind

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
        self.bus.after_write(functools.partial(log.info, "prompt %s %s: %s", prompt_id, status, response))
        self.events.emit(Replied(reply, payload))

    def _publish_reply(self, prompt_id: str, payload: bytes) -> None:
        """Out once the journal has it; marked sent there once the broker has it."""
        def sent() -> None:
            with self.transaction():
                self.journal.reply_sent(prompt_id)
        self.bus.publish_raw(self.bus.topics.reply(prompt_id), payload, on_sent=sent)

    # -- presence -----------------------------------------------------------------------

    def on_presence(self, presence: Presence) -> None:
        """An agent's presence, with only what its login lets it offer (each refusal said once)."""
        topic = self.bus.topics.agent_status(presence.agent)
        presence = vetted(presence, self.trust, lambda why: self.refusals.say(topic, why))
        self.events.emit(PresenceChanged(presence))
        with self.transaction():
            if self.registry.update(presence):
                self.router.agent_gone(presence.agent)
            if presence.online:
                self.router.agent_back(presence)
                self.intake.release_early()
            self.router.retry_waiting()
        self.intake.prepare()

    def on_cleared(self, ids: dict[str, str]) -> None:
        """An agent's retained presence was emptied (``lam agents forget``): forgotten, unless it is
        online and heard from within its heartbeat (see :meth:`Registry.forget`)."""
        with self._lock:
            forgotten = self.registry.forget(ids["agent"])
        if forgotten:
            self.events.emit(AgentForgotten(ids["agent"]))
        else:
            log.info("ignoring an empty status of agent %s: online, and heard from within its heartbeat",
                     ids["agent"])

    def on_spec(self, message: AgentSpec) -> None:
        with self.transaction():
            self.specs.on_spec(message, lambda capability: self.trust.refusal(message.agent, capability))
            self.events.emit(SpecsChanged(message.agent, self.specs.advertised(message.agent)))
        self.intake.prepare()

    def _refuse_spec(self, agent_id: str, why: str) -> None:
        """An advertised spec not used (said once; from the bus thread or the understanding thread)."""
        said = why if why.startswith(f"agent {agent_id} ") else f"agent {agent_id}: {why}"
        self.refusals.say(self.bus.topics.agent_spec(agent_id), said)

    def on_spec_cleared(self, ids: dict[str, str]) -> None:
        with self.transaction():
            self.specs.on_cleared(ids)
            self.events.emit(SpecsChanged(ids["agent"], {}))
