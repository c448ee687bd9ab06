"""Each client's outgoing messages, held within limits, so one client that stops reading costs
only itself.

aMQTT hands every message to every subscriber as a task of its own that waits until the
message is written (and, at QoS 1, acknowledged). For a subscriber to ``lam/#`` that stops
reading, those tasks pile up without end; the broker's list of running tasks is only pruned
from its head, so everything sent to anyone after them stays in memory too, and each QoS 1
message that times out logs a traceback. Here :class:`Outbox` queues a connection's messages
and one task writes them, in order, with at most ``inflight`` unacknowledged. A full queue
(``messages`` or ``bytes``) drops QoS 0 messages first: the oldest QoS 0 message queued makes
room for a new message; only when nothing but QoS 1 is queued is the new message dropped.
The first drop is logged, once until the client catches up. When the connection ends, what is
still queued goes to the connection that took the session over, or waits (QoS 1, a persistent
session) in the session's offline queue, which has the same limits.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass
from typing import Any, NamedTuple

from amqtt.broker import RetainedApplicationMessage
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.session import Session

log = logging.getLogger("lam-broker")

OFFLINE_BYTES = "lamcontrol.offline_bytes"  # session attribute: bytes in its offline queue
DROPPING = "lamcontrol.dropping"  # session attribute: its drops were logged, until it catches up


@dataclass(frozen=True)
class QueueLimits:
    """What the broker holds for one client that does not keep up (``[embedded_broker]``)."""

    messages: int = 100_000  # queued per client, beyond those in flight (a coordinator behind a burst)
    bytes: int = 64 * 1024 * 1024  # payload bytes queued per client
    inflight: int = 100  # written to a client and not yet acknowledged, at once


class Outgoing(NamedTuple):
    topic: str
    data: bytes | bytearray
    qos: int
    retain: bool


def dropped(session: Session, limits: QueueLimits, what: str) -> None:
    """Note a message dropped for ``session``; the first of each spell is logged."""
    if not session.attributes.get(DROPPING):
        session.attributes[DROPPING] = True
        log.warning("client %s does not keep up: its %s queue is full (%d messages or %d bytes); dropping messages "
                    "for it, QoS 0 first, until it catches up", session.client_id, what, limits.messages,
                    limits.bytes)


def keep_offline(session: Session, message: Outgoing, limits: QueueLimits) -> bool:
    """Queue a QoS 1 message for a persistent session that is away; False when its queue is full."""
    held = session.attributes.get(OFFLINE_BYTES, 0)
    if session.retained_messages.qsize() >= limits.messages or held + len(message.data) > limits.bytes:
        dropped(session, limits, "offline")
        return False
    session.attributes[OFFLINE_BYTES] = held + len(message.data)
    session.retained_messages.put_nowait(RetainedApplicationMessage(None, message.topic, message.data, message.qos))
    return True


def persistent(session: Session) -> bool:
    return not session.clean_session and not session.is_anonymous


class Outbox:
    """One connection's outgoing messages; aMQTT's ``handler.mqtt_publish`` for the broker's own sends."""

    def __init__(self, broker: Any, handler: BrokerProtocolHandler, session: Session, limits: QueueLimits) -> None:
        self.broker, self.handler, self.session, self.limits = broker, handler, session, limits
        self.queue: deque[Outgoing] = deque()
        self.bytes = 0
        self.qos0 = 0  # QoS 0 messages in the queue
        self.flying = asyncio.Semaphore(limits.inflight)
        self.in_flight = 0  # messages written or being written, not yet acknowledged
        self.sender: asyncio.Task | None = None
        self.timed_out = False  # a QoS 1 message went unacknowledged (logged once)

    async def mqtt_publish(self, topic: str, data: bytes | bytearray, qos: int | None, retain: bool,
                           ack_timeout: int | None = None) -> None:
        """Queue a message for this connection (what aMQTT awaits; it returns at once)."""
        self.put(Outgoing(topic, data, qos or 0, retain))

    def put(self, message: Outgoing) -> None:
        while self.queue and (len(self.queue) >= self.limits.messages
                              or self.bytes + len(message.data) > self.limits.bytes):
            if not self.qos0:
                dropped(self.session, self.limits, "outgoing")
                return
            self._take(next(i for i, queued in enumerate(self.queue) if queued.qos == 0))
            dropped(self.session, self.limits, "outgoing")
        self.queue.append(message)
        self.bytes += len(message.data)
        self.qos0 += message.qos == 0
        if self.sender is None or self.sender.done():
            self.sender = asyncio.ensure_future(self._send())

    def _take(self, index: int = 0) -> Outgoing:
        message = self.queue[index]
        del self.queue[index]
        self.bytes -= len(message.data)
        self.qos0 -= message.qos == 0
        return message

    @property
    def busy(self) -> bool:
        """Messages are queued or on their way."""
        return bool(self.queue or self.in_flight)

    def live(self) -> bool:
        """This connection still serves the session."""
        current = self.broker.sessions.get(self.session.client_id, (None, None))[1]
        return (current is self.handler and self.session.transitions.is_connected()
                and not self.handler._reader_stopped.is_set())

    async def _send(self) -> None:
        """Write the queue in order, ``inflight`` at a time; hand on what is left if the connection ends."""
        while self.queue:
            await self.flying.acquire()
            if not self.queue or not self.live():
                self.flying.release()
                break
            message = self._take()
            self.in_flight += 1
            flight = asyncio.ensure_future(self.handler.mqtt_publish(message.topic, message.data, message.qos,
                                                                     retain=message.retain))
            flight.add_done_callback(self._landed)
        if not self.queue:
            self.session.attributes.pop(DROPPING, None)  # caught up
        elif not self.live():
            self._hand_on()

    def _landed(self, flight: asyncio.Task) -> None:
        self.in_flight -= 1
        self.flying.release()
        if flight.cancelled():
            return
        error = flight.exception()
        if isinstance(error, TimeoutError) and not self.timed_out:
            self.timed_out = True
            log.warning("client %s does not acknowledge its QoS 1 messages (those it did not are not sent again)",
                        self.session.client_id)
        elif error is not None:
            log.debug("sending to %s failed: %r", self.session.client_id, error)

    def _hand_on(self) -> None:
        """The connection ended with messages queued: to the connection that took the session over, else
        (QoS 1, persistent session) to the session's offline queue."""
        successor = self.broker._get_handler(self.session)
        while self.queue:
            message = self._take()
            if successor is not None and successor is not self and successor.live():
                successor.put(message)
            elif message.qos and persistent(self.session):
                keep_offline(self.session, message, self.limits)
