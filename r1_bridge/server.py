"""Serving the bridge: waitress, with HTTPS through a small TLS front in the same process.

Waitress speaks plain HTTP only, and an ``ssl``-wrapped socket does not survive its
non-blocking event loop (TLS records buffered inside OpenSSL are invisible to ``select``).
So with a certificate, waitress listens on a private loopback port and :class:`TLSFront`
accepts HTTPS on the public address, completes each handshake in a thread of its own and
relays the decrypted bytes. It remembers which loopback port carries which client, and
:func:`client_address` hands the real address (and the ``https`` scheme) back to the app,
so rate limits and logs see the browser, not 127.0.0.1.
"""

from __future__ import annotations

import functools
import json
import logging
import select
import socket
import ssl
import threading
from typing import Callable

from waitress import wasyncore
from waitress.channel import HTTPChannel
from waitress.server import create_server
from waitress.task import ErrorTask

from lamcontrol import config as lamconfig

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT = 10.0
IDLE_TIMEOUT = 600.0
CLEANUP_EVERY = 30  # seconds between waitress's checks for idle connections; its loop sleeps as long
CHUNK = 64 * 1024


def format_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class TLSFront:
    """Accepts TLS on ``(host, port)`` and relays each connection to ``upstream``."""

    def __init__(self, host: str, port: int, cert_file: str, key_file: str, upstream: tuple[str, int],
                 max_connections: int = 200) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.context.load_cert_chain(cert_file, key_file)
        self.upstream = upstream
        self.clients: dict[int, str] = {}  # loopback port -> client address
        self.slots = threading.BoundedSemaphore(max_connections)
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
            readable, writable, _ = select.select(readers, writers, [], IDLE_TIMEOUT)
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


def json_errors(body_limit_message: str) -> type[HTTPChannel]:
    """A waitress channel whose own errors (a body over its limit, a malformed request) are JSON too."""

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

    return type("JsonErrorChannel", (HTTPChannel,), {"error_task_class": JsonErrorTask})


class Server:
    """The bridge's HTTP(S) listener; ``port`` is known once constructed (``0`` picks a free one)."""

    def __init__(self, app: Callable, listen: str, threads: int = 16, cert_file: str = "", key_file: str = "",
                 max_body: int = 1024 * 1024, too_large: str = "Request body too large") -> None:
        host, port = lamconfig.host_port(listen, "listen address")
        self.https = bool(cert_file and key_file)
        self.tls: TLSFront | None = None
        # waitress's loop wakes for its sockets and its trigger; its timeout only paces the idle check
        options = dict(threads=threads, max_request_body_size=max_body, ident="lamcontrol",
                       channel_timeout=IDLE_TIMEOUT, cleanup_interval=CLEANUP_EVERY,
                       asyncore_loop_timeout=CLEANUP_EVERY, clear_untrusted_proxy_headers=True)
        if self.https:
            self.waitress = create_server(self._with_client_address(app), host="127.0.0.1", port=0, **options)
            self.tls = TLSFront(host, port, cert_file, key_file, ("127.0.0.1", self.waitress.effective_port))
            self.host, self.port = host, self.tls.port
        else:
            self.waitress = create_server(app, host=host, port=port, **options)
            self.host, self.port = host, self.waitress.effective_port
        self.waitress.channel_class = json_errors(too_large)
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
