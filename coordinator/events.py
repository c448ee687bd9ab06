"""What the coordinator tells its extensions, and how they listen.

The core emits one event per fact, synchronously, inside the transaction that recorded it;
whatever a handler publishes goes out after the core's own messages (a reply before the
Home Assistant state that mirrors it). An extension (:class:`Extension`, after Zigbee2MQTT's) is
made from the bus and the events, subscribes to what it needs as it is made::

    self.listen(Replied, self.replied)

and takes every subscription back in :meth:`Extension.stop`, which the coordinator calls when it
stops. A handler that raises is logged; it never stops the core.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

from lamcontrol.bus import Bus, Call, Cleared, Handler, M
from lamcontrol.clock import Clock
from lamcontrol.language import CapabilitySpec
from lamcontrol.protocol import Presence, Prompt, Reply, Result, ResultState, Task, TaskState

from .grammar import ParseResult

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PromptReceived:
    """A prompt the coordinator took on: new, or resumed from the journal after a restart."""

    prompt: Prompt


@dataclass(frozen=True)
class PromptParsed:
    """What the parser made of a prompt; ``failed`` when the configured parser broke and the grammar answered."""

    prompt: Prompt
    result: ParseResult
    failed: bool = False


@dataclass(frozen=True)
class TaskDispatched:
    """A task offered to an agent (again, on each new attempt)."""

    task: Task


@dataclass(frozen=True)
class TaskFinished:
    """A task's end (``state`` succeeded or failed); ``agent`` is None when no agent took it."""

    task_id: str
    capability: str
    agent: str | None
    state: TaskState  # succeeded or failed
    message: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    attempt: int = 0

    def result(self) -> Result | None:
        """The task's end as its agent's last result, or None when no agent took it."""
        if self.agent is None:
            return None
        return Result(task_id=self.task_id, agent=self.agent, state=ResultState(self.state), message=self.message,
                      data=self.data, attempt=self.attempt)


@dataclass(frozen=True)
class Replied:
    """The one reply a prompt got, and its JSON as published."""

    reply: Reply
    payload: bytes


@dataclass(frozen=True)
class PresenceChanged:
    """A valid retained presence of an agent (online or offline)."""

    presence: Presence


@dataclass(frozen=True)
class SpecsChanged:
    """What an agent's capabilities understand, as it advertised them (empty once cleared)."""

    agent_id: str
    specs: dict[str, CapabilitySpec]


@dataclass(frozen=True)
class AgentForgotten:
    """An agent's retained presence was cleared: forget it."""

    agent_id: str


E = TypeVar("E")


class Events:
    """Event type -> handlers, called in the order they subscribed."""

    def __init__(self) -> None:
        self._handlers: dict[type, list[Callable[[Any], None]]] = {}

    def on(self, event_type: type[E], handler: Callable[[E], None]) -> None:
        self._handlers.setdefault(event_type, []).append(handler)

    def off(self, *handlers: Callable[[Any], None]) -> None:
        """Stop calling these handlers, for every event type."""
        for event_type, subscribed in self._handlers.items():
            self._handlers[event_type] = [h for h in subscribed if h not in handlers]

    def emit(self, event: object) -> None:
        for handler in self._handlers.get(type(event), ()):
            try:
                handler(event)
            except Exception:
                log.exception("extension failed on %s", type(event).__name__)


class Extension:
    """A part of the coordinator beside its core (Home Assistant discovery, metrics, its own commands).

    As in Zigbee2MQTT, an extension subscribes as it is made, through its own :meth:`listen`,
    :meth:`on`, :meth:`subscribe` and :meth:`on_connect`, which remember every handler, and
    :meth:`stop` takes them all back: the coordinator calls it when it stops (and so before it
    restarts), and an extension with more to release (a server) adds that to its own ``stop``.
    """

    def __init__(self, bus: Bus, events: Events, clock: Clock = Clock()) -> None:
        self.bus, self.events, self.clock = bus, events, clock
        self._listening: list[Callable[[Any], None]] = []
        self._subscribed: list[Callable[..., None]] = []

    def listen(self, event_type: type[E], handler: Callable[[E], None]) -> None:
        """``handler(event)`` for each event of ``event_type``."""
        self.events.on(event_type, handler)
        self._listening.append(handler)

    def on(self, topic_filter: str, handler: Handler) -> None:
        """``handler(topic, payload)`` for each message on ``topic_filter`` (:meth:`Bus.on`)."""
        self.bus.on(topic_filter, handler)
        self._subscribed.append(handler)

    def subscribe(self, cls: type[M], handler: Callable[[M], None], cleared: Cleared | None = None) -> None:
        """``handler(message)`` for each valid ``cls`` message (:meth:`Bus.subscribe`)."""
        self.bus.subscribe(cls, handler, cleared)
        self._subscribed.append(handler)

    def on_connect(self, callback: Call) -> None:
        """``callback()`` after each (re)connect (:meth:`Bus.on_connect`)."""
        self.bus.on_connect(callback)
        self._subscribed.append(callback)

    def stop(self) -> None:
        """Take back every subscription: nothing reaches the extension any more."""
        self.events.off(*self._listening)
        self.bus.unsubscribe(*self._subscribed)
        self._listening.clear()
        self._subscribed.clear()


ExtensionFactory = Callable[[Bus, Events, Clock], Extension]  # makes an extension, which subscribes as it is made
