"""The MQTT connection every LAMControl process uses, over paho-mqtt 2.x.

:class:`Bus` adds to paho what each component would otherwise write again: broker URLs
(``mqtt://user:pass@host:port``, ``mqtts://`` for TLS, ``ws://``), a last will, reconnect
back-off, resubscription on reconnect, ``TCP_NODELAY`` (without it a QoS 1 round trip
waits on Nagle's algorithm for tens of milliseconds), a payload size limit, refusals
reported on ``lam/errors``, and handlers run on a dispatcher thread, never on paho's
network thread.
"""

from __future__ import annotations

import functools
import logging
import queue
import random
import socket
import ssl
import threading
import uuid
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, TypeVar
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.matcher import MQTTMatcher

from . import config as lamconfig
from .protocol import DEFAULT_MAX_PAYLOAD, ErrorRecord, Message, ProtocolError, Topics, check_size

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)
Handler = Callable[[str, bytes], None]
Cleared = Callable[[dict[str, str]], None]
Call = Callable[[], None]
CONNECT, CALL, PUBLISHED = "connect", "call", "published"  # inbox entries that are not messages
BURST = 64  # messages handled together, in one transaction when there is one
RECONNECT_MIN, RECONNECT_MAX = 0.5, 8.0  # seconds; each wait is drawn at random below a doubling cap
SCHEMES = {"mqtt": ("tcp", False, 1883), "mqtts": ("tcp", True, 8883), "ws": ("websockets", False, 80),
           "wss": ("websockets", True, 443)}


class BusError(RuntimeError):
    """The broker cannot be reached or refused us; the message says which and why."""


class CommitFailed(RuntimeError):
    """The transaction around a burst could not commit: nothing was published or acknowledged."""


@dataclass
class BrokerSettings:
    """Where the broker is and how to log in to it."""

    url: str = "mqtt://127.0.0.1:1883"
    username: str = ""
    password: str = ""
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    tls_insecure: bool = False
    keepalive: int = 30
    prefix: str = "lam"
    max_payload: int = DEFAULT_MAX_PAYLOAD

    def __post_init__(self) -> None:
        parts = urlsplit(self.url if "://" in self.url else f"mqtt://{self.url}")
        if parts.scheme not in SCHEMES:
            raise lamconfig.ConfigError(f"broker URL {self.safe_url} must start with mqtt://, mqtts://, ws:// or wss://")
        self.transport, self.tls, default_port = SCHEMES[parts.scheme]
        self.host = parts.hostname or "127.0.0.1"
        try:
            self.port = parts.port or default_port
        except ValueError:
            raise lamconfig.ConfigError(f"broker URL {self.safe_url} has a bad port") from None
        self.path = parts.path or "/mqtt"
        self.username = unquote(parts.username) if parts.username else self.username
        self.password = unquote(parts.password) if parts.password else self.password

    @property
    def safe_url(self) -> str:
        """The URL with any password masked, for logs."""
        parts = urlsplit(self.url)
        if parts.password:
            return self.url.replace(f":{parts.password}@", ":***@")
        return self.url

    @property
    def topics(self) -> Topics:
        return Topics(self.prefix)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> BrokerSettings:
        section = config["broker"]
        password = lamconfig.read_secret(section["password"], section["password_file"], "LAM_BROKER_PASSWORD")
        return cls(url=section["url"], username=section["username"], password=password, ca_file=section["ca_file"],
                   cert_file=section["cert_file"], key_file=section["key_file"], tls_insecure=section["tls_insecure"],
                   keepalive=int(section["keepalive"]), prefix=section["prefix"],
                   max_payload=int(section["max_payload"]))


@dataclass(frozen=True)
class Subscription:
    """A typed handler, for the topics of its type whose levels carry ``ids``."""

    handler: Callable[[Any], None]
    cleared: Cleared | None
    ids: dict[str, str]

    def wants(self, topic_ids: dict[str, str]) -> bool:
        return all(topic_ids.get(k) == v for k, v in self.ids.items())


class Bus:
    """A paho client that speaks the LAM protocol for one component.

    Register handlers before :meth:`start`: :meth:`subscribe` by message type (each message is
    size-checked and parsed once, and handed over typed) or :meth:`on` by topic filter for raw
    ``(topic, payload)``. They are (re)subscribed on every connect and called one at a time on
    a dispatcher thread. A message that does not parse, or whose handler raises, is refused on
    ``lam/errors``; the bus carries on.
    """

    def __init__(self, settings: BrokerSettings, component: str, client_id: str | None = None,
                 will: Message | None = None, persistent: bool = False, report: bool = True,
                 ack_when_handled: bool = False, transaction: Callable[[], ContextManager] | None = None,
                 fatal: tuple[type[Exception], ...] = ()) -> None:
        self.settings = settings
        self.topics = settings.topics
        self.component = component
        self.report = report  # False for passive observers: they log refusals but never publish them
        # Acknowledge QoS 1 messages only after the handlers ran: a crash before that means redelivery.
        self.ack_when_handled = ack_when_handled
        # With a transaction (the coordinator's journal), each burst of messages is handled inside
        # one, and what the handlers publish goes out only once it has committed. ``fatal`` errors
        # (the journal's) are not a handler's to swallow: they fail the whole burst.
        self.transaction = transaction
        self.fatal = fatal
        self._on_sent: dict[int, Call] = {}  # message id -> what to call once the broker has it
        self._held = threading.local()
        self.client_id = client_id or f"{component}-{uuid.uuid4().hex[:8]}"
        self.connected = threading.Event()
        self.ready = threading.Event()
        self.last_error = ""
        self._handlers: list[tuple[str, Handler]] = []
        self._routes = MQTTMatcher()  # topic filter -> its handlers, in registration order
        self._typed: dict[type[Message], list[Subscription]] = {}
        self._on_connect: list[Callable[[], None]] = []
        self._pending_subs: set[int] = set()
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._dispatcher = threading.Thread(target=self._dispatch, name=f"{component}-dispatch", daemon=True)
        self._client = self._make_client(persistent, will)

    def _make_client(self, persistent: bool, will: Message | None) -> mqtt.Client:
        s = self.settings
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id,
                             clean_session=not persistent, transport=s.transport, manual_ack=self.ack_when_handled)
        if s.transport == "websockets":
            client.ws_set_options(path=s.path)
        # Always send a user name: brokers keep the queued messages of named sessions.
        client.username_pw_set(s.username or self.client_id, s.password or None)
        if s.tls:
            client.tls_set(ca_certs=s.ca_file or None, certfile=s.cert_file or None, keyfile=s.key_file or None,
                           cert_reqs=ssl.CERT_REQUIRED)
            client.tls_insecure_set(s.tls_insecure)
        if will is not None:
            client.will_set(will.topic(self.topics), will.to_json(), qos=1, retain=True)
        self._backoff = RECONNECT_MIN
        client.reconnect_delay_set(min_delay=RECONNECT_MIN, max_delay=RECONNECT_MIN)
        client.on_socket_open = self._on_socket_open
        client.on_connect = self._on_connect_cb
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        return client

    # -- registration -------------------------------------------------------------------

    def on(self, topic_filter: str, handler: Handler) -> None:
        """Call ``handler(topic, payload)`` for every message matching ``topic_filter``."""
        self._handlers.append((topic_filter, handler))
        self._add_route(topic_filter, handler)

    def _add_route(self, topic_filter: str, handler: Handler) -> None:
        try:
            self._routes[topic_filter].append(handler)
        except KeyError:
            self._routes[topic_filter] = [handler]

    def subscribe(self, cls: type[M], handler: Callable[[M], None], cleared: Cleared | None = None,
                  **ids: str) -> None:
        """Call ``handler(message)`` with every valid ``cls`` message on its topics, or only on those
        whose levels carry ``ids`` (``subscribe(Task, run, capability="echo")``); with ``cleared``,
        call ``cleared(ids)`` instead when a retained topic of that type is emptied."""
        self._typed.setdefault(cls, []).append(Subscription(handler, cleared, ids))

    def on_connect(self, callback: Call) -> None:
        """Call ``callback()`` on the dispatcher thread after each (re)connect."""
        self._on_connect.append(callback)

    def defer(self, callback: Call) -> None:
        """Call ``callback()`` on the dispatcher thread after the messages received so far, inside
        the transaction like a handler (what it publishes goes out once that commits)."""
        self._inbox.put((CALL, callback, 0, 0))

    # -- life cycle ---------------------------------------------------------------------

    def start(self, timeout: float | None = None) -> None:
        """Connect in the background; with a timeout, wait until subscribed or raise BusError."""
        s = self.settings
        log.info("%s connecting to %s as %s", self.component, s.safe_url, self.client_id)
        self._dispatcher.start()
        self._client.connect_async(s.host, s.port, keepalive=s.keepalive)
        self._client.loop_start()
        if timeout is not None and not self.ready.wait(timeout):
            self.stop()
            reason = f": {self.last_error}" if self.last_error else ""
            raise BusError(f"cannot reach the MQTT broker at {s.safe_url}{reason}")

    def stop(self, final: Message | None = None, timeout: float = 5.0) -> None:
        """Publish ``final`` (an offline presence, say), then disconnect cleanly."""
        if final is not None and self.connected.is_set():
            info = self.publish(final, retain=True)
            try:
                if info is not None:  # None: held by a transaction, or a bus that never sends
                    info.wait_for_publish(timeout)
            except (RuntimeError, ValueError):
                pass
        self._client.disconnect()
        self._client.loop_stop()
        self._inbox.put(None)

    # -- publishing ---------------------------------------------------------------------

    def publish(self, message: Message, retain: bool = False) -> mqtt.MQTTMessageInfo | None:
        """Publish a protocol message at QoS 1 (queued by paho while disconnected)."""
        return self.publish_raw(message.topic(self.topics), message.to_json(), retain=retain)

    def publish_raw(self, topic: str, payload: bytes | str, retain: bool = False, qos: int = 1,
                    on_sent: Call | None = None) -> mqtt.MQTTMessageInfo | None:
        """Publish now; or, from a handler inside a transaction, as soon as it commits (returns None).
        ``on_sent()`` is called like :meth:`defer` once the broker has acknowledged the message (on the
        dispatcher thread, so publish with it only there, or before :meth:`start`)."""
        return self._publish_held("messages", topic, payload, qos, retain, on_sent)

    def publish_after(self, topic: str, payload: bytes | str, retain: bool = False, qos: int = 1) -> None:
        """Like :meth:`publish_raw`, but inside a transaction only after everything else the
        handlers published: for what merely mirrors those messages (dashboard state)."""
        self._publish_held("after", topic, payload, qos, retain)

    def _publish_held(self, kind: str, topic: str, payload: bytes | str, qos: int, retain: bool,
                      on_sent: Call | None = None) -> mqtt.MQTTMessageInfo | None:
        held = getattr(self._held, kind, None)
        if held is not None:
            held.append((topic, payload, qos, retain, on_sent))
            return None
        return self._send_tracked(topic, payload, qos, retain, on_sent)

    def _send_tracked(self, topic: str, payload: bytes | str, qos: int, retain: bool,
                      on_sent: Call | None) -> mqtt.MQTTMessageInfo | None:
        info = self._send(topic, payload, qos, retain)
        if on_sent is not None and info is not None:
            # The acknowledgement is handled on this thread, after this: no race with registering.
            self._on_sent[info.mid] = on_sent
        return info

    def _send(self, topic: str, payload: bytes | str, qos: int, retain: bool) -> mqtt.MQTTMessageInfo:
        return self._client.publish(topic, payload, qos=qos, retain=retain)

    def refuse(self, topic: str, error: Exception | str, payload: bytes = b"") -> None:
        """Record a refused message on ``lam/errors`` and in the log."""
        record = ErrorRecord.about(self.component, topic, error, payload)
        log.warning("refused message on %s: %s", topic, record.error)
        if self.report and topic != self.topics.errors:
            self.publish(record)

    # -- paho callbacks (network thread: never block here) -------------------------------

    def _on_socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):
            pass  # websocket wrappers and unix sockets have no TCP options

    def _on_connect_cb(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            self.last_error = f"broker refused the connection ({reason})"
            log.error("%s: %s", self.component, self.last_error)
            return
        self.last_error = ""
        self._backoff = RECONNECT_MIN
        self.connected.set()
        filters = sorted({f for f, _ in self._handlers} | {self.topics.build(cls.topic_pattern, **s.ids)
                                                           for cls, subs in self._typed.items() for s in subs})
        if filters:
            result, mid = client.subscribe([(f, 1) for f in filters])
            self._pending_subs.add(mid)
        else:
            self.ready.set()
        self._inbox.put((CONNECT, None, 0, 0))

    def _back_off(self, client: mqtt.Client) -> None:
        """Set paho's next reconnect wait: random ("full jitter"), so clients cut off together
        do not all come back at once, under a cap that doubles per failure up to RECONNECT_MAX."""
        self._backoff = min(self._backoff * 2, RECONNECT_MAX)
        wait = random.uniform(RECONNECT_MIN, self._backoff)
        client.reconnect_delay_set(min_delay=wait, max_delay=wait)

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        self.last_error = "connection failed"
        self._back_off(client)
        log.warning("%s: cannot reach %s, retrying", self.component, self.settings.safe_url)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        self.connected.clear()
        self.ready.clear()
        self._back_off(client)
        if reason.is_failure:
            self.last_error = self.last_error or f"disconnected ({reason})"  # keep a refusal's reason
            log.warning("%s disconnected from broker (%s); reconnecting", self.component, reason)

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, codes: list, properties: Any) -> None:
        refused = [c for c in codes if c.is_failure]
        if refused:
            self.last_error = f"subscription refused ({refused[0]})"
            log.error("%s: %s", self.component, self.last_error)
        self._pending_subs.discard(mid)
        if not self._pending_subs:
            self.ready.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self._inbox.put((message.topic, message.payload, message.mid, message.qos))

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        if self.transaction is not None:  # only the journaling component asks to hear of acknowledgements
            self._inbox.put((PUBLISHED, None, mid, 0))

    # -- dispatcher thread --------------------------------------------------------------

    def _dispatch(self) -> None:
        running = True
        while running:
            burst = [self._inbox.get()]
            while len(burst) < BURST and not self._inbox.empty():
                burst.append(self._inbox.get_nowait())
            if None in burst:
                running = False
                burst = burst[:burst.index(None)]
            self._handle_burst(burst)

    def handle(self, topic: str, payload: bytes) -> None:
        """Handle one message now, on the calling thread, exactly as the dispatcher would."""
        self._handle_burst([(topic, payload, 0, 0)])

    def _handle_burst(self, burst: list[tuple[str, Any, int, int]]) -> None:
        """Run the handlers, inside one transaction when there is one (what they publish goes out
        once it commits), then acknowledge the burst. When the transaction fails, nothing goes out
        and nothing is acknowledged: the broker delivers the burst again after a reconnect."""
        if self.transaction is None:
            self._handle(burst)
        else:
            self._held.messages, self._held.after = held, after = [], []
            try:
                with self.transaction():
                    self._handle(burst)
                failure = None
            except Exception as exc:
                failure = exc
            self._held.messages = self._held.after = None
            if failure is not None:
                self._commit_failed(burst, failure)
                return
            for topic, payload, qos, retain, on_sent in held + after:
                self._send_tracked(topic, payload, qos, retain, on_sent)
        self._ack(burst)

    def _commit_failed(self, burst: list[tuple[str, Any, int, int]], error: Exception) -> None:
        """Say so, and drop the connection so the broker redelivers what we did not acknowledge."""
        messages = [(topic, payload) for topic, payload, mid, qos in burst if topic not in (CONNECT, CALL, PUBLISHED)]
        log.error("%s: could not commit the handling of %d message(s), nothing published or acknowledged, "
                  "awaiting redelivery: %s", self.component, len(burst), error, exc_info=error)
        for topic, payload in messages or [(f"{self.component} state", b"")]:
            self.refuse(topic, CommitFailed(f"not journaled ({error}); the broker will deliver it again"), payload)
        if any(qos for topic, payload, mid, qos in burst) and self.ack_when_handled:
            sock = self._client.socket()
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)  # paho sees the loss and reconnects (our session kept)
                except OSError:
                    pass

    def _handle(self, burst: list[tuple[str, Any, int, int]]) -> None:
        for topic, payload, mid, qos in burst:
            if topic == CONNECT:
                for callback in self._on_connect:
                    self._guarded(callback, CONNECT)
            elif topic == CALL:
                self._guarded(payload, CALL)
            elif topic == PUBLISHED:
                on_sent = self._on_sent.pop(mid, None)
                if on_sent is not None:
                    self._guarded(on_sent, PUBLISHED)
            else:
                self._guarded(functools.partial(self._route, topic, payload), topic, payload)

    def _route(self, topic: str, payload: bytes) -> None:
        check_size(payload, self.settings.max_payload)
        for handlers in list(self._routes.iter_match(topic)):
            for handler in handlers:
                self._guarded(functools.partial(handler, topic, payload), topic, payload)
        match = self.topics.match(topic)
        subscribers = [s for s in self._typed.get(match.cls, ()) if s.wants(match.ids)] if match else []
        if not subscribers:
            return
        if not payload and all(s.cleared for s in subscribers):
            for s in subscribers:
                self._guarded(functools.partial(s.cleared, match.ids), topic)
            return
        message = match.cls.from_topic(match.ids, payload)
        for s in subscribers:
            self._guarded(functools.partial(s.handler, message), topic, payload)

    def _ack(self, burst: list[tuple[str, Any, int, int]]) -> None:
        if self.ack_when_handled:
            for topic, payload, mid, qos in burst:
                if qos:
                    self._client.ack(mid, qos)

    def _guarded(self, call: Callable[[], None], topic: str, payload: bytes = b"") -> None:
        """Run one handler; what it refuses, or fails on, is reported for ``topic``."""
        try:
            call()
        except self.fatal:
            raise
        except ProtocolError as exc:
            self.refuse(topic, exc, payload)
        except Exception as exc:  # a bug must not stop the bus
            log.exception("%s: handler failed on %s", self.component, topic)
            if topic not in (CONNECT, CALL, PUBLISHED):
                self.refuse(topic, f"internal error: {exc.__class__.__name__}: {exc}", payload)
