"""The aMQTT broker as ``lam-broker`` runs it, hardened against clients that come and go at once.

Faults of aMQTT 0.12 worked around here:

* aMQTT looks a connecting client's id up in its session table, deletes or takes over the
  session it finds (disconnecting its live owner) and only then checks the password. Any
  client, even one with a wrong password, could end the coordinator's session by presenting
  its client id. Here the CONNECT is checked first, and the broker keys a session by user name
  and client id together (``<user>:<client id>``): a login can only ever take over a session of
  its own, and one user may still run several clients. Nameless clients get ids of their own
  (``anonymous:<id>``), refused ones a throwaway id.

* When a client connects, aMQTT walks its table of subscriptions (every client's topic filters)
  and, for each filter that matches a retained message, waits for those messages to be written
  before moving on. Meanwhile a client that subscribes to a new filter, or leaves and has its
  filters removed, changes the table's size; the walk raises ``RuntimeError: dictionary changed
  size during iteration`` and the connecting client is dropped right after its CONNACK (its last
  will is never sent either). Every walk over the table here goes over a snapshot of its keys.
* When a named, persistent client reconnects before its old connection was noticed as gone
  (a restarted agent or coordinator, a half-open socket), the new connection takes the session
  over, but the old connection's ending then marks the shared session disconnected: the new,
  live connection gets nothing more (messages are queued as if it were away) until it
  reconnects. Here the session is marked connected again whenever a live connection owns it.
* Stopping a connection's handler waits without bound: for its reader task to report that it
  stopped (it never does if cancelled while already winding down) and for the socket to drain
  (never, if the client stopped reading). A take-over of that client's session, or the broker's
  shutdown on SIGTERM, would wait as long. Here stopping a handler waits a bounded time, then
  gives up on it with a log line; ``lam-broker`` adds a deadline on the whole shutdown.
* Stopping, aMQTT ends the sessions one by one and only then closes its listeners. A client
  dropped early reconnects at once, and the broker acknowledges what it publishes (a reply
  sent again, say) and then drops it, with the sender sure it was delivered. Here the
  listeners close first, messages already acknowledged get a moment to reach their
  subscribers, and then every session ends at once.
* That walk at connect time sends the connecting client the retained messages matching *any*
  client's filters, so every ``lam send`` got every retained presence and state message. Here a
  client gets retained messages only for the filters it holds itself.
* Messages queued for a persistent session while it was away were delivered with the retain
  flag set, as if retained; they carry it cleared here, as MQTT requires [MQTT-3.3.1-9].
* Every message went to each subscriber at the QoS of its subscription, a QoS 0 message too;
  here at the lower of the two [MQTT-3.8.4-6] (:class:`Broadcast`).
* A client that stops reading made the broker hold everything sent to it, and everything sent
  to anyone after it, without bound. Here each client's queue is bounded (:mod:`.outbox`).
* aMQTT looks every second for ended sessions to drop, so an idle broker never sleeps. Here it
  looks when a client has left, and when the next kept session expires.

Beyond aMQTT, the broker keeps no retained message on a LAMControl topic where nothing may be
retained (a task, prompt, reply, result or error record, under the configured prefix): it is
delivered to the subscribers there are, and forgotten, so it cannot run again at every start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
import weakref
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

from amqtt.adapters import ReaderAdapter, WriterAdapter
from amqtt.broker import Broker
from amqtt.errors import AMQTTError
from amqtt.mqtt.connect import ConnectPacket
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.session import Session

from lamcontrol.protocol import DEFAULT_PREFIX, Topics

from .outbox import OFFLINE_BYTES, Outbox, Outgoing, QueueLimits, keep_offline

log = logging.getLogger("lam-broker")

PUBLISHED_QOS: ContextVar[int | None] = ContextVar("published_qos", default=None)  # of the message being handled
HANDLER_STOP_TIMEOUT = 2.0  # seconds a client connection is given to stop
DELIVERY_TIMEOUT = 1.0  # seconds a stopping broker gives acknowledged messages to reach subscribers


class SnapshotDict(dict):
    """A dict whose ``for key in d`` walks a copy of the keys, so changes made meanwhile are safe."""

    def __iter__(self) -> Iterator[Any]:
        return iter(list(self.keys()))


class ReplayReader(ReaderAdapter):
    """A reader that first hands out bytes already read from the connection, then reads on."""

    def __init__(self, head: bytes, reader: ReaderAdapter) -> None:
        self.head = head
        self.reader = reader

    async def read(self, n: int = -1) -> bytes:
        if not self.head:
            return await self.reader.read(n)
        if n < 0:
            data, self.head = self.head + await self.reader.read(n), b""
        else:
            data, self.head = self.head[:n], self.head[n:]
        return data

    def feed_eof(self) -> None:
        self.reader.feed_eof()


class Broadcast(dict):
    """A message on its way to the subscribers: aMQTT asks it ``get("qos", subscribed QoS)`` for each
    one, and it answers the lower of that and the QoS the message was published with."""

    def __init__(self, fields: dict[str, Any], published: int) -> None:
        super().__init__(fields)
        self.published = published

    def get(self, key: str, default: Any = None) -> Any:
        if key == "qos" and key not in self and default is not None:
            return min(self.published, default)
        return super().get(key, default)


def mark_connected(session: Session) -> None:
    if not session.transitions.is_connected():
        session.transitions.connect()


class EmbeddedBroker(Broker):
    """aMQTT's broker, safe when clients connect, subscribe, leave and take sessions over at once."""

    def __init__(self, config: dict, prefix: str = DEFAULT_PREFIX, limits: QueueLimits = QueueLimits()) -> None:
        super().__init__(config)
        self._subscriptions = SnapshotDict()
        self.topics = Topics(prefix)
        self.limits = limits
        self._outboxes: weakref.WeakSet[Outbox] = weakref.WeakSet()
        self._refused_retained: set[tuple[str, str]] = set()  # (client, topic kind) already logged
        self._client_left = asyncio.Event()

    async def _initialize_client_session(self, reader: ReaderAdapter, writer: WriterAdapter, remote_address: str,
                                         remote_port: int) -> tuple[BrokerProtocolHandler, Session]:
        try:
            connect = await ConnectPacket.from_stream(reader)
        except Exception as exc:  # not a readable CONNECT: end the connection, as aMQTT does
            await writer.close()
            raise AMQTTError(f"no readable CONNECT packet: {exc!r}") from exc
        connect.payload.client_id = await self.bound_client_id(connect)
        return await super()._initialize_client_session(ReplayReader(bytes(connect.to_bytes()), reader), writer,
                                                        remote_address, remote_port)

    async def bound_client_id(self, connect: ConnectPacket) -> str:
        """The session key of a connection: ``<user>:<client id>`` once its password checks out."""
        if not connect.username:
            return f"anonymous:{connect.client_id}" if connect.client_id else ""
        probe = Session()
        probe.client_id, probe.username, probe.password = connect.client_id, connect.username, connect.password
        if await self._authenticate(probe, None):
            return f"{connect.username}:{connect.client_id or uuid.uuid4().hex}"
        return f"refused:{uuid.uuid4().hex}"

    async def _stop_handler(self, handler: BrokerProtocolHandler) -> None:
        try:
            await asyncio.wait_for(super()._stop_handler(handler), HANDLER_STOP_TIMEOUT)
        except asyncio.TimeoutError:
            client = handler.session.client_id if handler.session else "?"
            log.warning("connection of %s did not stop within %g s; left to close with the socket",
                        client, HANDLER_STOP_TIMEOUT)

    async def shutdown(self) -> None:
        for server in self._servers.values():
            if server.instance:  # stop listening (a websocket server wraps an asyncio one)
                getattr(server.instance, "server", server.instance).close()  # connections stay open
        await self._deliver_in_flight(DELIVERY_TIMEOUT)
        await asyncio.gather(*(self._cleanup_session(client_id) for client_id in list(self._sessions)))
        await super().shutdown()

    async def _deliver_in_flight(self, seconds: float) -> None:
        """Wait (at most ``seconds``) until messages already taken are handed to their subscribers."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while loop.time() < deadline and (not self._broadcast_queue.empty()
                                          or any(not task.done() for task in self._tasks_queue)
                                          or any(outbox.busy for outbox in self._outboxes if outbox.live())):
            await asyncio.sleep(0.01)

    async def _handle_message_delivery(self, client_session: Session, handler: BrokerProtocolHandler,
                                       wait_deliver: asyncio.Future[Any]) -> bool:
        message = wait_deliver.result()
        PUBLISHED_QOS.set(message.qos if message is not None else None)  # this connection's task only
        return await super()._handle_message_delivery(client_session, handler, wait_deliver)

    async def _broadcast_message(self, session: Session | None, topic: str | None, data: bytes | bytearray | None,
                                 force_qos: int | None = None) -> None:
        published = PUBLISHED_QOS.get()
        if force_qos is not None or session is None or published is None:
            await super()._broadcast_message(session, topic, data, force_qos)
        else:
            await self._broadcast_queue.put(Broadcast({"session": session, "topic": topic, "data": data}, published))

    def _get_handler(self, session: Session) -> Outbox | None:
        """The outbox of the session's connection: everything the broker sends goes through it."""
        handler = super()._get_handler(session)
        if handler is None:
            return None
        outbox = getattr(handler, "lam_outbox", None)
        if outbox is None:
            outbox = handler.lam_outbox = Outbox(self, handler, session, self.limits)
            self._outboxes.add(outbox)
        return outbox

    async def _retain_broadcast_message(self, broadcast: dict[str, Any], qos: int, target_session: Session) -> None:
        keep_offline(target_session, Outgoing(broadcast["topic"], broadcast["data"], qos, False), self.limits)

    async def _publish_session_retained_messages(self, session: Session) -> None:
        outbox = self._get_handler(session)
        while outbox is not None and not session.retained_messages.empty():
            message = session.retained_messages.get_nowait()
            outbox.put(Outgoing(message.topic, message.data, message.qos or 0, False))  # queued, not retained
        session.attributes.pop(OFFLINE_BYTES, None)

    async def retain_message(self, source_session: Session | None, topic_name: str | None,
                             data: bytes | bytearray | None, qos: int | None = None) -> None:
        if data and topic_name and not self.topics.may_retain(topic_name):
            client = source_session.client_id if source_session else "the broker"
            kind = self.topics.match(topic_name).cls.__name__
            if (client, kind) not in self._refused_retained:
                if len(self._refused_retained) > 1000:
                    self._refused_retained.clear()
                self._refused_retained.add((client, kind))
                log.warning("%s published a retained %s on %s: delivered, not kept (nothing may be retained there)",
                            client, kind, topic_name)
            return
        await super().retain_message(source_session, topic_name, data, qos)

    async def _publish_retained_messages_for_subscription(self, subscription: tuple[str, int],
                                                         session: Session) -> None:
        holders = self._subscriptions.get(subscription[0], [])
        if any(holder.client_id == session.client_id for holder, _ in holders):
            await super()._publish_retained_messages_for_subscription(subscription, session)

    async def _client_message_loop(self, client_session: Session, handler: BrokerProtocolHandler) -> None:
        # A taken-over session may have been marked disconnected by its old connection by now.
        mark_connected(client_session)
        await super()._client_message_loop(client_session, handler)

    async def _handle_disconnect(self, client_session: Session, handler: BrokerProtocolHandler,
                                 disconnect_waiter: Any) -> None:
        await super()._handle_disconnect(client_session, handler, disconnect_waiter)
        owner, current = self._sessions.get(client_session.client_id, (None, None))
        if owner is client_session and current is not handler:
            mark_connected(client_session)  # a newer connection took this session over and lives on
        self._client_left.set()

    async def _session_monitor(self) -> None:
        """Drop ended sessions as aMQTT does (clean or anonymous ones at once, others once past
        ``session_expiry_interval``), but only when a client has left or a kept session expires."""
        while True:
            self._client_left.clear()
            next_expiry = math.inf
            for client_id in list(self._sessions):
                session, _ = self._sessions.get(client_id, (None, None))  # as it is now: a client may be back
                if session is None or session.transitions.state != "disconnected":
                    continue
                expires = self._expiry(session)
                if session.is_anonymous or session.clean_session or expires <= time.time():
                    await self._cleanup_session(client_id)
                else:
                    next_expiry = min(next_expiry, expires)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._client_left.wait(), None if next_expiry == math.inf
                                       else next_expiry - time.time())

    def _expiry(self, session: Session) -> float:
        """When an ended session may be dropped (aMQTT counts whole seconds); math.inf for never."""
        interval = self.config.session_expiry_interval
        if interval is None or not session.last_disconnect_time:
            return math.inf
        return session.last_disconnect_time + interval + 1
