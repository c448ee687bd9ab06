"""The aMQTT broker as ``lam-broker`` runs it, hardened against clients that come and go at once.

Three faults of aMQTT 0.12 are worked around here:

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
* That walk at connect time sends the connecting client the retained messages matching *any*
  client's filters, so every ``lam send`` got every retained presence and state message. Here a
  client gets retained messages only for the filters it holds itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from amqtt.broker import Broker
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.session import Session


class SnapshotDict(dict):
    """A dict whose ``for key in d`` walks a copy of the keys, so changes made meanwhile are safe."""

    def __iter__(self) -> Iterator[Any]:
        return iter(list(self.keys()))


def mark_connected(session: Session) -> None:
    if not session.transitions.is_connected():
        session.transitions.connect()


class EmbeddedBroker(Broker):
    """aMQTT's broker, safe when clients connect, subscribe, leave and take sessions over at once."""

    def __init__(self, config: dict) -> None:
        super().__init__(config)
        self._subscriptions = SnapshotDict()

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
