"""An OpenClaw-compatible WebSocket gateway, so a stock R1's push-to-talk reaches LAMControl.

The R1 turns speech into text itself and sends it over a WebSocket (OpenClaw's gateway
protocol, versions 3 and 4); the gateway publishes it as a prompt (source
``r1-voice:<device>``) and streams back what happens, which the R1 speaks. Frames::

    gateway → {type:"event", event:"connect.challenge", payload:{nonce, ts}}
    R1      → {type:"req", id, method:"connect", params:{minProtocol, maxProtocol, client, role, scopes,
                auth:{token | deviceToken}, device?:{id, publicKey, signature, signedAt, nonce}}}
    gateway → {type:"res", id, ok:true, payload:{type:"hello-ok", protocol, server, features, snapshot,
                auth:{deviceToken, role, scopes}, policy}}
    R1      → {type:"req", id, method:"chat.send", params:{sessionKey, message, idempotencyKey, attachments?}}
    gateway → {type:"res", id, ok:true, payload:{runId, status:"started"}}
    gateway → {type:"event", event:"chat", payload:{runId, sessionKey, seq, state:"delta", deltaText, message}}
              (one per command of a chain, as its result arrives)
    gateway → {type:"event", event:"chat", payload:{runId, sessionKey, seq, state:"final", message}}

Pairing: the R1 presents the pairing token from the QR code and is given a device token for
later connections (:mod:`r1_bridge.devices`). A client that signs the challenge with an
Ed25519 device key (OpenClaw's device identity, :mod:`r1_bridge.identity`) is verified and its
key pinned; one that sends no signature pairs on the token alone, but an id already paired is
paired again only by that R1 (its device token or pinned key) or with the owner's approval.

Answers are OpenClaw's own: a wrong, revoked or missing token is ``INVALID_REQUEST`` with
``details.code`` ``AUTH_TOKEN_MISMATCH``, ``AUTH_DEVICE_TOKEN_MISMATCH`` or ``AUTH_TOKEN_MISSING``, a
bad signature ``INVALID_REQUEST`` with a ``DEVICE_AUTH_*`` code, each closing 1008; ``NOT_PAIRED``
only when pairing needs the owner's approval or the device must sign; a protocol mismatch is
``INVALID_REQUEST`` and closes 1002. Before ``connect`` a frame that is not JSON, or no
``connect`` within 30 s, closes 1000, a frame over 64 KiB 1009. Once connected, a frame that is
not JSON is logged and skipped and a request without an id is answered (id ``invalid``): the
connection stays open. A ``chat.send`` repeating an idempotency key is not run again: while
it runs it is answered ``in_flight``, once done ``ok``; the run id is the idempotency key.

Photos in ``chat.send.attachments`` go with the question to the ``ai`` capability, scaled to
fit one MQTT message (:mod:`r1_bridge.photos`). Frames may be 25 MB once the device is
authenticated, 64 KiB before. The server runs on its own thread and event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import socket
import ssl
import threading
import time
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from lamcontrol import __version__
from lamcontrol.config import ConfigError
from lamcontrol.protocol import FINISHED, JSON_READER, ProtocolError, Reply, Result, check_unicode, new_id

from .activity import TaskTracker
from .devices import DeviceStore
from .identity import IdentityError, verify
from .pairing import pairing_payload
from .photos import PhotoError, attachment_bytes, fit
from .relay import Relay

log = logging.getLogger(__name__)

MIN_PROTOCOL, MAX_PROTOCOL = 3, 4
DEFAULT_PORT = 18789
MAX_FRAME_BEFORE_AUTH = 64 * 1024
MAX_FRAME = 25 * 1024 * 1024  # as OpenClaw: room for photos once authenticated
MAX_BUFFERED = 2 * MAX_FRAME
CONNECT_TIMEOUT = 30.0  # to authenticate after the socket opens
TICK_INTERVAL = 15.0
ROLE = "operator"
ROLES = ("operator", "node")  # what OpenClaw grants; the gateway treats both alike
SCOPES = ["operator.read", "operator.write"]
SOURCE = "r1-voice"
MAX_SOURCE = 64
MAX_ID = 128
KEEP_RUNS = 1000
KEEP_HISTORY = 50
PHOTO_HEADROOM = 8 * 1024  # bytes of a prompt or task message left for all but the photo
MAX_PHOTO_QUESTION = 1000
CLOSE_NORMAL, CLOSE_PROTOCOL, CLOSE_POLICY = 1000, 1002, 1008
METHODS = ["chat.send", "chat.history", "health", "system-presence", "tools.catalog"]
EVENTS = ["connect.challenge", "tick", "chat"]

EMPTY_SENTENCE = "I did not catch that. Please say it again."
NO_REPLY_SENTENCE = "LAMControl did not answer in time. Is the coordinator running?"
FAILED_SENTENCE = "Something went wrong on the bridge; please try again."
BROKER_AWAY_SENTENCE = "The bridge cannot reach the message broker right now; please try again shortly."
PHOTO_QUESTION = "What is in this photo?"


class FrameError(ValueError):
    """A request the gateway refuses: an OpenClaw error code, and how to end the connection.

    ``close`` is a WebSocket close code when the connection must end (after the error frame).
    """

    def __init__(self, message: str, code: str = "INVALID_REQUEST", close: int = 0, details: dict | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.close = close
        self.details = details


class NotJson(Exception):
    """A frame that is not JSON text: before connect OpenClaw closes the connection (1000), after it
    logs the frame and reads on."""


def listen(host: str, port: int) -> socket.socket:
    """A listening socket, or an OSError that names the port."""
    try:
        return socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET,
                                    backlog=64)
    except OSError as exc:
        raise OSError(exc.errno, f"the R1 gateway cannot listen on {host}:{port}: {exc.strerror}") from None


class BrokerAway(Exception):
    """The relay is not connected to the broker, so a prompt cannot be sent."""


def now_ms() -> int:
    return int(time.time() * 1000)


def event(name: str, payload: dict) -> dict:
    return {"type": "event", "event": name, "payload": payload}


def response(request_id: str, payload: dict) -> dict:
    return {"type": "res", "id": request_id, "ok": True, "payload": payload}


def error(request_id: str, code: str, message: str, details: dict | None = None) -> dict:
    shape = {"code": code, "message": message, **({"details": details} if details else {})}
    return {"type": "res", "id": request_id, "ok": False, "error": shape}


def text_message(role: str, text: str) -> dict:
    return {"role": role, "content": [{"type": "text", "text": text}], "timestamp": now_ms()}


def voice_source(device_id: str) -> str:
    """The prompt source for one R1: confirmations are matched per source."""
    return f"{SOURCE}:{device_id}"[:MAX_SOURCE]


def _field(params: dict, name: str, kind: type, default: Any = None, required: bool = False) -> Any:
    value = params.get(name, default)
    if value is None and not required:
        return default
    kinds = {str: "string", dict: "JSON object", list: "list"}
    if not isinstance(value, kind) or isinstance(value, bool):
        raise FrameError(f"params.{name} must be a {kinds[kind]}")
    return value


def _short_id(value: Any, name: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_ID or not value.isprintable():
        raise FrameError(f"{name} must be a string of 1-{MAX_ID} printable characters")
    return value


def read_frame(raw: str | bytes) -> dict:
    """A request frame, checked. NotJson for anything but JSON text; FrameError for a frame
    that is JSON but not a request (with the id to answer, when it has one)."""
    if isinstance(raw, bytes):
        raise NotJson("frames must be JSON text, not binary")
    try:
        frame = JSON_READER.decode(raw)
    except (ValueError, RecursionError) as exc:
        raise NotJson(f"the frame is not JSON ({exc})") from None
    if not isinstance(frame, dict):
        raise FrameError("a frame must be a JSON object")
    if frame.get("type") != "req":
        raise FrameError(f"unknown frame type {frame.get('type')!r}: the gateway only takes requests (type \"req\")")
    if not isinstance(frame.get("id"), str) or not frame["id"]:
        raise FrameError("a request needs an id (a non-empty string)")
    if not isinstance(frame.get("method"), str) or not frame["method"]:
        raise FrameError("a request needs a method (a string)")
    if frame.get("params") is None:
        frame["params"] = {}
    if not isinstance(frame["params"], dict):
        raise FrameError("params must be a JSON object")
    return frame


def request_id_of(raw: str) -> str | None:
    """The id of a frame that failed to read, when it has a usable one (for the error frame)."""
    try:
        frame = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    value = frame.get("id") if isinstance(frame, dict) else None
    return value if isinstance(value, str) and value else None


def auth_refusal(reason: str) -> FrameError:
    """OpenClaw's answer to a token that does not hold (``token_missing``, ``token_mismatch`` or
    ``device_token_mismatch``): ``INVALID_REQUEST`` with the reason's ``details.code``, closing 1008."""
    messages = {"token_missing": "unauthorized: gateway token missing (provide gateway auth token)",
                "token_mismatch": "unauthorized: gateway token mismatch (provide gateway auth token)",
                "device_token_mismatch": "unauthorized: device token mismatch (rotate/reissue device token)"}
    return FrameError(messages[reason], close=CLOSE_POLICY,
                      details={"code": f"AUTH_{reason.upper()}", "authReason": reason, "canRetryWithDeviceToken": False,
                               "recommendedNextStep": "update_auth_configuration" if reason == "token_missing"
                               else "update_auth_credentials"})


def negotiate(params: dict) -> int:
    """The protocol version both sides speak: the highest in the client's range and ours."""
    low, high = params.get("minProtocol", MIN_PROTOCOL), params.get("maxProtocol", MIN_PROTOCOL)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (low, high)):
        raise FrameError("params.minProtocol and params.maxProtocol must be integers")
    if high < MIN_PROTOCOL or low > MAX_PROTOCOL or low > high:
        raise FrameError("protocol mismatch", close=CLOSE_PROTOCOL,
                         details={"expectedProtocol": MAX_PROTOCOL, "minProtocol": MIN_PROTOCOL,
                                  "maxProtocol": MAX_PROTOCOL})
    return min(high, MAX_PROTOCOL)


@dataclass
class GatewaySettings:
    """``[openclaw]`` of the configuration: where the gateway listens, what the pairing QR advertises."""

    enabled: bool = True
    host: str = "0.0.0.0"
    port: int = DEFAULT_PORT
    cert_file: str = ""
    key_file: str = ""
    reply_timeout: float = 75.0
    advertise: list[str] = field(default_factory=list)  # addresses for the QR; default: the LAN addresses

    @classmethod
    def from_config(cls, config: dict) -> GatewaySettings:
        """The ``[openclaw]`` section; the certificate defaults to the bridge's (``[bridge]``)."""
        section = dict(config.get("openclaw", {}))
        unknown = sorted(set(section) - set(cls.__dataclass_fields__))
        if unknown:
            raise ConfigError(f"[openclaw] has unknown settings: {', '.join(unknown)}")
        bridge = config.get("bridge", {})
        if "cert_file" not in section and "key_file" not in section:
            section.update(cert_file=bridge.get("cert_file", ""), key_file=bridge.get("key_file", ""))
        settings = cls(**section)
        checks = [
            (isinstance(settings.enabled, bool), "enabled must be true or false"),
            (isinstance(settings.host, str), "host must be an address such as \"0.0.0.0\""),
            (isinstance(settings.port, int) and not isinstance(settings.port, bool) and 0 <= settings.port < 65536,
             f"port must be a port number, not {settings.port!r}"),
            (bool(settings.cert_file) == bool(settings.key_file), "wss needs both cert_file and key_file, or neither"),
            (isinstance(settings.reply_timeout, (int, float)) and not isinstance(settings.reply_timeout, bool)
             and settings.reply_timeout > 0, "reply_timeout must be a number of seconds"),
            (isinstance(settings.advertise, list) and all(isinstance(a, str) for a in settings.advertise),
             "advertise must be a list of addresses, e.g. [\"192.168.1.20\"]"),
        ]
        for ok, problem in checks:
            if not ok:
                raise ConfigError(f"[openclaw] {problem}")
        return settings

    @property
    def tls(self) -> bool:
        return bool(self.cert_file)

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(Path(self.cert_file).expanduser(), Path(self.key_file).expanduser())
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load the R1 gateway certificate {self.cert_file}: {exc}") from None
        return context


@dataclass
class Run:
    """One utterance: the sentences of its commands as they finish, then the answer.

    Retries with the same idempotency key share it; every connection that asked for it gets
    the same events, once.
    """

    id: str
    answer: asyncio.Task | None = None
    steps: list[str] = field(default_factory=list)
    listeners: set[ServerConnection] = field(default_factory=set)  # connections its events are going to
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def add_step(self, text: str) -> None:
        self.steps.append(text)
        self._changed.set()
        self._changed = asyncio.Event()

    async def progress(self) -> None:
        """Until a step is added or the answer is ready."""
        changed = asyncio.ensure_future(self._changed.wait())
        try:
            await asyncio.wait([changed, self.answer], return_when=asyncio.FIRST_COMPLETED)
        finally:
            changed.cancel()


class StepTracker(TaskTracker):
    """The bus's task results, each final one handed to ``on_step(prompt_id, message)``."""

    def __init__(self, relay: Relay, on_step: Callable[[str, str], None]) -> None:
        super().__init__(relay.topics)
        self.on_step = on_step
        relay.watchers.append(self.watch)

    def _on_result(self, result: Result) -> None:
        before = self.get(result.task_id)
        super()._on_result(result)
        if before and before["state"] not in FINISHED and result.state in FINISHED and result.message:
            self.on_step(before["prompt_id"], result.message)


class Gateway:
    """The WebSocket server: pairing, authentication, and prompts relayed over ``relay``.

    Like the HTTP server, it takes its port when constructed (OSError when it cannot) and
    serves once started.
    """

    def __init__(self, relay: Relay, store: DeviceStore, settings: GatewaySettings | None = None) -> None:
        self.relay = relay
        self.store = store
        self.settings = settings or GatewaySettings()
        self._ssl = self.settings.ssl_context()
        self._socket = listen(self.settings.host, self.settings.port)
        self.port = self._socket.getsockname()[1]
        self.started = time.time()
        self.runs: OrderedDict[tuple[str, str], Run] = OrderedDict()
        self.streaming: dict[str, Run] = {}  # prompt id -> the run waiting for its reply
        self.history: dict[str, deque] = {}
        self.connected: dict[ServerConnection, str] = {}
        self.steps = StepTracker(relay, self._on_step) if relay else None
        self._tasks: set[asyncio.Task] = set()
        self._pool = ThreadPoolExecutor(max_workers=32, thread_name_prefix="openclaw")
        self._closed = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None

    @classmethod
    def from_config(cls, relay: Relay, config: dict, store: DeviceStore | None = None) -> Gateway | None:
        """The gateway ``[openclaw]`` asks for, its port taken; None when ``enabled = false``.

        A port already in use (another OpenClaw gateway, a second bridge) is logged and gives
        None too: the bridge's HTTP side does not depend on it.
        """
        settings = GatewaySettings.from_config(config)
        if not settings.enabled:
            return None
        try:
            return cls(relay, store or DeviceStore(), settings)
        except OSError as exc:
            log.error("%s; the R1 cannot reach this bridge by voice. Set another [openclaw] port "
                      "(or enabled = false).", exc.strerror)
            return None

    # -- life -------------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> None:
        """Serve on a thread and event loop of its own."""
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), name="openclaw", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError(f"the R1 gateway did not start within {timeout:g} seconds")
        if self._error:
            raise self._error
        log.info("R1 gateway listening on %s://%s:%d", "wss" if self.settings.tls else "ws",
                 self.settings.host, self.port)

    def stop(self, timeout: float = 10.0) -> None:
        self._closed.set()
        if self._thread and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(timeout)
        self._socket.close()
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            server: Server = await serve(self._serve, sock=self._socket, ssl=self._ssl,
                                         max_size=MAX_FRAME_BEFORE_AUTH)
        except Exception as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        async with server:
            await self._stop.wait()

    # -- pairing ----------------------------------------------------------------------

    def pairing_payload(self) -> dict:
        """The pairing QR's content: the addresses the gateway listens on (``[openclaw] advertise`` when set, this
        machine's LAN addresses when it listens on all), port, pairing token, ws or wss."""
        listening_on_all = self.settings.host in ("", "0.0.0.0", "::")
        ips = self.settings.advertise or (None if listening_on_all else [self.settings.host])
        return pairing_payload(self.store.pairing_token(), self.port, self.settings.tls, ips)

    # -- one connection ---------------------------------------------------------------

    async def _serve(self, ws: ServerConnection) -> None:
        remote = "%s:%s" % ws.remote_address[:2] if ws.remote_address else "?"
        nonce = secrets.token_hex(16)
        await self._send(ws, event("connect.challenge", {"nonce": nonce, "ts": now_ms()}))
        ticker = self._spawn(self._tick(ws))
        connect_by = time.monotonic() + CONNECT_TIMEOUT
        try:
            while True:
                authenticated = ws in self.connected
                try:
                    raw = await (ws.recv() if authenticated else
                                 asyncio.wait_for(ws.recv(), max(0.0, connect_by - time.monotonic())))
                except TimeoutError:
                    await ws.close(CLOSE_NORMAL, "handshake timeout")
                    return
                if not await self._handle(ws, raw, remote, nonce):
                    return
        except ConnectionClosed:
            pass
        finally:
            ticker.cancel()
            self.connected.pop(ws, None)

    async def _handle(self, ws: ServerConnection, raw: str | bytes, remote: str, nonce: str) -> bool:
        """Answer one frame; False when the connection was closed."""
        request_id = None
        device_id = self.connected.get(ws)
        try:
            frame = read_frame(raw)
            request_id = frame["id"]
            if device_id is None:
                if frame["method"] != "connect":
                    raise FrameError("the first request must be connect", close=CLOSE_POLICY)
                return await self._connect(ws, frame, remote, nonce)
            if frame["method"] == "connect":
                raise FrameError("already connected")
            if not await self._blocking(self.store.is_active, device_id):
                log.warning("R1 gateway refused %s from %s: the device was revoked", device_id, remote)
                raise auth_refusal("device_token_mismatch")
            answer = await self._request(ws, device_id, frame)
            if answer is not None:
                await self._send(ws, answer)
        except NotJson as exc:
            if device_id is not None:
                log.warning("R1 gateway skipped a frame from %s (%s): %s", device_id, remote, exc)
                return True
            log.warning("R1 gateway closed the connection from %s: %s", remote, exc)
            await ws.close(CLOSE_NORMAL, "invalid handshake")
            return False
        except FrameError as exc:
            request_id = request_id or request_id_of(raw)
            if device_id is not None and not exc.close:  # connected: every refusal is answered, the socket stays
                await self._send(ws, error(request_id or "invalid", exc.code, str(exc), exc.details))
                return True
            if request_id:
                await self._send(ws, error(request_id, exc.code, str(exc), exc.details))
            self.connected.pop(ws, None)
            await ws.close(exc.close or CLOSE_POLICY, str(exc)[:120])
            return False
        except ConnectionClosed:
            raise
        except Exception:
            log.exception("R1 gateway failed on a frame from %s", remote)
            if request_id:
                await self._send(ws, error(request_id, "UNAVAILABLE", FAILED_SENTENCE))
        return True

    async def _connect(self, ws: ServerConnection, frame: dict, remote: str, nonce: str) -> bool:
        params = frame["params"]
        protocol = negotiate(params)
        auth = _field(params, "auth", dict, {})
        device = _field(params, "device", dict, {})
        client = _field(params, "client", dict, {})
        role = _field(params, "role", str, ROLE)
        if role not in ROLES:
            raise FrameError("invalid role", close=CLOSE_POLICY)
        asked = _field(params, "scopes", list, [])
        if not all(isinstance(scope, str) for scope in asked):
            raise FrameError("params.scopes must be a list of strings")
        device_id = _short_id(device.get("id"), "params.device.id")
        offered = [t for t in (auth.get("token"), auth.get("deviceToken")) if isinstance(t, str) and t]
        public_key = ""
        if device.get("signature") is not None:
            try:
                public_key = verify(device, client, role, asked, offered, nonce, now_ms())
            except IdentityError as exc:
                log.warning("R1 gateway refused %s from %s: %s", device_id, remote, exc)
                raise FrameError(str(exc), close=CLOSE_POLICY, details=exc.details) from None
        known = await self._blocking(self.store.get, device_id)
        if known and known.public_key and known.public_key != public_key:
            log.warning("R1 gateway refused %s from %s: the device signs its connections, and this one is not "
                        "signed by its key", device_id, remote)
            raise FrameError("device identity required", "NOT_PAIRED", CLOSE_POLICY,
                             {"code": "DEVICE_IDENTITY_REQUIRED"})
        token = await self._token(device_id, offered, client, public_key, remote)
        if token is None:
            reason = "token_missing" if not offered else "device_token_mismatch" if known else "token_mismatch"
            log.warning("R1 gateway refused %s from %s: %s", device_id, remote, reason.replace("_", " "))
            raise auth_refusal(reason)
        self.connected[ws] = device_id
        ws.protocol.max_size = MAX_FRAME
        await self._send(ws, response(frame["id"], {
            "type": "hello-ok", "protocol": protocol,
            "server": {"version": __version__, "connId": new_id()},
            "features": {"methods": METHODS, "events": EVENTS},
            "snapshot": {"presence": self._presence(), "health": self._health(),
                         "stateVersion": {"presence": len(self.connected), "health": 0},
                         "uptimeMs": int((time.time() - self.started) * 1000), "authMode": "token"},
            "auth": {"deviceToken": token, "role": role, "scopes": asked or SCOPES},
            "policy": {"maxPayload": MAX_FRAME, "maxBufferedBytes": MAX_BUFFERED,
                       "tickIntervalMs": int(TICK_INTERVAL * 1000)},
        }))
        return True

    async def _token(self, device_id: str, offered: list[str], client: dict, public_key: str,
                     remote: str) -> str | None:
        """The device token of this connection: the one it offered, or a new one when it pairs with
        the pairing token; None when neither holds. FrameError (``NOT_PAIRED``) when the id is paired
        already and this connection cannot show it is that R1: the owner is asked to approve it."""
        for candidate in offered:
            if await self._blocking(self.store.authenticate, device_id, candidate):
                return candidate
        for candidate in offered:
            if await self._blocking(self.store.is_pairing_token, candidate):
                break
        else:
            return None
        token = await self._blocking(self.store.pair, device_id, str(client.get("displayName", ""))[:64],
                                     str(client.get("platform", ""))[:32], str(client.get("deviceFamily", ""))[:32],
                                     public_key, remote.rsplit(":", 1)[0])
        if token is None:
            log.warning("R1 gateway: %s tried to pair as %s, which is paired already, with the pairing code alone; "
                        "if it is that R1 (reset, or it lost its token): lam-bridge devices approve %s",
                        remote, device_id, device_id)
            raise FrameError("pairing required: device is not approved yet", "NOT_PAIRED", CLOSE_POLICY, {
                "code": "PAIRING_REQUIRED", "reason": "not-paired", "deviceId": device_id,
                "remediationHint": "An R1 with this id is paired already: the owner approves this one on the "
                                   "bridge (/r1/pair, or lam-bridge devices approve).",
                "recommendedNextStep": "wait_then_retry", "waitForResolution": True})
        log.info("R1 %s paired from %s%s", device_id, remote, " (device key verified)" if public_key else "")
        return token

    async def _request(self, ws: ServerConnection, device_id: str, frame: dict) -> dict | None:
        """The response to an authenticated request (None when already sent)."""
        method, params, request_id = frame["method"], frame["params"], frame["id"]
        if method == "chat.send":
            await self._chat_send(ws, device_id, request_id, params)
            return None
        if method == "health":
            return response(request_id, self._health())
        if method == "system-presence":
            return response(request_id, {"entries": self._presence()})
        if method == "tools.catalog":
            return response(request_id, {"tools": self._tools()})
        if method == "chat.history":
            session_key = _field(params, "sessionKey", str, "main")
            limit = params.get("limit")
            messages = list(self.history.get(device_id, ()))
            if isinstance(limit, int) and not isinstance(limit, bool) and limit >= 0:
                messages = messages[len(messages) - limit:] if limit else []
            return response(request_id, {"sessionKey": session_key, "messages": messages})
        raise FrameError(f"unknown method: {method}")

    # -- chat -------------------------------------------------------------------------

    async def _chat_send(self, ws: ServerConnection, device_id: str, request_id: str, params: dict) -> None:
        """Acknowledge at once; the answer follows as chat events, even for a retry."""
        message = _field(params, "message", str, required=True)
        try:
            check_unicode(message)
        except ProtocolError as exc:
            raise FrameError(f"params.message: {exc}") from None
        session_key = _short_id(_field(params, "sessionKey", str, "main"), "params.sessionKey")
        key = _short_id(_field(params, "idempotencyKey", str, new_id()), "params.idempotencyKey")
        run = self.runs.get((device_id, key))
        if run is None:
            try:
                photos = [p for p in map(attachment_bytes, _field(params, "attachments", list, [])) if p]
            except PhotoError as exc:
                raise FrameError(f"params.attachments: {exc}") from None
            run = Run(key)  # as in OpenClaw, the run is named by its idempotency key
            run.answer = self._spawn(self._answer(run, device_id, message, photos[0] if photos else None, session_key))
            self.runs[(device_id, key)] = run
            while len(self.runs) > KEEP_RUNS:
                self.runs.popitem(last=False)
            status = "started"
        else:
            status = "ok" if run.answer.done() else "in_flight"
        await self._send(ws, response(request_id, {"runId": run.id, "status": status}))
        if ws not in run.listeners:  # a connection that lost the answer (a new one) hears it again
            run.listeners.add(ws)
            self._spawn(self._deliver(ws, run, session_key))

    async def _deliver(self, ws: ServerConnection, run: Run, session_key: str) -> None:
        """A delta event for each command's sentence as it comes, then the final answer."""
        try:
            await self._stream(ws, run, session_key)
        finally:
            run.listeners.discard(ws)

    async def _stream(self, ws: ServerConnection, run: Run, session_key: str) -> None:
        sent = 0
        while True:
            for text in run.steps[sent:]:
                sent += 1
                await self._send(ws, event("chat", {
                    "runId": run.id, "sessionKey": session_key, "seq": sent - 1, "state": "delta", "deltaText": text,
                    "message": text_message("assistant", " ".join(run.steps[:sent]))}))
            if run.answer.done():
                break
            await run.progress()
        sentence = run.answer.result()
        await self._send(ws, event("chat", {"runId": run.id, "sessionKey": session_key, "seq": sent,
                                            "state": "final", "message": text_message("assistant", sentence)}))

    async def _answer(self, run: Run, device_id: str, text: str, photo: bytes | None, session_key: str) -> str:
        """The sentence the R1 speaks for one utterance."""
        metadata = {"device": device_id, "run": run.id, "session": session_key}
        try:
            if photo is not None:
                sentence = await self._answer_photo(run, device_id, text.strip(), photo, metadata)
            else:
                sentence = await self._answer_text(run, device_id, text.strip(), metadata)
        except BrokerAway:
            sentence = BROKER_AWAY_SENTENCE
        except Exception:
            log.exception("R1 gateway failed to answer %s", device_id)
            sentence = FAILED_SENTENCE
        history = self.history.setdefault(device_id, deque(maxlen=KEEP_HISTORY))
        history.extend([text_message("user", text), text_message("assistant", sentence)])
        return sentence

    async def _answer_text(self, run: Run, device_id: str, text: str, metadata: dict) -> str:
        """The coordinator's reply, as for every entry point: a question goes to the ai there."""
        if not text:
            return EMPTY_SENTENCE
        reply = await self._ask(run, text, voice_source(device_id), metadata)
        return reply.response if reply else NO_REPLY_SENTENCE

    async def _answer_photo(self, run: Run, device_id: str, text: str, photo: bytes, metadata: dict) -> str:
        """A photo and what was said about it (the coordinator gives it to the capability that looks at photos)."""
        question = text[:MAX_PHOTO_QUESTION] or PHOTO_QUESTION
        budget = self.relay.bus.settings.max_payload - PHOTO_HEADROOM - 2 * len(question.encode())
        try:
            image = await self._blocking(fit, photo, budget)
        except PhotoError as exc:
            return f"Sorry, {exc}."
        return await self._answer_text(run, device_id, question, {**metadata, "image": image})

    async def _ask(self, run: Run, text: str, source: str, metadata: dict) -> Reply | None:
        if not self.relay.bus.connected.is_set():
            raise BrokerAway
        exchange = self.relay.submit(text, source=source, metadata=metadata)
        self.streaming[exchange.prompt.id] = run
        try:
            return await self._blocking(self._wait_reply, exchange.prompt.id)
        finally:
            self.streaming.pop(exchange.prompt.id, None)

    def _wait_reply(self, prompt_id: str) -> Reply | None:
        """The reply, waited for in slices so that stopping the gateway is not held up."""
        deadline = time.monotonic() + self.settings.reply_timeout
        while not self._closed.is_set() and time.monotonic() < deadline:
            reply = self.relay.wait(prompt_id, min(0.5, max(0.0, deadline - time.monotonic())))
            if reply is not None:
                return reply
        return None

    def _on_step(self, prompt_id: str, text: str) -> None:
        """A command of a prompt finished (on the bus's thread): stream its sentence."""
        run = self.streaming.get(prompt_id)
        if run is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(run.add_step, text)

    # -- status -----------------------------------------------------------------------

    def _health(self) -> dict:
        coordinator = self.relay.coordinator.state if self.relay.coordinator else "unknown"
        agents = sorted(agent.agent for agent in self.relay.online_agents())
        ok = coordinator == "online"
        return {"ok": ok, "status": "ok" if ok else "degraded", "coordinator": coordinator, "agents": agents}

    def _presence(self) -> list[dict]:
        return [{"deviceId": device_id, "roles": [ROLE], "scopes": SCOPES, "mode": "voice", "ts": now_ms()}
                for device_id in sorted(set(self.connected.values()))]

    def _tools(self) -> list[dict]:
        offered: dict[str, list[str]] = {}
        for agent in self.relay.online_agents():
            for capability, actions in agent.capabilities.items():
                for action in actions:
                    offered.setdefault(f"{capability} {action}", []).append(agent.agent)
        return [{"name": name, "description": f"LAMControl command `{name} ...`", "agents": sorted(agents)}
                for name, agents in sorted(offered.items())]

    # -- plumbing ---------------------------------------------------------------------

    async def _tick(self, ws: ServerConnection) -> None:
        while True:
            await asyncio.sleep(TICK_INTERVAL)
            if ws in self.connected:
                await self._send(ws, event("tick", {"ts": now_ms()}))

    def _spawn(self, coroutine: Any) -> asyncio.Task:
        """A background task, referenced until it ends (the loop keeps only weak references)."""
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _send(self, ws: ServerConnection, frame: dict) -> None:
        try:
            await ws.send(json.dumps(frame, separators=(",", ":"), ensure_ascii=False))
        except ConnectionClosed:
            pass

    async def _blocking(self, func: Callable, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, func, *args)
