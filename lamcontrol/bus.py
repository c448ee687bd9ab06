"""The MQTT connection every LAMControl process uses, over paho-mqtt 2.x.

:class:`Bus` adds to paho what each component would otherwise write again: broker URLs
(``mqtt://user:pass@host:port``, ``mqtts://`` for TLS, ``ws://``), a last will, reconnect
back-off, resubscription on reconnect, ``TCP_NODELAY`` (without it a QoS 1 round trip
waits on Nagle's algorithm for tens of milliseconds), a payload size limit, refusals
reported on ``lam/errors``, and one thread per bus that reads, runs the handlers and writes.

That thread drives paho through its external-loop interface (``loop_read``, ``loop_write``,
``loop_misc`` and the socket callbacks): handlers run between reads, never inside a paho
callback, and what they publish is written at once, without handing it to another thread.
Other threads may publish at any time: while the bus thread sleeps, they write what they publish
themselves (plain TCP); otherwise they wake it to write it.

A retained message where nothing may be retained (a task, prompt or result someone published
with the retain flag) is not handled: every new subscriber would get it, so an agent would run
the task again at each start. It is refused on ``lam/errors`` and cleared where this login may
write; the empty message that clears such a topic is ignored too. A broker says a message is
retained only to a new subscription, so every SWEEP seconds a bus subscribes again to its
filters where nothing may be retained, and the broker sends what was left there meanwhile.
"""

from __future__ import annotations

import collections
import functools
import logging
import math
import os
import random
import re
import select
import selectors
import socket
import ssl
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, TypeVar
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.matcher import MQTTMatcher
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from . import config as lamconfig
from . import service
from .protocol import DEFAULT_MAX_PAYLOAD, ErrorRecord, Message, ProtocolError, Topics, check_size

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)
Handler = Callable[[str, bytes], None]
Cleared = Callable[[dict[str, str]], None]
Call = Callable[[], None]
CONNECT, CALL, PUBLISHED = "connect", "call", "published"  # inbox entries that are not messages
BURST = 64  # messages handled together, in one transaction when there is one
RECONNECT_MIN, RECONNECT_MAX = 0.5, 8.0  # seconds; each wait is drawn at random below a doubling cap
IDLE = 1.0  # seconds the bus thread pauses after an unexpected error
LONGEST_WAIT = 3600.0  # seconds the bus thread sleeps at most, with no keepalive to keep
READ_AHEAD = 1000  # packets at most read in one go before a burst is handled
SWEEP = 60.0  # seconds between asks for retained messages where nothing may be retained
SEEN_STRAYS = 1000  # stray retained messages remembered as reported
PASSWORD_IN_URL = re.compile(r"(://[^:/@,]*:)[^@,]*@")
SCHEMES = {"mqtt": ("tcp", False, 1883), "mqtts": ("tcp", True, 8883), "ws": ("websockets", False, 80),
           "wss": ("websockets", True, 443)}


class BusError(RuntimeError):
    """The broker cannot be reached or refused us; the message says which and why."""


REFUSED_LOGIN = (134, 135)  # CONNACK: bad user name or password, not authorized (MQTT 5 codes; paho maps 3.1.1's)
GIVE_UP_AFTER = 3  # refused logins in a row after which a component stops trying (see Bus.gave_up)


class CommitFailed(RuntimeError):
    """The transaction around a burst could not commit: nothing was published or acknowledged."""


class RetryBurst(Exception):
    """Raised by a transaction that could not commit but whose owner has changed how it handles
    messages (the coordinator, once its journal cannot write): the burst is handled once more at once."""


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
    origin: str = ""  # where the URL came from ("from --broker"), for messages that name the broker
    password_from: str = ""  # where the password came from, for the message of a refused login

    def __post_init__(self) -> None:
        """Read the URL: one address, or the nodes of a cluster separated by commas
        (``mqtt://a:1883,b:1883``: the first one's scheme and login apply to those that name none)."""
        items = [item.strip() for item in self.url.split(",") if item.strip()] or ["127.0.0.1"]
        first = urlsplit(items[0] if "://" in items[0] else f"mqtt://{items[0]}")
        if first.scheme not in SCHEMES:
            raise lamconfig.ConfigError(f"broker URL {self.safe_url} must start with mqtt://, mqtts://, ws:// or wss://")
        self.transport, self.tls, default_port = SCHEMES[first.scheme]
        self.addresses: list[tuple[str, int]] = []  # every node, tried in turn
        for item in items:
            parts = urlsplit(item if "://" in item else f"{first.scheme}://{item}")
            if parts.scheme != first.scheme:
                raise lamconfig.ConfigError(f"broker URL {self.safe_url}: every address must use {first.scheme}://")
            try:
                self.addresses.append((parts.hostname or "127.0.0.1", parts.port or default_port))
            except ValueError:
                raise lamconfig.ConfigError(f"broker URL {self.safe_url} has a bad port") from None
            self.username = unquote(parts.username) if parts.username else self.username
            self.password = unquote(parts.password) if parts.password else self.password
        self.host, self.port = self.addresses[0]
        self.path = first.path or "/mqtt"

    @property
    def safe_url(self) -> str:
        """The URL with any password masked, for logs."""
        return PASSWORD_IN_URL.sub(r"\1***@", self.url)

    @property
    def where(self) -> str:
        """The URL (password masked) and where it came from."""
        return f"{self.safe_url} ({self.origin})" if self.origin else self.safe_url

    def refusal(self, user: str, reason: object) -> str:
        """What to say when the broker refused our login: it was reached, who was refused, where the password lives."""
        if not self.password:
            fix = ("no password was given; it lets in only its users: set [broker] username and password_file, or "
                   "$LAM_BROKER_PASSWORD (lam join and lam mosquitto-config keep each user's password in their "
                   "credentials/ folder)")
        else:
            fix = f"check the user name and the password, from {self.password_from or 'the configuration'}"
        return f"the MQTT broker at {self.where} was reached and refused user {user} ({reason}): {fix}"

    @property
    def topics(self) -> Topics:
        return Topics(self.prefix)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> BrokerSettings:
        section = config["broker"]
        password = lamconfig.read_secret(section["password"], section["password_file"], "LAM_BROKER_PASSWORD")
        where = config.get("path", "the config")
        password_from = ("the broker URL" if urlsplit(section["url"]).password else
                         "$LAM_BROKER_PASSWORD" if os.environ.get("LAM_BROKER_PASSWORD") else
                         f"{section['password_file']} ([broker] password_file)" if section["password_file"] else
                         f"[broker] password in {where}")
        origin = config.get("broker_origin", "")
        return cls(url=section["url"], username=section["username"], password=password, ca_file=section["ca_file"],
                   cert_file=section["cert_file"], key_file=section["key_file"], tls_insecure=section["tls_insecure"],
                   keepalive=int(section["keepalive"]), prefix=section["prefix"],
                   max_payload=int(section["max_payload"]),
                   origin=origin if origin.startswith("the default") or not origin else f"from {origin}",
                   password_from=password_from)


@dataclass(frozen=True)
class Subscription:
    """A typed handler, for the topics of its type whose levels carry ``ids``."""

    handler: Callable[[Any], None]
    cleared: Cleared | None
    ids: dict[str, str]

    def wants(self, topic_ids: dict[str, str]) -> bool:
        return all(topic_ids.get(k) == v for k, v in self.ids.items())


# What an MQTT 3.1.1 acknowledgement says besides its message id: success, no properties.
_ACKED, _NO_PROPERTIES = ReasonCode(PacketTypes.PUBACK), Properties(PacketTypes.PUBACK)


class _Client(mqtt.Client):
    """paho's client with its costs per packet cut; the protocol handling is paho's.

    - paho asks the socket for each packet in three reads (its first byte, its length, the rest):
      three system calls for every acknowledgement. This reads whatever has arrived at once and
      hands paho its bytes from memory; :attr:`unread` says when some are left to hand over.
    - paho sends each packet in its own call; this gathers them, and :meth:`flush` sends a write
      cycle's packets at once.
    - paho connects to one address; :meth:`aim` points the next attempt at another node.
    - paho builds a reason code and a property table for every acknowledgement, though an MQTT
      3.1.1 one carries neither (about 10 µs each), and for every QoS 0 publish when ``on_publish``
      is set; this hands over the same two constant ones, and tells :attr:`on_acknowledged` the
      message id of each acknowledgement instead.

    They override private methods of paho 2.x (pinned below 3 in ``setup.cfg``); every test on
    both brokers runs through them.
    """

    on_acknowledged: Callable[[int], None] | None = None  # called on the network thread, like paho's

    CHUNK = 65536

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.unread = b""
        self._offset = 0
        self.unsent = bytearray()

    def _sock_send(self, buf: bytes | bytearray) -> int:
        """Gather what paho writes, a packet at a time, for :meth:`flush` to send in one call."""
        if self._sock is None:
            raise ConnectionError("not connected")
        self.unsent += buf
        return len(buf)

    def flush(self, sock: Any = None) -> None:
        """Send what was gathered, as much as the socket takes now; the rest waits for the next flush.
        On a broken connection it is dropped: the next read finds the loss and paho handles it."""
        sock = sock or self._sock
        if not self.unsent or sock is None:
            return
        try:
            sent = sock.send(self.unsent)
        except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
            return
        except OSError:
            sent = len(self.unsent)
        del self.unsent[:sent]

    def send_now(self) -> bool:
        """Gather and send what paho has queued, from a thread other than the one that reads; True when it
        all went out. A lost connection is left to the reading thread, which finds it (paho's
        ``loop_write`` would handle the loss here)."""
        self._packet_write()
        self.flush()
        if not self.want_write():
            self._call_socket_unregister_write()  # as loop_write does: the next packet asks again
        return not self.has_output()

    def keepalive_due(self) -> float:
        """When (paho's clock) :meth:`loop_misc` next has work: a ping to send, or one unanswered for too
        long; until then the bus thread may sleep (paho's own loop wakes every second to check)."""
        if not self._keepalive:
            return math.inf
        with self._msgtime_mutex:
            due = min(self._last_msg_out, self._last_bytes_received) + self._keepalive
        return min(due, self._ping_t + self._keepalive) if self._ping_t else due
    def aim(self, host: str, port: int) -> None:
        """Where the next :meth:`reconnect` goes (paho's own setters refuse while a connection is pending)."""
        self._host, self._port = host, port

    def has_output(self) -> bool:
        """Packets paho has queued, or bytes gathered and not yet sent."""
        return bool(self.unsent) or self.want_write()

    def forget_unread(self) -> None:
        """Drop what is left of a closed connection's bytes."""
        self.unread, self._offset = b"", 0

    def _sock_recv(self, bufsize: int) -> bytes:
        """Up to ``bufsize`` bytes, from memory when some are left, else from one large read."""
        if not self.unread:
            data = super()._sock_recv(self.CHUNK)
            if len(data) <= bufsize:
                return data
            self.unread, self._offset = data, 0
        start, end = self._offset, self._offset + bufsize
        if end >= len(self.unread):
            chunk = self.unread[start:] if start else self.unread
            self.forget_unread()
            return chunk
        self._offset = end
        return self.unread[start:end]

    def _handle_pubackcomp(self, cmd: Any) -> mqtt.MQTTErrorCode:
        """As paho's (which raises on a malformed packet); then, for a message that awaited it, tell
        :attr:`on_acknowledged`."""
        packet = self._in_packet["packet"]
        mid = int.from_bytes(packet[:2], "big")
        awaited = mid in self._out_messages
        if self._protocol == mqtt.MQTTv5 or len(packet) != 2:
            result = super()._handle_pubackcomp(cmd)
        else:
            with self._out_message_mutex:
                result = (self._do_on_publish(mid, _ACKED, _NO_PROPERTIES) if awaited
                          else mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS)
        if awaited and self.on_acknowledged is not None:
            self.on_acknowledged(mid)
        return result


class Bus:
    """A paho client that speaks the LAM protocol for one component.

    Register handlers before :meth:`start`: :meth:`subscribe` by message type (each message is
    size-checked and parsed once, and handed over typed) or :meth:`on` by topic filter for raw
    ``(topic, payload)``. They are (re)subscribed on every connect and called one at a time on
    the bus thread. A message that does not parse, or whose handler raises, is refused on
    ``lam/errors``; the bus carries on. Handlers must not wait on the bus (``wait_for_publish``):
    the thread that would answer is theirs.
    """

    def __init__(self, settings: BrokerSettings, component: str, client_id: str | None = None,
                 will: Message | None = None, persistent: bool = False, report: bool = True,
                 ack_when_handled: bool = False, transaction: Callable[[], ContextManager] | None = None,
                 fatal: tuple[type[Exception], ...] = (), clock: Callable[[], float] = time.time,
                 strays: bool = False, may_connect: Callable[[], bool] = lambda: True) -> None:
        self.settings = settings
        self.topics = settings.topics
        self.component = component
        self.report = report  # False for passive observers: they log refusals but never publish them
        self.strays = strays  # True: stray retained messages are handed over like any (to clear them by hand)
        # Acknowledge QoS 1 messages only after the handlers ran: a crash before that means redelivery.
        self.ack_when_handled = ack_when_handled
        # With a transaction (the coordinator's journal), each burst of messages is handled inside
        # one, and what the handlers publish goes out only once it has committed. ``fatal`` errors
        # (the journal's) are not a handler's to swallow: they fail the whole burst.
        self.transaction = transaction
        self.fatal = fatal
        # Each message is stamped with ``clock()`` as it is read, before it waits in the inbox; a
        # handler finds its message's stamp in ``received`` (a deferred call's: when it was deferred).
        self._clock = clock
        self.received = 0.0
        # Asked before each connection attempt: a coordinator connects only while it holds the lead.
        self.may_connect = may_connect
        self._on_sent: dict[int, Call] = {}  # message id -> what to call once the broker has it
        self._held = threading.local()
        self.client_id = client_id or f"{component}-{uuid.uuid4().hex[:8]}"
        self.connected = threading.Event()
        self.ready = threading.Event()
        self.session_present = False  # the broker kept our session (and what came for us) at the last connect
        self.last_error = ""
        self.refused = 0  # logins the broker refused in a row
        self._handlers: list[tuple[str, Handler]] = []
        # Topic filter -> its handlers, in registration order; plain topics apart, found without a walk.
        self._exact_routes: dict[str, list[Handler]] = {}
        self._wildcard_routes = MQTTMatcher()
        self._wildcards = False
        self._typed: dict[type[Message], list[Subscription]] = {}
        self._on_connect: list[Callable[[], None]] = []
        self._pending_subs: dict[int, list[str]] = {}  # SUBSCRIBE message id -> its filters, until the SUBACK
        self._refused: list[str] = []  # filters the broker refused, asked for again at _resubscribe_at
        self._resubscribe_at = 0.0
        self._resubscribe_wait = RECONNECT_MIN
        self._address = 0  # which of the broker's addresses the next connection attempt goes to
        # What the bus thread has to handle: messages it read, and calls handed over by other threads,
        # as (topic, payload, message id, QoS, when received).
        self._inbox: collections.deque[tuple[str, Any, int, int, float]] = collections.deque()
        self._selector = selectors.DefaultSelector()
        self._waker, self._wake_end = socket.socketpair()  # a byte on _wake_end wakes the bus thread
        for end in (self._waker, self._wake_end):
            end.setblocking(False)
        self._selector.register(self._waker, selectors.EVENT_READ)
        self._woken = False  # a wake-up byte is on its way
        self._sleeping = False  # the bus thread waits in select: another thread may write for it
        self._write_lock = threading.RLock()  # around each write: the bus thread's, or another thread's
        # Plain TCP sockets may be written from any thread; TLS and websocket layers may not.
        self._writes_anywhere = settings.transport == "tcp" and not settings.tls
        self._after_write: list[Call] = []
        self._thread = threading.Thread(target=self._run, name=f"{component}-bus", daemon=True)
        self._stopping = False
        self._retry_at = 0.0  # monotonic time of the next connection attempt
        self.sweep_every = SWEEP
        self._sweep_at = 0.0  # monotonic time of the next ask for stray retained messages
        self._strays: set[tuple[str, int]] = set()  # (topic, payload hash) of stray retained messages reported
        self._client = self._make_client(persistent, will)

    def _make_client(self, persistent: bool, will: Message | None) -> mqtt.Client:
        s = self.settings
        client = _Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id,
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
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_write_wanted
        client.on_connect = self._on_connect_cb
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_acknowledged = self._on_acknowledged
        return client

    # -- registration -------------------------------------------------------------------

    def on(self, topic_filter: str, handler: Handler) -> None:
        """Call ``handler(topic, payload)`` for every message matching ``topic_filter``."""
        self._handlers.append((topic_filter, handler))
        self._add_route(topic_filter, handler)

    def _add_route(self, topic_filter: str, handler: Handler) -> None:
        wildcard = "+" in topic_filter or "#" in topic_filter
        self._wildcards = self._wildcards or wildcard
        routes = self._wildcard_routes if wildcard else self._exact_routes
        try:
            routes[topic_filter].append(handler)
        except KeyError:
            routes[topic_filter] = [handler]

    def subscribe(self, cls: type[M], handler: Callable[[M], None], cleared: Cleared | None = None,
                  **ids: str) -> None:
        """Call ``handler(message)`` with every valid ``cls`` message on its topics, or only on those
        whose levels carry ``ids`` (``subscribe(Task, run, capability="echo")``); with ``cleared``,
        call ``cleared(ids)`` instead when a retained topic of that type is emptied."""
        self._typed.setdefault(cls, []).append(Subscription(handler, cleared, ids))

    def after_write(self, callback: Call) -> None:
        """Call ``callback()`` on the bus thread once what the handlers published so far is written: for
        work that must not hold those messages up, such as log lines about them. Called from another
        thread (a handler run by :meth:`handle`), it runs at once."""
        if threading.current_thread() is self._thread:
            self._after_write.append(callback)
        else:
            callback()

    def on_connect(self, callback: Call) -> None:
        """Call ``callback()`` on the bus thread after each (re)connect."""
        self._on_connect.append(callback)

    def defer(self, callback: Call) -> None:
        """Call ``callback()`` on the bus thread after the messages received so far, inside the
        transaction like a handler (what it publishes goes out once that commits)."""
        self._inbox.append((CALL, callback, 0, 0, self._clock()))
        self._wake()

    # -- life cycle ---------------------------------------------------------------------

    def start(self, timeout: float | None = None) -> None:
        """Connect in the background; with a timeout, wait until subscribed or raise BusError."""
        s = self.settings
        log.info("%s connecting to %s as %s", self.component, s.safe_url, self.client_id)
        self._client.connect_async(s.host, s.port, keepalive=s.keepalive)
        self._thread.start()
        if timeout is not None and not self.ready.wait(timeout):
            self.stop()
            if self.refused:
                raise BusError(self.last_error)
            reason = f": {self.last_error}" if self.last_error else ""
            raise BusError(f"cannot reach the MQTT broker at {s.where}{reason}")

    def gave_up(self) -> str:
        """Why to stop trying ('' while there is hope): the broker refused our login GIVE_UP_AFTER times in a row."""
        return self.last_error if self.refused >= GIVE_UP_AFTER else ""

    def stop(self, final: Message | None = None, timeout: float = 5.0) -> None:
        """Publish ``final`` (an offline presence, say), then disconnect cleanly. Not from a handler."""
        if final is not None and self.connected.is_set():
            info = self.publish(final, retain=True)
            try:
                if info is not None:  # None: held by a transaction, or a bus that never sends
                    info.wait_for_publish(timeout)
            except (RuntimeError, ValueError):
                pass
        self._writes_anywhere = False  # the DISCONNECT that follows ends the connection: the bus thread's work
        self._client.disconnect()
        self._stopping = True
        self._wake()
        if not self._thread.is_alive():
            self._close()
        elif threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    # -- publishing ---------------------------------------------------------------------

    def publish(self, message: Message, retain: bool = False) -> mqtt.MQTTMessageInfo | None:
        """Publish a protocol message at QoS 1 (queued by paho while disconnected)."""
        return self.publish_raw(message.topic(self.topics), message.to_json(), retain=retain)

    def publish_raw(self, topic: str, payload: bytes | str, retain: bool = False, qos: int = 1,
                    on_sent: Call | None = None) -> mqtt.MQTTMessageInfo | None:
        """Publish now; or, from a handler inside a transaction, as soon as it commits (returns None).
        ``on_sent()`` is called like :meth:`defer` once the broker has acknowledged the message (on the
        bus thread, so publish with it only there, or before :meth:`start`)."""
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

    # -- paho callbacks (on the bus thread, inside paho: never block or handle here) -------

    def _on_socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):
            pass  # websocket wrappers and unix sockets have no TCP options
        self._selector.register(sock, selectors.EVENT_READ)

    def _on_socket_close(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        try:
            self._selector.unregister(sock)
        except (KeyError, ValueError, RuntimeError):
            pass  # a bus stopped while connecting closed its selector first; paho closes the socket as it goes
        with self._write_lock:
            self._client.flush(sock)  # a clean disconnect's last packets
            self._client.unsent.clear()
        self._client.forget_unread()

    def _on_write_wanted(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        """paho has queued something to write from another thread: while the bus thread sleeps, send it from
        here, sparing a hand-over; else, or if the socket did not take it all, wake the bus thread for it."""
        if threading.current_thread() is self._thread:
            return
        if self._sleeping and self._writes_anywhere and self._write_lock.acquire(blocking=False):
            try:
                sent = self._client.send_now()
            finally:
                self._write_lock.release()
            if sent:
                return
        self._wake()

    def _on_connect_cb(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            if reason.value in REFUSED_LOGIN:
                self.refused += 1
                self.last_error = self.settings.refusal(self.settings.username or self.client_id, reason)
            else:
                self.last_error = f"the broker at {self.settings.where} refused the connection ({reason})"
            log.error("%s: %s", self.component, self.last_error)
            if self.gave_up():
                service.look_again()  # the process stops now, not at its next health check
            return
        self.last_error = ""
        self.refused = 0
        self._backoff = RECONNECT_MIN
        self.session_present = bool(flags.session_present)
        self.connected.set()
        self._sweep_at = time.monotonic() + self.sweep_every
        self._pending_subs.clear()
        self._refused = []
        self._resubscribe_wait = RECONNECT_MIN
        self._subscribe(self._filters())
        self._inbox.append((CONNECT, None, 0, 0, self._clock()))

    def _filters(self) -> list[str]:
        return sorted({f for f, _ in self._handlers} | {self.topics.build(cls.topic_pattern, **s.ids)
                                                        for cls, subs in self._typed.items() for s in subs})

    def _sweep(self) -> None:
        """Subscribe again to the filters where nothing may be retained: the broker sends what is retained
        there once more (MQTT 3.1.1, 3.8.4), to be refused and cleared like any stray retained message."""
        self._sweep_at = time.monotonic() + self.sweep_every
        swept = [f for f in self._filters() if not self.topics.may_retain(f)]
        if swept and self.connected.is_set():
            self._client.subscribe([(f, 1) for f in swept])

    def _subscribe(self, filters: list[str]) -> None:
        """Ask for ``filters``; the bus is ready once the broker has granted every one."""
        if filters:
            result, mid = self._client.subscribe([(f, 1) for f in filters])
            self._pending_subs[mid] = filters
        elif not self._pending_subs and not self._refused:
            self.ready.set()

    def _back_off(self) -> None:
        """Set when to try the broker again, at its next address (a cluster's next node): at random
        ("full jitter"), so clients cut off together do not all come back at once, under a cap that
        doubles per failure up to RECONNECT_MAX."""
        self._address = (self._address + 1) % len(self.settings.addresses)
        self._backoff = min(self._backoff * 2, RECONNECT_MAX)
        self._retry_at = time.monotonic() + random.uniform(RECONNECT_MIN, self._backoff)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        self.connected.clear()
        self.ready.clear()
        self._back_off()
        if reason.is_failure:
            self.last_error = self.last_error or f"disconnected ({reason})"  # keep a refusal's reason
            log.warning("%s disconnected from broker (%s); reconnecting", self.component, reason)

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, codes: list, properties: Any) -> None:
        """A SUBACK. A refused filter (a cluster node that has just lost a peer, an ACL) is asked for
        again with back-off, and the bus is not ready until every filter is granted."""
        filters = self._pending_subs.pop(mid, [])
        refused = [f for f, code in zip(filters, codes) if code.is_failure]
        if refused:
            self.last_error = f"subscription to {', '.join(refused)} refused ({codes[filters.index(refused[0])]})"
            log.error("%s: %s; asking again in %.1f s", self.component, self.last_error, self._resubscribe_wait)
            self._refused += refused
            self._resubscribe_at = time.monotonic() + self._resubscribe_wait
            self._resubscribe_wait = min(self._resubscribe_wait * 2, RECONNECT_MAX)
        elif not self._pending_subs and not self._refused:
            self.last_error = ""
            self.ready.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        if message.retain and message.payload and not self.strays and not self.topics.may_retain(message.topic):
            stray = functools.partial(self._stray_retained, message.topic, message.payload)
            self._inbox.append((CALL, stray, message.mid, message.qos, self._clock()))  # acknowledged, never handled
        else:
            self._inbox.append((message.topic, message.payload, message.mid, message.qos, self._clock()))

    def _stray_retained(self, topic: str, payload: bytes) -> None:
        """Clear it, and refuse it once: where this login may not write, it comes again at each sweep."""
        if (topic, hash(payload)) not in self._strays:
            if len(self._strays) >= SEEN_STRAYS:
                self._strays.clear()
            self._strays.add((topic, hash(payload)))
            self.refuse(topic, "a retained message where nothing may be retained (it would be handled again at "
                               "every start): ignored, and cleared", payload)
        if self.report:
            self.publish_raw(topic, b"", retain=True)

    def _on_acknowledged(self, mid: int) -> None:
        if mid in self._on_sent:
            self._inbox.append((PUBLISHED, None, mid, 0, self._clock()))

    # -- the bus thread -----------------------------------------------------------------

    def _wake(self) -> None:
        """Wake the bus thread, unless a byte sent before and not yet read will."""
        if self._woken:
            return
        self._woken = True
        try:
            self._wake_end.send(b"\0")
        except OSError:
            pass  # the socket is full of wake-ups, or stopped

    def _close(self) -> None:
        self._selector.close()
        self._waker.close()
        self._wake_end.close()

    def _run(self) -> None:
        """Until stopped: connect (again), then read, handle a burst, write, check the keepalive."""
        client = self._client
        while not (self._stopping and (client.socket() is None or not client.has_output())):
            try:
                if client.socket() is None and not self._stopping and time.monotonic() >= self._retry_at:
                    if self.may_connect():
                        self._connect()
                    else:
                        self._retry_at = time.monotonic() + RECONNECT_MIN
                    continue
                if self._refused and self.connected.is_set() and time.monotonic() >= self._resubscribe_at:
                    refused, self._refused = self._refused, []
                    self._subscribe(refused)
                if self._wait(client.socket()):
                    self._read_ahead()
                if self._inbox:
                    self._handle_burst([self._inbox.popleft() for _ in range(min(BURST, len(self._inbox)))])
                if self.report and self.connected.is_set() and time.monotonic() >= self._sweep_at:
                    self._sweep()
                if client.has_output():
                    self._write()
                if self._after_write:
                    done, self._after_write = self._after_write, []
                    for callback in done:
                        callback()
                client.loop_misc()
            except Exception:  # a bug must not silently end the component's bus
                log.exception("%s: bus thread error", self.component)
                time.sleep(IDLE)
        self._close()

    def _read_ahead(self) -> None:
        """Read what has arrived, all of it (up to READ_AHEAD packets), before handling any: each
        message is stamped when it is read, so a slow handler must not leave messages unread (and
        unstamped) in the socket while the clock runs on."""
        client = self._client
        for _ in range(READ_AHEAD):
            client.loop_read()
            sock = client.socket()
            if sock is None or not (client.unread or _readable(sock)):
                return

    def _write(self) -> None:
        """Write what paho has queued, gathered into one send so the packets leave in as few segments as fit."""
        with self._write_lock:
            self._client.loop_write()
            self._client.flush()

    def _wait(self, sock: Any) -> bool:
        """Wait for the network, a wake-up, the keepalive's next duty, the next sweep or the next connection
        attempt; True if ``sock`` has bytes. Without waiting while there is something to handle, or bytes
        held by a TLS or websocket layer."""
        pending = getattr(sock, "pending", None)
        if self._client.unread or (pending is not None and pending()):
            return True
        if sock is None:
            timeout = self._retry_at - time.monotonic()
        else:
            writing = selectors.EVENT_WRITE if self._client.has_output() else 0
            self._selector.modify(sock, selectors.EVENT_READ | writing)
            timeout = self._client.keepalive_due() - mqtt.time_func()
            if self.report and self.connected.is_set():
                timeout = min(timeout, self._sweep_at - time.monotonic())
            if self._refused:
                timeout = min(timeout, self._resubscribe_at - time.monotonic())
        readable = False
        self._sleeping = not self._inbox
        ready = self._selector.select(0.0 if self._inbox else min(max(timeout, 0.0), LONGEST_WAIT))
        self._sleeping = False
        for key, events in ready:
            if key.fileobj is self._waker:
                self._drain_wakes()
            elif events & selectors.EVENT_READ:
                readable = True
        return readable

    def _connect(self) -> None:
        host, port = self.settings.addresses[self._address]
        try:
            self._client.aim(host, port)
            self._client.reconnect()
        except Exception as exc:  # refused, unreachable, TLS or websocket handshake: all mean try later
            self.last_error = f"connection to {host}:{port} failed ({exc})" if str(exc) else "connection failed"
            self._back_off()
            several = len(self.settings.addresses) > 1
            log.warning("%s: cannot reach %s%s (%s), retrying%s", self.component, f"{host}:{port} of " if several else "",
                        self.settings.where, exc, " at the next address" if several else "")

    def _drain_wakes(self) -> None:
        """Read the wake-up bytes, then let the next wake-up send one: cleared before the read, the flag
        could stay set with no byte left to wake us. What a skipped wake-up was for is handled next."""
        try:
            self._waker.recv(4096)  # any bytes left over only wake us once more
        except BlockingIOError:
            pass
        self._woken = False

    def handle(self, topic: str, payload: bytes) -> None:
        """Handle one message now, on the calling thread, exactly as the bus thread would."""
        self._handle_burst([(topic, payload, 0, 0, self._clock())])

    def _handle_burst(self, burst: list[tuple[str, Any, int, int, float]], retry: bool = True) -> None:
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
            except RetryBurst:
                self._held.messages = self._held.after = None
                if retry:
                    self._handle_burst(burst, retry=False)
                    return
                failure = CommitFailed("the transaction asked for a second try of the same burst")
            except Exception as exc:
                failure = exc
            self._held.messages = self._held.after = None
            if failure is not None:
                self._commit_failed(burst, failure)
                return
            for topic, payload, qos, retain, on_sent in held + after:
                self._send_tracked(topic, payload, qos, retain, on_sent)
        self._ack(burst)

    def _commit_failed(self, burst: list[tuple[str, Any, int, int, float]], error: Exception) -> None:
        """Say so, and drop the connection so the broker redelivers what we did not acknowledge."""
        messages = [(topic, payload) for topic, payload, *_ in burst if topic not in (CONNECT, CALL, PUBLISHED)]
        log.error("%s: could not commit the handling of %d message(s), nothing published or acknowledged, "
                  "awaiting redelivery: %s", self.component, len(burst), error, exc_info=error)
        for topic, payload in messages or [(f"{self.component} state", b"")]:
            self.refuse(topic, CommitFailed(f"not journaled ({error}); the broker will deliver it again"), payload)
        if any(entry[3] for entry in burst) and self.ack_when_handled:
            sock = self._client.socket()
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)  # paho sees the loss and reconnects (our session kept)
                except OSError:
                    pass

    def _handle(self, burst: list[tuple[str, Any, int, int, float]]) -> None:
        for topic, payload, mid, qos, received in burst:
            self.received = received
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
        log.debug("%s received %s (%d bytes)", self.component, topic, len(payload))
        check_size(payload, self.settings.max_payload)
        if not payload and not self.strays and not self.topics.may_retain(topic):
            return  # a stray retained message being cleared
        for handlers in self._raw_handlers(topic) if self._handlers else ():
            for handler in handlers:
                self._guarded(functools.partial(handler, topic, payload), topic, payload)
        match = self.topics.match(topic) if self._typed else None
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

    def _raw_handlers(self, topic: str) -> list[list[Handler]]:
        exact = self._exact_routes.get(topic)
        found = [exact] if exact else []
        if self._wildcards:
            found.extend(self._wildcard_routes.iter_match(topic))
        return found

    def _ack(self, burst: list[tuple[str, Any, int, int, float]]) -> None:
        if self.ack_when_handled:
            for topic, payload, mid, qos, _ in burst:
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


def _readable(sock: Any) -> bool:
    """Bytes are waiting on the socket now (or in its TLS layer)."""
    pending = getattr(sock, "pending", None)
    if pending is not None and pending():
        return True
    try:
        return bool(select.select([sock], [], [], 0)[0])
    except (OSError, ValueError):
        return False
