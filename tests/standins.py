"""Local HTTP servers standing in for the outside sites and APIs the agents talk to.

A :class:`StandIn` records every request it gets (method, path, headers, body) and answers
through a function, so a test can both script the far side and check the exact wire traffic.
:func:`site_routes` serves the pages in ``tests/sites`` the way Google, YouTube, Gmail, Amazon
and Messenger lay out their URLs; :func:`telegram_api` and :func:`discord_api` answer like
the Telegram Bot API and Discord's REST and webhook APIs.
"""

from __future__ import annotations

import io
import json
import struct
import threading
import time
import wave
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

SITES = Path(__file__).parent / "sites"


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self):
        return json.loads(self.body)


@dataclass
class Response:
    status: int = 200
    body: bytes | str | dict | list = b""
    content_type: str = ""
    headers: dict[str, str] | None = None

    def encoded(self) -> tuple[bytes, str]:
        if isinstance(self.body, (dict, list)):
            return json.dumps(self.body).encode(), self.content_type or "application/json"
        if isinstance(self.body, str):
            return self.body.encode(), self.content_type or "text/html; charset=utf-8"
        return self.body, self.content_type or "application/octet-stream"


class StandIn:
    """A threaded HTTP server on 127.0.0.1 that records requests and answers with ``respond``."""

    def __init__(self, respond: Callable[[Request], Response]) -> None:
        self.respond = respond
        self.requests: list[Request] = []
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def handle_one(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                request = Request(self.command, self.path, dict(self.headers.items()), self.rfile.read(length))
                stand_in.requests.append(request)
                response = stand_in.respond(request)
                body, content_type = response.encoded()
                self.send_response(response.status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                for name, value in (response.headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = handle_one

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> StandIn:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def tone_wav(seconds: float = 1.0, rate: int = 8000) -> bytes:
    """A short quiet square wave, playable by any browser's <video> element."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        frames = (struct.pack("<h", 500 if (i // 20) % 2 else -500) for i in range(int(seconds * rate)))
        out.writeframes(b"".join(frames))
    return buffer.getvalue()


PAGES = {
    "/search": "google.html",
    "/results": "youtube-results.html",
    "/watch": "youtube-watch.html",
    "/mail/u/0/": "gmail.html",
    "/s": "amazon.html",
    "/site.html": "site.html",
    "/login": "login.html",
}


def site_routes(signed_in: Callable[[], bool] = lambda: True) -> Callable[[Request], Response]:
    """Answers like the real sites' URL layout; Messenger threads (``/t/<id>``) need ``signed_in()``."""
    tone = tone_wav()

    def respond(request: Request) -> Response:
        path = urlsplit(request.path).path
        if path == "/media/tone.wav":
            return Response(body=tone, content_type="audio/wav")
        if path.startswith("/t/"):
            if not signed_in():
                return Response(302, headers={"Location": "/login"})
            return Response(body=(SITES / "messenger.html").read_text())
        if path == "/api/send" and request.method == "POST":
            return Response(body={"ok": True})
        if path in PAGES:
            return Response(body=(SITES / PAGES[path]).read_text())
        return Response(404, "not found")

    return respond


TELEGRAM_TOKEN = "123456:AAH-telegram-secret"
DISCORD_TOKEN = "MTIz.discord-secret"


def telegram_api(script: list[Response] | None = None):
    """Answers sendMessage like the Bot API; ``script`` answers come first."""
    def respond(request: Request) -> Response:
        if script:
            return script.pop(0)
        if request.path != f"/bot{TELEGRAM_TOKEN}/sendMessage":
            return Response(401, {"ok": False, "error_code": 401, "description": "Unauthorized"})
        sent = request.json()
        return Response(200, {"ok": True, "result": {"message_id": 42, "chat": {"id": sent["chat_id"]},
                                                     "date": int(time.time()), "text": sent["text"]}})
    return respond


def discord_api(script: list[Response] | None = None):
    """Answers DM-channel creation, channel messages and webhooks like Discord's REST API."""
    def respond(request: Request) -> Response:
        if script:
            return script.pop(0)
        if request.path.startswith("/api/webhooks/1234/"):
            return Response(200, {"id": "777", "content": request.json()["content"]})
        if request.headers.get("Authorization") != f"Bot {DISCORD_TOKEN}":
            return Response(401, {"message": "401: Unauthorized", "code": 0})
        if request.path == "/api/v10/users/@me/channels":
            return Response(200, {"id": "555", "type": 1, "recipients": [{"id": request.json()["recipient_id"]}]})
        if request.path.startswith("/api/v10/channels/") and request.path.endswith("/messages"):
            return Response(200, {"id": "9001", "channel_id": request.path.split("/")[4],
                                  "content": request.json()["content"]})
        return Response(404, {"message": "404: Not Found", "code": 0})
    return respond
