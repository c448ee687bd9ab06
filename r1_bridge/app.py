"""The bridge's Flask application: the REST API, the R1 page and the admin dashboard.

:func:`create_app` wires a :class:`~r1_bridge.relay.Relay` (the MQTT side) to HTTP. Every
error answers JSON ``{"error": "..."}``; nothing that runs a command is reachable without
an API token or an admin login.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from lamcontrol import __version__
from lamcontrol import config as lamconfig
from lamcontrol.protocol import Reply, parse

from .activity import EventHub, TaskTracker
from .api import api, metrics
from .auth import AdminPassword, RateLimiter, TokenStore, load_secret_key
from .metrics import Metrics
from .pages import pages
from .relay import Relay
from .web import GONE, HERE, gone, iso, json_error

if TYPE_CHECKING:
    from .openclaw import Gateway

log = logging.getLogger(__name__)



@dataclass
class BridgeSettings:
    """The ``[bridge]`` section of the config, with state files resolved."""

    listen: str = "127.0.0.1:8080"
    public_url: str = ""
    cert_file: str = ""
    key_file: str = ""
    cors_origins: list[str] = field(default_factory=list)
    max_wait: float = 30.0
    max_body: int = 16 * 1024
    threads: int = 16
    max_connections: int = 200
    max_connections_per_address: int = 20
    token_file: str = ""
    admin_file: str = ""
    secret_key_file: str = ""
    login_attempts: int = 5
    login_window: float = 300.0
    metrics_listen: str = ""
    keep: int = 1000
    title: str = "LAMControl"
    theme_color: str = "#FE5000"
    stream_max_age: float = 300.0

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> BridgeSettings:
        section = cfg.get("bridge", {})
        known = {k: v for k, v in section.items() if k in cls.__dataclass_fields__}
        unknown = sorted(set(section) - set(known))
        if unknown:
            raise lamconfig.ConfigError(f"[bridge] has unknown settings: {', '.join(unknown)}")
        settings = cls(**known)
        if not isinstance(settings.cors_origins, list) or not all(isinstance(o, str) for o in settings.cors_origins):
            raise lamconfig.ConfigError("[bridge] cors_origins must be a list of origins, e.g. [\"https://example.org\"]")
        if bool(settings.cert_file) != bool(settings.key_file):
            raise lamconfig.ConfigError("[bridge] HTTPS needs both cert_file and key_file")
        for name in ("cert_file", "key_file"):
            path = getattr(settings, name)
            if path and not Path(path).expanduser().is_file():
                raise lamconfig.ConfigError(f"[bridge] {name} {path} does not exist")
        return settings

    def state_file(self, name: str) -> Path:
        return lamconfig.state_path("bridge", name, getattr(self, name))

    @property
    def https(self) -> bool:
        return bool(self.cert_file and self.key_file)


class Bridge:
    """Everything a request handler needs, kept on ``app.extensions["lam"]``."""

    def __init__(self, relay: Relay, settings: BridgeSettings) -> None:
        self.relay = relay
        self.settings = settings
        self.tokens = TokenStore(settings.state_file("token_file"))
        self.admin = AdminPassword(settings.state_file("admin_file"))
        self.limiter = RateLimiter(settings.login_attempts, settings.login_window)  # per address, token, login
        self.user_limiter = RateLimiter(settings.login_attempts * 4, settings.login_window)  # per user name
        self.metrics = Metrics()
        self.hub = EventHub(relay.topics)
        self.tracker = TaskTracker(relay.topics, settings.keep)
        self.started = time.time()
        self.gateway: Gateway | None = None  # the R1 voice gateway, set by the bridge service
        relay.watchers += [self._measure, self.hub.watch, self.tracker.watch]

    def _measure(self, topic: str, payload: bytes) -> None:
        """Round-trip latency and outcome of the prompts this bridge relayed."""
        if not topic.startswith(self.relay.topics.reply("")):
            return
        exchange = self.relay.exchanges.get(self.relay.topics.last_level(topic))
        if exchange is None or exchange.reply is not None:
            return
        self.metrics.round_trip.observe(max(0.0, time.time() - exchange.submitted))
        try:
            self.metrics.prompts.labels(parse(Reply, payload).status).inc()
        except ValueError:
            pass  # the relay refuses it; nothing to count

    def health(self) -> tuple[dict, int]:
        agents = self.relay.known_agents()
        online = [a for a in agents if a.state == "online"]
        coordinator = self.relay.coordinator
        connected = self.relay.bus.connected.is_set()
        coordinator_state = coordinator.state if coordinator else "unknown"
        status = "unhealthy" if not connected else "healthy" if coordinator_state == "online" else "degraded"
        uptime = time.time() - self.started
        self.metrics.agents_online.set(len(online))
        self.metrics.broker_connected.set(int(connected))
        exchanges = list(self.relay.exchanges.values())
        body = {
            "status": status, "timestamp": iso(time.time()), "version": __version__, "uptime": round(uptime, 3),
            "workers": len(agents), "online_workers": len(online),
            "broker": "connected" if connected else "disconnected", "coordinator": coordinator_state,
            "stats": {"uptime": round(uptime, 3), "total_prompts": len(exchanges),
                      "completed_prompts": sum(1 for e in exchanges if e.reply is not None),
                      "completed_tasks": self.tracker.counts["succeeded"],
                      "failed_tasks": self.tracker.counts["failed"], "active_workers": len(online)},
        }
        return body, 503 if status == "unhealthy" else 200


def create_app(relay: Relay, settings: BridgeSettings) -> Flask:
    """The WSGI application for one relay (already started or not)."""
    app = Flask(__name__, static_folder=str(HERE / "static"), template_folder=str(HERE / "templates"))
    state = Bridge(relay, settings)
    app.extensions["lam"] = state
    app.config.update(
        SECRET_KEY=load_secret_key(settings.state_file("secret_key_file")),
        MAX_CONTENT_LENGTH=settings.max_body,
        SESSION_COOKIE_NAME="lam_session", SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_SECURE=settings.https,
    )
    app.json.sort_keys = False
    app.register_blueprint(api)
    app.register_blueprint(pages)
    for number, ((method, rule), replacement) in enumerate(GONE.items()):
        app.add_url_rule(rule, f"gone_{number}", functools.partial(gone, replacement), methods=[method])
    if not settings.metrics_listen:
        app.add_url_rule("/metrics", view_func=metrics)

    @app.after_request
    def finish(response: Response) -> Response:
        cors(response, settings.cors_origins)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Content-Security-Policy",
                                    "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'")
        rule = request.url_rule.rule if request.url_rule else "unmatched"
        state.metrics.requests.labels(rule, request.method, str(response.status_code)).inc()
        return response

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        messages = {404: f"Not found: {request.path}", 405: f"Method {request.method} is not allowed on {request.path}",
                    413: too_large(settings.max_body)}
        return json_error(messages.get(exc.code, exc.description or exc.name), exc.code or 400)

    @app.errorhandler(Exception)
    def internal_error(exc: Exception) -> Response:
        log.exception("request %s %s failed", request.method, request.path)
        return json_error("Internal error; the bridge log has the details", 500)

    return app


def too_large(limit: int) -> str:
    return f"Request body too large: the API takes at most {limit} bytes ([bridge] max_body)"


def cors(response: Response, allowed: list[str]) -> None:
    """Cross-origin access for configured origins only, and only to the API."""
    origin = request.headers.get("Origin")
    if not origin or not request.path.startswith("/api/") or not (origin in allowed or "*" in allowed):
        return
    response.headers["Access-Control-Allow-Origin"] = origin
    response.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type"
    response.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
    response.headers["Access-Control-Max-Age"] = "600"
    response.vary.add("Origin")
