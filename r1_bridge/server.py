"""Serving the bridge: waitress, with HTTPS through a small TLS front in the same process.

Waitress speaks plain HTTP only, and an ``ssl``-wrapped socket does not survive its
non-blocking event loop (TLS records buffered inside OpenSSL are invisible to ``select``).
So with a certificate, waitress listens on a private loopback port and :class:`TLSFront`
accepts HTTPS on the public address, completes each handshake in a thread of its own and
relays the decrypted bytes. It remembers which loopback port carries which client, and
:func:`client_address` hands the real address (and the ``https`` scheme) back to the app,
so rate limits and logs see the browser, not 127.0.0.1.

Connections that hold a place without using it cannot take the bridge down: each address may
hold ``per_address`` connections (more are closed at once), a request must arrive whole within
REQUEST_TIMEOUT seconds of its first byte, and a connection with no request going is closed
after IDLE_TIMEOUT seconds. Requests in progress (a long ``wait``, a live stream) are not cut.
"""

from __future__ import annotations

import functools
import json
import logging
import select
import socket
import ssl
import threading
import time
from collections import Counter
from typing import Callable

from waitress import wasyncore
from waitress.channel import HTTPChannel
from waitress.server import create_server
from waitress.task import ErrorTask

from lamcontrol import config as lamconfig

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT = 10.0  # seconds a TLS handshake may take
REQUEST_TIMEOUT = 10.0  # seconds from a request's first byte to its last (headers and body)
IDLE_TIMEOUT = 15.0  # seconds a connection may sit with no request going
RELAY_TIMEOUT = 600.0  # seconds the TLS front relays a silent connection (waitress ends idle ones sooner)
# Seconds between checks of those timeouts: waitress's loop sleeps as long when nothing happens, so a
# connection is closed within this much after its time is up.
CHECK_EVERY = 5.0
MAX_CONNECTIONS = 200
PER_ADDRESS = 20
CHUNK = 64 * 1024


class AddressSlots:
    """Open connections per client address, at most ``limit`` each (logged once per address when hit)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open: Counter[str] = Counter()
        self.refusing: set[str] = set()  # addresses at the limit, already logged
        self._lock = threading.Lock()

    def take(self, address: str) -> bool:
        """A place for one more connection from ``address``; False when it holds ``limit`` already."""
        with self._lock:
            if self.open[address] < self.limit:
                self.open[address] += 1
                return True
            first = address not in self.refusing
            self.refusing.add(address)
        if first:
            log.warning("%s holds %d connections, the most one address may: closing its new ones until some end",
                        address, self.limit)
        return False

    def give_back(self, address: str) -> None:
        with self._lock:
            self.open[address] -= 1
            if self.open[address] <= 0:
                del self.open[address]
            if self.open[address] < self.limit:
                self.refusing.discard(address)


def format_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class TLSFront:
    """Accepts TLS on ``(host, port)`` and relays each connection to ``upstream``."""

    def __init__(self, host: str, port: int, cert_file: str, key_file: str, upstream: tuple[str, int],
                 max_connections: int = MAX_CONNECTIONS, per_address: int = PER_ADDRESS) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.context.load_cert_chain(cert_file, key_file)
        self.upstream = upstream
        self.clients: dict[int, str] = {}  # loopback port -> client address
        self.slots = threading.BoundedSemaphore(max_connections)
        self.addresses = AddressSlots(per_address)
        self.listener = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET,
                                             backlog=128)
        self.port = self.listener.getsockname()[1]
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, name="tls-accept", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._closing.set()
        try:
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()

    def _accept_loop(self) -> None:
        while not self._closing.is_set():
            try:
                conn, address = self.listener.accept()
            except OSError:
                if self._closing.is_set():
                    return
                continue
            if not self.slots.acquire(blocking=False):
                conn.close()  # too many connections: refuse rather than queue without bound
                continue
            if not self.addresses.take(address[0]):
                conn.close()
                self.slots.release()
                continue
            threading.Thread(target=self._serve, args=(conn, address[0]), name="tls-conn", daemon=True).start()

    def _serve(self, conn: socket.socket, client: str) -> None:
        upstream = None
        try:
            conn.settimeout(HANDSHAKE_TIMEOUT)
            tls = self.context.wrap_socket(conn, server_side=True)
            upstream = socket.create_connection(self.upstream, timeout=HANDSHAKE_TIMEOUT)
            upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            tls.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            local_port = upstream.getsockname()[1]
            self.clients[local_port] = client
            try:
                relay(tls, upstream)
            finally:
                self.clients.pop(local_port, None)
        except (OSError, ssl.SSLError) as exc:
            log.debug("TLS connection from %s ended: %s", client, exc)
        finally:
            for sock in (conn, upstream):
                if sock is not None:
                    try:
                        sock.close()
                    except OSError:
                        pass
            self.addresses.give_back(client)
            self.slots.release()


def relay(tls: ssl.SSLSocket, plain: socket.socket) -> None:
    """Copy bytes both ways until either side closes and what it sent has been delivered."""
    tls.setblocking(False)
    plain.setblocking(False)
    to_tls, to_plain = b"", b""
    tls_open = plain_open = True
    while (tls_open and plain_open) or (to_tls and tls_open) or (to_plain and plain_open):
        readers = [s for s, is_open, backlog in ((tls, tls_open and plain_open, to_plain),
                                                 (plain, plain_open and tls_open, to_tls))
                   if is_open and len(backlog) < CHUNK]
        writers = [s for s, data in ((tls, to_tls), (plain, to_plain)) if data]
        if tls in readers and tls.pending():
            readable = [tls]  # decrypted bytes already waiting inside OpenSSL
        else:
            readable, writable, _ = select.select(readers, writers, [], RELAY_TIMEOUT)
            if not readable and not writable:
                return
            for sock in writable:
                try:
                    if sock is tls:
                        to_tls = to_tls[tls.send(to_tls):]
                    else:
                        to_plain = to_plain[plain.send(to_plain):]
                except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
                    pass
        for sock in readable:
            try:
                data = sock.recv(CHUNK)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                continue
            except (ConnectionError, ssl.SSLError):
                data = b""
            if sock is tls:
                tls_open = bool(data)
                to_plain += data
            else:
                plain_open = bool(data)
                to_tls += data


def channel_class(body_limit_message: str, addresses: AddressSlots | None) -> type[HTTPChannel]:
    """A waitress channel whose own errors (a body over its limit, a malformed request) are JSON too, that
    closes a request not received whole within REQUEST_TIMEOUT and, given ``addresses``, a connection
    from an address that holds too many."""

    class JsonErrorTask(ErrorTask):
        def execute(self) -> None:
            error = self.request.error
            message = body_limit_message if error.code == 413 else f"{error.reason}: {error.body}"
            body = json.dumps({"error": message}).encode()
            self.status = f"{error.code} {error.reason}"
            self.response_headers.extend([("Content-Type", "application/json"), ("Connection", "close")])
            self.set_close_on_finish()
            self.content_length = len(body)
            self.write(body)

    class GuardedChannel(HTTPChannel):
        error_task_class = JsonErrorTask
        address: str | None = None  # the place this connection holds in ``addresses``
        request_began = 0.0  # when the first byte of the request being received came

        def __init__(self, server, sock, addr, adj, map=None) -> None:
            super().__init__(server, sock, addr, adj, map)
            if addresses is not None:
                if addresses.take(addr[0]):
                    self.address = addr[0]
                else:
                    self.will_close = True

        def received(self, data: bytes) -> bool:
            if self.request is None and data:
                self.request_began = time.monotonic()
            return super().received(data)

        def readable(self) -> bool:
            # waitress asks before every wait for the network, at least once a second.
            if self.request is not None and time.monotonic() - self.request_began > REQUEST_TIMEOUT:
                self.will_close = True
            return super().readable()

        def del_channel(self, map=None) -> None:
            super().del_channel(map)
            if self.address is not None:
                addresses.give_back(self.address)
                self.address = None

    return GuardedChannel


class Server:
    """The bridge's HTTP(S) listener; ``port`` is known once constructed (``0`` picks a free one)."""

    def __init__(self, app: Callable, listen: str, threads: int = 16, cert_file: str = "", key_file: str = "",
                 max_body: int = 1024 * 1024, too_large: str = "Request body too large",
                 max_connections: int = MAX_CONNECTIONS, per_address: int = PER_ADDRESS) -> None:
        host, port = lamconfig.host_port(listen, "listen address")
        self.https = bool(cert_file and key_file)
        self.tls: TLSFront | None = None
        # waitress's loop wakes for its sockets and its trigger; its timeout only paces the idle check
        options = dict(threads=threads, max_request_body_size=max_body, ident="lamcontrol",
                       connection_limit=max_connections, channel_timeout=IDLE_TIMEOUT, cleanup_interval=CHECK_EVERY,
                       asyncore_loop_timeout=CHECK_EVERY, clear_untrusted_proxy_headers=True)
        if self.https:  # the TLS front counts each address's connections: waitress sees only its own
            self.waitress = create_server(self._with_client_address(app), host="127.0.0.1", port=0, **options)
            self.tls = TLSFront(host, port, cert_file, key_file, ("127.0.0.1", self.waitress.effective_port),
                                max_connections, per_address)
            self.host, self.port = host, self.tls.port
            addresses = None
        else:
            self.waitress = create_server(app, host=host, port=port, **options)
            self.host, self.port = host, self.waitress.effective_port
            addresses = AddressSlots(per_address)
        self.waitress.channel_class = channel_class(too_large, addresses)
        self._thread = threading.Thread(target=self.waitress.run, name="waitress", daemon=True)

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else "::1" if self.host == "::" else self.host
        return f"{'https' if self.https else 'http'}://{format_host(host)}:{self.port}"

    def _with_client_address(self, app: Callable) -> Callable:
        def wsgi(environ: dict, start_response: Callable):
            client = self.tls.clients.get(int(environ.get("REMOTE_PORT") or 0)) if self.tls else None
            if client and environ.get("REMOTE_ADDR") == "127.0.0.1":
                environ["REMOTE_ADDR"] = client
                environ["wsgi.url_scheme"] = "https"
                environ["HTTPS"] = "on"
            return app(environ, start_response)
        return wsgi

    def start(self) -> None:
        self._thread.start()
        if self.tls:
            self.tls.start()

    def close(self) -> None:
        if self.tls:
            self.tls.close()
        # The listener and every open connection, closed on waitress's own thread (woken for it): its
        # loop then finds nothing left and ends.
        close = functools.partial(wasyncore.close_all, self.waitress._map)
        if self._thread.is_alive():
            self.waitress.trigger.pull_trigger(close)
        else:
            close()
        self.waitress.task_dispatcher.shutdown(timeout=2)
        self._thread.join(5)
