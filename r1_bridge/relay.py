"""The bridge's MQTT side: publish prompts, wait for their replies, watch the bus.

The bridge is a thin client. It never parses or routes: it publishes to ``lam/prompts``
and reads replies; it keeps agents' retained presence for the health and workers endpoints,
and hands every message to watchers (the dashboard's live stream). All of it comes through one
subscription, ``lam/#``: a broker may deliver a message once per matching subscription (aMQTT
does), and the stream would show it twice.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable

from lamcontrol.bus import BrokerSettings, Bus
from lamcontrol.protocol import CoordinatorPresence, Metadata, Presence, Prompt, ProtocolError, Reply

log = logging.getLogger(__name__)
STALE_AFTER_BEATS = 3  # a live agent republishes its presence every heartbeat

Watcher = Callable[[str, bytes], None]


@dataclass
class Exchange:
    """A prompt the bridge relayed, and its reply once it comes."""

    prompt: Prompt
    submitted: float = field(default_factory=time.time)
    reply: Reply | None = None
    done: threading.Event = field(default_factory=threading.Event)


class Relay:
    """Prompts out, replies in, presence kept; the last ``keep`` exchanges are remembered."""

    def __init__(self, settings: BrokerSettings, component: str = "bridge", keep: int = 1000) -> None:
        # An observer of other components' messages: bad ones are theirs to report, not ours.
        self.bus = Bus(settings, component=component, report=False)
        self.topics = self.bus.topics
        self.keep = keep
        self.exchanges: OrderedDict[str, Exchange] = OrderedDict()
        self.agents: dict[str, Presence] = {}
        self.coordinator: Presence | None = None
        self.watchers: list[Watcher] = []
        self.started = time.time()
        self._lock = threading.Lock()
        self.bus.on(self.topics.all, self._on_message)  # the one subscription (see above)

    def start(self, timeout: float | None = None) -> None:
        self.bus.start(timeout)

    def stop(self) -> None:
        self.bus.stop()

    def submit(self, text: str, source: str = "http", metadata: dict | None = None) -> Exchange:
        """Publish a prompt; its reply will land in the returned exchange."""
        return self.send(Prompt(prompt=text, source=source, metadata=Metadata.from_dict(metadata or {})))

    def send(self, prompt: Prompt) -> Exchange:
        """Publish a ready-made prompt (one whose id the client chose, say)."""
        exchange = Exchange(prompt)
        with self._lock:
            self.exchanges[exchange.prompt.id] = exchange
            while len(self.exchanges) > self.keep:
                self.exchanges.popitem(last=False)
        self.bus.publish(exchange.prompt)
        return exchange

    def wait(self, prompt_id: str, timeout: float) -> Reply | None:
        exchange = self.exchanges.get(prompt_id)
        if exchange is None:
            return None
        exchange.done.wait(timeout)
        return exchange.reply

    def find_task(self, task_id: str) -> tuple[Exchange, dict] | None:
        """The exchange whose reply lists this task, and the task's summary."""
        with self._lock:
            for exchange in reversed(self.exchanges.values()):
                for task in exchange.reply.tasks if exchange.reply else ():
                    if task.task_id == task_id:
                        return exchange, task.to_dict()
        return None

    def known_agents(self) -> list[Presence]:
        """Every agent heard from lately, online or not. A presence not renewed for
        ``STALE_AFTER_BEATS`` heartbeats is left over (a crashed agent's that its broker kept, or a
        fake one): it is forgotten, neither shown nor counted on. (Agents' clocks are taken to be
        roughly right.)"""
        now = time.time()
        stale = [agent_id for agent_id, presence in list(self.agents.items())
                 if now - presence.ts > STALE_AFTER_BEATS * max(presence.heartbeat, 1.0)]
        for agent_id in stale:
            self.agents.pop(agent_id, None)
        if stale:
            log.info("forgot agents not heard from in %d heartbeats: %s", STALE_AFTER_BEATS, ", ".join(stale))
        return list(self.agents.values())

    def online_agents(self) -> list[Presence]:
        return [presence for presence in self.known_agents() if presence.online]

    def _on_message(self, topic: str, payload: bytes) -> None:
        for watcher in list(self.watchers):
            watcher(topic, payload)
        match = self.topics.match(topic)
        if match is None or match.cls not in (Reply, CoordinatorPresence, Presence):
            return
        if not payload:  # a retained presence cleared (lam agents forget)
            if match.cls is Presence:
                self.agents.pop(match.ids["agent"], None)
            return
        try:
            message = match.cls.from_topic(match.ids, payload)
        except ProtocolError:
            return  # the coordinator and agents report bad messages; the bridge only observes
        if isinstance(message, Reply):
            self._on_reply(message)
        elif isinstance(message, CoordinatorPresence):
            self.coordinator = message
        else:
            self.agents[message.agent] = message

    def _on_reply(self, reply: Reply) -> None:
        exchange = self.exchanges.get(reply.prompt_id)
        if exchange is not None:
            exchange.reply = reply
            exchange.done.set()
