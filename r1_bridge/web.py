"""What every request handler of the bridge shares: the bridge of the request, who asks, JSON errors.

The API (:mod:`.api`) and the pages (:mod:`.pages`) build on this module; the application
(:mod:`.app`) builds on both, so nothing here imports them.
"""

from __future__ import annotations

import hmac
import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from flask import Response, current_app, jsonify, request, session

if TYPE_CHECKING:
    from .app import Bridge

auth_log = logging.getLogger("lamcontrol.r1_bridge.auth")  # failed logins and lockouts

HERE = Path(__file__).parent


class BadRequest(Exception):
    """A client mistake; the message is sent back as the error, with HTTP 400."""


def bridge() -> Bridge:
    """The bridge serving the current request."""
    return current_app.extensions["lam"]


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def json_error(message: str, status: int, headers: dict[str, str] | None = None, **fields: object) -> Response:
    """``{"error": message, ...fields}`` with ``status`` and ``headers``."""
    response = jsonify(error=message, **fields)
    response.status_code = status
    response.headers.update(headers or {})
    return response


def client_address() -> str:
    return request.remote_addr or "unknown"


def admin_session() -> bool:
    """A logged-in dashboard whose password has not changed since."""
    return session.get("admin") == bridge().admin.fingerprint and bridge().admin.is_set


def csrf_ok() -> bool:
    expected = session.get("csrf")
    sent = request.headers.get("X-CSRF-Token") or request.form.get("csrf_token") or ""
    return isinstance(expected, str) and bool(expected) and hmac.compare_digest(sent.encode(), expected.encode())


def too_many_attempts(wait: int) -> Response:
    return json_error(f"Too many failed attempts; try again in {wait} seconds", 429,
                      headers={"Retry-After": str(wait)})


# Routes of the original LAMControl server that have no place here, and what replaced each.
GONE = {
    ("POST", "/api/worker/register"): "Agents join over MQTT: run lam-agent on the machine (docs/migrating.md: Migrating "
                                      "from the original LAMControl); there is nothing to register.",
    ("POST", "/api/worker/<worker_id>/heartbeat"): "Agents publish their own presence over MQTT; GET /api/workers "
                                                   "shows it.",
    ("DELETE", "/api/worker/<worker_id>/remove"): "Stop the agent, or run lam agents forget <id>.",
    ("GET", "/r1/login"): "Open /r1 and save an API token there (or pair the R1 from /r1/install).",
    ("POST", "/r1/login"): "Open /r1 and save an API token there (or pair the R1 from /r1/install).",
    ("POST", "/r1"): "POST /api/prompt with an API token (the /r1 page does this for you).",
    ("GET", "/r1/logout"): "Remove the token on the R1 page, or revoke it: lam-bridge token revoke <id>.",
}


def gone(replaced_by: str, **_: str) -> Response:
    """JSON 410: the route existed in the original LAMControl server; ``replaced_by`` says what to use."""
    return json_error(f"{request.method} {request.path} belonged to the original LAMControl server and is gone",
                      410, replaced_by=replaced_by)
